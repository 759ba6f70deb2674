"""WebhookNotifier: POST a JSON alert to a URL (or an HTTP Connection), as a generic
payload or as a Slack-compatible message (`{"text": ..., "blocks": [...]}`)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from aflow.exceptions import DagDefinitionError
from aflow.notifications.base import (
    BaseNotifier,
    NotificationError,
    default_message,
    describe,
    page_url,
)
from aflow.runtime.tls import client_ssl_context
from aflow.secrets.masking import add_secret

Format = Literal["json", "slack"]
DEFAULT_TIMEOUT_S = 10.0


class WebhookNotifier(BaseNotifier):
    """`WebhookNotifier("https://hooks.example.com/x")` or
    `WebhookNotifier(http_conn_id="alerts", endpoint="/hook")`.

    `message` is a Jinja template rendered with the callback's context (default: one
    line saying what happened). The generic payload holds dag_id, run_id, task_id,
    map_index, try_number, state, reason, exception, logical_date, deadline, log_url and
    message, plus `extra`; `slack=True` (or `format="slack"`) sends Slack's shape
    instead. `base_url` is the web UI's address, for `log_url`. The connection's host
    (with its scheme, or `schema` as the scheme), port, login/password (basic auth) and
    its extra (as headers) are used; `headers` add to them. A non-2xx answer is a
    failure (logged, never raised into the run)."""

    template_fields = ("message", "url", "endpoint", "headers", "extra")

    def __init__(
        self,
        url: str | None = None,
        *,
        http_conn_id: str | None = None,
        endpoint: str = "",
        message: str | None = None,
        slack: bool = False,
        format: Format | None = None,  # noqa: A002 - the user-facing name
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,  # noqa: ASYNC109 - an HTTP timeout, not a wait
    ) -> None:
        if (url is None) == (http_conn_id is None):
            raise DagDefinitionError("WebhookNotifier needs exactly one of url= or http_conn_id=")
        if url is not None and not isinstance(url, str):
            raise DagDefinitionError(f"WebhookNotifier: url must be a string, got {url!r}")
        fmt = format or ("slack" if slack else "json")
        if fmt not in ("json", "slack"):
            raise DagDefinitionError(
                f"WebhookNotifier: format must be 'json' or 'slack', got {format!r}")
        self.url = url
        self.http_conn_id = http_conn_id
        self.endpoint = endpoint
        self.message = message
        self.format: Format = fmt
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        self.base_url = base_url
        self.timeout = timeout

    def payload(self, context: dict[str, Any]) -> dict[str, Any]:
        """The JSON body sent for `context` (this notifier's fields already rendered)."""
        d = describe(context)
        d["log_url"] = page_url(self.base_url, d)
        d["message"] = self.message if self.message is not None else default_message(d)
        if self.format == "slack":
            return slack_payload(d) | self.extra
        return d | self.extra

    async def notify(self, context: dict[str, Any]) -> None:
        url, headers, auth = await self._target()
        # A webhook's path is often its secret (Slack's is): the whole URL is masked in
        # logs (httpx logs each request), and errors name the server only.
        if urlsplit(url).path.strip("/") or urlsplit(url).query:
            add_secret(url)
            add_secret(str(httpx.URL(url)))  # as httpx logs it (host lowercased, port dropped...)
            target = httpx.URL(url)
            add_secret(target.raw_path.decode("ascii", "replace"))
        try:
            async with httpx.AsyncClient(timeout=self.timeout, auth=auth,
                                         verify=await client_ssl_context()) as client:
                answer = await client.post(url, json=self.payload(context),
                                           headers=headers | self.headers)
        except httpx.HTTPError as exc:
            raise NotificationError(
                f"could not reach the webhook at {_server(url)}: {type(exc).__name__}: "
                f"{str(exc).replace(url, _server(url))}") from None
        if not answer.is_success:
            raise NotificationError(
                f"the webhook at {_server(url)} answered {answer.status_code} "
                f"{answer.reason_phrase}: {answer.text[:200]!r}")

    async def _target(self) -> tuple[str, dict[str, str], httpx.BasicAuth | None]:
        if self.url is not None:
            return _join(self.url, self.endpoint), {}, None
        from aflow.secrets.backends import lookup_connection

        assert self.http_conn_id is not None
        from aflow.authoring.operators.http import HttpOperatorError, base_url

        conn = await lookup_connection(self.http_conn_id)
        try:  # the HTTP connection read as HttpOperator reads it (scheme from its type too)
            base = base_url(conn)
        except HttpOperatorError as exc:
            raise NotificationError(str(exc)) from None
        headers = {str(k): str(v) for k, v in conn.extra.items()}
        auth = httpx.BasicAuth(conn.login, conn.password or "") if conn.login else None
        return _join(base, self.endpoint), headers, auth

    def __repr__(self) -> str:
        where = _server(self.url) if self.url is not None else f"conn {self.http_conn_id}"
        return f"<WebhookNotifier {self.format} {where}>"


def _server(url: str) -> str:
    """scheme://host[:port] of a URL, without its path, query or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _join(base: str, endpoint: str) -> str:
    if not endpoint:
        return base
    return f"{base.rstrip('/')}/{endpoint.lstrip('/')}"


def slack_payload(d: dict[str, Any]) -> dict[str, Any]:
    """Slack's incoming-webhook shape: `text` (the fallback) and Block Kit blocks."""
    facts = [f"*DAG* `{d['dag_id']}`", f"*run* `{d['run_id']}`"]
    if d["task_id"]:
        facts.append(f"*task* `{d['task_id']}`")
        if d["try_number"]:
            facts.append(f"*try* {d['try_number']}")
    if d["state"]:
        facts.append(f"*state* {d['state']}")
    if d["reason"]:
        facts.append(f"*reason* {d['reason']}")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": d["message"]}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(facts)}]},
    ]
    if d["log_url"]:
        blocks.append({"type": "section",
                       "text": {"type": "mrkdwn", "text": f"<{d['log_url']}|Open in aflow>"}})
    return {"text": d["message"], "blocks": blocks}
