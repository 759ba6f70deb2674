"""PostgresStore: the store for many processes on many hosts, on asyncpg.

URL: `postgresql://user[:password]@host[:port]/database[?schema=NAME]` (see
`aflow.store.postgres.url`); `?schema=NAME` keeps aflow's tables in their own schema,
created on first open.

- A connection pool (asyncpg.create_pool); each connection starts with aflow's
  `search_path`, a `lock_timeout` and `application_name=aflow`.
- The high-rate writes are group-committed (aflow.store.group_commit): one transaction
  per batch on one pooled connection. A batch that meets a transient failure (the
  connection lost, the server restarting, a deadlock, a lock wait beyond `lock_timeout`)
  is retried whole with backoff for up to `write_retry_s`; every op is idempotent, so a
  batch whose COMMIT was sent before the connection died may safely be applied again.
  A batch that fails otherwise is applied op by op, so only the faulty op's caller fails.
- Claims (`claim_runs`, `claim_triggers`) lock their rows with `FOR UPDATE SKIP LOCKED`:
  concurrent claimers in any number of processes never take the same row, and never
  wait on each other.
- Migrations (migrations/NNNN_name.sql, recorded in `schema_migrations`) run at open in
  one transaction under a transaction-scoped advisory lock, so processes opening an empty
  database at once migrate it exactly once. An up-to-date database is not locked.
- Datetimes are timestamptz; JSON is text, exactly as the codec writes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar

import anyio
import asyncpg

from aflow.exceptions import RunAlreadyExists, StoreError, StoreUnavailable
from aflow.states import DagRunState, RunType, TaskState
from aflow.store.base import Store
from aflow.store.codec import json_in, json_out
from aflow.store.group_commit import GroupCommitter, Op
from aflow.store.postgres.url import PostgresTarget, parse_postgres_url, quote_ident
from aflow.store.records import (
    DagRecord,
    DagRunRecord,
    ImportErrorRecord,
    ProcessRecord,
    TaskInstanceRecord,
    TaskInstanceRow,
    TriggerRecord,
    XComRecord,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Failures that are nobody's fault and pass: retried, not reported.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
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
# Everything the driver raises for a failed statement or a broken connection.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

_RUN_COLS = (
    "dag_id, run_id, run_type, state, logical_date, data_interval_start, data_interval_end, "
    "conf, created_at, start_date, end_date, triggered_by, owner, lease_until, note"
)
_TI_COLS = (
    "dag_id, run_id, task_id, map_index, state, try_number, max_tries, start_date, end_date, "
    "hostname, operator, priority_weight, pool, next_retry_at, next_method, next_kwargs, error"
)
_UPSERT_TI = (
    f"INSERT INTO task_instance ({_TI_COLS}) VALUES "
    f"({', '.join(f'${i}' for i in range(1, 18))}) "
    "ON CONFLICT (dag_id, run_id, task_id, map_index) DO UPDATE SET "
    "state=excluded.state, try_number=excluded.try_number, max_tries=excluded.max_tries, "
    "start_date=excluded.start_date, end_date=excluded.end_date, hostname=excluded.hostname, "
    "operator=excluded.operator, priority_weight=excluded.priority_weight, pool=excluded.pool, "
    "next_retry_at=excluded.next_retry_at, next_method=excluded.next_method, "
    "next_kwargs=excluded.next_kwargs, error=excluded.error"
)
_INSERT_RUN = f"INSERT INTO dag_run ({_RUN_COLS}) VALUES ({', '.join(f'${i}' for i in range(1, 16))})"
_UPDATE_RUN = (
    "UPDATE dag_run SET state=$1, start_date=$2, end_date=$3, conf=$4, note=$5 "
    "WHERE dag_id=$6 AND run_id=$7"
)
_TRIGGER_COLS = (
    "id, classpath, kwargs, created_at, timeout_at, owner, lease_until, dag_id, run_id, "
    "task_id, map_index, try_number, event, fired_at"
)
_INSERT_TRIGGER = (
    "INSERT INTO trigger (classpath, kwargs, created_at, timeout_at, dag_id, run_id, task_id, "
    "map_index, try_number) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
_DELETE_TI_TRIGGER = (
    "DELETE FROM trigger WHERE dag_id=$1 AND run_id=$2 AND task_id=$3 AND map_index=$4"
)
_DELETE_TI_XCOMS = (
    "DELETE FROM xcom WHERE dag_id=$1 AND run_id=$2 AND task_id=$3 AND map_index=$4"
)
_INSERT_XCOM = (
    "INSERT INTO xcom (dag_id, run_id, task_id, map_index, key, value) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)
_DAG_COLS = "dag_id, fileloc, structure, is_paused, is_active, updated_at"
_PROCESS_COLS = "process_id, kind, hostname, pid, started_at, heartbeat_at"
_UNFINISHED = "state IN ('queued', 'running')"


# -- encoding ------------------------------------------------------------------------------


def _aware(value: datetime | None) -> datetime | None:
    """asyncpg would take a naive datetime as UTC; aflow refuses it, as the codec does."""
    if value is not None and value.utcoffset() is None:
        raise ValueError(
            f"naive datetime {value!r}: aflow stores only timezone-aware datetimes"
        )
    return value


def _ti_row(ti: TaskInstanceRow) -> tuple[Any, ...]:
    return (
        ti.dag_id,
        ti.run_id,
        ti.task_id,
        ti.map_index,
        ti.state.value,
        ti.try_number,
        ti.max_tries,
        _aware(ti.start_date),
        _aware(ti.end_date),
        ti.hostname,
        ti.operator,
        ti.priority_weight,
        ti.pool,
        _aware(ti.next_retry_at),
        ti.next_method,
        None if ti.next_kwargs is None else json_out(ti.next_kwargs),
        ti.error,
    )


def _ti_from(r: Sequence[Any]) -> TaskInstanceRecord:
    return TaskInstanceRecord(
        dag_id=r[0],
        run_id=r[1],
        task_id=r[2],
        map_index=r[3],
        state=TaskState(r[4]),
        try_number=r[5],
        max_tries=r[6],
        start_date=r[7],
        end_date=r[8],
        hostname=r[9],
        operator=r[10],
        priority_weight=r[11],
        pool=r[12],
        next_retry_at=r[13],
        next_method=r[14],
        next_kwargs=json_in(r[15]),
        error=r[16],
    )


def _run_row(run: DagRunRecord) -> tuple[Any, ...]:
    return (
        run.dag_id,
        run.run_id,
        run.run_type.value,
        run.state.value,
        _aware(run.logical_date),
        _aware(run.data_interval_start),
        _aware(run.data_interval_end),
        json_out(run.conf),
        _aware(run.created_at),
        _aware(run.start_date),
        _aware(run.end_date),
        run.triggered_by,
        run.owner,
        _aware(run.lease_until),
        run.note,
    )


def _run_from(r: Sequence[Any]) -> DagRunRecord:
    return DagRunRecord(
        dag_id=r[0],
        run_id=r[1],
        run_type=RunType(r[2]),
        state=DagRunState(r[3]),
        logical_date=r[4],
        data_interval_start=r[5],
        data_interval_end=r[6],
        conf=json_in(r[7]) or {},
        created_at=r[8],
        start_date=r[9],
        end_date=r[10],
        triggered_by=r[11],
        owner=r[12],
        lease_until=r[13],
        note=r[14],
    )


def _run_update_row(run: DagRunRecord) -> tuple[Any, ...]:
    return (
        run.state.value,
        _aware(run.start_date),
        _aware(run.end_date),
        json_out(run.conf),
        run.note,
        run.dag_id,
        run.run_id,
    )


def _trigger_from(r: Sequence[Any]) -> TriggerRecord:
    return TriggerRecord(
        id=r[0],
        classpath=r[1],
        kwargs=json_in(r[2]),
        created_at=r[3],
        timeout_at=r[4],
        owner=r[5],
        lease_until=r[6],
        dag_id=r[7],
        run_id=r[8],
        task_id=r[9],
        map_index=r[10],
        try_number=r[11],
        event=json_in(r[12]),
        fired_at=r[13],
    )


def _dag_from(r: Sequence[Any]) -> DagRecord:
    return DagRecord(
        dag_id=r[0],
        fileloc=r[1],
        structure=json_in(r[2]),
        is_paused=r[3],
        is_active=r[4],
        updated_at=r[5],
    )


def _rowcount(status: str) -> int:
    """The row count of a command status such as 'UPDATE 3'."""
    return int(status.rsplit(" ", 1)[-1])


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT_ERRORS)


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


async def _execute_ops(conn: asyncpg.Connection, ops: Iterable[Op]) -> None:
    for sql, rows in _merged(ops):
        await conn.executemany(sql, rows)


def migration_scripts() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped, in order."""
    out = []
    folder = resources.files("aflow.store.postgres").joinpath("migrations")
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        version_s, _, rest = entry.name.partition("_")
        out.append((int(version_s), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(out)


def _advisory_key(schema: str | None) -> int:
    """A stable signed 64-bit key for the migration lock of one schema."""
    digest = hashlib.sha256(f"aflow.migrate:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresStore(Store):
    def __init__(
        self,
        url: str,
        *,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        connect_timeout_s: float = 10.0,
        lock_timeout_s: float = 30.0,
        write_retry_s: float = 60.0,
    ) -> None:
        self.url = url
        self.target: PostgresTarget = parse_postgres_url(url)
        self.schema = self.target.schema
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.connect_timeout_s = connect_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self.write_retry_s = write_retry_s
        self._pool: asyncpg.Pool | None = None
        self._committer: GroupCommitter | None = None
        self._stack: AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.target.where})"

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
        self._committer = GroupCommitter(self._apply_batch)
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._committer.run)
        stack.callback(self._committer.close)  # runs first on exit: drain, then the tg joins
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

    async def _create_pool(self) -> asyncpg.Pool:
        settings = {
            "application_name": "aflow",
            "lock_timeout": str(max(1, int(self.lock_timeout_s * 1000))),
        }
        if self.schema is not None:
            settings["search_path"] = quote_ident(self.schema)
        with anyio.fail_after(self.connect_timeout_s * 2):  # TLS and auth after the connect
            return await asyncpg.create_pool(
                self.target.dsn,
                min_size=min(self.pool_min_size, self.pool_max_size),
                max_size=self.pool_max_size,
                timeout=self.connect_timeout_s,
                server_settings=settings,
            )

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self.connect_timeout_s):
                await pool.close()
                return
            log.warning("PostgreSQL pool of %s did not close in time; terminated", self)
            pool.terminate()

    async def _migrate(self) -> None:
        scripts = migration_scripts()
        latest = scripts[-1][0] if scripts else 0
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            if await self._applied_version(conn) >= latest:
                return  # up to date: take no lock
            async with conn.transaction():
                # Held to the end of this transaction: a second process waits here, then
                # finds the migrations applied.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _advisory_key(self.schema))
                if self.schema is not None:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                    "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                current = await conn.fetchval(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
                )
                for version, name, sql in scripts:
                    if version <= current:
                        continue
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                    log.info("applied migration %04d_%s to %s", version, name, self.target.where)

    @staticmethod
    async def _applied_version(conn: asyncpg.Connection) -> int:
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            return 0
        return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    async def schema_version(self) -> int:
        rows = await self._read("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    # -- group commit ------------------------------------------------------------------
    async def _apply_batch(self, batch: list[Op]) -> list[BaseException | None]:
        deadline = anyio.current_time() + self.write_retry_s
        delay = 0.05
        while True:
            try:
                return await self._apply_batch_once(batch)
            except Exception as exc:  # noqa: BLE001 - every failure is handed to the callers
                if not _is_transient(exc):
                    return [_write_error(exc)] * len(batch)
                if anyio.current_time() + delay > deadline:
                    note = f" (still failing after {self.write_retry_s:g}s of retries)"
                    return [_write_error(exc, note)] * len(batch)
                log.warning(
                    "PostgreSQL write of %d ops failed (%s); retrying in %.2fs",
                    len(batch),
                    self.target.scrub(_reason(exc)),
                    delay,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _apply_batch_once(self, batch: list[Op]) -> list[BaseException | None]:
        """One transaction for the whole batch. If it fails through an op's fault, each op
        is applied alone to find the culprit. Transient failures are raised (whole batch
        retried)."""
        assert self._pool is not None, "store is not open"
        async with self._pool.acquire(timeout=self.connect_timeout_s) as conn:
            try:
                async with conn.transaction():
                    await _execute_ops(conn, batch)
                return [None] * len(batch)
            except Exception as exc:
                if len(batch) == 1 or _is_transient(exc):
                    raise
            results: list[BaseException | None] = []
            for op in batch:
                try:
                    async with conn.transaction():
                        await _execute_ops(conn, [op])
                    results.append(None)
                except Exception as exc:
                    if _is_transient(exc):
                        raise
                    results.append(_write_error(exc))
            return results

    # -- helpers -------------------------------------------------------------------
    async def _read(self, sql: str, *params: Any) -> list[Any]:
        """Rows of a query; a lost connection is retried a few times (reads are idempotent)."""
        assert self._pool is not None, "store is not open"
        delay = 0.05
        for attempt in range(4):
            try:
                return list(await self._pool.fetch(sql, *params, timeout=None))
            except _DRIVER_ERRORS as exc:
                if not _is_transient(exc) or attempt == 3:
                    raise StoreError(f"PostgreSQL read failed: {_reason(exc)}") from exc
                await anyio.sleep(delay)
                delay *= 4
        raise AssertionError("unreachable")

    async def _write(self, op: Op) -> None:
        assert self._committer is not None, "store is not open"
        await self._committer.submit(op)

    async def _transaction(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn(connection)` in its own transaction on a pooled connection."""
        assert self._pool is not None, "store is not open"
        try:
            async with self._pool.acquire(timeout=self.connect_timeout_s) as conn:
                async with conn.transaction():
                    return await fn(conn)
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"PostgreSQL write failed: {_reason(exc)}") from exc

    async def _update_count(self, sql: str, *params: Any) -> int:
        async def run(conn: asyncpg.Connection) -> int:
            return _rowcount(await conn.execute(sql, *params))

        return await self._transaction(run)

    # -- DAGs ----------------------------------------------------------------------
    async def upsert_dags(self, dags: Sequence[DagRecord]) -> None:
        rows = [
            (d.dag_id, d.fileloc, json_out(d.structure), d.is_paused, _aware(d.updated_at))
            for d in dags
        ]
        await self._write(
            [
                (
                    f"INSERT INTO dag ({_DAG_COLS}) VALUES ($1, $2, $3, $4, TRUE, $5) "
                    "ON CONFLICT (dag_id) DO UPDATE SET fileloc=excluded.fileloc, "
                    "structure=excluded.structure, is_active=TRUE, updated_at=excluded.updated_at",
                    rows,
                )
            ]
        )

    async def list_dags(self) -> list[DagRecord]:
        return [_dag_from(r) for r in await self._read(f"SELECT {_DAG_COLS} FROM dag ORDER BY dag_id")]

    async def get_dag(self, dag_id: str) -> DagRecord | None:
        rows = await self._read(f"SELECT {_DAG_COLS} FROM dag WHERE dag_id=$1", dag_id)
        return _dag_from(rows[0]) if rows else None

    async def set_dag_paused(self, dag_id: str, paused: bool) -> None:
        await self._write([("UPDATE dag SET is_paused=$1 WHERE dag_id=$2", [(paused, dag_id)])])

    async def deactivate_dags(self, keep: Iterable[str]) -> None:
        await self._write(
            [("UPDATE dag SET is_active = (dag_id = ANY($1::text[]))", [(list(keep),)])]
        )

    async def replace_import_errors(self, errors: Sequence[ImportErrorRecord]) -> None:
        rows = [(e.filename, e.message, _aware(e.created_at)) for e in errors]

        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute("DELETE FROM import_error")
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
        run_row = _run_row(run)
        ti_rows = [_ti_row(t) for t in tis]

        async def run_tx(conn: asyncpg.Connection) -> None:
            await conn.execute(_INSERT_RUN, *run_row)
            if ti_rows:
                await conn.executemany(_UPSERT_TI, ti_rows)

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
            f"SELECT {_RUN_COLS} FROM dag_run WHERE dag_id=$1 AND run_id=$2", dag_id, run_id
        )
        return _run_from(rows[0]) if rows else None

    async def list_runs(
        self,
        dag_id: str | None = None,
        states: Iterable[DagRunState] | None = None,
        limit: int = 100,
        offset: int = 0,
        logical_date: datetime | None = None,
    ) -> list[DagRunRecord]:
        where: list[str] = []
        params: list[Any] = []
        if logical_date is not None:
            params.append(_aware(logical_date))
            where.append(f"logical_date=${len(params)}")
        if dag_id is not None:
            params.append(dag_id)
            where.append(f"dag_id=${len(params)}")
        if states is not None:
            params.append([DagRunState(s).value for s in states])
            where.append(f"state = ANY(${len(params)}::text[])")
        sql = f"SELECT {_RUN_COLS} FROM dag_run"
        if where:
            sql += " WHERE " + " AND ".join(where)
        params.extend([limit, offset])
        # NULLS LAST: as SQLite, which sorts NULL lowest.
        sql += (
            " ORDER BY logical_date DESC, created_at DESC NULLS LAST "
            f"LIMIT ${len(params) - 1} OFFSET ${len(params)}"
        )
        return [_run_from(r) for r in await self._read(sql, *params)]

    async def latest_run(self, dag_id: str, run_type: str | None = None) -> DagRunRecord | None:
        sql = f"SELECT {_RUN_COLS} FROM dag_run WHERE dag_id=$1"
        params: list[Any] = [dag_id]
        if run_type is not None:
            sql += " AND run_type=$2"
            params.append(str(run_type))
        rows = await self._read(sql + " ORDER BY logical_date DESC LIMIT 1", *params)
        return _run_from(rows[0]) if rows else None

    async def save_run(self, run: DagRunRecord) -> None:
        await self._write([(_UPDATE_RUN, [_run_update_row(run)])])

    async def claim_runs(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        dag_ids: Iterable[str] | None = None,
    ) -> list[DagRunRecord]:
        params: list[Any] = [_aware(now), limit, owner, _aware(lease_until)]
        dag_filter = ""
        if dag_ids is not None:
            params.append(list(dag_ids))
            dag_filter = "AND dag_id = ANY($5::text[]) "
        # SKIP LOCKED: rows another claimer is taking right now are left to it. A row that
        # claimer has committed meanwhile is re-checked against the WHERE clause (READ
        # COMMITTED re-evaluates updated rows), so its live lease keeps it out.
        sql = (
            "WITH picked AS ("
            "SELECT dag_id AS p_dag, run_id AS p_run FROM dag_run "
            f"WHERE {_UNFINISHED} AND (owner IS NULL OR lease_until IS NULL OR lease_until < $1) "
            f"{dag_filter}ORDER BY created_at NULLS FIRST LIMIT $2 FOR UPDATE SKIP LOCKED), "
            "claimed AS (UPDATE dag_run SET owner=$3, lease_until=$4 FROM picked "
            f"WHERE dag_id=p_dag AND run_id=p_run RETURNING {_RUN_COLS}) "
            f"SELECT {_RUN_COLS} FROM claimed ORDER BY created_at NULLS FIRST"
        )

        async def run_tx(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(sql, *params))

        rows = await self._transaction(run_tx)
        return [
            dataclasses.replace(_run_from(r), owner=owner, lease_until=lease_until) for r in rows
        ]

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        return await self._update_count(
            f"UPDATE dag_run SET lease_until=$1 WHERE owner=$2 AND {_UNFINISHED}",
            _aware(lease_until),
            owner,
        )

    async def release_runs(
        self, owner: str, run_keys: Iterable[tuple[str, str]] | None = None
    ) -> None:
        if run_keys is None:
            await self._write(
                [("UPDATE dag_run SET owner=NULL, lease_until=NULL WHERE owner=$1", [(owner,)])]
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
        return await self._update_count(
            "UPDATE dag_run SET lease_until=NULL WHERE owner=$1", owner
        )

    # -- task instances --------------------------------------------------------------
    async def get_tis(self, dag_id: str, run_id: str) -> list[TaskInstanceRecord]:
        rows = await self._read(
            f"SELECT {_TI_COLS} FROM task_instance WHERE dag_id=$1 AND run_id=$2 "
            "ORDER BY task_id, map_index",
            dag_id,
            run_id,
        )
        return [_ti_from(r) for r in rows]

    async def save_tis(self, tis: Sequence[TaskInstanceRow]) -> None:
        await self._write([(_UPSERT_TI, [_ti_row(t) for t in tis])])

    async def finish_ti(
        self,
        ti: TaskInstanceRow,
        xcoms: Sequence[XComRecord] = (),
        run: DagRunRecord | None = None,
    ) -> None:
        op: Op = [(_UPSERT_TI, [_ti_row(ti)])]
        if xcoms:
            op.append((_DELETE_TI_XCOMS, [(ti.dag_id, ti.run_id, ti.task_id, ti.map_index)]))
            op.append(
                (
                    _INSERT_XCOM,
                    [
                        (x.dag_id, x.run_id, x.task_id, x.map_index, x.key, json_out(x.value))
                        for x in xcoms
                    ],
                )
            )
        if run is not None:
            op.append((_UPDATE_RUN, [_run_update_row(run)]))
        await self._write(op)

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
            _aware(trigger.created_at),
            _aware(trigger.timeout_at),
            trigger.dag_id,
            trigger.run_id,
            trigger.task_id,
            trigger.map_index,
            trigger.try_number,
        )
        await self._write(
            [(_UPSERT_TI, [_ti_row(ti)]), (_DELETE_TI_TRIGGER, [key]), (_INSERT_TRIGGER, [row])]
        )

    async def claim_triggers(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[TriggerRecord]:
        sql = (
            "WITH picked AS (SELECT id AS p_id FROM trigger WHERE fired_at IS NULL "
            "AND (owner IS NULL OR lease_until IS NULL OR lease_until < $1) "
            "ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED), "
            "claimed AS (UPDATE trigger SET owner=$3, lease_until=$4 FROM picked "
            f"WHERE id=p_id RETURNING {_TRIGGER_COLS}) "
            f"SELECT {_TRIGGER_COLS} FROM claimed ORDER BY id"
        )
        params = (_aware(now), limit, owner, _aware(lease_until))

        async def run_tx(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(sql, *params))

        rows = await self._transaction(run_tx)
        return [
            dataclasses.replace(_trigger_from(r), owner=owner, lease_until=lease_until)
            for r in rows
        ]

    async def renew_trigger_leases(self, owner: str, lease_until: datetime) -> int:
        return await self._update_count(
            "UPDATE trigger SET lease_until=$1 WHERE owner=$2 AND fired_at IS NULL",
            _aware(lease_until),
            owner,
        )

    async def release_triggers(self, owner: str, trigger_ids: Iterable[int] | None = None) -> None:
        if trigger_ids is None:
            await self._write(
                [("UPDATE trigger SET owner=NULL, lease_until=NULL WHERE owner=$1", [(owner,)])]
            )
        else:
            await self._write(
                [
                    (
                        "UPDATE trigger SET owner=NULL, lease_until=NULL WHERE owner=$1 AND id=$2",
                        [(owner, i) for i in trigger_ids],
                    )
                ]
            )

    async def fire_trigger(self, trigger_id: int, event: dict[str, Any], now: datetime) -> None:
        await self._write(
            [
                (
                    "UPDATE trigger SET event=$1, fired_at=$2, owner=NULL, lease_until=NULL "
                    "WHERE id=$3 AND fired_at IS NULL",
                    [(json_out(event), _aware(now), trigger_id)],
                )
            ]
        )

    async def fired_triggers(self, run_keys: Iterable[tuple[str, str]]) -> list[TriggerRecord]:
        keys = list(run_keys)
        if not keys:
            return []
        rows = await self._read(
            f"SELECT {_TRIGGER_COLS} FROM trigger WHERE fired_at IS NOT NULL AND "
            "(dag_id, run_id) IN (SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY id",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return [_trigger_from(r) for r in rows]

    async def get_trigger(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> TriggerRecord | None:
        rows = await self._read(
            f"SELECT {_TRIGGER_COLS} FROM trigger WHERE dag_id=$1 AND run_id=$2 AND task_id=$3 "
            "AND map_index=$4",
            dag_id,
            run_id,
            task_id,
            map_index,
        )
        return _trigger_from(rows[0]) if rows else None

    async def delete_trigger(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> None:
        await self._write([(_DELETE_TI_TRIGGER, [(dag_id, run_id, task_id, map_index)])])

    async def list_triggers(self) -> list[TriggerRecord]:
        rows = await self._read(f"SELECT {_TRIGGER_COLS} FROM trigger ORDER BY id")
        return [_trigger_from(r) for r in rows]

    # -- webhook events ------------------------------------------------------------------
    async def deliver_webhook(self, key: str, payload: Any, now: datetime) -> int:
        body, at = json_out(payload), _aware(now)

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

    async def first_webhook(self, key: str) -> tuple[int, Any] | None:
        rows = await self._read(
            "SELECT id, payload FROM webhook_event WHERE key=$1 ORDER BY id LIMIT 1", key
        )
        return (int(rows[0][0]), json_in(rows[0][1])) if rows else None

    # -- processes ----------------------------------------------------------------------
    async def register_process(self, process: ProcessRecord) -> None:
        row = (
            process.process_id,
            process.kind,
            process.hostname,
            process.pid,
            _aware(process.started_at),
            _aware(process.heartbeat_at),
        )
        await self._write(
            [
                (
                    f"INSERT INTO process ({_PROCESS_COLS}) VALUES ($1, $2, $3, $4, $5, $6) "
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
                    [(_aware(now), process_id)],
                )
            ]
        )

    async def unregister_process(self, process_id: str) -> None:
        await self._write([("DELETE FROM process WHERE process_id=$1", [(process_id,)])])

    async def list_processes(self, kind: str | None = None) -> list[ProcessRecord]:
        sql = f"SELECT {_PROCESS_COLS} FROM process"
        params: list[Any] = []
        if kind is not None:
            sql += " WHERE kind=$1"
            params.append(kind)
        rows = await self._read(sql + " ORDER BY started_at", *params)
        return [ProcessRecord(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]
