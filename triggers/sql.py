"""SqlTrigger: wait until a query's first cell is truthy, on SQLite or PostgreSQL.

Sharing, per `Resources` (so per triggerer process):

- one backend per DSN: for `sqlite:///path` one read-only aiosqlite connection (opened
  with `mode=ro` and `PRAGMA query_only`), for `postgresql://` one asyncpg pool whose
  sessions default to read-only transactions. A sensor observes; it never writes.
- identical queries (same DSN, SQL, parameters and listen channel) are coalesced into one
  `SharedQuery`: a single background poller runs the query once per tick and hands the
  result to every trigger waiting on it, so 10,000 sensors on one condition cost one
  query per tick. The tick starts at the smallest `poke_interval` of the waiters and
  backs off (x2, with jitter) up to their smallest `max_interval`; a trigger that joins
  gets a check within its `poke_interval` and resets the backoff.
- for PostgreSQL with `listen_channel`, one LISTEN connection per DSN shared by all
  channels and triggers (reconnecting with backoff when it is lost). A NOTIFY on a
  channel re-runs the queries that wait on it (once, however many NOTIFYs arrive while a
  check runs); between notifications only a slow safety poll (every `max_interval`) runs.
  Each reconnection re-checks every query, since notifications sent during the gap are
  lost. While the listener is down its queries fall back to polling with backoff.

Errors: a query that the database rejects (syntax, unknown table, permissions, a write
in the read-only session, wrong parameters) raises `SqlQueryError` from `run()` with the
database's message, so the triggerer fails the task with it. An unreachable database
(refused or lost connection, a missing SQLite file, a locked file, a server shutting
down) is "not yet": logged, and retried with backoff.

Connections: `conn_id` is resolved when the trigger runs, through
`current_resources().resolve_connection(conn_id)`, to a DSN URI; so a password stays out
of the trigger's kwargs. Parameters: a list binds positional placeholders (`?` on SQLite,
`$1` on PostgreSQL); a dict binds named ones (`:name` on both; on PostgreSQL a `:word` in a
literal, quoted identifier, dollar-quoted body or comment is not one: see
triggers.sql_placeholders).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import decimal
import inspect
import json
import logging
import math
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiosqlite
import anyio
import asyncpg

from triggers.base import BaseTrigger, TriggerEvent, check_kwargs, classpath_of
from triggers.conn_uri import is_secret_option, query_items
from triggers.pg_options import CONNECT_TIMEOUT_S, checked_pg_options
from triggers.shared import Resources, current_resources
from triggers.sql_placeholders import pg_named_to_positional

__all__ = [
    "DatabaseUnavailable",
    "PgListener",
    "PostgresBackend",
    "SharedQuery",
    "SqlHub",
    "SqlQueryError",
    "SqlTrigger",
    "SqliteBackend",
    "parse_dsn",
    "sql_hub",
]

log = logging.getLogger(__name__)

SQL_HUB_KEY = "triggers.sql.hub"
BACKOFF_FACTOR = 2.0
JITTER = 0.2
QUERY_TIMEOUT_S = 60.0
PG_POOL_MAX_SIZE = 10
SQLITE_BUSY_TIMEOUT_MS = 1000
LISTEN_HEALTH_CHECK_S = 30.0
LISTEN_MAX_RECONNECT_S = 30.0
APPLICATION_NAME = "aflow-triggers"
LISTEN_APPLICATION_NAME = "aflow-triggers-listen"


class SqlQueryError(Exception):
    """The database rejected the sensor's query; the message carries its error."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached now (retried with backoff, never raised from run())."""


# -- DSNs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dsn:
    kind: str  # "sqlite" | "postgresql"
    target: str  # a file path for SQLite, an asyncpg DSN for PostgreSQL
    shown: str  # for logs and errors: no password
    connect_timeout: float = CONNECT_TIMEOUT_S  # seconds; PostgreSQL only


def _pg_target(target: str) -> tuple[str, float, list[str]]:
    """A PostgreSQL DSN as asyncpg takes it, and its connection timeout; its options
    checked (triggers.pg_options), so that asyncpg never sends the server a setting it
    would refuse, and no option is lost on the way.

    - `__extra__=<JSON>` is opened into plain options: asyncpg would send it to the server
      as a setting, and the options inside it would be lost.
    - libpq's `connect_timeout` is taken out (asyncpg would send it as a setting too) and
      returned as the timeout.
    - the extras that have no effect (triggers.pg_options.PG_IGNORED_OPTIONS) are taken
      out and returned, for a warning.
    - a port with no host before it (`user@:5432/db?host=db`, as `Connection.get_uri()`
      writes a connection whose host is only in its extra) becomes the `port` option:
      asyncpg would read the empty host as the host and ignore the `host` option."""
    parts = urlsplit(target)
    options = dict(query_items(parts.query))  # a key given twice: the last one counts
    checked = checked_pg_options(options)
    query = checked.options
    userinfo, at, hostspec = parts.netloc.rpartition("@")
    if hostspec.startswith(":") and hostspec[1:].isdigit():
        parts = parts._replace(netloc=userinfo + at)
        query = [(k, v) for k, v in query if k != "port"] + [("port", hostspec[1:])]
    return urlunsplit(parts._replace(query=urlencode(query))), checked.timeout, checked.ignored


_zero_timeout_warned: set[str] = set()  # connections already warned about connect_timeout=0
_ignored_warned: set[str] = set()  # connections already warned about ignored extras


def parse_dsn(dsn: str, *, name: str | None = None) -> Dsn:
    """`sqlite:///relative/path`, `sqlite:////absolute/path`, `postgresql://...` (also
    `postgres://` and `postgresql+asyncpg://`; its options are those triggers.pg_options
    accepts, `connect_timeout=<seconds>` being the connection timeout, and
    `__extra__=<JSON object>` stands for the options in it). Raises ValueError
    otherwise, naming what is wrong.

    `connect_timeout=0` (libpq's "wait indefinitely") is read as the default, and the
    options that have no effect in aflow (triggers.pg_options.PG_IGNORED_OPTIONS) are
    dropped, each with a warning logged once per connection: `name` (e.g. "connection
    'warehouse'"), else the DSN without its password."""
    scheme, sep, rest = dsn.partition("://")
    base = scheme.split("+", 1)[0].lower()
    if not sep:
        raise ValueError(f"not a DSN (scheme://...): {_redact(dsn)!r}")
    if base == "sqlite":
        path = rest.split("?", 1)[0]
        if not path.startswith("/") or path in ("/", "/:memory:"):
            raise ValueError(
                f"SQLite DSNs name a file: sqlite:///relative/path or sqlite:////absolute/path, "
                f"got {dsn!r}"
            )
        path = path[1:]
        return Dsn("sqlite", path, f"sqlite:///{path}")
    if base in ("postgres", "postgresql"):
        try:
            target, timeout, ignored = _pg_target("postgresql://" + rest)
        except ValueError as exc:
            raise ValueError(f"{exc}, in {_redact(dsn)!r}") from None
        shown = _redact(target)
        if ignored and (name or shown) not in _ignored_warned:
            _ignored_warned.add(name or shown)
            log.warning(
                "%s: these extras have no effect in aflow and are ignored (meant for "
                "Airflow's PostgreSQL hook or libpq; asyncpg does not use them): %s",
                name or shown, ", ".join(ignored),
            )
        if timeout == 0:
            timeout = CONNECT_TIMEOUT_S
            where = name or shown
            if where not in _zero_timeout_warned:
                _zero_timeout_warned.add(where)
                log.warning(
                    "%s: connect_timeout=0 (no limit, in libpq) is read as %g s: aflow "
                    "bounds every wait; set the number of seconds to wait instead",
                    where, CONNECT_TIMEOUT_S,
                )
        return Dsn("postgresql", target, shown, timeout)
    raise ValueError(
        f"unsupported DSN scheme {scheme!r} in {_redact(dsn)!r}: use sqlite:/// or postgresql://"
    )


def _redact(dsn: str) -> str:
    """The DSN as logs and errors show it: its password, and the query options that may
    hold one (password, sslpassword, __extra__, any whose name says secret or token:
    triggers.conn_uri.is_secret_option), replaced by ***."""
    try:
        parts = urlsplit(dsn)
        items = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return "<unparseable DSN>"
    if any(is_secret_option(key) for key, _ in items):
        masked = [(k, "***" if is_secret_option(k) else v) for k, v in items]
        parts = parts._replace(query=urlencode(masked, safe="*"))
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:***@{netloc}")
    return urlunsplit(parts)


# -- backends -----------------------------------------------------------------------------------

_SQLITE_TRANSIENT = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
}


def _sqlite_transient(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _SQLITE_TRANSIENT


class SqliteBackend:
    """One read-only aiosqlite connection to one file, opened on first use and reopened
    after a transient error. Queries on it run one at a time."""

    kind = "sqlite"

    def __init__(self, dsn: Dsn) -> None:
        self.dsn = dsn
        self.path = dsn.target
        self._conn: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()
        self._functions: list[tuple[str, int, Callable[..., Any], bool]] = []

    async def create_function(
        self, name: str, num_params: int, func: Callable[..., Any], *, deterministic: bool = False
    ) -> None:
        """Register a user-defined SQL function on the shared connection (also after any
        reconnection). `func` runs in aiosqlite's worker thread."""
        async with self._lock:
            self._functions.append((name, num_params, func, deterministic))
            if self._conn is not None:
                await self._conn.create_function(name, num_params, func, deterministic=deterministic)

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(f"file:{quote(self.path)}?mode=ro", uri=True)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA query_only = ON")
            for name, num_params, func, deterministic in self._functions:
                await conn.create_function(name, num_params, func, deterministic=deterministic)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        return conn

    async def first_cell(self, sql: str, parameters: Any) -> tuple[bool, Any]:
        """(a row came back, its first cell). Raises DatabaseUnavailable or SqlQueryError."""
        params: Any = () if parameters is None else parameters
        if isinstance(params, list):
            params = tuple(params)
        async with self._lock:
            try:
                if self._conn is None:
                    self._conn = await self._connect()
                async with self._conn.execute(sql, params) as cursor:
                    row = await cursor.fetchone()
            except sqlite3.Error as exc:
                if _sqlite_transient(exc):
                    await self._drop()
                    raise DatabaseUnavailable(f"{self.dsn.shown}: {exc}") from exc
                raise SqlQueryError(
                    f"query failed on {self.dsn.shown}: {type(exc).__name__}: {exc}\n  SQL: {sql}"
                ) from exc
            except ValueError as exc:  # e.g. parameters of the wrong shape
                raise SqlQueryError(f"query failed on {self.dsn.shown}: {exc}\n  SQL: {sql}") from exc
        if row is None:
            return False, None
        return True, row[0]

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await conn.close()
                except (sqlite3.Error, ValueError):
                    pass

    async def aclose(self) -> None:
        # Shielded: Resources runs its exit callbacks inside its cancelled task group.
        with anyio.CancelScope(shield=True):
            async with self._lock:
                await self._drop()


_PG_TRANSIENT_CLASSES = {"08", "53", "57", "58"}
_PG_TRANSIENT_STATES = {"40001", "40P01"}


def _pg_transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        return "closed" in text or "closing" in text
    state = getattr(exc, "sqlstate", None) or ""
    return state[:2] in _PG_TRANSIENT_CLASSES or state in _PG_TRANSIENT_STATES


def _for_read_only_sessions(target: str) -> str:
    """asyncpg checks `target_session_attrs=read-write` by asking the new session whether
    it is read-only, and a sensor's sessions are (default_transaction_read_only), so no
    server would ever match. What such a connection asks for is the primary: ask for it."""
    parts = urlsplit(target)
    items = parse_qsl(parts.query, keep_blank_values=True)
    if ("target_session_attrs", "read-write") not in items:
        return target
    items = [(k, "primary" if (k, v) == ("target_session_attrs", "read-write") else v)
             for k, v in items]
    return urlunsplit(parts._replace(query=urlencode(items)))


class PostgresBackend:
    """One asyncpg pool per DSN (connections made on demand, sessions read-only)."""

    kind = "postgresql"

    def __init__(self, dsn: Dsn, pool: asyncpg.Pool) -> None:
        self.dsn = dsn
        self.pool = pool

    @classmethod
    async def create(cls, dsn: Dsn, *, max_size: int = PG_POOL_MAX_SIZE) -> PostgresBackend:
        pool = await asyncpg.create_pool(
            _for_read_only_sessions(dsn.target),
            min_size=0,
            max_size=max_size,
            timeout=dsn.connect_timeout,
            server_settings={
                "default_transaction_read_only": "on",
                "application_name": APPLICATION_NAME,
            },
        )
        return cls(dsn, pool)

    async def first_cell(self, sql: str, parameters: Any) -> tuple[bool, Any]:
        if isinstance(parameters, dict):
            try:
                sql_to_run, args = pg_named_to_positional(sql, parameters)
            except ValueError as exc:
                raise SqlQueryError(f"query for {self.dsn.shown}: {exc}\n  SQL: {sql}") from None
        else:
            sql_to_run, args = sql, list(parameters or [])
        try:
            async with self.pool.acquire(timeout=self.dsn.connect_timeout) as conn:
                row = await conn.fetchrow(sql_to_run, *args, timeout=QUERY_TIMEOUT_S)
        except Exception as exc:
            if _pg_transient(exc):
                raise DatabaseUnavailable(f"{self.dsn.shown}: {type(exc).__name__}: {exc}") from exc
            raise SqlQueryError(
                f"query failed on {self.dsn.shown}: {type(exc).__name__}: {exc}\n  SQL: {sql}"
            ) from exc
        if row is None:
            return False, None
        return True, row[0]

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(5):
                await self.pool.close()
                return
            self.pool.terminate()


Backend = SqliteBackend | PostgresBackend


class PgListener:
    """One LISTEN connection per PostgreSQL DSN, shared by every channel and trigger.

    A background task keeps it connected (backoff on failure, a health check every
    LISTEN_HEALTH_CHECK_S), LISTENs the channels that have subscribers and UNLISTENs the
    others. A NOTIFY pokes the queries subscribed to its channel; a (re)connection pokes
    all of them, as notifications during the gap are lost.
    """

    def __init__(self, dsn: Dsn) -> None:
        self.dsn = dsn
        self.channels: dict[str, set[SharedQuery]] = {}
        self.connected = False
        self.connections_made = 0
        self.notifications = 0
        self._listening: set[str] = set()
        self._kick = anyio.Event()  # subscriptions changed, or the connection was lost
        self._synced = anyio.Event()  # set after each sync of channels (or failed attempt)
        self._attempted = False

    async def subscribe(self, channel: str, query: SharedQuery) -> bool:
        """Add `query` to `channel`; returns once LISTEN is active (True) or the listener
        is down (False: the caller polls until a reconnection pokes it)."""
        self.channels.setdefault(channel, set()).add(query)
        self._kick.set()
        while query in self.channels.get(channel, ()):
            if channel in self._listening:
                return True
            if self._attempted and not self.connected:
                return False
            synced = self._synced
            await synced.wait()
        return False

    def unsubscribe(self, channel: str, query: SharedQuery) -> None:
        queries = self.channels.get(channel)
        if queries is None:
            return
        queries.discard(query)
        if not queries:
            del self.channels[channel]
            self._kick.set()

    def _publish_sync(self) -> None:
        self._synced.set()
        self._synced = anyio.Event()

    def _on_notify(self, _conn: Any, _pid: int, channel: str, _payload: str) -> None:
        self.notifications += 1
        for query in list(self.channels.get(channel, ())):
            query.poke()

    async def run(self) -> None:
        attempt = 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.dsn.target,
                    timeout=self.dsn.connect_timeout,
                    server_settings={"application_name": LISTEN_APPLICATION_NAME},
                )
                lost = False

                def on_lost(_conn: Any) -> None:
                    nonlocal lost
                    lost = True
                    self._kick.set()

                conn.add_termination_listener(on_lost)
                self.connected = True
                self.connections_made += 1
                if attempt:
                    log.warning("LISTEN connection to %s is back", self.dsn.shown)
                attempt = 0
                poked = False
                while not lost:
                    self._kick = anyio.Event()
                    wanted = set(self.channels)
                    for channel in sorted(wanted - self._listening):
                        await conn.add_listener(channel, self._on_notify)
                        self._listening.add(channel)
                    for channel in sorted(self._listening - wanted):
                        await conn.remove_listener(channel, self._on_notify)
                        self._listening.discard(channel)
                    self._attempted = True
                    self._publish_sync()
                    if not poked:  # what happened while we were not listening is unknown
                        poked = True
                        for queries in list(self.channels.values()):
                            for query in list(queries):
                                query.poke()
                    with anyio.move_on_after(LISTEN_HEALTH_CHECK_S) as idle:
                        await self._kick.wait()
                    if idle.cancelled_caught and not lost:
                        await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT_S)
                log.warning("LISTEN connection to %s was lost; reconnecting", self.dsn.shown)
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any failure
                level = logging.WARNING if _pg_transient(exc) else logging.ERROR
                log.log(
                    level,
                    "LISTEN connection to %s failed (%s: %s); retrying",
                    self.dsn.shown, type(exc).__name__, exc,
                )
            finally:
                self.connected = False
                self._listening = set()
                self._attempted = True
                self._publish_sync()
                if conn is not None:
                    conn.terminate()
            await anyio.sleep(_backoff(attempt, 0.5, LISTEN_MAX_RECONNECT_S))
            attempt += 1


# -- coalesced queries ------------------------------------------------------------------------


class _Waiter:
    __slots__ = ("poke_interval", "max_interval")

    def __init__(self, poke_interval: float, max_interval: float) -> None:
        self.poke_interval = poke_interval
        self.max_interval = max_interval


def _backoff(attempt: int, base: float, cap: float) -> float:
    raw = min(cap, base * BACKOFF_FACTOR ** min(attempt, 64))
    return min(cap, raw * random.uniform(1 - JITTER, 1 + JITTER))


class SharedQuery:
    """One query (DSN, SQL, parameters, channel) and the triggers waiting on it. Its
    poller runs in the Resources' task group while it has waiters, and ends after the
    first truthy result or query error, which it publishes to all of them."""

    def __init__(
        self,
        hub: SqlHub,
        key: tuple[Any, ...],
        backend: Backend,
        sql: str,
        parameters: Any,
        listener: PgListener | None,
        channel: str | None,
    ) -> None:
        self.hub = hub
        self.key = key
        self.backend = backend
        self.sql = sql
        self.parameters = parameters
        self.listener = listener
        self.channel = channel
        self.waiters: set[_Waiter] = set()
        self.executions = 0
        self._base = math.inf  # smallest poke_interval / max_interval among the waiters
        self._cap = math.inf
        self._bounds_stale = False
        # published state
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.unavailable: str | None = None
        self.changed = anyio.Event()
        # schedule
        self._step = 0
        self._last_start = -math.inf
        self._next_at = -math.inf
        self._wake = anyio.Event()
        self._scope = anyio.CancelScope()

    # -- waiters ---------------------------------------------------------------------------
    def join(self, waiter: _Waiter) -> None:
        self.waiters.add(waiter)
        self._base = min(self._base, waiter.poke_interval)
        self._cap = min(self._cap, waiter.max_interval)
        self._step = 0
        due = self._last_start + waiter.poke_interval
        if due < self._next_at:
            self._next_at = due
            self._wake.set()

    def leave(self, waiter: _Waiter) -> None:
        self.waiters.discard(waiter)
        self._bounds_stale = True
        if not self.waiters and not self.done:
            self.hub._forget(self)
            self._scope.cancel()

    def poke(self) -> None:
        """Check now (a NOTIFY arrived, or the listener reconnected)."""
        self._next_at = -math.inf
        self._wake.set()

    async def wait(self, logger: logging.Logger) -> Any:
        """Wait for the first truthy value; raise SqlQueryError if the query fails. Logs
        (in the caller's context, i.e. its task log) when the database goes away/back."""
        seen: str | None = None
        while True:
            if self.done:
                if isinstance(self.error, SqlQueryError):
                    raise SqlQueryError(str(self.error)) from self.error
                if self.error is not None:
                    raise SqlQueryError(
                        f"checking the query failed: {type(self.error).__name__}: {self.error}"
                    ) from self.error
                return self.value
            if self.unavailable != seen:
                if self.unavailable is not None:
                    logger.warning("database unreachable (%s); retrying with backoff", self.unavailable)
                else:
                    logger.info("database reachable again")
                seen = self.unavailable
            changed = self.changed
            await changed.wait()

    def _publish(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    # -- the poller ------------------------------------------------------------------------
    async def _sleep_until_due(self) -> None:
        while True:
            if self._wake.is_set():
                self._wake = anyio.Event()
            delay = self._next_at - anyio.current_time()
            if delay <= 0:
                return
            with anyio.move_on_after(delay):
                await self._wake.wait()

    def _schedule_next(self) -> None:
        """After a check: the next one is due after the (backed-off) interval, or earlier
        if a NOTIFY or a new waiter asked for one while the check ran."""
        if not self.waiters:
            return
        if self._bounds_stale:  # recomputed once per tick at most, not per leave
            self._base = min(w.poke_interval for w in self.waiters)
            self._cap = min(w.max_interval for w in self.waiters)
            self._bounds_stale = False
        base, cap = self._base, self._cap
        if self.listener is not None and self.listener.connected and self.unavailable is None:
            interval = cap * random.uniform(1 - JITTER, 1)  # safety poll; NOTIFY wakes us
        else:
            interval = _backoff(self._step, base, cap)
            self._step += 1
        self._next_at = min(self._next_at, self._last_start + interval)

    async def run(self) -> None:
        try:
            with self._scope:
                if self.listener is not None and self.channel is not None:
                    await self.listener.subscribe(self.channel, self)
                while self.waiters:
                    await self._sleep_until_due()
                    if not self.waiters:
                        break
                    self._last_start = anyio.current_time()
                    self._next_at = math.inf  # lowered by poke()/join() during the check
                    try:
                        found, value = await self.backend.first_cell(self.sql, self.parameters)
                    except DatabaseUnavailable as exc:
                        if self.unavailable is None:  # waiters hear of transitions only
                            log.warning("database unreachable: %s; retrying with backoff", exc)
                            self.unavailable = str(exc)
                            self._publish()
                        self._schedule_next()
                        continue
                    self.executions += 1
                    if self.unavailable is not None:
                        log.info("database %s reachable again", self.backend.dsn.shown)
                        self.unavailable = None
                        self._publish()
                    if found and value:
                        self._finish(value=value)
                        return
                    self._schedule_next()
        except Exception as exc:  # noqa: BLE001 - published to the waiters, never to the group
            self._finish(error=exc)
        finally:
            if not self.done and self.waiters:  # cancelled: the Resources are closing
                self._finish(error=RuntimeError("the shared trigger resources were closed"))
            self.hub._forget(self)
            if self.listener is not None and self.channel is not None:
                self.listener.unsubscribe(self.channel, self)

    def _finish(self, *, value: Any = None, error: BaseException | None = None) -> None:
        self.done = True
        self.value = value
        self.error = error
        self.hub._forget(self)
        self._publish()


class SqlHub:
    """Per-Resources registry: backends per DSN, listeners per DSN, shared queries."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.queries: dict[tuple[Any, ...], SharedQuery] = {}

    async def backend(self, dsn: Dsn) -> Backend:
        async def make(res: Resources) -> Backend:
            backend: Backend
            if dsn.kind == "sqlite":
                backend = SqliteBackend(dsn)
            else:
                backend = await PostgresBackend.create(dsn)
            res.push_async_callback(backend.aclose)
            return backend

        return await self.resources.get(("triggers.sql.backend", dsn.target, dsn.connect_timeout), make)

    async def listener(self, dsn: Dsn) -> PgListener:
        async def make(res: Resources) -> PgListener:
            listener = PgListener(dsn)
            _start_detached(res, listener.run)
            return listener

        return await self.resources.get(("triggers.sql.listener", dsn.target, dsn.connect_timeout), make)

    def join(
        self,
        backend: Backend,
        listener: PgListener | None,
        sql: str,
        parameters: Any,
        channel: str | None,
        waiter: _Waiter,
    ) -> SharedQuery:
        """Add `waiter` to the shared query (made, and its poller started, if new).
        Synchronous, so a query that is ending is never joined."""
        key = (
            backend.dsn.target,
            sql,
            json.dumps(parameters, sort_keys=True),
            channel,
        )
        query = self.queries.get(key)
        if query is None:
            query = SharedQuery(self, key, backend, sql, parameters, listener, channel)
            self.queries[key] = query
            query.join(waiter)
            _start_detached(self.resources, query.run)
        else:
            query.join(waiter)
        return query

    def _forget(self, query: SharedQuery) -> None:
        if self.queries.get(query.key) is query:
            del self.queries[query.key]

    def stats(self) -> dict[str, int]:
        return {
            "queries": len(self.queries),
            "waiters": sum(len(q.waiters) for q in self.queries.values()),
        }


def _start_detached(resources: Resources, func: Callable[[], Any]) -> None:
    """Start `func` in the Resources' task group with an empty context, so it does not
    inherit (and log into) the context of the trigger that happened to create it."""
    if resources.task_group is None:
        raise RuntimeError("trigger Resources must be entered (async with) before use")
    contextvars.Context().run(resources.task_group.start_soon, func)


async def sql_hub(resources: Resources | None = None) -> SqlHub:
    """The SqlHub of `resources` (default: the current ones)."""
    resources = resources or current_resources()

    async def make(res: Resources) -> SqlHub:
        return SqlHub(res)

    return await resources.get(SQL_HUB_KEY, make)


# -- values -----------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A database value as JSON: decimals as numbers, times as ISO text, bytes as hex."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


# -- the trigger ------------------------------------------------------------------------------


class SqlTrigger(BaseTrigger):
    """Fires `TriggerEvent({"value": first_cell})` when the first cell of the first row
    of `sql` is truthy (no row is "not yet").

    Exactly one of `dsn` and `conn_id`. With `listen_channel` (PostgreSQL only) the query
    is re-checked on each NOTIFY on that channel and otherwise every `max_interval`
    (a safety poll) instead of at `poke_interval`.
    """

    def __init__(
        self,
        sql: str,
        *,
        dsn: str | None = None,
        conn_id: str | None = None,
        parameters: list[Any] | dict[str, Any] | None = None,
        poke_interval: float = 5.0,
        max_interval: float = 60.0,
        listen_channel: str | None = None,
        after_true: bool = False,
    ) -> None:
        super().__init__()
        if (dsn is None) == (conn_id is None):
            raise ValueError("SqlTrigger needs exactly one of dsn and conn_id")
        if not isinstance(sql, str) or not sql.strip():
            raise ValueError("SqlTrigger needs a query")
        if parameters is not None and not isinstance(parameters, list | dict):
            raise ValueError("parameters must be a list, a dict or None")
        if poke_interval <= 0 or max_interval <= 0:
            raise ValueError("poke_interval and max_interval must be positive")
        if listen_channel is not None and not listen_channel:
            raise ValueError("listen_channel must be a non-empty channel name")
        if dsn is not None:
            parsed = parse_dsn(dsn)
            if listen_channel is not None and parsed.kind != "postgresql":
                raise ValueError("listen_channel needs a PostgreSQL DSN")
        self.sql = sql
        self.dsn = dsn
        self.conn_id = conn_id
        self.parameters = parameters
        self.poke_interval = float(poke_interval)
        self.max_interval = max(float(max_interval), self.poke_interval)
        self.listen_channel = listen_channel
        self.after_true = bool(after_true)
        self._membership: tuple[SharedQuery, _Waiter] | None = None
        check_kwargs(classpath_of(type(self)), self.serialize()[1])

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath_of(type(self)), {
            "sql": self.sql,
            "dsn": self.dsn,
            "conn_id": self.conn_id,
            "parameters": self.parameters,
            "poke_interval": self.poke_interval,
            "max_interval": self.max_interval,
            "listen_channel": self.listen_channel,
            **({"after_true": True} if self.after_true else {}),
        }

    def next_watch(self, payload: Any) -> BaseTrigger | None:
        """Watching an asset: the next event comes when the condition turns true again,
        i.e. after it has been seen false (`after_true`), not at every check while it
        stays true."""
        _, kwargs = self.serialize()
        kwargs["after_true"] = True
        return SqlTrigger(**kwargs)

    async def _wait_until_false(self, backend: Backend) -> None:
        """`after_true`: the condition held at the last event; wait until it no longer
        does (checked every `poke_interval`, also while the database is unreachable)."""
        while True:
            try:
                found, value = await backend.first_cell(self.sql, self.parameters)
            except DatabaseUnavailable as exc:
                self.log.warning("database unreachable (%s); retrying", exc)
            else:
                if not (found and value):
                    self.log.info("condition no longer met: waiting for it to be met again")
                    return
            await anyio.sleep(self.poke_interval)

    async def _resolve_dsn(self, resources: Resources) -> Dsn:
        if self.dsn is not None:
            return parse_dsn(self.dsn)
        assert self.conn_id is not None
        uri = resources.resolve_connection(self.conn_id)
        if inspect.isawaitable(uri):
            uri = await uri
        try:
            return parse_dsn(str(uri), name=f"connection {self.conn_id!r}")
        except ValueError as exc:
            raise ValueError(f"connection {self.conn_id!r}: {exc}") from None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        resources = current_resources()
        dsn = await self._resolve_dsn(resources)
        if self.listen_channel is not None and dsn.kind != "postgresql":
            raise ValueError("listen_channel needs a PostgreSQL database")
        hub = await sql_hub(resources)
        backend = await hub.backend(dsn)
        listener = await hub.listener(dsn) if self.listen_channel is not None else None
        if self.after_true:
            await self._wait_until_false(backend)
        waiter = _Waiter(self.poke_interval, self.max_interval)
        query = hub.join(backend, listener, self.sql, self.parameters, self.listen_channel, waiter)
        self._membership = (query, waiter)
        self.log.info(
            "waiting for a truthy first cell on %s%s",
            dsn.shown,
            f" (LISTEN {self.listen_channel})" if self.listen_channel else "",
        )
        try:
            value = await query.wait(self.log)
        finally:
            self._leave()
        self.log.info("condition met: %r", value)
        yield TriggerEvent({"value": jsonable(value)})

    def _leave(self) -> None:
        membership, self._membership = self._membership, None
        if membership is not None:
            query, waiter = membership
            query.leave(waiter)

    async def cleanup(self) -> None:
        self._leave()
