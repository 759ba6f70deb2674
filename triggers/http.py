"""HttpTrigger: wait until an HTTP endpoint answers as expected.

All HTTP triggers of a process share one `HttpPool` (one `httpx.AsyncClient` with
connection limits, made lazily per `Resources`). The pool also holds one limiter per
host (scheme, host, port) so that at most `per_host_limit` requests run against one host
at a time, however many triggers poll it: 10,000 sensors on one host queue politely
instead of hammering it. Each trigger polls with exponential backoff and jitter from
`poke_interval` up to `max_interval`; a transport error or a timeout is "not yet"
(logged), never a crash. A `Retry-After` header on a 429/503 answer is honoured (up to
`max_interval`).

Connections: `conn_id` is resolved when the trigger runs, through
`current_resources().resolve_connection(conn_id)`, to a URI such as
`https://user:password@host:port/base?X-Api-Key=...`. The user and password become HTTP
basic auth, the query parameters with text values become request headers (Airflow's
HttpHook reads a connection's extras as headers; `__extra__=<JSON>` is opened, see
triggers.conn_uri), and `endpoint` is appended to the base path. So secrets
never appear in the trigger's kwargs, hence never in the trigger row.
"""

from __future__ import annotations

import inspect
import json as jsonlib
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import anyio
import httpx

from triggers.base import BaseTrigger, TriggerEvent, check_kwargs, classpath_of
from triggers.conn_uri import query_items
from triggers.shared import Resources, current_resources

__all__ = [
    "HTTP_POOL_KEY",
    "HttpPool",
    "HttpTrigger",
    "http_pool",
    "install_http_pool",
    "parse_json_path",
    "resolve_json_path",
]

log = logging.getLogger(__name__)

HTTP_POOL_KEY = "triggers.http.pool"
DEFAULT_PER_HOST_LIMIT = 6  # what browsers allow per host
BACKOFF_FACTOR = 2.0
JITTER = 0.2  # each wait is the backed-off interval times a factor in [0.8, 1.2] (capped)
MAX_READ_BYTES = 1 << 20  # at most this much of a body is read for matching
USER_AGENT = "aflow-triggers (HttpTrigger)"


# -- the shared pool -----------------------------------------------------------------------


class _Host:
    __slots__ = ("limiter", "users")

    def __init__(self, limit: int) -> None:
        self.limiter = anyio.CapacityLimiter(limit)
        self.users = 0


@dataclass(slots=True)
class HttpAnswer:
    status: int
    headers: httpx.Headers
    text: str
    truncated: bool  # the body was longer than what was read


class HttpPool:
    """One `httpx.AsyncClient` and per-host concurrency limits, shared by all HttpTriggers
    that use the same `Resources`.

    `per_host_limit` may be changed at any time (it applies to requests not yet started).
    Cookies are never kept: triggers of different tasks must not share a session.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        max_keepalive_connections: int = 20,
        per_host_limit: int = DEFAULT_PER_HOST_LIMIT,
        trust_env: bool = True,
    ) -> None:
        if per_host_limit < 1:
            raise ValueError("per_host_limit must be at least 1")
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive_connections,
            ),
            headers={"User-Agent": USER_AGENT},
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            trust_env=trust_env,
        )
        self._per_host_limit = per_host_limit
        self._hosts: dict[str, _Host] = {}
        self.requests_sent = 0

    @property
    def per_host_limit(self) -> int:
        return self._per_host_limit

    @per_host_limit.setter
    def per_host_limit(self, value: int) -> None:
        if value < 1:
            raise ValueError("per_host_limit must be at least 1")
        self._per_host_limit = value
        for host in self._hosts.values():
            host.limiter.total_tokens = value

    def in_flight(self, host_key: str) -> int:
        """Requests running now against `host_key` ("scheme://host:port")."""
        host = self._hosts.get(host_key)
        return 0 if host is None else int(host.limiter.borrowed_tokens)

    @asynccontextmanager
    async def host_slot(self, host_key: str) -> AsyncIterator[None]:
        """Hold one of the `per_host_limit` request slots of `host_key` (FIFO)."""
        host = self._hosts.get(host_key)
        if host is None:
            host = self._hosts[host_key] = _Host(self._per_host_limit)
        host.users += 1  # counted before any await, so the entry is never dropped under us
        try:
            async with host.limiter:
                yield
        finally:
            host.users -= 1
            if host.users == 0 and self._hosts.get(host_key) is host:
                del self._hosts[host_key]

    async def fetch(
        self,
        method: str,
        url: httpx.URL,
        *,
        headers: dict[str, str] | None = None,
        auth: httpx.BasicAuth | None = None,
        content: str | None = None,
        data: dict[str, Any] | None = None,
        json: Any = None,
        timeout_s: float = 10.0,
        follow_redirects: bool = True,
        max_bytes: int = MAX_READ_BYTES,
    ) -> HttpAnswer:
        """Send one request under the host's limit and read up to `max_bytes` of the body.
        Raises httpx.RequestError (transport errors, timeouts) like httpx does."""
        async with self.host_slot(host_key(url)):
            self.requests_sent += 1
            async with self.client.stream(
                method,
                url,
                headers=headers,
                auth=auth,
                content=content,
                data=data,
                json=json,
                timeout=httpx.Timeout(timeout_s),
                follow_redirects=follow_redirects,
            ) as response:
                chunks: list[bytes] = []
                size = 0
                truncated = False
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > max_bytes:
                        truncated = True
                        break
                raw = b"".join(chunks)[:max_bytes]
                try:
                    text = raw.decode(response.charset_encoding or "utf-8", errors="replace")
                except LookupError:  # an unknown charset name
                    text = raw.decode("utf-8", errors="replace")
                return HttpAnswer(response.status_code, response.headers, text, truncated)

    async def aclose(self) -> None:
        # Shielded: Resources runs its exit callbacks inside its cancelled task group.
        with anyio.CancelScope(shield=True):
            await self.client.aclose()


def host_key(url: httpx.URL) -> str:
    """The politeness key of a URL: scheme://host:port (default ports filled in)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.scheme}://{url.host}:{port}"


async def install_http_pool(resources: Resources | None = None, **settings: Any) -> HttpPool:
    """Create the shared pool with `settings` (HttpPool's keyword arguments). Call it
    before any HttpTrigger runs on `resources`; raises RuntimeError if one already made
    the pool (change `per_host_limit` on the existing pool instead)."""
    resources = resources or current_resources()
    created = False

    async def factory(res: Resources) -> HttpPool:
        nonlocal created
        created = True
        pool = HttpPool(**settings)
        res.push_async_callback(pool.aclose)
        return pool

    pool = await resources.get(HTTP_POOL_KEY, factory)
    if not created:
        raise RuntimeError("the shared HTTP pool already exists; set its attributes instead")
    return pool


async def http_pool(resources: Resources | None = None) -> HttpPool:
    """The shared HttpPool of `resources` (default: the current ones), made on first use."""
    resources = resources or current_resources()

    async def factory(res: Resources) -> HttpPool:
        pool = HttpPool()
        res.push_async_callback(pool.aclose)
        return pool

    return await resources.get(HTTP_POOL_KEY, factory)


# -- JSON paths ------------------------------------------------------------------------------

_MISSING: Any = object()
_NAME = re.compile(r"[^.\[\]]+")
_BRACKET = re.compile(r"\[\s*(?:(-?\d+)|\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)')\s*\]")


def parse_json_path(path: str) -> list[str | int]:
    """Parse a simple path: `data.items[0].state`, `$.a.b`, `[2].name`, `a["x.y"]`.

    Names are object keys; `[n]` indexes a list (negative from the end); a bare number
    after a dot indexes a list too. Raises ValueError on a malformed path.
    """
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    tokens: list[str | int] = []
    pos = 0
    expect_name = False  # just after a '.'
    while pos < len(text):
        char = text[pos]
        if char == ".":
            if expect_name:
                raise ValueError(f"malformed JSON path {path!r}: empty name at {pos}")
            expect_name = True
            pos += 1
            continue
        if char == "[":
            match = _BRACKET.match(text, pos)
            if match is None or expect_name:
                raise ValueError(f"malformed JSON path {path!r}: bad index at {pos}")
            index, dq, sq = match.groups()
            if index is not None:
                tokens.append(int(index))
            else:
                tokens.append(re.sub(r"\\(.)", r"\1", dq if dq is not None else sq))
            pos = match.end()
            continue
        match = _NAME.match(text, pos)
        assert match is not None
        if tokens and not expect_name:
            raise ValueError(f"malformed JSON path {path!r}: missing '.' before {match[0]!r}")
        tokens.append(match[0].strip())
        pos = match.end()
        expect_name = False
    if expect_name or not tokens:
        raise ValueError(f"malformed JSON path {path!r}: it ends without a name")
    return tokens


def resolve_json_path(document: Any, tokens: list[str | int]) -> Any:
    """The value at `tokens` in `document`, or the module's _MISSING marker."""
    current = document
    for token in tokens:
        if isinstance(current, list):
            if isinstance(token, str):
                if not re.fullmatch(r"-?\d+", token):
                    return _MISSING
                token = int(token)
            if not -len(current) <= token < len(current):
                return _MISSING
            current = current[token]
        elif isinstance(current, dict):
            key = str(token)
            if key not in current:
                return _MISSING
            current = current[key]
        else:
            return _MISSING
    return current


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 equals 1.0, containers compare deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# -- helpers ----------------------------------------------------------------------------------


def backoff_interval(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """`base * 2**attempt`, capped at `cap`, with +-20% jitter (still capped)."""
    raw = min(cap, base * BACKOFF_FACTOR ** min(attempt, 64))
    return min(cap, raw * (rng or random).uniform(1 - JITTER, 1 + JITTER))


def redact_url(url: httpx.URL | str) -> str:
    """The URL without its user info, for logs and errors."""
    parsed = httpx.URL(url) if isinstance(url, str) else url
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    return str(parsed)


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _join(base: str, endpoint: str) -> str:
    if not endpoint:
        return base
    if "?" in base:
        raise ValueError("a base URL with a query string cannot take an endpoint")
    return base.rstrip("/") + "/" + endpoint.lstrip("/")


def _check_url(url: httpx.URL, what: str) -> None:
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{what}: {redact_url(url)!r} is not an http(s) URL with a host")


# -- the trigger --------------------------------------------------------------------------------


class HttpTrigger(BaseTrigger):
    """Fires `TriggerEvent({"status": int, "body": parsed JSON or text})` when the endpoint
    answers with an expected status and, if given, the JSON value at `json_path` equals
    `json_equals` (with `json_equals=None`: the path exists and is not null) and the body
    matches `body_regex` (`re.search`).

    Exactly one of `url` and `conn_id` is required. `data` is a request body (a string
    sent as is, or a dict sent as a form); `json` is a JSON body; give at most one.
    The event's body is the parsed JSON when the answer is JSON (by its content type, or
    when `json_path` was used) and at most `max_body_chars` long; otherwise the text,
    cut to `max_body_chars`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        conn_id: str | None = None,
        endpoint: str = "",
        method: str = "GET",
        headers: dict[str, str] | None = None,
        data: str | dict[str, Any] | None = None,
        json: Any = None,
        expected_status: int | list[int] = 200,
        json_path: str | None = None,
        json_equals: Any = None,
        body_regex: str | None = None,
        poke_interval: float = 5.0,
        max_interval: float = 300.0,
        timeout_s: float = 10.0,
        follow_redirects: bool = True,
        max_body_chars: int = 65536,
    ) -> None:
        super().__init__()
        if (url is None) == (conn_id is None):
            raise ValueError("HttpTrigger needs exactly one of url and conn_id")
        if data is not None and json is not None:
            raise ValueError("HttpTrigger takes at most one of data and json")
        if poke_interval <= 0 or max_interval <= 0 or timeout_s <= 0:
            raise ValueError("poke_interval, max_interval and timeout_s must be positive")
        if max_body_chars < 0:
            raise ValueError("max_body_chars must not be negative")
        if json_equals is not None and json_path is None:
            raise ValueError("json_equals needs json_path (where in the body to compare)")
        statuses = [expected_status] if isinstance(expected_status, int) else list(expected_status)
        if not statuses or not all(isinstance(s, int) and 100 <= s <= 599 for s in statuses):
            raise ValueError(f"expected_status must be HTTP status codes, got {expected_status!r}")
        self.url = url
        self.conn_id = conn_id
        self.endpoint = endpoint
        self.method = method.upper()
        self.headers = dict(headers or {})
        self.data = data
        self.json = json
        self.expected_status = expected_status
        self.json_path = json_path
        self.json_equals = json_equals
        self.body_regex = body_regex
        self.poke_interval = float(poke_interval)
        self.max_interval = max(float(max_interval), self.poke_interval)
        self.timeout_s = float(timeout_s)
        self.follow_redirects = follow_redirects
        self.max_body_chars = max_body_chars
        self._statuses = frozenset(statuses)
        self._path = parse_json_path(json_path) if json_path is not None else None
        try:
            self._regex = re.compile(body_regex) if body_regex is not None else None
        except re.error as exc:
            raise ValueError(f"body_regex {body_regex!r} is not a valid regex: {exc}") from None
        if url is not None:
            _check_url(httpx.URL(_join(url, endpoint)), "HttpTrigger url")
        check_kwargs(classpath_of(type(self)), self.serialize()[1])

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath_of(type(self)), {
            "url": self.url,
            "conn_id": self.conn_id,
            "endpoint": self.endpoint,
            "method": self.method,
            "headers": self.headers,
            "data": self.data,
            "json": self.json,
            "expected_status": self.expected_status,
            "json_path": self.json_path,
            "json_equals": self.json_equals,
            "body_regex": self.body_regex,
            "poke_interval": self.poke_interval,
            "max_interval": self.max_interval,
            "timeout_s": self.timeout_s,
            "follow_redirects": self.follow_redirects,
            "max_body_chars": self.max_body_chars,
        }

    async def _target(self, resources: Resources) -> tuple[httpx.URL, httpx.BasicAuth | None, dict[str, str]]:
        """The URL, auth and headers to send; resolves conn_id (secrets stay in memory)."""
        if self.url is not None:
            url = httpx.URL(_join(self.url, self.endpoint))
            return url, None, dict(self.headers)
        assert self.conn_id is not None
        uri = resources.resolve_connection(self.conn_id)
        if inspect.isawaitable(uri):
            uri = await uri
        conn = httpx.URL(str(uri))
        _check_url(conn, f"connection {self.conn_id!r}")
        auth = None
        if conn.username or conn.password:
            auth = httpx.BasicAuth(conn.username, conn.password)
        try:
            options = query_items(conn.query.decode())
        except ValueError as exc:
            raise ValueError(f"connection {self.conn_id!r}: {exc}") from None
        # (text options only, as HttpOperator: a number such as a timeout is no header)
        headers = {key: value for key, value in options if isinstance(value, str)}
        headers.update(self.headers)
        base = conn.copy_with(username=None, password=None, query=None, fragment=None)
        return httpx.URL(_join(str(base), self.endpoint)), auth, headers

    def _matches(self, answer: HttpAnswer) -> tuple[bool, Any, str]:
        """(condition holds, parsed JSON or _MISSING, why not)."""
        if answer.status not in self._statuses:
            return False, _MISSING, f"status {answer.status}"
        document: Any = _MISSING
        content_type = answer.headers.get("content-type", "")
        if self._path is not None or "json" in content_type.lower():
            try:
                document = jsonlib.loads(answer.text)
            except ValueError:
                document = _MISSING
        if self._path is not None:
            if document is _MISSING:
                return False, document, "the body is not JSON"
            value = resolve_json_path(document, self._path)
            if value is _MISSING or (value is None and self.json_equals is None):
                return False, document, f"nothing at {self.json_path}"
            if self.json_equals is not None and not json_equal(value, self.json_equals):
                return False, document, f"{self.json_path} is {value!r}"
        if self._regex is not None and self._regex.search(answer.text) is None:
            return False, document, "the body does not match body_regex"
        return True, document, ""

    def _event_body(self, answer: HttpAnswer, document: Any) -> Any:
        if document is not _MISSING and not answer.truncated:
            if len(answer.text) <= self.max_body_chars:
                return document
        return answer.text[: self.max_body_chars]

    async def run(self) -> AsyncIterator[TriggerEvent]:
        resources = current_resources()
        pool = await http_pool(resources)
        url, auth, headers = await self._target(resources)
        shown = redact_url(url)
        content = self.data if isinstance(self.data, str) else None
        form = self.data if isinstance(self.data, dict) else None
        attempt = 0
        last_reason = ""
        while True:
            wait_at_least = 0.0
            try:
                answer = await pool.fetch(
                    self.method,
                    url,
                    headers=headers,
                    auth=auth,
                    content=content,
                    data=form,
                    json=self.json,
                    timeout_s=self.timeout_s,
                    follow_redirects=self.follow_redirects,
                )
            except httpx.RequestError as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.log.warning("%s %s: %s; not yet, trying again", self.method, shown, reason)
                last_reason = reason
            else:
                ok, document, reason = self._matches(answer)
                if ok:
                    self.log.info("%s %s answered %s: condition met", self.method, shown, answer.status)
                    yield TriggerEvent({"status": answer.status, "body": self._event_body(answer, document)})
                    return
                if reason != last_reason:
                    self.log.info("%s %s: %s; waiting", self.method, shown, reason)
                    last_reason = reason
                if answer.status in (429, 503):
                    wait_at_least = min(self.max_interval, _retry_after_s(answer.headers.get("retry-after")) or 0.0)
            delay = max(wait_at_least, backoff_interval(attempt, self.poke_interval, self.max_interval))
            attempt += 1
            await anyio.sleep(delay if math.isfinite(delay) else self.max_interval)
