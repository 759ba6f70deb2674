"""HttpOperator: one HTTP request with httpx's AsyncClient, to a base URL from a Connection.

The base URL: the connection's host (which may carry its scheme, `https://api.example`),
port and scheme; the scheme is the connection's type when that is `http`/`https`, or its
schema when that is `http`/`https` (Airflow's HttpHook reads it there), else `http`. Any
other schema is a base path (`http://host:8080/api/v1` as a URI gives the base
`http://host:8080/api/v1`). Login and password become basic auth; the extra's string
values become request headers (as Airflow's HttpHook does), below the task's `headers`.

Retries inside one try: a 5xx answer, a timeout or a transport error (refused, reset) is
retried `request_retries` times with exponential backoff and jitter (from
`request_retry_backoff_s`, capped at `max_request_retry_backoff_s`), each logged. A 4xx
answer fails at once with its status and the start of its body. The task's own
`retries` then apply as for any task.

The XCom: `response_filter(response)` when given (it must return JSON), else the parsed
JSON body when the answer says it is JSON, else the text. `response_check(response)`
returning False fails the task. Both callables may also ask for context values by name
(`ti`, `params`, ...), as in Airflow.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import httpx

from aflow.authoring.baseoperator import BaseOperator
from aflow.authoring.operators.python import context_kwargs
from aflow.exceptions import AflowError, DagDefinitionError
from aflow.runtime.tls import client_ssl_context
from aflow.secrets.backends import lookup_connection
from aflow.secrets.connection import Connection
from aflow.secrets.masking import mask

log = logging.getLogger("aflow.task.http")

BODY_EXCERPT_CHARS = 500
JITTER = 0.2
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


class HttpOperatorError(AflowError):
    """The request failed: a 4xx answer, retries used up, a failed response_check."""


def base_url(conn: Connection) -> str:
    """The base URL of an HTTP connection (see the module's docstring)."""
    host = (conn.host or "").strip()
    if not host:
        raise HttpOperatorError(f"connection {conn.conn_id!r} has no host")
    schema = (conn.schema or "").strip()
    if "://" in host:
        url = httpx.URL(host)
        if conn.port and not url.port:
            url = url.copy_with(port=conn.port)
        base = str(url)
    else:
        if schema in ("http", "https"):
            scheme = schema
        elif conn.conn_type in ("http", "https"):
            scheme = conn.conn_type
        else:
            scheme = "http"
        shown_host = f"[{host}]" if ":" in host else host
        base = f"{scheme}://{shown_host}" + (f":{conn.port}" if conn.port else "")
    if schema and schema not in ("http", "https"):
        base = base.rstrip("/") + "/" + schema.strip("/")
    return base


# Transport errors of the request itself (a bad URL scheme, a header httpx refuses, a
# proxy refusing it): retrying them only waits before the same failure.
_NEVER_BETTER = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError)


def join_url(base: str, endpoint: str | None) -> str:
    if not endpoint:
        return base
    if endpoint.startswith(("http://", "https://")):
        raise HttpOperatorError(
            f"endpoint {endpoint!r} is a full URL: give the host in the connection and "
            "the path as endpoint"
        )
    return base.rstrip("/") + "/" + endpoint.lstrip("/")


def excerpt(text: str, limit: int = BODY_EXCERPT_CHARS) -> str:
    text = mask(text)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


class HttpOperator(BaseOperator):
    """Send one HTTP request to `endpoint` on connection `http_conn_id`."""

    template_fields: Sequence[str] = ("endpoint", "data", "json", "headers")
    template_ext: Sequence[str] = ()
    ui_color = "#f4a460"

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        method: str = "POST",
        http_conn_id: str = "http_default",
        data: Any = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        response_check: Callable[..., bool] | None = None,
        response_filter: Callable[..., Any] | None = None,
        request_timeout_s: float = 30.0,
        request_retries: int = 3,
        request_retry_backoff_s: float = 1.0,
        max_request_retry_backoff_s: float = 30.0,
        log_response: bool = False,
        **kwargs: Any,
    ) -> None:
        task_id = kwargs.get("task_id")
        method = str(method).upper()
        if method not in METHODS:
            raise DagDefinitionError(
                f"task {task_id!r}: method {method!r} is not one of {', '.join(METHODS)}"
            )
        if data is not None and json is not None:
            raise DagDefinitionError(f"task {task_id!r}: give data or json, not both")
        for name, fn in (("response_check", response_check), ("response_filter", response_filter)):
            if fn is not None and not callable(fn):
                raise DagDefinitionError(f"task {task_id!r}: {name} must be callable")
        if isinstance(request_retries, bool) or not isinstance(request_retries, int) \
                or request_retries < 0:
            raise DagDefinitionError(f"task {task_id!r}: request_retries must be an integer >= 0")
        if request_timeout_s <= 0:
            raise DagDefinitionError(f"task {task_id!r}: request_timeout_s must be > 0")
        self.endpoint = endpoint
        self.method = method
        self.http_conn_id = http_conn_id
        self.data = data
        self.json = json
        self.headers = dict(headers or {})
        self.response_check = response_check
        self.response_filter = response_filter
        self.request_timeout_s = float(request_timeout_s)
        self.request_retries = request_retries
        self.request_retry_backoff_s = float(request_retry_backoff_s)
        self.max_request_retry_backoff_s = float(max_request_retry_backoff_s)
        self.log_response = log_response
        super().__init__(**kwargs)

    def _what(self, url: str) -> str:
        return f"{self.method} {url} (connection {self.http_conn_id!r})"

    def _backoff(self, attempt: int) -> float:
        raw = min(self.max_request_retry_backoff_s, self.request_retry_backoff_s * 2 ** attempt)
        return min(self.max_request_retry_backoff_s, raw * random.uniform(1 - JITTER, 1 + JITTER))

    def _request_kwargs(self) -> dict[str, Any]:
        if self.json is not None:
            return {"json": self.json}
        if isinstance(self.data, dict):
            return {"data": self.data}
        if isinstance(self.data, str | bytes):
            return {"content": self.data}
        if self.data is not None:
            raise HttpOperatorError(
                f"task {self.task_id!r}: data must be a dict (a form), text or bytes, "
                f"not {type(self.data).__name__}"
            )
        return {}

    async def send(self, client: httpx.AsyncClient, url: str) -> httpx.Response:
        """The request, retried on 5xx, timeouts and transport errors."""
        kwargs = self._request_kwargs()
        attempts = self.request_retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await client.request(self.method, url, headers=self.headers, **kwargs)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem = f"{type(exc).__name__}: {mask(str(exc)) or 'no detail'}"
                if isinstance(exc, _NEVER_BETTER):  # asking again cannot help
                    raise HttpOperatorError(f"{self._what(url)} failed: {problem}") from None
                if last:
                    raise HttpOperatorError(
                        f"{self._what(url)} failed after {attempts} attempt(s): {problem}"
                    ) from None
            else:
                if response.status_code < 500:
                    return response
                problem = f"HTTP {response.status_code}: {excerpt(response.text)}"
                if last:
                    raise HttpOperatorError(
                        f"{self._what(url)} answered {problem} "
                        f"(after {attempts} attempt(s))"
                    )
            delay = self._backoff(attempt)
            log.warning("%s %s: %s; retry %d of %d in %.2fs", self.method, url, problem,
                        attempt + 1, self.request_retries, delay)
            await anyio.sleep(delay)
        raise AssertionError("unreachable")

    async def execute(self, context: dict[str, Any]) -> Any:
        conn = await lookup_connection(self.http_conn_id)
        url = join_url(base_url(conn), self.endpoint)
        headers = {k: v for k, v in conn.extra.items() if isinstance(v, str)}
        auth = httpx.BasicAuth(conn.login or "", conn.password or "") \
            if (conn.login or conn.password) else None
        log.info("%s %s (connection %r)", self.method, url, self.http_conn_id)
        async with httpx.AsyncClient(
            auth=auth, headers=headers, timeout=self.request_timeout_s, follow_redirects=True,
            verify=await client_ssl_context(),
        ) as client:
            response = await self.send(client, url)
        log.info("%s %s -> HTTP %d", self.method, url, response.status_code)
        if self.log_response:
            log.info("response body: %s", excerpt(response.text, 10_000))
        if 400 <= response.status_code < 500:
            raise HttpOperatorError(
                f"{self._what(url)} answered HTTP {response.status_code} "
                f"{response.reason_phrase}: {excerpt(response.text)}"
            )
        if self.response_check is not None:
            kw = context_kwargs(self.response_check, [response], {}, context)
            if not self.response_check(response, **kw):
                raise HttpOperatorError(
                    f"response_check returned False for {self.method} {url} "
                    f"(HTTP {response.status_code})"
                )
        if not self.do_xcom_push:
            return None
        if self.response_filter is not None:
            kw = context_kwargs(self.response_filter, [response], {}, context)
            return self.response_filter(response, **kw)
        return default_value(response)


def default_value(response: httpx.Response) -> Any:
    """The parsed JSON body when the answer says it is JSON, else the text."""
    content_type = response.headers.get("content-type", "")
    if "json" in content_type.split(";")[0]:
        try:
            return response.json()
        except ValueError:
            pass
    return response.text
