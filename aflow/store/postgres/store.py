"""PostgresStore: the store for many processes on many hosts, on asyncpg.

URL: `postgresql://user[:password]@host[:port]/database[?schema=NAME]` (see
`aflow.store.postgres.url`); `?schema=NAME` keeps aflow's tables in their own schema,
created on first open.

- A connection pool (asyncpg.create_pool; connections opened on demand and kept, with
  `pool_min_size` 0 so that no floor is restored in the background while the server is
  down); each connection starts with aflow's
  `search_path`, a `lock_timeout` and `application_name=aflow` (unless the URL names one),
  and is given back without asyncpg's reset query (see `_keep_session`).
- The high-rate writes are group-committed: one transaction per batch (a batch that
  is a single statement goes without BEGIN/COMMIT: it is its own transaction), with up to
  `write_connections` batches in flight at once on their own pooled connections, never
  two that touch the same row (commit.py). Many rows of the hot task-instance upsert go
  as one statement over arrays (unnest), not one statement per row. A batch that meets a transient failure (the
  connection lost, the server restarting, a deadlock, a lock wait beyond `lock_timeout`)
  is retried whole with backoff for up to `write_retry_s`; every op is idempotent, so a
  batch whose COMMIT was sent before the connection died may safely be applied again.
  A batch that fails otherwise is applied op by op, so only the faulty op's caller fails.
- Claims (`claim_runs`, `claim_triggers`) lock their rows with `FOR UPDATE SKIP LOCKED`:
  concurrent claimers in any number of processes never take the same row, and never
  wait on each other.
- Transactions of their own (create_run, claims, renewals) are retried with backoff for
  up to `write_retry_s` when a transient failure hit them before their COMMIT, never when
  it hit the COMMIT. Reads are retried the same way.
- An outage (the server unreachable or restarting) is logged once as a warning when it
  begins ("PostgreSQL at HOST:PORT/DB is unreachable ...") and once when an operation
  succeeds again ("reconnected to PostgreSQL at ... after N s"); single retries are
  logged at debug level.
- Migrations (migrations/NNNN_name.sql, recorded in `schema_migrations`; see migrate.py)
  run at open in one transaction under a transaction-scoped advisory lock, so processes
  opening an empty database at once migrate it exactly once. An up-to-date database is
  only read.
- Datetimes are timestamptz; JSON is text, exactly as the codec writes it (encoding.py).
- `open()` on a server that cannot be reached raises StoreUnavailable naming host, port
  and database (never the password) within about `connect_timeout_s`.
- Wake-ups across processes are LISTEN/NOTIFY (see `Store.listen`): `create_run` of an
  unowned run, `expire_leases_of` and releasing all of an owner's runs notify
  RUNS_CHANNEL, `fire_trigger` notifies TRIGGERS_FIRED_CHANNEL and `defer_ti`
  TRIGGERS_NEW_CHANNEL, each in the
  transaction of its change (PostgreSQL delivers a notification only at COMMIT, and
  merges equal ones of one transaction). Channel names carry the schema, so stores of
  different schemas in one database never wake each other. Listening uses one dedicated
  connection, opened at the first `listen`, that is pinged every `listen_ping_s` and
  re-opened with backoff when lost; `notifications_live` is False meanwhile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import operator
import os
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg

from aflow.exceptions import (
    PoolError,
    PoolNotFound,
    RunAlreadyExists,
    RunBusy,
    RunNotFound,
    StoreError,
    StoreUnavailable,
    UserAlreadyExists,
)
from aflow.states import DagRunState, TaskState
from aflow.store.asset_rows import consumed_uris, watcher_key, watcher_rows
from aflow.store.base import (
    BY_HAND_CLASSPATH,
    BY_HAND_EVENT,
    CLEARED_TI_STATES,
    Store,
    busy_message,
    held_by_live_owner,
    held_elsewhere,
)
from aflow.store.codec import json_in, json_out
from aflow.store.group_commit import Op
from aflow.store.postgres import encoding as enc
from aflow.store.postgres.commit import PipelinedCommitter
from aflow.store.postgres.migrate import migrate
from aflow.store.postgres.url import PostgresTarget, parse_postgres_url, quote_ident
from aflow.store.records import (
    DEFAULT_POOL,
    ApiTokenRecord,
    AssetEventRecord,
    AssetWatcherRecord,
    ConnectionRecord,
    DagRecord,
    DagRunRecord,
    DeadlineMissRecord,
    ImportErrorRecord,
    PoolRecord,
    ProcessRecord,
    TaskInstanceRecord,
    TaskInstanceRow,
    TriggerRecord,
    UserRecord,
    VariableRecord,
    WebSessionRecord,
    XComRecord,
)
from triggers.pg_options import PG_OPTIONS, setting_as_option

log = logging.getLogger(__name__)

_TOKEN_COLS = "token_id, token_hash, username, name, created_at, expires_at"
_MISS_COLS = ("dag_id, run_id, task_id, alert_index, deadline_at, missed_at, description, "
              "owner, alert_state, alert_error")
_MISS_KEY = "dag_id=$1 AND run_id=$2 AND task_id=$3 AND alert_index=$4"
_CONN_COLS = (
    "conn_id, conn_type, host, port, login, password_enc, schema, extra_enc, description"
)


def _run_filter(
    dag_id: str | None, states: Iterable[DagRunState] | None, logical_date: datetime | None
) -> tuple[str, list[Any]]:
    """The WHERE clause (with its leading space, or empty) of a runs query, and its params."""
    where: list[str] = []
    params: list[Any] = []
    if logical_date is not None:
        params.append(enc.aware(logical_date))
        where.append(f"logical_date=${len(params)}")
    if dag_id is not None:
        params.append(dag_id)
        where.append(f"dag_id=${len(params)}")
    if states is not None:
        params.append([DagRunState(s).value for s in states])
        where.append(f"state = ANY(${len(params)}::text[])")
    return (" WHERE " + " AND ".join(where) if where else ""), params

T = TypeVar("T")

class _ConnectionLost(Exception):
    """The connection closed under a statement, whatever error the driver raised for it."""


# Failures that are nobody's fault and pass: retried, not reported.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    _ConnectionLost,
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)
# Transient failures that mean the server cannot be reached (an outage, a restart), as
# opposed to a deadlock or a lock wait: these are logged once per outage, not per retry.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    _ConnectionLost,
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)
# Everything the driver raises for a failed statement or a broken connection.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # e.g. a statement on a connection the server cut
    OSError,
    TimeoutError,
)


_NOTIFY = "SELECT pg_notify($1, $2)"

# One statement records an asset event, queues it for every DAG that consumes its asset
# and notifies the assets channel ($9; delivered at COMMIT, equal ones merged). The source
# TI's key leads its parameters, as in every TI statement, so the group committer knows
# the rows it touches (a separate NOTIFY statement would make the op run alone).
_INSERT_ASSET_EVENT = (
    "WITH e AS (INSERT INTO asset_event (source_dag_id, source_run_id, source_task_id, "
    "source_map_index, uri, extra, source_watcher, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id, uri), "
    "q AS (INSERT INTO asset_queue (dag_id, event_id, uri) "
    "SELECT c.dag_id, e.id, e.uri FROM e JOIN asset_consumer c ON c.uri = e.uri) "
    "SELECT e.id FROM e, LATERAL (SELECT pg_notify($9, '')) AS n"
)
_ASSET_EVENT_COLS = (
    "e.id, e.uri, e.created_at, e.extra, e.source_dag_id, e.source_run_id, e.source_task_id, "
    "e.source_map_index, e.source_watcher"
)
_WATCHER_COLS = "uri, name, dag_id, classpath, initial_kwargs, kwargs, owner, id, version"
_SAME_WATCHER = (
    "asset_watcher.classpath = excluded.classpath "
    "AND asset_watcher.initial_kwargs = excluded.initial_kwargs"
)
_UPSERT_WATCHER = (
    "INSERT INTO asset_watcher (uri, name, dag_id, classpath, initial_kwargs, kwargs) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (uri, name) DO UPDATE SET "
    "dag_id = excluded.dag_id, "
    # an unchanged definition keeps its position (kwargs), owner and version
    f"kwargs = CASE WHEN {_SAME_WATCHER} THEN asset_watcher.kwargs ELSE excluded.kwargs END, "
    f"owner = CASE WHEN {_SAME_WATCHER} THEN asset_watcher.owner ELSE NULL END, "
    f"version = CASE WHEN {_SAME_WATCHER} THEN asset_watcher.version "
    "ELSE asset_watcher.version + 1 END, "
    "classpath = excluded.classpath, initial_kwargs = excluded.initial_kwargs"
)


def _asset_event_row(e: AssetEventRecord, channel: str) -> tuple[Any, ...]:
    return (
        e.source_dag_id, e.source_run_id, e.source_task_id, e.source_map_index, e.uri,
        json_out(e.extra), e.source_watcher, enc.aware(e.timestamp), channel,
    )


def _asset_event_from(r: Sequence[Any]) -> AssetEventRecord:
    return AssetEventRecord(
        id=r[0], uri=r[1], timestamp=r[2], extra=json_in(r[3]) or {},
        source_dag_id=r[4], source_run_id=r[5], source_task_id=r[6], source_map_index=r[7],
        source_watcher=r[8],
    )


def _watcher_from(r: Sequence[Any]) -> AssetWatcherRecord:
    return AssetWatcherRecord(
        uri=r[0], name=r[1], dag_id=r[2], classpath=r[3], initial_kwargs=json_in(r[4]),
        kwargs=json_in(r[5]), owner=r[6], id=r[7], version=r[8],
    )


def _asset_rows_op(dags: Sequence[DagRecord]) -> Op:
    """Statements that record what the DAGs consume and the watchers they define."""
    consumers = [(d.dag_id, uri) for d in dags for uri in consumed_uris(d.structure)]
    watchers = [row for d in dags for row in watcher_rows(d.dag_id, d.structure)]
    op: Op = [("DELETE FROM asset_consumer WHERE dag_id=$1", [(d.dag_id,) for d in dags])]
    if consumers:
        op.append((
            "INSERT INTO asset_consumer (dag_id, uri) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            consumers,
        ))
    op.append((
        "DELETE FROM asset_watcher WHERE dag_id=$1 AND NOT (uri || chr(10) || name = ANY($2::text[]))",
        [
            (d.dag_id, [watcher_key(r[0], r[1]) for r in watcher_rows(d.dag_id, d.structure)])
            for d in dags
        ],
    ))
    if watchers:
        op.append((_UPSERT_WATCHER, [(*row, row[4]) for row in watchers]))
    return op


class _Taken(Exception):
    """Rolls back a transaction whose rows another process changed first."""
_MAX_CHANNEL_BYTES = 63  # PostgreSQL's identifier length (NAMEDATALEN - 1)


def _rowcount(status: str) -> int:
    """The row count of a command status such as 'UPDATE 3'."""
    return int(status.rsplit(" ", 1)[-1])


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT_ERRORS)


def _raise_if_lost(conn: asyncpg.Connection, exc: BaseException) -> None:
    """Re-raise a failure of a connection that has closed as _ConnectionLost (transient)."""
    if _is_transient(exc):
        return
    try:
        closed = conn.is_closed()
    except asyncpg.InterfaceError:  # the pool took a closed connection back already
        closed = True
    if closed:
        raise _ConnectionLost(_reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _write_error(exc: BaseException, note: str = "") -> StoreError:
    """A failed write's StoreError, chained by hand: it is handed to the waiting callers,
    not raised here, so `raise ... from` cannot chain it."""
    err = StoreError(f"PostgreSQL write failed{note}: {_reason(exc)}")
    err.__cause__ = exc
    return err


def _merged(ops: Iterable[Op]) -> list[tuple[str, list[Sequence[Any]]]]:
    """The ops' statements in order, consecutive runs of one statement merged."""
    merged: list[tuple[str, list[Sequence[Any]]]] = []
    for op in ops:
        for sql, rows in op:
            if not rows:
                continue
            if merged and merged[-1][0] == sql:
                merged[-1][1].extend(rows)
            else:
                merged.append((sql, list(rows)))
    return merged


# The rows each hot statement touches, from its parameters (see commit.py): a task
# instance's key leads the TI statements' parameters; UPDATE_RUN ends with the run's key.
# A TI's key is a 4-tuple and a run's a 2-tuple, so the two never compare equal.
_TI_KEY = operator.itemgetter(0, 1, 2, 3)
_KEYS_OF_ROW: dict[str, Callable[[Sequence[Any]], Hashable]] = {
    enc.UPSERT_TI: _TI_KEY,
    enc.DELETE_TI_XCOMS: _TI_KEY,
    enc.INSERT_XCOM: _TI_KEY,
    enc.DELETE_TI_TRIGGER: _TI_KEY,
    enc.INSERT_TRIGGER: operator.itemgetter(4, 5, 6, 7),
    enc.UPDATE_RUN: operator.itemgetter(5, 6),
    _INSERT_ASSET_EVENT: _TI_KEY,
}


def _keys_of(op: Op) -> frozenset[Hashable] | None:
    """The rows `op` touches, or None when any row may be (it then runs alone)."""
    if len(op) == 1:  # most ops: one statement
        sql, rows = op[0]
        key_of = _KEYS_OF_ROW.get(sql)
        return None if key_of is None else frozenset(map(key_of, rows))
    keys: set[Hashable] = set()
    for sql, rows in op:
        key_of = _KEYS_OF_ROW.get(sql)
        if key_of is None:
            return None
        keys.update(map(key_of, rows))
    return frozenset(keys)


def _statements(ops: Iterable[Op]) -> list[tuple[str, Sequence[Any], bool]]:
    """What `ops` send, in order: (sql, args, many) each, where `args` are one
    statement's parameters, or with `many` the rows of an executemany. A batch's hot
    task-instance upserts go as one statement over arrays."""
    out: list[tuple[str, Sequence[Any], bool]] = []
    for sql, rows in _merged(ops):
        if sql == enc.UPSERT_TI:
            out.append((enc.UPSERT_TI_BULK, enc.bulk_ti_params(rows), False))
        elif len(rows) == 1:
            out.append((sql, rows[0], False))
        else:
            out.append((sql, rows, True))
    return out


async def _execute_ops(conn: asyncpg.Connection, ops: Iterable[Op]) -> None:
    """Apply `ops` atomically. A single statement is its own transaction: the server
    answers it only once it has committed (and, with `synchronous_commit`, flushed), as
    it would a COMMIT, so it goes without the BEGIN and COMMIT round trips. Several go in
    one transaction."""
    statements = _statements(ops)
    if len(statements) == 1 and not statements[0][2]:
        sql, args, _ = statements[0]
        await conn.execute(sql, *args)
        return
    async with conn.transaction():
        for sql, args, many in statements:
            if many:
                await conn.executemany(sql, args)
            else:
                await conn.execute(sql, *args)


def _reset_op(tis: Sequence[TaskInstanceRow]) -> Op:
    """TI rows as given, the XComs of those in state `none` (cleared: they run again)
    and the trigger rows of all of them deleted: one op."""
    keys = [(ti.dag_id, ti.run_id, ti.task_id, ti.map_index) for ti in tis]
    op: Op = [(enc.UPSERT_TI, [enc.ti_row(ti) for ti in tis])]
    cleared = [k for k, ti in zip(keys, tis, strict=True) if ti.state in CLEARED_TI_STATES]
    if cleared:
        op.append((enc.DELETE_TI_XCOMS, cleared))
    op.append((enc.DELETE_TI_TRIGGER, keys))
    return op


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset of a connection given back: nothing to undo. asyncpg's default
    sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` (a round trip per
    release, i.e. per group-commit batch); aflow never leaves anything behind on a pooled
    connection (no SET, advisory locks only transaction-scoped, no cursor outside a
    transaction, LISTEN on a connection of its own), and asyncpg still rolls back an
    open transaction before calling this."""


class PostgresStore(Store):
    def __init__(
        self,
        url: str,
        *,
        pool_min_size: int = 0,
        pool_max_size: int = 10,
        connect_timeout_s: float = 10.0,
        lock_timeout_s: float = 30.0,
        write_retry_s: float = 60.0,
        listen_ping_s: float = 10.0,
        write_connections: int = 2,
    ) -> None:
        self.url = url
        self.target: PostgresTarget = parse_postgres_url(url)
        self.schema = self.target.schema
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.connect_timeout_s = connect_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self.write_retry_s = write_retry_s
        self.listen_ping_s = listen_ping_s
        self.write_connections = write_connections
        self._pool: asyncpg.Pool | None = None
        # LISTEN: subscribers by (logical) channel, and the connection while it is up.
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}
        self._listen_conn: asyncpg.Connection | None = None
        self._listening: set[str] = set()  # channels LISTENed on _listen_conn
        self._want_listener: anyio.Event | None = None  # made in open(): needs a loop
        self._listen_scope: anyio.CancelScope | None = None
        self._committer: PipelinedCommitter | None = None
        self._stack: AsyncExitStack | None = None
        self._outage_since: float | None = None  # while the server cannot be reached

    def __repr__(self) -> str:
        return f"PostgresStore({self.target.where})"

    @property
    def client_dsn(self) -> str:
        """A DSN for other asyncpg clients of this database (e.g. a SqlTrigger on aflow's
        own tables): the URL with `schema` turned into a `search_path` server setting, and
        every other server setting the URL gives (asyncpg sends an option it does not
        know itself as one) moved into libpq's `options` as `-c name=value`, the form in
        which a trigger takes any setting (triggers.pg_options)."""
        parts = urlsplit(self.target.dsn)
        kept: list[tuple[str, str]] = []
        moved: list[str] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in PG_OPTIONS:
                kept.append((key, value))
            else:
                moved.append(setting_as_option(key, value))
        if moved:
            given = [value for key, value in kept if key == "options"]
            kept = [(k, v) for k, v in kept if k != "options"]
            kept.append(("options", " ".join([*given[-1:], *moved])))
        if self.schema is not None:
            kept.append(("search_path", quote_ident(self.schema)))
        return urlunsplit(parts._replace(query=urlencode(kept)))

    # -- lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        stack = AsyncExitStack()
        try:
            pool = await self._create_pool()
            stack.push_async_callback(self._close_pool, pool)
            self._pool = pool
            await self._migrate()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            self._pool = None
            if isinstance(exc, (*_DRIVER_ERRORS, ValueError)):
                raise StoreUnavailable(self._unavailable_message(exc)) from exc
            raise
        self._committer = PipelinedCommitter(
            self._apply_batch, _keys_of, workers=self.write_connections
        )
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._committer.run)
        self._want_listener = anyio.Event()
        if self._subscribers:
            self._want_listener.set()
        self._listen_scope = anyio.CancelScope()
        tg.start_soon(self._listen_task, self._listen_scope, self._want_listener)
        stack.callback(self._committer.close)  # on exit: drain, then the tg joins
        stack.callback(self._listen_scope.cancel)  # runs first on exit
        self._stack = stack

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
        self._pool = None

    def _unavailable_message(self, exc: BaseException) -> str:
        where = f"cannot open PostgreSQL store at {self.target.where}"
        if isinstance(exc, TimeoutError):
            return f"{where}: no answer within {self.connect_timeout_s:g}s"
        if isinstance(exc, ConnectionRefusedError):
            return f"{where}: connection refused (is the server running?)"
        return f"{where}: {self.target.scrub(_reason(exc))}"

    def _server_settings(self) -> dict[str, str]:
        settings = {"lock_timeout": str(max(1, int(self.lock_timeout_s * 1000)))}
        if "application_name" not in self.target.options:
            settings["application_name"] = "aflow"
        if self.schema is not None:
            settings["search_path"] = quote_ident(self.schema)
        return settings

    async def _create_pool(self) -> asyncpg.Pool:
        with anyio.fail_after(self.connect_timeout_s * 2):  # TLS and auth after the connect
            return await asyncpg.create_pool(
                self.target.dsn,
                min_size=min(self.pool_min_size, self.pool_max_size),
                max_size=self.pool_max_size,
                timeout=self.connect_timeout_s,
                server_settings=self._server_settings(),
                reset=_keep_session,
            )

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self.connect_timeout_s):
                await pool.close()
                return
            log.warning("PostgreSQL pool of %s did not close in time; terminated", self)
            pool.terminate()

    async def _migrate(self) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            await migrate(conn, self.schema, self.target.where)

    async def schema_version(self) -> int:
        rows = await self._read("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    # -- group commit ------------------------------------------------------------------
    async def _apply_batch(self, batch: list[Op]) -> list[BaseException | None]:
        deadline = anyio.current_time() + self.write_retry_s
        delay = 0.05
        while True:
            try:
                results = await self._apply_batch_once(batch)
            except Exception as exc:  # noqa: BLE001 - every failure is handed to the callers
                if not _is_transient(exc):
                    return [_write_error(exc)] * len(batch)
                if anyio.current_time() + delay > deadline:
                    note = f" (still failing after {self.write_retry_s:g}s of retries)"
                    return [_write_error(exc, note)] * len(batch)
                self._retrying(exc, f"write of {len(batch)} ops", delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                if self._outage_since is not None:
                    self._recovered()
                return results

    # -- outages -------------------------------------------------------------------
    def _retrying(self, exc: BaseException, what: str, delay: float) -> None:
        """Log a transient failure that is about to be retried: an unreachable server once
        per outage (a warning), each retry at debug level; a deadlock or lock wait always."""
        reason = self.target.scrub(_reason(exc))
        if not isinstance(exc, _CONNECTION_ERRORS):
            log.warning("PostgreSQL %s failed (%s); retrying in %.2fs", what, reason, delay)
            return
        if self._outage_since is None:
            self._outage_since = anyio.current_time()
            log.warning(
                "PostgreSQL at %s is unreachable (%s): retrying with backoff for up to %gs "
                "per operation; writes wait and are not lost",
                self.target.where,
                reason,
                self.write_retry_s,
            )
        log.debug("PostgreSQL %s failed (%s); retrying in %.2fs", what, reason, delay)

    def _recovered(self) -> None:
        if self._outage_since is None:
            return
        down_s = anyio.current_time() - self._outage_since
        self._outage_since = None
        log.warning("reconnected to PostgreSQL at %s after %.1fs", self.target.where, down_s)

    async def _apply_batch_once(self, batch: list[Op]) -> list[BaseException | None]:
        """One transaction for the whole batch. If it fails through an op's fault, each op
        is applied alone to find the culprit. Transient failures are raised (whole batch
        retried)."""
        assert self._pool is not None, "store is not open"
        async with self._pool.acquire(timeout=self.connect_timeout_s) as conn:
            try:
                await _execute_ops(conn, batch)
                return [None] * len(batch)
            except Exception as exc:
                _raise_if_lost(conn, exc)
                if len(batch) == 1 or _is_transient(exc):
                    raise
            results: list[BaseException | None] = []
            for op in batch:
                try:
                    await _execute_ops(conn, [op])
                    results.append(None)
                except Exception as exc:
                    _raise_if_lost(conn, exc)
                    if _is_transient(exc):
                        raise
                    results.append(_write_error(exc))
            return results

    # -- helpers -------------------------------------------------------------------
    async def _read(self, sql: str, *params: Any) -> list[Any]:
        """Rows of a query. Reads are idempotent: a lost connection or an unreachable
        server is retried with backoff for up to `write_retry_s`."""
        assert self._pool is not None, "store is not open"
        deadline = anyio.current_time() + self.write_retry_s
        delay = 0.05
        while True:
            try:
                async with self._pool.acquire(timeout=self.connect_timeout_s) as conn:
                    try:
                        rows = list(await conn.fetch(sql, *params))
                    except _DRIVER_ERRORS as exc:
                        _raise_if_lost(conn, exc)
                        raise
            except (*_DRIVER_ERRORS, _ConnectionLost) as exc:
                if not _is_transient(exc) or anyio.current_time() + delay > deadline:
                    raise StoreError(f"PostgreSQL read failed: {_reason(exc)}") from exc
                self._retrying(exc, "read", delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                if self._outage_since is not None:
                    self._recovered()
                return rows

    async def _write(self, op: Op) -> None:
        assert self._committer is not None, "store is not open"
        await self._committer.submit(op)

    async def _transaction(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn(connection)` in its own transaction on a pooled connection.

        A transient failure before the COMMIT (a lost connection, an unreachable server, a
        deadlock) rolled the transaction back, so it is retried with backoff for up to
        `write_retry_s`; one during the COMMIT is raised, since the transaction may have
        committed (a claim must not be made twice)."""
        assert self._pool is not None, "store is not open"
        deadline = anyio.current_time() + self.write_retry_s
        delay = 0.05
        while True:
            committing = False
            try:
                async with self._pool.acquire(timeout=self.connect_timeout_s) as conn:
                    try:
                        async with conn.transaction():
                            result = await fn(conn)
                            committing = True
                    except _DRIVER_ERRORS as exc:
                        _raise_if_lost(conn, exc)
                        raise
            except (*_DRIVER_ERRORS, _ConnectionLost) as exc:
                if (
                    committing
                    or not _is_transient(exc)
                    or anyio.current_time() + delay > deadline
                ):
                    raise StoreError(f"PostgreSQL write failed: {_reason(exc)}") from exc
                self._retrying(exc, "transaction", delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                if self._outage_since is not None:
                    self._recovered()
                return result

    async def _update_count(self, sql: str, *params: Any) -> int:
        async def run(conn: asyncpg.Connection) -> int:
            return _rowcount(await conn.execute(sql, *params))

        return await self._transaction(run)

    # -- DAGs ----------------------------------------------------------------------
    async def upsert_dags(self, dags: Sequence[DagRecord]) -> None:
        rows = [
            (d.dag_id, d.fileloc, json_out(d.structure), d.is_paused, enc.aware(d.updated_at))
            for d in dags
        ]
        # Triggerers are woken only when a recorded DAG defines watchers (new ones may be
        # among them), not on every periodic record of DAGs that define none.
        wake: Op = (
            [(_NOTIFY, [(self.channel_name(self.WATCHERS_CHANNEL), "")])]
            if any(d.structure.get("asset_watchers") for d in dags) else []
        )
        await self._write(
            [
                (
                    f"INSERT INTO dag ({enc.DAG_COLS}) VALUES ($1, $2, $3, $4, TRUE, $5) "
                    "ON CONFLICT (dag_id) DO UPDATE SET fileloc=excluded.fileloc, "
                    "structure=excluded.structure, is_active=TRUE, updated_at=excluded.updated_at",
                    rows,
                ),
                *_asset_rows_op(dags),
                *wake,
            ]
        )

    async def list_dags(self) -> list[DagRecord]:
        return [enc.dag_from(r) for r in await self._read(f"SELECT {enc.DAG_COLS} FROM dag ORDER BY dag_id")]

    async def get_dag(self, dag_id: str) -> DagRecord | None:
        rows = await self._read(f"SELECT {enc.DAG_COLS} FROM dag WHERE dag_id=$1", dag_id)
        return enc.dag_from(rows[0]) if rows else None

    async def set_dag_paused(self, dag_id: str, paused: bool) -> None:
        await self._write([("UPDATE dag SET is_paused=$1 WHERE dag_id=$2", [(paused, dag_id)])])

    async def deactivate_dag_ids(self, dag_ids: Iterable[str]) -> None:
        ids = sorted(set(dag_ids))
        if not ids:
            return
        await self._write(
            [
                ("UPDATE dag SET is_active = FALSE WHERE dag_id = ANY($1::text[])", [(ids,)]),
                ("DELETE FROM asset_consumer WHERE dag_id = ANY($1::text[])", [(ids,)]),
                ("DELETE FROM asset_watcher WHERE dag_id = ANY($1::text[])", [(ids,)]),
            ]
        )

    async def replace_import_errors(
        self, errors: Sequence[ImportErrorRecord], *, under: str | None = None
    ) -> None:
        rows = [(e.filename, e.message, enc.aware(e.created_at)) for e in errors]

        async def run(conn: asyncpg.Connection) -> None:
            if under is None:
                await conn.execute("DELETE FROM import_error")
            else:
                await conn.execute(
                    "DELETE FROM import_error WHERE filename = $1 OR starts_with(filename, $2)",
                    under, under.rstrip(os.sep) + os.sep,
                )
            if rows:
                await conn.executemany(
                    "INSERT INTO import_error (filename, message, created_at) VALUES ($1, $2, $3)",
                    rows,
                )

        await self._transaction(run)

    async def list_import_errors(self) -> list[ImportErrorRecord]:
        rows = await self._read(
            "SELECT filename, message, created_at FROM import_error ORDER BY filename"
        )
        return [ImportErrorRecord(r[0], r[1], r[2]) for r in rows]

    # -- runs ------------------------------------------------------------------------
    async def create_run(self, run: DagRunRecord, tis: Sequence[TaskInstanceRecord]) -> None:
        run_row = enc.run_row(run)
        ti_rows = [enc.ti_row(t) for t in tis]

        async def run_tx(conn: asyncpg.Connection) -> None:
            await conn.execute(enc.INSERT_RUN, *run_row)
            if ti_rows:
                await conn.execute(enc.UPSERT_TI_BULK, *enc.bulk_ti_params(ti_rows))
            if run.owner is None:  # a run for any scheduler: wake them at COMMIT
                await conn.execute(_NOTIFY, self.channel_name(self.RUNS_CHANNEL), "")

        try:
            await self._transaction(run_tx)
        except StoreError as exc:
            cause = exc.__cause__
            if (
                isinstance(cause, asyncpg.UniqueViolationError)
                and cause.table_name == "dag_run"
            ):
                raise RunAlreadyExists(
                    f"DAG {run.dag_id!r} already has a run {run.run_id!r}"
                ) from cause
            raise

    async def get_run(self, dag_id: str, run_id: str) -> DagRunRecord | None:
        rows = await self._read(
            f"SELECT {enc.RUN_COLS} FROM dag_run WHERE dag_id=$1 AND run_id=$2", dag_id, run_id
        )
        return enc.run_from(rows[0]) if rows else None

    async def list_runs(
        self,
        dag_id: str | None = None,
        states: Iterable[DagRunState] | None = None,
        limit: int = 100,
        offset: int = 0,
        logical_date: datetime | None = None,
    ) -> list[DagRunRecord]:
        where, params = _run_filter(dag_id, states, logical_date)
        sql = f"SELECT {enc.RUN_COLS} FROM dag_run{where}"
        params.extend([limit, offset])
        # NULLS LAST: as SQLite, which sorts NULL lowest.
        sql += (
            " ORDER BY logical_date DESC, created_at DESC NULLS LAST "
            f"LIMIT ${len(params) - 1} OFFSET ${len(params)}"
        )
        return [enc.run_from(r) for r in await self._read(sql, *params)]

    async def count_runs(
        self,
        dag_id: str | None = None,
        states: Iterable[DagRunState] | None = None,
        logical_date: datetime | None = None,
    ) -> int:
        where, params = _run_filter(dag_id, states, logical_date)
        rows = await self._read(f"SELECT COUNT(*) FROM dag_run{where}", *params)
        return int(rows[0][0])

    async def latest_run(self, dag_id: str, run_type: str | None = None) -> DagRunRecord | None:
        sql = f"SELECT {enc.RUN_COLS} FROM dag_run WHERE dag_id=$1"
        params: list[Any] = [dag_id]
        if run_type is not None:
            sql += " AND run_type=$2"
            params.append(str(run_type))
        rows = await self._read(sql + " ORDER BY logical_date DESC LIMIT 1", *params)
        return enc.run_from(rows[0]) if rows else None

    async def save_run(self, run: DagRunRecord) -> None:
        await self._write([(enc.UPDATE_RUN, [enc.run_update_row(run)])])

    async def claim_runs(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        dag_ids: Iterable[str] | None = None,
        run_id: str | None = None,
    ) -> list[DagRunRecord]:
        params: list[Any] = [enc.aware(now), limit, owner, enc.aware(lease_until)]
        dag_filter = ""
        if dag_ids is not None:
            params.append(list(dag_ids))
            dag_filter = f"AND dag_id = ANY(${len(params)}::text[]) "
        if run_id is not None:
            params.append(run_id)
            dag_filter += f"AND run_id = ${len(params)} "
        # SKIP LOCKED: rows another claimer is taking right now are left to it. A row that
        # claimer has committed meanwhile is re-checked against the WHERE clause (READ
        # COMMITTED re-evaluates updated rows), so its live lease keeps it out.
        sql = (
            "WITH picked AS ("
            "SELECT dag_id AS p_dag, run_id AS p_run FROM dag_run "
            f"WHERE {enc.UNFINISHED} AND (owner IS NULL OR lease_until IS NULL OR lease_until < $1) "
            f"{dag_filter}ORDER BY created_at NULLS FIRST LIMIT $2 FOR UPDATE SKIP LOCKED), "
            "claimed AS (UPDATE dag_run SET owner=$3, lease_until=$4 FROM picked "
            f"WHERE dag_id=p_dag AND run_id=p_run RETURNING {enc.RUN_COLS}) "
            f"SELECT {enc.RUN_COLS} FROM claimed ORDER BY created_at NULLS FIRST"
        )

        async def run_tx(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(sql, *params))

        rows = await self._transaction(run_tx)
        return [
            dataclasses.replace(enc.run_from(r), owner=owner, lease_until=lease_until) for r in rows
        ]

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        return await self._update_count(
            f"UPDATE dag_run SET lease_until=$1 WHERE owner=$2 AND {enc.UNFINISHED}",
            enc.aware(lease_until),
            owner,
        )

    async def release_runs(
        self, owner: str, run_keys: Iterable[tuple[str, str]] | None = None
    ) -> None:
        if run_keys is None:  # e.g. at shutdown: others may take them at once
            await self._write(
                [
                    ("UPDATE dag_run SET owner=NULL, lease_until=NULL WHERE owner=$1", [(owner,)]),
                    (_NOTIFY, [(self.channel_name(self.RUNS_CHANNEL), "")]),
                ]
            )
        else:
            await self._write(
                [
                    (
                        "UPDATE dag_run SET owner=NULL, lease_until=NULL "
                        "WHERE owner=$1 AND dag_id=$2 AND run_id=$3",
                        [(owner, d, r) for d, r in run_keys],
                    )
                ]
            )

    async def expire_leases_of(self, owner: str) -> int:
        channel = self.channel_name(self.RUNS_CHANNEL)

        async def run_tx(conn: asyncpg.Connection) -> int:
            n = _rowcount(await conn.execute("UPDATE dag_run SET lease_until=NULL WHERE owner=$1", owner))
            if n:
                await conn.execute(_NOTIFY, channel, "")
            return n

        return await self._transaction(run_tx)

    # -- task instances --------------------------------------------------------------
    async def get_tis(self, dag_id: str, run_id: str) -> list[TaskInstanceRecord]:
        rows = await self._read(
            f"SELECT {enc.TI_COLS} FROM task_instance WHERE dag_id=$1 AND run_id=$2 "
            "ORDER BY task_id, map_index",
            dag_id,
            run_id,
        )
        return [enc.ti_from(r) for r in rows]

    async def save_tis(self, tis: Sequence[TaskInstanceRow]) -> None:
        await self._write([(enc.UPSERT_TI, [enc.ti_row(t) for t in tis])])

    async def finish_ti(
        self,
        ti: TaskInstanceRow,
        xcoms: Sequence[XComRecord] = (),
        run: DagRunRecord | None = None,
        *,
        end_trigger: bool = False,
        asset_events: Sequence[AssetEventRecord] = (),
    ) -> None:
        op: Op = [(enc.UPSERT_TI, [enc.ti_row(ti)])]
        if xcoms:
            op.append((enc.DELETE_TI_XCOMS, [(ti.dag_id, ti.run_id, ti.task_id, ti.map_index)]))
            op.append(
                (
                    enc.INSERT_XCOM,
                    [
                        (x.dag_id, x.run_id, x.task_id, x.map_index, x.key, json_out(x.value))
                        for x in xcoms
                    ],
                )
            )
        if run is not None:
            op.append((enc.UPDATE_RUN, [enc.run_update_row(run)]))
        if end_trigger:
            key = (ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
            op.append((enc.DELETE_TI_TRIGGER, [key]))
        if asset_events:
            channel = self.channel_name(self.ASSETS_CHANNEL)
            op.append((_INSERT_ASSET_EVENT, [_asset_event_row(e, channel) for e in asset_events]))
        await self._write(op)

    async def finish_tis(
        self,
        ends: Sequence[tuple[TaskInstanceRow, Sequence[XComRecord]]],
        *,
        end_trigger: bool = False,
    ) -> None:
        # One op, so one transaction (and one upsert statement for all the TI rows), not
        # one op per TI as the base class's would be.
        if not ends:
            return
        keys = [(ti.dag_id, ti.run_id, ti.task_id, ti.map_index) for ti, _ in ends]
        op: Op = [(enc.UPSERT_TI, [enc.ti_row(ti) for ti, _ in ends])]
        with_xcoms = [(ti, xcoms) for ti, xcoms in ends if xcoms]
        if with_xcoms:
            op.append(
                (
                    enc.DELETE_TI_XCOMS,
                    [(t.dag_id, t.run_id, t.task_id, t.map_index) for t, _ in with_xcoms],
                )
            )
            op.append(
                (
                    enc.INSERT_XCOM,
                    [
                        (x.dag_id, x.run_id, x.task_id, x.map_index, x.key, json_out(x.value))
                        for _, xcoms in with_xcoms
                        for x in xcoms
                    ],
                )
            )
        if end_trigger:
            op.append((enc.DELETE_TI_TRIGGER, keys))
        await self._write(op)

    # -- runs and TIs changed by hand ---------------------------------------------------
    async def flush(self) -> None:
        await self._write([])  # answered once every op queued before it has committed

    async def reset_tis(self, tis: Sequence[TaskInstanceRow]) -> None:
        if tis:
            await self._write(_reset_op(tis))

    async def rewrite_run(
        self,
        dag_id: str,
        run_id: str,
        tis: Sequence[TaskInstanceRow],
        *,
        owner: str,
        now: datetime,
        run_state: DagRunState | None = None,
    ) -> DagRunRecord:
        op = _reset_op(tis) if tis else []
        select = f"SELECT {enc.RUN_COLS} FROM dag_run WHERE dag_id=$1 AND run_id=$2"
        channel = self.channel_name(self.RUNS_CHANNEL)

        async def run_tx(conn: asyncpg.Connection) -> DagRunRecord | None:
            # FOR UPDATE: a claim (SKIP LOCKED) passes this run by until the change commits
            row = await conn.fetchrow(select + " FOR UPDATE", dag_id, run_id)
            if row is None:
                return None
            run = enc.run_from(row)
            if held_elsewhere(run, owner, now):
                return run
            for sql, args, many in _statements([op]):
                if many:
                    await conn.executemany(sql, args)
                else:
                    await conn.execute(sql, *args)
            if run_state is DagRunState.QUEUED:
                await conn.execute(
                    "UPDATE dag_run SET state='queued', start_date=NULL, end_date=NULL, "
                    "owner=NULL, lease_until=NULL WHERE dag_id=$1 AND run_id=$2",
                    dag_id, run_id,
                )
                await conn.execute(_NOTIFY, channel, "")
            elif run_state is not None:
                await conn.execute(
                    "UPDATE dag_run SET state=$1, start_date=COALESCE(start_date, $2), "
                    "end_date=$2, owner=NULL, lease_until=NULL WHERE dag_id=$3 AND run_id=$4",
                    run_state.value, enc.aware(now), dag_id, run_id,
                )
            return enc.run_from(await conn.fetchrow(select, dag_id, run_id))

        run = await self._transaction(run_tx)
        if run is None:
            raise RunNotFound(f"DAG {dag_id!r} has no run {run_id!r}")
        if held_elsewhere(run, owner, now):
            raise RunBusy(busy_message(run))
        return run

    async def change_for_owner(
        self, dag_id: str, run_id: str, tis: Sequence[TaskInstanceRow], *, now: datetime
    ) -> DagRunRecord:
        op = _reset_op(tis) if tis else []
        at = enc.aware(now)
        events = [
            (BY_HAND_CLASSPATH, "{}", at, None, ti.dag_id, ti.run_id, ti.task_id, ti.map_index,
             ti.try_number, json_out(BY_HAND_EVENT), at)
            for ti in tis
        ]
        keys = [(ti.dag_id, ti.run_id, ti.task_id, ti.map_index) for ti in tis]
        select = f"SELECT {enc.RUN_COLS} FROM dag_run WHERE dag_id=$1 AND run_id=$2 FOR UPDATE"
        channel = self.channel_name(self.TRIGGERS_FIRED_CHANNEL)

        async def run_tx(conn: asyncpg.Connection) -> tuple[DagRunRecord | None, list[str]]:
            row = await conn.fetchrow(select, dag_id, run_id)
            if row is None:
                return None, []
            run = enc.run_from(row)
            if not held_by_live_owner(run, now):
                return run, []
            busy = []
            for key in keys:
                state = await conn.fetchval(
                    "SELECT state FROM task_instance WHERE dag_id=$1 AND run_id=$2 "
                    "AND task_id=$3 AND map_index=$4", *key)
                if state is None or not TaskState(state).finished:
                    busy.append(f"{key[2]} ({state or 'none'})")
            if busy:
                return run, busy
            for sql, args, many in _statements([op]):
                if many:
                    await conn.executemany(sql, args)
                else:
                    await conn.execute(sql, *args)
            await conn.executemany(
                "INSERT INTO trigger (classpath, kwargs, created_at, timeout_at, dag_id, run_id, "
                "task_id, map_index, try_number, event, fired_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                events,
            )
            await conn.execute(_NOTIFY, channel, "")
            return run, []

        run, busy = await self._transaction(run_tx)
        if run is None:
            raise RunNotFound(f"DAG {dag_id!r} has no run {run_id!r}")
        if busy:
            raise RunBusy(
                f"cannot change task instances of run {run_id!r} of DAG {dag_id!r} that have "
                f"not ended: {', '.join(busy)}"
            )
        return run

    async def end_run(self, run: DagRunRecord) -> DagRunRecord:
        key = (run.dag_id, run.run_id)
        update = enc.run_update_row(run)
        select = f"SELECT {enc.RUN_COLS} FROM dag_run WHERE dag_id=$1 AND run_id=$2"
        channel = self.channel_name(self.RUNS_CHANNEL)

        async def run_tx(conn: asyncpg.Connection) -> DagRunRecord | None:
            # FOR UPDATE: a change for the owner (change_for_owner) waits for this, or
            # this for it, so it either sees the run ended or leaves its rows first
            if await conn.fetchrow(select + " FOR UPDATE", *key) is None:
                return None
            deleted = await conn.fetch(
                "DELETE FROM trigger WHERE dag_id=$1 AND run_id=$2 AND classpath=$3 "
                "RETURNING id", *key, BY_HAND_CLASSPATH,
            )
            if not deleted:
                await conn.execute(enc.UPDATE_RUN, *update)
            else:
                await conn.execute(
                    "UPDATE dag_run SET state='queued', start_date=NULL, end_date=NULL, "
                    "owner=NULL, lease_until=NULL WHERE dag_id=$1 AND run_id=$2", *key,
                )
                await conn.execute(_NOTIFY, channel, "")
            return enc.run_from(await conn.fetchrow(select, *key))

        after = await self._transaction(run_tx)
        if after is None:
            raise RunNotFound(f"DAG {run.dag_id!r} has no run {run.run_id!r}")
        return after

    # -- XCom -------------------------------------------------------------------------
    async def get_xcoms(
        self, dag_id: str, run_id: str, task_id: str | None = None
    ) -> list[XComRecord]:
        sql = (
            "SELECT dag_id, run_id, task_id, key, value, map_index FROM xcom "
            "WHERE dag_id=$1 AND run_id=$2"
        )
        params: list[Any] = [dag_id, run_id]
        if task_id is not None:
            sql += " AND task_id=$3"
            params.append(task_id)
        rows = await self._read(sql + " ORDER BY task_id, map_index, key", *params)
        return [XComRecord(r[0], r[1], r[2], r[3], json_in(r[4]), r[5]) for r in rows]

    # -- triggers -------------------------------------------------------------------------
    async def defer_ti(self, ti: TaskInstanceRow, trigger: TriggerRecord) -> None:
        key = (ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        row = (
            trigger.classpath,
            json_out(trigger.kwargs),
            enc.aware(trigger.created_at),
            enc.aware(trigger.timeout_at),
            trigger.dag_id,
            trigger.run_id,
            trigger.task_id,
            trigger.map_index,
            trigger.try_number,
        )
        await self._write(
            [
                (enc.UPSERT_TI, [enc.ti_row(ti)]),
                (enc.DELETE_TI_TRIGGER, [key]),
                (enc.INSERT_TRIGGER, [row]),
                (_NOTIFY, [(self.channel_name(self.TRIGGERS_NEW_CHANNEL), "")]),
            ]
        )

    async def claim_triggers(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[TriggerRecord]:
        # Unowned rows and rows of owners whose lease expired, never the claimer's own.
        # SKIP LOCKED leaves rows another claimer is taking to it; one it has committed
        # meanwhile is re-checked and fails the owner test.
        claim = (
            "WITH expired AS (SELECT owner AS e_owner FROM trigger_lease "
            "WHERE lease_until < $1 AND owner <> $3), "
            "picked AS (SELECT id AS p_id FROM trigger WHERE fired_at IS NULL "
            "AND (owner IS NULL OR owner IN (SELECT e_owner FROM expired)) "
            "ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) "
            "UPDATE trigger SET owner=$3 FROM picked WHERE id=p_id RETURNING id"
        )
        params = (enc.aware(now), limit, owner)
        until = enc.aware(lease_until)

        async def run_tx(conn: asyncpg.Connection) -> list[Any]:
            ids = [r[0] for r in await conn.fetch(claim, *params)]
            if ids:
                await conn.execute(
                    "INSERT INTO trigger_lease (owner, lease_until) VALUES ($1, $2) "
                    "ON CONFLICT (owner) DO UPDATE SET lease_until = excluded.lease_until",
                    owner,
                    until,
                )
            # Dead owners left with nothing (no trigger, no asset watcher): their lease row
            # goes. (One that still owns something keeps it: that is how claimers know it
            # is dead.)
            await conn.execute(
                "DELETE FROM trigger_lease l WHERE l.lease_until < $1 AND l.owner <> $2 "
                "AND NOT EXISTS (SELECT 1 FROM trigger t "
                "WHERE t.fired_at IS NULL AND t.owner = l.owner) "
                "AND NOT EXISTS (SELECT 1 FROM asset_watcher w WHERE w.owner = l.owner)",
                params[0],
                owner,
            )
            if not ids:
                return []
            return list(
                await conn.fetch(
                    f"SELECT {enc.TRIGGER_COLS} FROM trigger WHERE id = ANY($1::bigint[]) "
                    "ORDER BY id",
                    ids,
                )
            )

        rows = await self._transaction(run_tx)
        return [
            dataclasses.replace(enc.trigger_from(r), owner=owner, lease_until=lease_until)
            for r in rows
        ]

    async def renew_trigger_leases(self, owner: str, lease_until: datetime) -> int:
        until = enc.aware(lease_until)

        async def run_tx(conn: asyncpg.Connection) -> int:
            await conn.execute(
                "UPDATE trigger_lease SET lease_until=$1 WHERE owner=$2", until, owner
            )
            return int(
                await conn.fetchval(
                    "SELECT COUNT(*) FROM trigger WHERE fired_at IS NULL AND owner=$1", owner
                )
            )

        return await self._transaction(run_tx)

    async def release_triggers(self, owner: str, trigger_ids: Iterable[int] | None = None) -> None:
        if trigger_ids is None:
            await self._write(
                [
                    ("UPDATE trigger SET owner=NULL WHERE owner=$1", [(owner,)]),
                    ("UPDATE asset_watcher SET owner=NULL WHERE owner=$1", [(owner,)]),
                    ("DELETE FROM trigger_lease WHERE owner=$1", [(owner,)]),
                ]
            )
        else:
            await self._write(
                [
                    (
                        "UPDATE trigger SET owner=NULL WHERE owner=$1 AND id=$2",
                        [(owner, i) for i in trigger_ids],
                    )
                ]
            )

    async def fire_trigger(self, trigger_id: int, event: dict[str, Any], now: datetime) -> None:
        await self._write(
            [
                (
                    "UPDATE trigger SET event=$1, fired_at=$2, owner=NULL "
                    "WHERE id=$3 AND fired_at IS NULL",
                    [(json_out(event), enc.aware(now), trigger_id)],
                ),
                (_NOTIFY, [(self.channel_name(self.TRIGGERS_FIRED_CHANNEL), "")]),
            ]
        )

    async def fired_triggers(self, run_keys: Iterable[tuple[str, str]]) -> list[TriggerRecord]:
        keys = list(run_keys)
        if not keys:
            return []
        rows = await self._read(
            f"SELECT {enc.TRIGGER_COLS} FROM trigger WHERE fired_at IS NOT NULL AND "
            "(dag_id, run_id) IN (SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY id",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return [enc.trigger_from(r) for r in rows]

    async def get_trigger(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> TriggerRecord | None:
        rows = await self._read(
            f"SELECT {enc.TRIGGER_COLS} FROM trigger WHERE dag_id=$1 AND run_id=$2 AND task_id=$3 "
            "AND map_index=$4",
            dag_id,
            run_id,
            task_id,
            map_index,
        )
        return enc.trigger_from(rows[0]) if rows else None

    async def delete_trigger(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> None:
        await self._write([(enc.DELETE_TI_TRIGGER, [(dag_id, run_id, task_id, map_index)])])

    async def delete_triggers(self, trigger_ids: Iterable[int]) -> None:
        ids = [(i,) for i in trigger_ids]
        if ids:
            await self._write([("DELETE FROM trigger WHERE id=$1", ids)])

    async def list_triggers(self) -> list[TriggerRecord]:
        rows = await self._read(f"SELECT {enc.TRIGGER_COLS} FROM trigger ORDER BY id")
        return [enc.trigger_from(r) for r in rows]

    # -- pools ---------------------------------------------------------------------------
    async def list_pools(self) -> list[PoolRecord]:
        rows = await self._read(
            "SELECT name, slots, description, include_deferred FROM pool ORDER BY name"
        )
        return [PoolRecord(r[0], int(r[1]), r[2], bool(r[3])) for r in rows]

    async def get_pool(self, name: str) -> PoolRecord | None:
        rows = await self._read(
            "SELECT name, slots, description, include_deferred FROM pool WHERE name=$1", name
        )
        return PoolRecord(rows[0][0], int(rows[0][1]), rows[0][2], bool(rows[0][3])) if rows else None

    async def set_pool(self, pool: PoolRecord) -> None:
        channel = self.channel_name(self.POOLS_CHANNEL)

        async def run_tx(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO pool (name, slots, description, include_deferred) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET slots=excluded.slots, "
                "description=excluded.description, include_deferred=excluded.include_deferred",
                pool.name, pool.slots, pool.description, pool.include_deferred,
            )
            await conn.execute(_NOTIFY, channel, pool.name)

        await self._transaction(run_tx)

    async def delete_pool(self, name: str) -> None:
        if name == DEFAULT_POOL:
            raise PoolError(f"{DEFAULT_POOL} cannot be deleted (set its slots instead)")
        channel = self.channel_name(self.POOLS_CHANNEL)
        busy = list(self.POOL_BUSY_STATES)

        async def run_tx(conn: asyncpg.Connection) -> str | None:
            # the row lock makes a concurrent `set` of this pool wait for the outcome
            if await conn.fetchval("SELECT 1 FROM pool WHERE name=$1 FOR UPDATE", name) is None:
                return "missing"
            n = await conn.fetchval(
                "SELECT COUNT(*) FROM task_instance WHERE pool=$1 AND state = ANY($2::text[])",
                name, busy,
            )
            if n:
                return f"{n}"
            await conn.execute("DELETE FROM pool WHERE name=$1", name)
            await conn.execute(_NOTIFY, channel, name)
            return None

        refused = await self._transaction(run_tx)
        if refused == "missing":
            raise PoolNotFound(f"no pool {name!r}")
        if refused is not None:
            raise PoolError(
                f"pool {name!r} has {refused} task instance(s) queued, running or deferred in it; "
                "delete it once they have ended"
            )

    async def pool_usage(self) -> dict[str, dict[str, int]]:
        rows = await self._read(
            "SELECT pool, state, COUNT(*) FROM task_instance WHERE state = ANY($1::text[]) "
            "GROUP BY pool, state",
            list(self.POOL_BUSY_STATES),
        )
        out: dict[str, dict[str, int]] = {}
        for pool, state, n in rows:
            out.setdefault(pool, {})[state] = int(n)
        return out

    # -- webhook events ------------------------------------------------------------------
    async def deliver_webhook(self, key: str, payload: Any, now: datetime) -> int:
        body, at = json_out(payload), enc.aware(now)

        async def run(conn: asyncpg.Connection) -> int:
            return int(
                await conn.fetchval(
                    "INSERT INTO webhook_event (key, payload, created_at) VALUES ($1, $2, $3) "
                    "RETURNING id",
                    key,
                    body,
                    at,
                )
            )

        return await self._transaction(run)

    async def first_webhook(self, key: str, after_id: int = 0) -> tuple[int, Any] | None:
        rows = await self._read(
            "SELECT id, payload FROM webhook_event WHERE key=$1 AND id>$2 ORDER BY id LIMIT 1",
            key,
            after_id,
        )
        return (int(rows[0][0]), json_in(rows[0][1])) if rows else None

    # -- assets --------------------------------------------------------------------------
    async def record_asset_events(self, events: Sequence[AssetEventRecord]) -> list[int]:
        channel = self.channel_name(self.ASSETS_CHANNEL)
        rows = [_asset_event_row(e, channel) for e in events]

        async def run_tx(conn: asyncpg.Connection) -> list[int]:
            return [int(await conn.fetchval(_INSERT_ASSET_EVENT, *row)) for row in rows]

        return await self._transaction(run_tx)

    async def list_asset_events(
        self, uri: str | None = None, limit: int = 100
    ) -> list[AssetEventRecord]:
        if uri is None:
            rows = await self._read(
                f"SELECT {_ASSET_EVENT_COLS} FROM asset_event e ORDER BY e.id DESC LIMIT $1", limit
            )
        else:
            rows = await self._read(
                f"SELECT {_ASSET_EVENT_COLS} FROM asset_event e WHERE e.uri=$1 "
                "ORDER BY e.id DESC LIMIT $2",
                uri,
                limit,
            )
        return [_asset_event_from(r) for r in rows]

    async def queued_asset_events(
        self, dag_ids: Iterable[str] | None = None
    ) -> dict[str, list[AssetEventRecord]]:
        sql = (
            f"SELECT q.dag_id, {_ASSET_EVENT_COLS} FROM asset_queue q "
            "JOIN asset_event e ON e.id = q.event_id WHERE q.run_id IS NULL"
        )
        params: list[Any] = []
        if dag_ids is not None:
            sql += " AND q.dag_id = ANY($1::text[])"
            params.append(sorted(dag_ids))
        out: dict[str, list[AssetEventRecord]] = {}
        for r in await self._read(sql + " ORDER BY q.dag_id, e.id", *params):
            out.setdefault(r[0], []).append(_asset_event_from(list(r)[1:]))
        return out

    async def create_asset_run(self, run: DagRunRecord, event_ids: Sequence[int]) -> bool:
        run_row = enc.run_row(run)
        ids = list(event_ids)
        runs_channel = self.channel_name(self.RUNS_CHANNEL)

        async def run_tx(conn: asyncpg.Connection) -> None:
            # Row locks: a second consumer of the same rows waits for the first one's
            # COMMIT, then finds them consumed (run_id set) and updates fewer.
            n = _rowcount(
                await conn.execute(
                    "UPDATE asset_queue SET run_id=$1 WHERE dag_id=$2 "
                    "AND event_id = ANY($3::bigint[]) AND run_id IS NULL",
                    run.run_id,
                    run.dag_id,
                    ids,
                )
            )
            if n != len(set(ids)):
                raise _Taken
            await conn.execute(enc.INSERT_RUN, *run_row)
            if run.owner is None:
                await conn.execute(_NOTIFY, runs_channel, "")

        try:
            await self._transaction(run_tx)
        except _Taken:
            return False
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, asyncpg.UniqueViolationError) and cause.table_name == "dag_run":
                raise RunAlreadyExists(
                    f"DAG {run.dag_id!r} already has a run {run.run_id!r}"
                ) from cause
            raise
        return True

    async def asset_events_of_run(self, dag_id: str, run_id: str) -> list[AssetEventRecord]:
        rows = await self._read(
            f"SELECT {_ASSET_EVENT_COLS} FROM asset_queue q JOIN asset_event e "
            "ON e.id = q.event_id WHERE q.dag_id=$1 AND q.run_id=$2 ORDER BY e.id",
            dag_id,
            run_id,
        )
        return [_asset_event_from(r) for r in rows]

    async def list_asset_watchers(self) -> list[AssetWatcherRecord]:
        rows = await self._read(f"SELECT {_WATCHER_COLS} FROM asset_watcher ORDER BY id")
        return [_watcher_from(r) for r in rows]

    async def claim_asset_watchers(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[AssetWatcherRecord]:
        # Unowned watchers and those of owners whose lease row has EXPIRED, as for trigger
        # rows: an owner must be known dead, not merely have no lease this snapshot sees
        # (a claimer that committed after this snapshot was taken has a lease row it cannot
        # see; SKIP LOCKED then re-checks the row, which must fail the owner test).
        expired = ("expired AS (SELECT owner AS e_owner FROM trigger_lease "
                   "WHERE lease_until < $1 AND owner <> $3)")
        claimable = (
            "SELECT id AS p_id FROM asset_watcher WHERE kwargs IS NOT NULL "
            "AND (owner IS NULL OR owner IN (SELECT e_owner FROM expired)) ORDER BY id LIMIT $2"
        )
        # A read first (as the SQLite store does): most passes find nothing to claim and
        # then open no write transaction.
        if not await self._read(f"WITH {expired} {claimable}", enc.aware(now), 1, owner):
            return []
        claim = (
            f"WITH {expired}, picked AS ({claimable} FOR UPDATE SKIP LOCKED) "
            f"UPDATE asset_watcher SET owner=$3 FROM picked WHERE id=p_id RETURNING {_WATCHER_COLS}"
        )
        params = (enc.aware(now), limit, owner)
        until = enc.aware(lease_until)

        async def run_tx(conn: asyncpg.Connection) -> list[Any]:
            rows = list(await conn.fetch(claim, *params))
            if rows:
                await conn.execute(
                    "INSERT INTO trigger_lease (owner, lease_until) VALUES ($1, $2) "
                    "ON CONFLICT (owner) DO UPDATE SET lease_until = excluded.lease_until",
                    owner,
                    until,
                )
            return rows

        rows = await self._transaction(run_tx)
        return sorted((_watcher_from(r) for r in rows), key=lambda w: w.id or 0)

    async def owned_asset_watchers(self, owner: str) -> dict[int, int]:
        rows = await self._read(
            "SELECT id, version FROM asset_watcher WHERE owner=$1 AND kwargs IS NOT NULL", owner
        )
        return {int(r[0]): int(r[1]) for r in rows}

    async def fire_asset_watcher(
        self,
        watcher: AssetWatcherRecord,
        version: int,
        event: AssetEventRecord,
        next_kwargs: dict[str, Any] | None,
    ) -> bool:
        row = _asset_event_row(event, self.channel_name(self.ASSETS_CHANNEL))
        after = None if next_kwargs is None else json_out(next_kwargs)

        async def run_tx(conn: asyncpg.Connection) -> bool:
            n = _rowcount(
                await conn.execute(
                    "UPDATE asset_watcher SET kwargs=$1 WHERE id=$2 AND version=$3 AND owner=$4",
                    after,
                    watcher.id,
                    version,
                    watcher.owner,
                )
            )
            if n == 0:
                return False
            await conn.fetchval(_INSERT_ASSET_EVENT, *row)
            return True

        return await self._transaction(run_tx)

    # -- users, API tokens, UI sessions -------------------------------------------------
    async def create_user(self, user: UserRecord) -> None:
        async def tx(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO app_user (username, password_hash, role, created_at) "
                "VALUES ($1, $2, $3, $4)",
                user.username, user.password_hash, user.role, enc.aware(user.created_at),
            )

        try:
            await self._transaction(tx)
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                raise UserAlreadyExists(f"a user {user.username!r} exists already") from None
            raise

    async def get_user(self, username: str) -> UserRecord | None:
        rows = await self._read(
            "SELECT username, password_hash, role, created_at FROM app_user WHERE username=$1",
            username,
        )
        return UserRecord(*rows[0]) if rows else None

    async def list_users(self) -> list[UserRecord]:
        rows = await self._read(
            "SELECT username, password_hash, role, created_at FROM app_user ORDER BY username"
        )
        return [UserRecord(*r) for r in rows]

    async def delete_user(self, username: str) -> bool:
        async def tx(conn: asyncpg.Connection) -> bool:
            await conn.execute("DELETE FROM api_token WHERE username=$1", username)
            await conn.execute("DELETE FROM web_session WHERE username=$1", username)
            status = await conn.execute("DELETE FROM app_user WHERE username=$1", username)
            return bool(status != "DELETE 0")

        return await self._transaction(tx)

    async def create_api_token(self, token: ApiTokenRecord) -> None:
        async def tx(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"INSERT INTO api_token ({_TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6)",
                token.token_id, token.token_hash, token.username, token.name,
                enc.aware(token.created_at),
                enc.aware(token.expires_at) if token.expires_at else None,
            )

        await self._transaction(tx)

    async def get_api_token(self, token_hash: str) -> ApiTokenRecord | None:
        rows = await self._read(
            f"SELECT {_TOKEN_COLS} FROM api_token WHERE token_hash=$1", token_hash
        )
        return ApiTokenRecord(*rows[0]) if rows else None

    async def list_api_tokens(self, username: str | None = None) -> list[ApiTokenRecord]:
        if username is None:
            rows = await self._read(f"SELECT {_TOKEN_COLS} FROM api_token ORDER BY created_at")
        else:
            rows = await self._read(
                f"SELECT {_TOKEN_COLS} FROM api_token WHERE username=$1 ORDER BY created_at",
                username,
            )
        return [ApiTokenRecord(*r) for r in rows]

    async def revoke_api_token(self, token_id: str) -> bool:
        async def tx(conn: asyncpg.Connection) -> bool:
            status = await conn.execute("DELETE FROM api_token WHERE token_id=$1", token_id)
            return bool(status != "DELETE 0")

        return await self._transaction(tx)

    async def create_web_session(self, session: WebSessionRecord, now: datetime) -> None:
        async def tx(conn: asyncpg.Connection) -> None:
            await conn.execute("DELETE FROM web_session WHERE expires_at < $1", enc.aware(now))
            await conn.execute(
                "INSERT INTO web_session (session_hash, username, created_at, expires_at) "
                "VALUES ($1, $2, $3, $4)",
                session.session_hash, session.username, enc.aware(session.created_at),
                enc.aware(session.expires_at),
            )

        await self._transaction(tx)

    async def get_web_session(self, session_hash: str) -> WebSessionRecord | None:
        rows = await self._read(
            "SELECT session_hash, username, created_at, expires_at FROM web_session "
            "WHERE session_hash=$1",
            session_hash,
        )
        return WebSessionRecord(*rows[0]) if rows else None

    async def delete_web_session(self, session_hash: str) -> None:
        async def tx(conn: asyncpg.Connection) -> None:
            await conn.execute("DELETE FROM web_session WHERE session_hash=$1", session_hash)

        await self._transaction(tx)

    # -- Variables and Connections ------------------------------------------------------
    async def get_variable(self, key: str) -> VariableRecord | None:
        rows = await self._read("SELECT key, value, description FROM variable WHERE key=$1", key)
        return VariableRecord(*rows[0]) if rows else None

    async def list_variables(self) -> list[VariableRecord]:
        rows = await self._read("SELECT key, value, description FROM variable ORDER BY key")
        return [VariableRecord(*r) for r in rows]

    async def set_variables(self, variables: Sequence[VariableRecord]) -> None:
        async def tx(conn: asyncpg.Connection) -> None:
            await conn.executemany(
                "INSERT INTO variable (key, value, description) VALUES ($1, $2, $3) "
                "ON CONFLICT (key) DO UPDATE SET value=excluded.value, "
                "description=excluded.description",
                [(v.key, v.value, v.description) for v in variables],
            )

        await self._transaction(tx)

    async def delete_variable(self, key: str) -> bool:
        async def tx(conn: asyncpg.Connection) -> bool:
            return bool(await conn.execute("DELETE FROM variable WHERE key=$1", key) != "DELETE 0")

        return await self._transaction(tx)

    async def get_connection(self, conn_id: str) -> ConnectionRecord | None:
        rows = await self._read(f"SELECT {_CONN_COLS} FROM connection WHERE conn_id=$1", conn_id)
        return ConnectionRecord(*rows[0]) if rows else None

    async def list_connections(self) -> list[ConnectionRecord]:
        rows = await self._read(f"SELECT {_CONN_COLS} FROM connection ORDER BY conn_id")
        return [ConnectionRecord(*r) for r in rows]

    async def set_connection(self, connection: ConnectionRecord) -> None:
        c = connection

        async def tx(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"INSERT INTO connection ({_CONN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                " ON CONFLICT (conn_id) DO UPDATE SET conn_type=excluded.conn_type,"
                " host=excluded.host, port=excluded.port, login=excluded.login,"
                " password_enc=excluded.password_enc, schema=excluded.schema,"
                " extra_enc=excluded.extra_enc, description=excluded.description",
                c.conn_id, c.conn_type, c.host, c.port, c.login, c.password_enc, c.schema,
                c.extra_enc, c.description,
            )

        await self._transaction(tx)

    async def delete_connection(self, conn_id: str) -> bool:
        async def tx(conn: asyncpg.Connection) -> bool:
            status = await conn.execute("DELETE FROM connection WHERE conn_id=$1", conn_id)
            return bool(status != "DELETE 0")

        return await self._transaction(tx)

    # -- deadline misses ----------------------------------------------------------------
    async def record_deadline_miss(self, miss: DeadlineMissRecord) -> bool:
        m = miss

        async def tx(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(
                f"INSERT INTO deadline_miss ({_MISS_COLS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
                m.dag_id, m.run_id, m.task_id or "", m.alert_index, enc.aware(m.deadline_at),
                enc.aware(m.missed_at), m.description, m.owner, m.alert_state, m.alert_error,
            )
            if status == "INSERT 0 1":
                return True
            if m.owner is None:
                return False
            # This very record, committed by an earlier attempt whose answer was lost (a
            # connection lost during the COMMIT)?
            return await conn.fetchval(
                f"SELECT true FROM deadline_miss WHERE {_MISS_KEY} "
                "AND owner=$5 AND missed_at=$6 AND alert_state=$7",
                m.dag_id, m.run_id, m.task_id or "", m.alert_index, m.owner,
                enc.aware(m.missed_at), m.alert_state,
            ) is not None

        return await self._transaction(tx)

    async def claim_deadline_alert(
        self, dag_id: str, run_id: str, task_id: str | None, alert_index: int, owner: str,
    ) -> DeadlineMissRecord | None:
        key = (dag_id, run_id, task_id or "", alert_index)
        select = f"SELECT {_MISS_COLS} FROM deadline_miss WHERE {_MISS_KEY}"
        rows = await self._read(select, *key)
        if not rows:
            return None
        found = _miss_from(rows[0])
        if found.alert_state != "sending" or found.owner == owner:
            return found

        async def tx(conn: asyncpg.Connection) -> DeadlineMissRecord | None:
            # Only while unsent, still the owner read above's, and the run is `owner`'s:
            # a process that stalled past its lease cannot take the alert from the one
            # that adopted its run (nor it back). Of claimers racing on one read, the
            # first to update wins; the others, once its commit frees the row, find
            # another owner (READ COMMITTED re-checks the row as committed).
            status = await conn.execute(
                f"UPDATE deadline_miss SET owner=$5 WHERE {_MISS_KEY} "
                "AND alert_state='sending' AND owner IS NOT DISTINCT FROM $6 AND EXISTS "
                "(SELECT 1 FROM dag_run r WHERE r.dag_id=$1 AND r.run_id=$2 AND r.owner=$5)",
                *key, owner, found.owner,
            )
            if status == "UPDATE 1":
                return dataclasses.replace(found, owner=owner)
            row = await conn.fetchrow(select, *key)
            return None if row is None else _miss_from(row)

        return await self._transaction(tx)

    async def set_deadline_alert_state(
        self, dag_id: str, run_id: str, task_id: str | None, alert_index: int,
        state: str, error: str | None = None, *, owner: str | None = None,
    ) -> bool:
        async def tx(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(
                f"UPDATE deadline_miss SET alert_state=$5, alert_error=$6 WHERE {_MISS_KEY} "
                "AND ($7::text IS NULL OR owner=$7)",
                dag_id, run_id, task_id or "", alert_index, state, error, owner,
            )
            return bool(status != "UPDATE 0")

        return await self._transaction(tx)

    async def deadline_misses(
        self, dag_id: str, run_id: str | None = None
    ) -> list[DeadlineMissRecord]:
        if run_id is None:
            rows = await self._read(
                f"SELECT {_MISS_COLS} FROM deadline_miss WHERE dag_id=$1 "
                "ORDER BY deadline_at, run_id, task_id, alert_index", dag_id)
        else:
            rows = await self._read(
                f"SELECT {_MISS_COLS} FROM deadline_miss WHERE dag_id=$1 AND run_id=$2 "
                "ORDER BY deadline_at, run_id, task_id, alert_index", dag_id, run_id)
        return [_miss_from(r) for r in rows]

    # -- processes ----------------------------------------------------------------------
    async def register_process(self, process: ProcessRecord) -> None:
        row = (
            process.process_id,
            process.kind,
            process.hostname,
            process.pid,
            enc.aware(process.started_at),
            enc.aware(process.heartbeat_at),
        )
        await self._write(
            [
                (
                    f"INSERT INTO process ({enc.PROCESS_COLS}) VALUES ($1, $2, $3, $4, $5, $6) "
                    "ON CONFLICT (process_id) DO UPDATE SET kind=excluded.kind, "
                    "hostname=excluded.hostname, pid=excluded.pid, "
                    "started_at=excluded.started_at, heartbeat_at=excluded.heartbeat_at",
                    [row],
                )
            ]
        )

    async def heartbeat(self, process_id: str, now: datetime) -> None:
        await self._write(
            [
                (
                    "UPDATE process SET heartbeat_at=$1 WHERE process_id=$2",
                    [(enc.aware(now), process_id)],
                )
            ]
        )

    async def unregister_process(self, process_id: str) -> None:
        await self._write([("DELETE FROM process WHERE process_id=$1", [(process_id,)])])

    async def list_processes(self, kind: str | None = None) -> list[ProcessRecord]:
        sql = f"SELECT {enc.PROCESS_COLS} FROM process"
        params: list[Any] = []
        if kind is not None:
            sql += " WHERE kind=$1"
            params.append(kind)
        rows = await self._read(sql + " ORDER BY started_at", *params)
        return [ProcessRecord(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    # -- wake-ups (LISTEN/NOTIFY) --------------------------------------------------------
    def channel_name(self, channel: str) -> str:
        """The PostgreSQL channel of a logical channel: scoped to this store's schema."""
        name = f"aflow:{self.schema or ''}:{channel}"
        if len(name.encode()) > _MAX_CHANNEL_BYTES:
            digest = hashlib.sha1(name.encode()).hexdigest()[:16]
            name = f"aflow:{digest}:{channel}"[:_MAX_CHANNEL_BYTES]
        return name

    @property
    def notifications_live(self) -> bool:
        return self._listen_conn is not None

    async def notify(self, channel: str, payload: str = "") -> None:
        name = self.channel_name(channel)

        async def run_tx(conn: asyncpg.Connection) -> None:
            await conn.execute(_NOTIFY, name, payload)

        await self._transaction(run_tx)

    async def listen(self, channel: str, callback: Callable[[str], None]) -> Callable[[], None]:
        callbacks = self._subscribers.setdefault(channel, [])
        callbacks.append(callback)
        if self._want_listener is not None:
            self._want_listener.set()
        conn = self._listen_conn
        if conn is not None and channel not in self._listening:
            try:
                await self._listen_on(conn, channel)
            except (*_DRIVER_ERRORS, _ConnectionLost):
                pass  # the listener reconnects and then listens on every channel

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    async def _listen_on(self, conn: asyncpg.Connection, channel: str) -> None:
        self._listening.add(channel)
        try:
            await conn.add_listener(self.channel_name(channel), self._on_notification)
        except BaseException:
            self._listening.discard(channel)
            raise

    def _on_notification(self, conn: Any, pid: int, name: str, payload: str) -> None:
        for channel in list(self._subscribers):
            if self.channel_name(channel) == name:
                self._dispatch(channel, payload)

    def _dispatch(self, channel: str, payload: str) -> None:
        for callback in list(self._subscribers.get(channel, ())):
            try:
                callback(payload)
            except Exception:  # noqa: BLE001 - one subscriber never breaks the others
                log.exception("a listener of %r failed", channel)

    async def _listen_task(self, scope: anyio.CancelScope, wanted: anyio.Event) -> None:
        with scope:
            await wanted.wait()  # no connection for stores nobody listens on
            delay = 0.1
            reconnected = False
            while True:
                try:
                    conn = await asyncpg.connect(
                        self.target.dsn,
                        timeout=self.connect_timeout_s,
                        server_settings=self._server_settings(),
                    )
                except (*_DRIVER_ERRORS, ValueError) as exc:
                    log.warning(
                        "cannot open the LISTEN connection to %s (%s); retrying in %.1fs",
                        self.target.where,
                        self.target.scrub(_reason(exc)),
                        delay,
                    )
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                try:
                    await self._serve_listener(conn, reconnected)
                    delay = 0.1
                except (*_DRIVER_ERRORS, _ConnectionLost) as exc:
                    log.warning(
                        "the LISTEN connection to %s was lost (%s); reconnecting",
                        self.target.where,
                        self.target.scrub(_reason(exc)),
                    )
                finally:
                    self._listen_conn = None
                    self._listening = set()
                    conn.terminate()
                reconnected = True

    async def _serve_listener(self, conn: asyncpg.Connection, reconnected: bool) -> None:
        """LISTEN on every subscribed channel, then wait until the connection is lost
        (a closed socket, or a ping that fails or gets no answer)."""
        lost = anyio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        while missing := [c for c in self._subscribers if c not in self._listening]:
            for channel in missing:
                await self._listen_on(conn, channel)
        self._listen_conn = conn
        if reconnected:
            log.info("listening for wake-ups on %s again", self.target.where)
        # Whatever was notified before LISTEN took effect (or while the connection was
        # down) is not delivered: every subscriber looks once now.
        for channel in list(self._subscribers):
            self._dispatch(channel, "")
        while not lost.is_set():
            with anyio.move_on_after(self.listen_ping_s):
                await lost.wait()
            if lost.is_set():
                break
            with anyio.fail_after(max(1.0, self.listen_ping_s / 2)):
                await conn.fetchval("SELECT 1")
        raise _ConnectionLost("the connection closed")


def _miss_from(r: Sequence[Any]) -> DeadlineMissRecord:
    return DeadlineMissRecord(
        dag_id=r[0], run_id=r[1], task_id=r[2] or None, alert_index=r[3],
        deadline_at=r[4], missed_at=r[5], description=r[6], owner=r[7],
        alert_state=r[8], alert_error=r[9],
    )
