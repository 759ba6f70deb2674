"""SqliteStore: the embedded default, on aiosqlite, in WAL mode.

Pragmas: journal_mode=WAL (readers never block the writer), foreign_keys=ON,
busy_timeout (other processes' writers are waited for, not failed), and `synchronous`
set by the caller: NORMAL (default) survives a process crash; FULL also survives a
power loss at the cost of an fsync per commit.

Two connections: one writer, used by the group committer (one transaction per batch,
run in the connection's thread in a single hop), and one reader.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar

import aiosqlite
import anyio

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
from aflow.states import DagRunState, RunType, TaskState
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
from aflow.store.codec import dt_in, dt_out, json_in, json_out
from aflow.store.group_commit import GroupCommitter, Op
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

log = logging.getLogger(__name__)

_TOKEN_COLS = "token_id, token_hash, username, name, created_at, expires_at"
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
        where.append("logical_date=?")
        params.append(dt_out(logical_date))
    if dag_id is not None:
        where.append("dag_id=?")
        params.append(dag_id)
    if states is not None:
        state_list = [DagRunState(s).value for s in states]
        where.append(f"state IN ({', '.join('?' * len(state_list))})")
        params.extend(state_list)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def _user_from(r: Sequence[Any]) -> UserRecord:
    return UserRecord(r[0], r[1], r[2], dt_in(r[3]))  # type: ignore[arg-type]


def _token_from(r: Sequence[Any]) -> ApiTokenRecord:
    return ApiTokenRecord(r[0], r[1], r[2], r[3], dt_in(r[4]), dt_in(r[5]))  # type: ignore[arg-type]

T = TypeVar("T")

SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")
_TRANSIENT = ("database is locked", "database is busy")

_RUN_COLS = (
    "dag_id, run_id, run_type, state, logical_date, data_interval_start, data_interval_end, "
    "conf, created_at, start_date, end_date, triggered_by, owner, lease_until, note"
)
_TI_COLS = (
    "dag_id, run_id, task_id, map_index, state, try_number, max_tries, start_date, end_date, "
    "hostname, operator, priority_weight, pool, next_retry_at, next_method, next_kwargs, error"
)
_UPSERT_TI = (
    f"INSERT INTO task_instance ({_TI_COLS}) VALUES ({', '.join('?' * 17)}) "
    "ON CONFLICT (dag_id, run_id, task_id, map_index) DO UPDATE SET "
    "state=excluded.state, try_number=excluded.try_number, max_tries=excluded.max_tries, "
    "start_date=excluded.start_date, end_date=excluded.end_date, hostname=excluded.hostname, "
    "operator=excluded.operator, priority_weight=excluded.priority_weight, pool=excluded.pool, "
    "next_retry_at=excluded.next_retry_at, next_method=excluded.next_method, "
    "next_kwargs=excluded.next_kwargs, error=excluded.error"
)
_UPDATE_RUN = (
    "UPDATE dag_run SET state=?, start_date=?, end_date=?, conf=?, note=? "
    "WHERE dag_id=? AND run_id=?"
)
_TRIGGER_COLS = (
    "id, classpath, kwargs, created_at, timeout_at, owner, "
    "(SELECT l.lease_until FROM trigger_lease l WHERE l.owner = trigger.owner), "
    "dag_id, run_id, task_id, map_index, try_number, event, fired_at"
)
_TRIGGER_INSERT_COLS = (
    "classpath, kwargs, created_at, timeout_at, dag_id, run_id, task_id, map_index, "
    "try_number, event"
)
_DELETE_TI_TRIGGER = (
    "DELETE FROM trigger WHERE dag_id=? AND run_id=? AND task_id=? AND map_index=?"
)
_DELETE_TI_XCOMS = "DELETE FROM xcom WHERE dag_id=? AND run_id=? AND task_id=? AND map_index=?"
# The source TI's key leads (as in every TI statement); the event is queued by the
# `asset_event_queued` trigger for every DAG that consumes its asset.
_INSERT_ASSET_EVENT = (
    "INSERT INTO asset_event (source_dag_id, source_run_id, source_task_id, source_map_index, "
    "uri, extra, source_watcher, created_at) VALUES (?,?,?,?,?,?,?,?)"
)
_ASSET_EVENT_COLS = (
    "e.id, e.uri, e.created_at, e.extra, e.source_dag_id, e.source_run_id, e.source_task_id, "
    "e.source_map_index, e.source_watcher"
)
_WATCHER_COLS = "uri, name, dag_id, classpath, initial_kwargs, kwargs, owner, id, version"
_UPSERT_WATCHER = (
    "INSERT INTO asset_watcher (uri, name, dag_id, classpath, initial_kwargs, kwargs) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (uri, name) DO UPDATE SET dag_id=excluded.dag_id, "
    # an unchanged definition keeps its position (kwargs), owner and version
    "kwargs = CASE WHEN classpath=excluded.classpath AND initial_kwargs=excluded.initial_kwargs "
    "THEN kwargs ELSE excluded.kwargs END, "
    "owner = CASE WHEN classpath=excluded.classpath AND initial_kwargs=excluded.initial_kwargs "
    "THEN owner ELSE NULL END, "
    "version = CASE WHEN classpath=excluded.classpath AND initial_kwargs=excluded.initial_kwargs "
    "THEN version ELSE version + 1 END, "
    "classpath=excluded.classpath, initial_kwargs=excluded.initial_kwargs"
)


def _asset_event_row(e: AssetEventRecord) -> tuple[Any, ...]:
    return (
        e.source_dag_id, e.source_run_id, e.source_task_id, e.source_map_index, e.uri,
        json_out(e.extra), e.source_watcher, dt_out(e.timestamp),
    )


def _asset_event_from(r: Sequence[Any]) -> AssetEventRecord:
    return AssetEventRecord(
        id=r[0], uri=r[1], timestamp=dt_in(r[2]), extra=json_in(r[3]) or {},  # type: ignore[arg-type]
        source_dag_id=r[4], source_run_id=r[5], source_task_id=r[6], source_map_index=r[7],
        source_watcher=r[8],
    )


def _watcher_from(r: Sequence[Any]) -> AssetWatcherRecord:
    return AssetWatcherRecord(
        uri=r[0], name=r[1], dag_id=r[2], classpath=r[3], initial_kwargs=json_in(r[4]),
        kwargs=json_in(r[5]), owner=r[6], id=r[7], version=r[8],
    )


class _Taken(Exception):
    """Rolls back a transaction whose rows another process changed first."""


_INSERT_XCOM = "INSERT INTO xcom (dag_id, run_id, task_id, map_index, key, value) VALUES (?,?,?,?,?,?)"


def sqlite_path_from_url(url: str) -> str:
    """`sqlite:///rel/path.db`, `sqlite:////abs/path.db`, or a plain path."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    if url.startswith("sqlite://"):
        raise StoreUnavailable(f"bad SQLite URL {url!r}: use sqlite:///path/to/file.db")
    return url


def _ti_row(ti: TaskInstanceRow) -> tuple[Any, ...]:
    return (
        ti.dag_id,
        ti.run_id,
        ti.task_id,
        ti.map_index,
        ti.state.value,
        ti.try_number,
        ti.max_tries,
        dt_out(ti.start_date),
        dt_out(ti.end_date),
        ti.hostname,
        ti.operator,
        ti.priority_weight,
        ti.pool,
        dt_out(ti.next_retry_at),
        ti.next_method,
        None if ti.next_kwargs is None else json_out(ti.next_kwargs),
        ti.error,
    )


def _ti_from(row: Sequence[Any]) -> TaskInstanceRecord:
    return TaskInstanceRecord(
        dag_id=row[0],
        run_id=row[1],
        task_id=row[2],
        map_index=row[3],
        state=TaskState(row[4]),
        try_number=row[5],
        max_tries=row[6],
        start_date=dt_in(row[7]),
        end_date=dt_in(row[8]),
        hostname=row[9],
        operator=row[10],
        priority_weight=row[11],
        pool=row[12],
        next_retry_at=dt_in(row[13]),
        next_method=row[14],
        next_kwargs=json_in(row[15]),
        error=row[16],
    )


def _run_row(run: DagRunRecord) -> tuple[Any, ...]:
    return (
        run.dag_id,
        run.run_id,
        run.run_type.value,
        run.state.value,
        dt_out(run.logical_date),
        dt_out(run.data_interval_start),
        dt_out(run.data_interval_end),
        json_out(run.conf),
        dt_out(run.created_at),
        dt_out(run.start_date),
        dt_out(run.end_date),
        run.triggered_by,
        run.owner,
        dt_out(run.lease_until),
        run.note,
    )


def _run_from(row: Sequence[Any]) -> DagRunRecord:
    return DagRunRecord(
        dag_id=row[0],
        run_id=row[1],
        run_type=RunType(row[2]),
        state=DagRunState(row[3]),
        logical_date=dt_in(row[4]),  # type: ignore[arg-type]
        data_interval_start=dt_in(row[5]),
        data_interval_end=dt_in(row[6]),
        conf=json_in(row[7]) or {},
        created_at=dt_in(row[8]),
        start_date=dt_in(row[9]),
        end_date=dt_in(row[10]),
        triggered_by=row[11],
        owner=row[12],
        lease_until=dt_in(row[13]),
        note=row[14],
    )


def _run_update_row(run: DagRunRecord) -> tuple[Any, ...]:
    return (
        run.state.value,
        dt_out(run.start_date),
        dt_out(run.end_date),
        json_out(run.conf),
        run.note,
        run.dag_id,
        run.run_id,
    )


def _finish_op(
    ends: Sequence[tuple[TaskInstanceRow, Sequence[XComRecord]]], end_trigger: bool
) -> Op:
    """TIs' terminal rows, their XComs replacing older ones of each TI, and with
    `end_trigger` the deletion of their trigger rows: one op, a statement per kind."""
    op: Op = [(_UPSERT_TI, [_ti_row(ti) for ti, _ in ends])]
    with_xcoms = [(ti, xcoms) for ti, xcoms in ends if xcoms]
    if with_xcoms:
        op.append((_DELETE_TI_XCOMS, [_ti_key(ti) for ti, _ in with_xcoms]))
        op.append((
            _INSERT_XCOM,
            [(x.dag_id, x.run_id, x.task_id, x.map_index, x.key, json_out(x.value))
             for _, xcoms in with_xcoms for x in xcoms],
        ))
    if end_trigger:
        op.append((_DELETE_TI_TRIGGER, [_ti_key(ti) for ti, _ in ends]))
    return op


def _reset_op(tis: Sequence[TaskInstanceRow]) -> Op:
    """TI rows as given, the XComs of those in state `none` (cleared: they run again)
    and the trigger rows of all of them deleted: one op."""
    op: Op = [(_UPSERT_TI, [_ti_row(ti) for ti in tis])]
    cleared = [_ti_key(ti) for ti in tis if ti.state in CLEARED_TI_STATES]
    if cleared:
        op.append((_DELETE_TI_XCOMS, cleared))
    op.append((_DELETE_TI_TRIGGER, [_ti_key(ti) for ti in tis]))
    return op


def _ti_key(ti: TaskInstanceRow) -> tuple[str, str, str, int]:
    return (ti.dag_id, ti.run_id, ti.task_id, ti.map_index)


def _write_error(exc: sqlite3.Error) -> StoreError:
    """A failed write's StoreError, chained to the driver's error by hand: it is handed to
    the waiting callers, not raised here, so `raise ... from` cannot chain it."""
    err = StoreError(f"SQLite write failed: {exc}")
    err.__cause__ = exc
    return err


def _apply_op(conn: sqlite3.Connection, op: Op) -> None:
    for sql, rows in op:
        conn.executemany(sql, rows)


def _apply_batch_sync(conn: sqlite3.Connection, batch: list[Op]) -> list[BaseException | None]:
    """One transaction for the whole batch; consecutive identical statements are merged
    into one executemany. If the batch fails, each op is retried alone to find the culprit."""
    merged: list[tuple[str, list[Sequence[Any]]]] = []
    for op in batch:
        for sql, rows in op:
            if merged and merged[-1][0] == sql:
                merged[-1][1].extend(rows)
            else:
                merged.append((sql, list(rows)))
    try:
        conn.execute("BEGIN IMMEDIATE")
        for sql, rows in merged:
            conn.executemany(sql, rows)
        conn.execute("COMMIT")
        return [None] * len(batch)
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        # A lock is no op's fault: the caller retries the whole batch after a pause.
        if len(batch) == 1 or any(t in str(exc) for t in _TRANSIENT):
            raise
    results: list[BaseException | None] = []
    for op in batch:
        try:
            conn.execute("BEGIN IMMEDIATE")
            _apply_op(conn, op)
            conn.execute("COMMIT")
            results.append(None)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results.append(_write_error(exc))
    return results


class SqliteStore(Store):
    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        self.path = sqlite_path_from_url(url)
        self.abspath = os.path.abspath(self.path)
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS_LEVELS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_LEVELS}")
        self.synchronous = synchronous
        self.busy_timeout_s = busy_timeout_s
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._committer: GroupCommitter | None = None
        self._stack: AsyncExitStack | None = None

    # -- lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        directory = os.path.dirname(self.abspath)
        if not await anyio.Path(directory).is_dir():
            raise StoreUnavailable(
                f"cannot open SQLite store {self.path!r}: directory {directory!r} does not exist"
            )
        stack = AsyncExitStack()
        try:
            self._writer = await self._connect()
            stack.push_async_callback(self._writer.close)
            await self._migrate()
            self._reader = await self._connect()
            stack.push_async_callback(self._reader.close)
        except (sqlite3.Error, OSError) as exc:
            await stack.aclose()
            raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        self._committer = GroupCommitter(self._apply_batch)
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._committer.run)
        stack.callback(self._committer.close)  # runs first on exit: drain, then the tg joins
        self._stack = stack

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
        self._writer = self._reader = None

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(
            self.path, isolation_level=None, timeout=self.busy_timeout_s, check_same_thread=False
        )
        try:
            # Switching a new file to WAL fails at once (busy_timeout is not consulted) while
            # another connection opening the same file holds a lock: retry up to the timeout.
            deadline = anyio.current_time() + self.busy_timeout_s
            delay = 0.01
            while True:
                try:
                    await conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    transient = any(t in str(exc) for t in _TRANSIENT)
                    if not transient or anyio.current_time() >= deadline:
                        raise
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.5)
            await conn.execute(f"PRAGMA synchronous={self.synchronous}")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()  # else its thread outlives the failed open
            raise
        return conn

    async def _in_writer_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(raw_connection)` in the writer connection's thread: one hop for a batch.

        aiosqlite exposes no public call for this, so this one place uses its `_execute`
        (present in every aiosqlite release since 0.17); everything else uses its public API.
        """
        conn = self._writer
        assert conn is not None, "store is not open"
        return await conn._execute(lambda: fn(conn._conn))  # type: ignore[no-any-return]

    async def _apply_batch(self, batch: list[Op]) -> list[BaseException | None]:
        delay = 0.05
        for _attempt in range(8):
            try:
                return await self._in_writer_thread(lambda c: _apply_batch_sync(c, batch))
            except sqlite3.OperationalError as exc:
                if not any(t in str(exc) for t in _TRANSIENT):
                    return [_write_error(exc)] * len(batch)
                log.warning("SQLite busy, retrying the batch in %.2fs: %s", delay, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except sqlite3.Error as exc:
                return [_write_error(exc)] * len(batch)
        return [StoreError("SQLite stayed locked; write abandoned")] * len(batch)

    async def _migrate(self) -> None:
        scripts = _migration_scripts()

        def migrate(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
                )
                current = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
                ).fetchone()[0]
                for version, name, sql in scripts:
                    if version <= current:
                        continue
                    for statement in _split_statements(sql):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                        (version, name),
                    )
                    log.info("applied migration %04d_%s to %s", version, name, self.path)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._in_writer_thread(migrate)

    async def schema_version(self) -> int:
        rows = await self._read("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    # -- helpers -------------------------------------------------------------------
    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        assert self._reader is not None, "store is not open"
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}") from exc

    async def _write(self, op: Op) -> None:
        assert self._committer is not None, "store is not open"
        await self._committer.submit(op)

    async def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in its own immediate transaction on the writer connection."""

        def run(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        try:
            return await self._in_writer_thread(run)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    # -- DAGs ----------------------------------------------------------------------
    async def upsert_dags(self, dags: Sequence[DagRecord]) -> None:
        rows = [
            (
                d.dag_id,
                d.fileloc,
                json_out(d.structure),
                int(d.is_paused),
                dt_out(d.updated_at),
            )
            for d in dags
        ]
        await self._write(
            [
                (
                    "INSERT INTO dag (dag_id, fileloc, structure, is_paused, is_active, updated_at) "
                    "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (dag_id) DO UPDATE SET "
                    "fileloc=excluded.fileloc, structure=excluded.structure, is_active=1, "
                    "updated_at=excluded.updated_at",
                    rows,
                ),
                *_asset_rows_op(dags),
            ]
        )

    async def list_dags(self) -> list[DagRecord]:
        rows = await self._read(
            "SELECT dag_id, fileloc, structure, is_paused, is_active, updated_at FROM dag "
            "ORDER BY dag_id"
        )
        return [_dag_from(r) for r in rows]

    async def get_dag(self, dag_id: str) -> DagRecord | None:
        rows = await self._read(
            "SELECT dag_id, fileloc, structure, is_paused, is_active, updated_at FROM dag "
            "WHERE dag_id=?",
            (dag_id,),
        )
        return _dag_from(rows[0]) if rows else None

    async def set_dag_paused(self, dag_id: str, paused: bool) -> None:
        await self._write([("UPDATE dag SET is_paused=? WHERE dag_id=?", [(int(paused), dag_id)])])

    async def deactivate_dag_ids(self, dag_ids: Iterable[str]) -> None:
        ids = [(d,) for d in dag_ids]
        if not ids:
            return
        await self._write(
            [
                ("UPDATE dag SET is_active=0 WHERE dag_id=?", ids),
                ("DELETE FROM asset_consumer WHERE dag_id=?", ids),
                ("DELETE FROM asset_watcher WHERE dag_id=?", ids),
            ]
        )

    async def replace_import_errors(
        self, errors: Sequence[ImportErrorRecord], *, under: str | None = None
    ) -> None:
        rows = [(e.filename, e.message, dt_out(e.created_at)) for e in errors]

        def run(conn: sqlite3.Connection) -> None:
            if under is None:
                conn.execute("DELETE FROM import_error")
            else:
                prefix = under.rstrip(os.sep) + os.sep
                conn.execute(
                    "DELETE FROM import_error WHERE filename = ? OR substr(filename, 1, ?) = ?",
                    (under, len(prefix), prefix),
                )
            conn.executemany(
                "INSERT INTO import_error (filename, message, created_at) VALUES (?, ?, ?)", rows
            )

        await self._transaction(run)

    async def list_import_errors(self) -> list[ImportErrorRecord]:
        rows = await self._read(
            "SELECT filename, message, created_at FROM import_error ORDER BY filename"
        )
        return [ImportErrorRecord(r[0], r[1], dt_in(r[2])) for r in rows]  # type: ignore[arg-type]

    # -- runs ------------------------------------------------------------------------
    async def create_run(self, run: DagRunRecord, tis: Sequence[TaskInstanceRecord]) -> None:
        run_row = _run_row(run)
        ti_rows = [_ti_row(t) for t in tis]

        def run_tx(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT INTO dag_run ({_RUN_COLS}) VALUES ({', '.join('?' * 15)})", run_row)
            conn.executemany(_UPSERT_TI, ti_rows)

        try:
            await self._transaction(run_tx)
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError) and "dag_run" in str(exc.__cause__):
                raise RunAlreadyExists(
                    f"DAG {run.dag_id!r} already has a run {run.run_id!r}"
                ) from exc.__cause__
            raise

    async def get_run(self, dag_id: str, run_id: str) -> DagRunRecord | None:
        rows = await self._read(
            f"SELECT {_RUN_COLS} FROM dag_run WHERE dag_id=? AND run_id=?", (dag_id, run_id)
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
        where, params = _run_filter(dag_id, states, logical_date)
        sql = f"SELECT {_RUN_COLS} FROM dag_run{where}"
        sql += " ORDER BY logical_date DESC, created_at DESC LIMIT ? OFFSET ?"
        params.extend([limit, offset])
        return [_run_from(r) for r in await self._read(sql, params)]

    async def count_runs(
        self,
        dag_id: str | None = None,
        states: Iterable[DagRunState] | None = None,
        logical_date: datetime | None = None,
    ) -> int:
        where, params = _run_filter(dag_id, states, logical_date)
        rows = await self._read(f"SELECT COUNT(*) FROM dag_run{where}", params)
        return int(rows[0][0])

    async def latest_run(self, dag_id: str, run_type: str | None = None) -> DagRunRecord | None:
        sql = f"SELECT {_RUN_COLS} FROM dag_run WHERE dag_id=?"
        params: list[Any] = [dag_id]
        if run_type is not None:
            sql += " AND run_type=?"
            params.append(run_type)
        rows = await self._read(sql + " ORDER BY logical_date DESC LIMIT 1", params)
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
        run_id: str | None = None,
    ) -> list[DagRunRecord]:
        now_s, until_s = dt_out(now), dt_out(lease_until)
        sql = (
            f"SELECT {_RUN_COLS} FROM dag_run WHERE state IN ('queued', 'running') "
            "AND (owner IS NULL OR lease_until IS NULL OR lease_until < ?) "
        )
        params: list[Any] = [now_s]
        if dag_ids is not None:
            sql += "AND dag_id IN (SELECT value FROM json_each(?)) "
            params.append(json_out(sorted(dag_ids)))
        if run_id is not None:
            sql += "AND run_id=? "
            params.append(run_id)
        sql += "ORDER BY created_at LIMIT ?"
        params.append(limit)

        def run_tx(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(sql, params).fetchall()
            conn.executemany(
                "UPDATE dag_run SET owner=?, lease_until=? WHERE dag_id=? AND run_id=?",
                [(owner, until_s, r[0], r[1]) for r in rows],
            )
            return rows

        rows = await self._transaction(run_tx)
        out = []
        for r in rows:
            rec = _run_from(r)
            out.append(dataclasses.replace(rec, owner=owner, lease_until=lease_until))
        return out

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        until_s = dt_out(lease_until)

        def run_tx(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE dag_run SET lease_until=? WHERE owner=? AND state IN ('queued', 'running')",
                (until_s, owner),
            ).rowcount

        return await self._transaction(run_tx)

    async def release_runs(
        self, owner: str, run_keys: Iterable[tuple[str, str]] | None = None
    ) -> None:
        if run_keys is None:
            await self._write(
                [("UPDATE dag_run SET owner=NULL, lease_until=NULL WHERE owner=?", [(owner,)])]
            )
        else:
            await self._write(
                [
                    (
                        "UPDATE dag_run SET owner=NULL, lease_until=NULL "
                        "WHERE owner=? AND dag_id=? AND run_id=?",
                        [(owner, d, r) for d, r in run_keys],
                    )
                ]
            )

    async def expire_leases_of(self, owner: str) -> int:
        def run_tx(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE dag_run SET lease_until=NULL WHERE owner=?", (owner,)
            ).rowcount

        return await self._transaction(run_tx)

    # -- task instances --------------------------------------------------------------
    async def get_tis(self, dag_id: str, run_id: str) -> list[TaskInstanceRecord]:
        rows = await self._read(
            f"SELECT {_TI_COLS} FROM task_instance WHERE dag_id=? AND run_id=? "
            "ORDER BY task_id, map_index",
            (dag_id, run_id),
        )
        return [_ti_from(r) for r in rows]

    async def save_tis(self, tis: Sequence[TaskInstanceRow]) -> None:
        await self._write([(_UPSERT_TI, [_ti_row(t) for t in tis])])

    async def finish_ti(
        self,
        ti: TaskInstanceRow,
        xcoms: Sequence[XComRecord] = (),
        run: DagRunRecord | None = None,
        *,
        end_trigger: bool = False,
        asset_events: Sequence[AssetEventRecord] = (),
    ) -> None:
        op = _finish_op([(ti, xcoms)], end_trigger)
        if run is not None:
            op.append((_UPDATE_RUN, [_run_update_row(run)]))
        if asset_events:
            op.append((_INSERT_ASSET_EVENT, [_asset_event_row(e) for e in asset_events]))
        await self._write(op)

    async def finish_tis(
        self,
        ends: Sequence[tuple[TaskInstanceRow, Sequence[XComRecord]]],
        *,
        end_trigger: bool = False,
    ) -> None:
        if ends:
            await self._write(_finish_op(ends, end_trigger))

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
        now_s = dt_out(now)

        def run_tx(conn: sqlite3.Connection) -> Any:
            rows = conn.execute(
                f"SELECT {_RUN_COLS} FROM dag_run WHERE dag_id=? AND run_id=?", (dag_id, run_id)
            ).fetchall()
            if not rows:
                return None
            run = _run_from(rows[0])
            if held_elsewhere(run, owner, now):
                return run
            _apply_op(conn, op)
            if run_state is DagRunState.QUEUED:
                conn.execute(
                    "UPDATE dag_run SET state='queued', start_date=NULL, end_date=NULL, "
                    "owner=NULL, lease_until=NULL WHERE dag_id=? AND run_id=?",
                    (dag_id, run_id),
                )
            elif run_state is not None:
                conn.execute(
                    "UPDATE dag_run SET state=?, start_date=COALESCE(start_date, ?), end_date=?, "
                    "owner=NULL, lease_until=NULL WHERE dag_id=? AND run_id=?",
                    (run_state.value, now_s, now_s, dag_id, run_id),
                )
            return _run_from(
                conn.execute(
                    f"SELECT {_RUN_COLS} FROM dag_run WHERE dag_id=? AND run_id=?",
                    (dag_id, run_id),
                ).fetchone()
            )

        run = await self._transaction(run_tx)
        if run is None:
            raise RunNotFound(f"DAG {dag_id!r} has no run {run_id!r}")
        if held_elsewhere(run, owner, now):
            raise RunBusy(busy_message(run))
        return run  # type: ignore[no-any-return]

    async def change_for_owner(
        self, dag_id: str, run_id: str, tis: Sequence[TaskInstanceRow], *, now: datetime
    ) -> DagRunRecord:
        op = _reset_op(tis) if tis else []
        now_s = dt_out(now)
        events = [
            (BY_HAND_CLASSPATH, "{}", now_s, None, ti.dag_id, ti.run_id, ti.task_id, ti.map_index,
             ti.try_number, json_out(BY_HAND_EVENT), now_s)
            for ti in tis
        ]
        keys = [_ti_key(ti) for ti in tis]

        def run_tx(conn: sqlite3.Connection) -> tuple[DagRunRecord | None, list[str]]:
            rows = conn.execute(
                f"SELECT {_RUN_COLS} FROM dag_run WHERE dag_id=? AND run_id=?", (dag_id, run_id)
            ).fetchall()
            if not rows:
                return None, []
            run = _run_from(rows[0])
            if not held_by_live_owner(run, now):
                return run, []
            busy = []
            for key in keys:
                row = conn.execute(
                    "SELECT state FROM task_instance WHERE dag_id=? AND run_id=? AND task_id=? "
                    "AND map_index=?", key).fetchone()
                if row is None or not TaskState(row[0]).finished:
                    busy.append(f"{key[2]} ({row[0] if row else 'none'})")
            if busy:
                return run, busy
            _apply_op(conn, op)
            conn.executemany(
                f"INSERT INTO trigger ({_TRIGGER_INSERT_COLS}, fired_at) "
                f"VALUES ({', '.join('?' * 11)})",
                events,
            )
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
        update = _run_update_row(run)

        def run_tx(conn: sqlite3.Connection) -> DagRunRecord:
            by_hand = conn.execute(
                "SELECT 1 FROM trigger WHERE dag_id=? AND run_id=? AND classpath=? LIMIT 1",
                (*key, BY_HAND_CLASSPATH),
            ).fetchone()
            if by_hand is None:
                conn.execute(_UPDATE_RUN, update)
            else:
                conn.execute("DELETE FROM trigger WHERE dag_id=? AND run_id=? AND classpath=?",
                             (*key, BY_HAND_CLASSPATH))
                conn.execute(
                    "UPDATE dag_run SET state='queued', start_date=NULL, end_date=NULL, "
                    "owner=NULL, lease_until=NULL WHERE dag_id=? AND run_id=?", key,
                )
            row = conn.execute(
                f"SELECT {_RUN_COLS} FROM dag_run WHERE dag_id=? AND run_id=?", key
            ).fetchone()
            if row is None:
                raise RunNotFound(f"DAG {run.dag_id!r} has no run {run.run_id!r}")
            return _run_from(row)

        return await self._transaction(run_tx)

    # -- XCom -------------------------------------------------------------------------
    async def get_xcoms(
        self, dag_id: str, run_id: str, task_id: str | None = None
    ) -> list[XComRecord]:
        sql = "SELECT dag_id, run_id, task_id, key, value, map_index FROM xcom WHERE dag_id=? AND run_id=?"
        params: list[Any] = [dag_id, run_id]
        if task_id is not None:
            sql += " AND task_id=?"
            params.append(task_id)
        rows = await self._read(sql + " ORDER BY task_id, map_index, key", params)
        return [XComRecord(r[0], r[1], r[2], r[3], json_in(r[4]), r[5]) for r in rows]

    # -- triggers -------------------------------------------------------------------------
    async def defer_ti(self, ti: TaskInstanceRow, trigger: TriggerRecord) -> None:
        key = (ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        await self._write(
            [
                (_UPSERT_TI, [_ti_row(ti)]),
                (_DELETE_TI_TRIGGER, [key]),
                (
                    f"INSERT INTO trigger ({_TRIGGER_INSERT_COLS}) VALUES ({', '.join('?' * 10)})",
                    [
                        (
                            trigger.classpath,
                            json_out(trigger.kwargs),
                            dt_out(trigger.created_at),
                            dt_out(trigger.timeout_at),
                            trigger.dag_id,
                            trigger.run_id,
                            trigger.task_id,
                            trigger.map_index,
                            trigger.try_number,
                            None,
                        )
                    ],
                ),
            ]
        )

    async def claim_triggers(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[TriggerRecord]:
        now_s, until_s = dt_out(now), dt_out(lease_until)

        def run_tx(conn: sqlite3.Connection) -> list[Any]:
            # Unowned rows, then the rows of owners whose lease expired: each an index seek
            # on (fired_at, owner), never a scan of the rows live owners hold.
            expired = [
                r[0]
                for r in conn.execute(
                    "SELECT owner FROM trigger_lease WHERE lease_until < ? AND owner != ?",
                    (now_s, owner),
                )
            ]
            rows: list[Any] = []
            for held_by in (None, *expired):
                rows += conn.execute(
                    f"SELECT {_TRIGGER_COLS} FROM trigger WHERE fired_at IS NULL "
                    "AND owner IS ? ORDER BY id LIMIT ?",
                    (held_by, limit),
                ).fetchall()
            rows = sorted(rows, key=lambda r: r[0])[:limit]  # oldest first
            if rows:
                conn.execute(
                    "INSERT INTO trigger_lease (owner, lease_until) VALUES (?, ?) "
                    "ON CONFLICT (owner) DO UPDATE SET lease_until = excluded.lease_until",
                    (owner, until_s),
                )
                conn.executemany(
                    "UPDATE trigger SET owner=? WHERE id=?", [(owner, r[0]) for r in rows]
                )
            conn.executemany(  # dead owners left with nothing: their lease row goes
                "DELETE FROM trigger_lease WHERE owner=? AND NOT EXISTS "
                "(SELECT 1 FROM trigger WHERE fired_at IS NULL AND owner=?)",
                [(o, o) for o in expired],
            )
            return rows

        rows = await self._transaction(run_tx)
        return [
            dataclasses.replace(_trigger_from(r), owner=owner, lease_until=lease_until)
            for r in rows
        ]

    async def renew_trigger_leases(self, owner: str, lease_until: datetime) -> int:
        until_s = dt_out(lease_until)

        def run_tx(conn: sqlite3.Connection) -> int:
            conn.execute("UPDATE trigger_lease SET lease_until=? WHERE owner=?", (until_s, owner))
            held = conn.execute(
                "SELECT COUNT(*) FROM trigger WHERE fired_at IS NULL AND owner=?", (owner,)
            ).fetchone()
            return int(held[0])

        return await self._transaction(run_tx)

    async def release_triggers(self, owner: str, trigger_ids: Iterable[int] | None = None) -> None:
        if trigger_ids is None:
            await self._write(
                [
                    ("UPDATE trigger SET owner=NULL WHERE owner=?", [(owner,)]),
                    ("UPDATE asset_watcher SET owner=NULL WHERE owner=?", [(owner,)]),
                    ("DELETE FROM trigger_lease WHERE owner=?", [(owner,)]),
                ]
            )
        else:
            await self._write(
                [
                    (
                        "UPDATE trigger SET owner=NULL WHERE owner=? AND id=?",
                        [(owner, i) for i in trigger_ids],
                    )
                ]
            )

    async def fire_trigger(self, trigger_id: int, event: dict[str, Any], now: datetime) -> None:
        await self._write(
            [
                (
                    "UPDATE trigger SET event=?, fired_at=?, owner=NULL "
                    "WHERE id=? AND fired_at IS NULL",
                    [(json_out(event), dt_out(now), trigger_id)],
                )
            ]
        )

    async def fired_triggers(self, run_keys: Iterable[tuple[str, str]]) -> list[TriggerRecord]:
        keys = [list(k) for k in run_keys]
        if not keys:
            return []
        rows = await self._read(
            # Fired rows are few; by run they are thousands each (every parked sensor), and
            # the scheduler asks every second: the plan must start from the fired ones.
            f"SELECT {_TRIGGER_COLS} FROM trigger INDEXED BY trigger_unfired "
            "WHERE fired_at IS NOT NULL AND (+dag_id, +run_id) IN "
            "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') "
            "FROM json_each(?)) ORDER BY id",
            (json_out(keys),),
        )
        return [_trigger_from(r) for r in rows]

    async def get_trigger(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> TriggerRecord | None:
        rows = await self._read(
            f"SELECT {_TRIGGER_COLS} FROM trigger WHERE dag_id=? AND run_id=? AND task_id=? "
            "AND map_index=?",
            (dag_id, run_id, task_id, map_index),
        )
        return _trigger_from(rows[0]) if rows else None

    async def delete_trigger(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> None:
        await self._write([(_DELETE_TI_TRIGGER, [(dag_id, run_id, task_id, map_index)])])

    async def delete_triggers(self, trigger_ids: Iterable[int]) -> None:
        ids = [(i,) for i in trigger_ids]
        if ids:
            await self._write([("DELETE FROM trigger WHERE id=?", ids)])

    async def list_triggers(self) -> list[TriggerRecord]:
        rows = await self._read(f"SELECT {_TRIGGER_COLS} FROM trigger ORDER BY id")
        return [_trigger_from(r) for r in rows]

    # -- pools ---------------------------------------------------------------------------
    async def list_pools(self) -> list[PoolRecord]:
        rows = await self._read(
            "SELECT name, slots, description, include_deferred FROM pool ORDER BY name"
        )
        return [PoolRecord(r[0], int(r[1]), r[2], bool(r[3])) for r in rows]

    async def get_pool(self, name: str) -> PoolRecord | None:
        rows = await self._read(
            "SELECT name, slots, description, include_deferred FROM pool WHERE name=?", (name,)
        )
        return PoolRecord(rows[0][0], int(rows[0][1]), rows[0][2], bool(rows[0][3])) if rows else None

    async def set_pool(self, pool: PoolRecord) -> None:
        row = (pool.name, pool.slots, pool.description, int(pool.include_deferred))
        await self._transaction(
            lambda conn: conn.execute(
                "INSERT INTO pool (name, slots, description, include_deferred) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET slots=excluded.slots, "
                "description=excluded.description, include_deferred=excluded.include_deferred",
                row,
            )
        )

    async def delete_pool(self, name: str) -> None:
        if name == DEFAULT_POOL:
            raise PoolError(f"{DEFAULT_POOL} cannot be deleted (set its slots instead)")
        busy = self.POOL_BUSY_STATES

        def run_tx(conn: sqlite3.Connection) -> str | None:
            if conn.execute("SELECT 1 FROM pool WHERE name=?", (name,)).fetchone() is None:
                return "missing"
            n = conn.execute(
                f"SELECT COUNT(*) FROM task_instance WHERE pool=? AND state IN ({', '.join('?' * len(busy))})",
                (name, *busy),
            ).fetchone()[0]
            if n:
                return f"{n}"
            conn.execute("DELETE FROM pool WHERE name=?", (name,))
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
        busy = self.POOL_BUSY_STATES
        rows = await self._read(
            f"SELECT pool, state, COUNT(*) FROM task_instance "
            f"WHERE state IN ({', '.join('?' * len(busy))}) GROUP BY pool, state",
            busy,
        )
        out: dict[str, dict[str, int]] = {}
        for pool, state, n in rows:
            out.setdefault(pool, {})[state] = int(n)
        return out

    # -- webhook events ------------------------------------------------------------------
    async def deliver_webhook(self, key: str, payload: Any, now: datetime) -> int:
        body = json_out(payload)
        return await self._transaction(
            lambda conn: int(
                conn.execute(
                    "INSERT INTO webhook_event (key, payload, created_at) VALUES (?, ?, ?)",
                    (key, body, dt_out(now)),
                ).lastrowid
                or 0
            )
        )

    async def first_webhook(self, key: str, after_id: int = 0) -> tuple[int, Any] | None:
        rows = await self._read(
            "SELECT id, payload FROM webhook_event WHERE key=? AND id>? ORDER BY id LIMIT 1",
            (key, after_id),
        )
        return (int(rows[0][0]), json_in(rows[0][1])) if rows else None

    # -- assets --------------------------------------------------------------------------
    async def record_asset_events(self, events: Sequence[AssetEventRecord]) -> list[int]:
        rows = [_asset_event_row(e) for e in events]

        def run_tx(conn: sqlite3.Connection) -> list[int]:
            return [int(conn.execute(_INSERT_ASSET_EVENT, row).lastrowid or 0) for row in rows]

        return await self._transaction(run_tx)

    async def list_asset_events(
        self, uri: str | None = None, limit: int = 100
    ) -> list[AssetEventRecord]:
        sql = f"SELECT {_ASSET_EVENT_COLS} FROM asset_event e"
        params: list[Any] = []
        if uri is not None:
            sql += " WHERE e.uri=?"
            params.append(uri)
        rows = await self._read(sql + " ORDER BY e.id DESC LIMIT ?", [*params, limit])
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
            sql += " AND q.dag_id IN (SELECT value FROM json_each(?))"
            params.append(json_out(sorted(dag_ids)))
        out: dict[str, list[AssetEventRecord]] = {}
        for r in await self._read(sql + " ORDER BY q.dag_id, e.id", params):
            out.setdefault(r[0], []).append(_asset_event_from(r[1:]))
        return out

    async def create_asset_run(self, run: DagRunRecord, event_ids: Sequence[int]) -> bool:
        run_row = _run_row(run)
        consume = [(run.run_id, run.dag_id, i) for i in event_ids]

        def run_tx(conn: sqlite3.Connection) -> None:
            n = conn.executemany(
                "UPDATE asset_queue SET run_id=? WHERE dag_id=? AND event_id=? AND run_id IS NULL",
                consume,
            ).rowcount
            if n != len(consume):
                raise _Taken
            conn.execute(f"INSERT INTO dag_run ({_RUN_COLS}) VALUES ({', '.join('?' * 15)})", run_row)

        try:
            await self._transaction(run_tx)
        except _Taken:
            return False
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError) and "dag_run" in str(exc.__cause__):
                raise RunAlreadyExists(
                    f"DAG {run.dag_id!r} already has a run {run.run_id!r}"
                ) from exc.__cause__
            raise
        return True

    async def asset_events_of_run(self, dag_id: str, run_id: str) -> list[AssetEventRecord]:
        rows = await self._read(
            f"SELECT {_ASSET_EVENT_COLS} FROM asset_queue q JOIN asset_event e "
            "ON e.id = q.event_id WHERE q.dag_id=? AND q.run_id=? ORDER BY e.id",
            (dag_id, run_id),
        )
        return [_asset_event_from(r) for r in rows]

    async def list_asset_watchers(self) -> list[AssetWatcherRecord]:
        rows = await self._read(f"SELECT {_WATCHER_COLS} FROM asset_watcher ORDER BY id")
        return [_watcher_from(r) for r in rows]

    async def claim_asset_watchers(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[AssetWatcherRecord]:
        now_s, until_s = dt_out(now), dt_out(lease_until)
        claimable = (
            f"SELECT {_WATCHER_COLS} FROM asset_watcher w WHERE kwargs IS NOT NULL AND "
            "(owner IS NULL OR (owner != ? AND NOT EXISTS (SELECT 1 FROM trigger_lease l "
            "WHERE l.owner = w.owner AND l.lease_until >= ?))) ORDER BY id LIMIT ?"
        )
        # Asked every second by every triggerer: take the write lock only when there is
        # something to claim.
        if not await self._read(claimable, (owner, now_s, 1)):
            return []

        def run_tx(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(claimable, (owner, now_s, limit)).fetchall()
            if rows:
                conn.execute(
                    "INSERT INTO trigger_lease (owner, lease_until) VALUES (?, ?) "
                    "ON CONFLICT (owner) DO UPDATE SET lease_until = excluded.lease_until",
                    (owner, until_s),
                )
                conn.executemany(
                    "UPDATE asset_watcher SET owner=? WHERE id=?", [(owner, r[7]) for r in rows]
                )
            return rows

        rows = await self._transaction(run_tx)
        return [dataclasses.replace(_watcher_from(r), owner=owner) for r in rows]

    async def owned_asset_watchers(self, owner: str) -> dict[int, int]:
        rows = await self._read(
            "SELECT id, version FROM asset_watcher WHERE owner=? AND kwargs IS NOT NULL", (owner,)
        )
        return {int(r[0]): int(r[1]) for r in rows}

    async def fire_asset_watcher(
        self,
        watcher: AssetWatcherRecord,
        version: int,
        event: AssetEventRecord,
        next_kwargs: dict[str, Any] | None,
    ) -> bool:
        row = _asset_event_row(event)
        after = None if next_kwargs is None else json_out(next_kwargs)

        def run_tx(conn: sqlite3.Connection) -> bool:
            n = conn.execute(
                "UPDATE asset_watcher SET kwargs=? WHERE id=? AND version=? AND owner=?",
                (after, watcher.id, version, watcher.owner),
            ).rowcount
            if n == 0:
                return False
            conn.execute(_INSERT_ASSET_EVENT, row)
            return True

        return await self._transaction(run_tx)

    # -- users, API tokens, UI sessions -------------------------------------------------
    async def create_user(self, user: UserRecord) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO app_user (username, password_hash, role, created_at) "
                "VALUES (?, ?, ?, ?)",
                (user.username, user.password_hash, user.role, dt_out(user.created_at)),
            )

        try:
            await self._transaction(tx)
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise UserAlreadyExists(f"a user {user.username!r} exists already") from None
            raise

    async def get_user(self, username: str) -> UserRecord | None:
        rows = await self._read(
            "SELECT username, password_hash, role, created_at FROM app_user WHERE username=?",
            (username,),
        )
        return _user_from(rows[0]) if rows else None

    async def list_users(self) -> list[UserRecord]:
        rows = await self._read(
            "SELECT username, password_hash, role, created_at FROM app_user ORDER BY username"
        )
        return [_user_from(r) for r in rows]

    async def delete_user(self, username: str) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM api_token WHERE username=?", (username,))
            conn.execute("DELETE FROM web_session WHERE username=?", (username,))
            return conn.execute("DELETE FROM app_user WHERE username=?", (username,)).rowcount > 0

        return await self._transaction(tx)

    async def create_api_token(self, token: ApiTokenRecord) -> None:
        await self._transaction(lambda conn: conn.execute(
            f"INSERT INTO api_token ({_TOKEN_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
            (token.token_id, token.token_hash, token.username, token.name,
             dt_out(token.created_at), dt_out(token.expires_at)),
        ))

    async def get_api_token(self, token_hash: str) -> ApiTokenRecord | None:
        rows = await self._read(
            f"SELECT {_TOKEN_COLS} FROM api_token WHERE token_hash=?", (token_hash,)
        )
        return _token_from(rows[0]) if rows else None

    async def list_api_tokens(self, username: str | None = None) -> list[ApiTokenRecord]:
        if username is None:
            rows = await self._read(f"SELECT {_TOKEN_COLS} FROM api_token ORDER BY created_at")
        else:
            rows = await self._read(
                f"SELECT {_TOKEN_COLS} FROM api_token WHERE username=? ORDER BY created_at",
                (username,),
            )
        return [_token_from(r) for r in rows]

    async def revoke_api_token(self, token_id: str) -> bool:
        return await self._transaction(lambda conn: conn.execute(
            "DELETE FROM api_token WHERE token_id=?", (token_id,)).rowcount > 0)

    async def create_web_session(self, session: WebSessionRecord, now: datetime) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM web_session WHERE expires_at < ?", (dt_out(now),))
            conn.execute(
                "INSERT INTO web_session (session_hash, username, created_at, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (session.session_hash, session.username, dt_out(session.created_at),
                 dt_out(session.expires_at)),
            )

        await self._transaction(tx)

    async def get_web_session(self, session_hash: str) -> WebSessionRecord | None:
        rows = await self._read(
            "SELECT session_hash, username, created_at, expires_at FROM web_session "
            "WHERE session_hash=?",
            (session_hash,),
        )
        if not rows:
            return None
        r = rows[0]
        return WebSessionRecord(r[0], r[1], dt_in(r[2]), dt_in(r[3]))  # type: ignore[arg-type]

    async def delete_web_session(self, session_hash: str) -> None:
        await self._transaction(lambda conn: conn.execute(
            "DELETE FROM web_session WHERE session_hash=?", (session_hash,)))

    # -- Variables and Connections ------------------------------------------------------
    async def get_variable(self, key: str) -> VariableRecord | None:
        rows = await self._read("SELECT key, value, description FROM variable WHERE key=?", (key,))
        return VariableRecord(*rows[0]) if rows else None

    async def list_variables(self) -> list[VariableRecord]:
        rows = await self._read("SELECT key, value, description FROM variable ORDER BY key")
        return [VariableRecord(*r) for r in rows]

    async def set_variables(self, variables: Sequence[VariableRecord]) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO variable (key, value, description) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value=excluded.value, "
                "description=excluded.description",
                [(v.key, v.value, v.description) for v in variables],
            )

        await self._transaction(tx)

    async def delete_variable(self, key: str) -> bool:
        return await self._transaction(lambda conn: conn.execute(
            "DELETE FROM variable WHERE key=?", (key,)).rowcount > 0)

    async def get_connection(self, conn_id: str) -> ConnectionRecord | None:
        rows = await self._read(f"SELECT {_CONN_COLS} FROM connection WHERE conn_id=?", (conn_id,))
        return ConnectionRecord(*rows[0]) if rows else None

    async def list_connections(self) -> list[ConnectionRecord]:
        rows = await self._read(f"SELECT {_CONN_COLS} FROM connection ORDER BY conn_id")
        return [ConnectionRecord(*r) for r in rows]

    async def set_connection(self, connection: ConnectionRecord) -> None:
        c = connection
        await self._transaction(lambda conn: conn.execute(
            f"INSERT OR REPLACE INTO connection ({_CONN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (c.conn_id, c.conn_type, c.host, c.port, c.login, c.password_enc, c.schema,
             c.extra_enc, c.description),
        ))

    async def delete_connection(self, conn_id: str) -> bool:
        return await self._transaction(lambda conn: conn.execute(
            "DELETE FROM connection WHERE conn_id=?", (conn_id,)).rowcount > 0)

    # -- deadline misses ----------------------------------------------------------------
    async def record_deadline_miss(self, miss: DeadlineMissRecord) -> bool:
        m = miss

        def tx(conn: sqlite3.Connection) -> bool:
            if conn.execute(
                f"INSERT OR IGNORE INTO deadline_miss ({_MISS_COLS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (m.dag_id, m.run_id, m.task_id or "", m.alert_index, dt_out(m.deadline_at),
                 dt_out(m.missed_at), m.description, m.owner, m.alert_state, m.alert_error),
            ).rowcount > 0:
                return True
            if m.owner is None:
                return False
            # This very record, committed by an earlier attempt whose answer was lost?
            return conn.execute(
                f"SELECT 1 FROM deadline_miss WHERE {_MISS_KEY} "
                "AND owner=? AND missed_at=? AND alert_state=?",
                (m.dag_id, m.run_id, m.task_id or "", m.alert_index, m.owner,
                 dt_out(m.missed_at), m.alert_state),
            ).fetchone() is not None

        return await self._transaction(tx)

    async def claim_deadline_alert(
        self, dag_id: str, run_id: str, task_id: str | None, alert_index: int, owner: str,
    ) -> DeadlineMissRecord | None:
        key = (dag_id, run_id, task_id or "", alert_index)
        select = f"SELECT {_MISS_COLS} FROM deadline_miss WHERE {_MISS_KEY}"
        rows = await self._read(select, key)
        if not rows:
            return None
        found = _miss_from(rows[0])
        if found.alert_state != "sending" or found.owner == owner:
            return found

        def tx(conn: sqlite3.Connection) -> DeadlineMissRecord | None:
            if conn.execute(  # while unsent, still the owner read's, and the run `owner`'s
                f"UPDATE deadline_miss SET owner=? WHERE {_MISS_KEY} "
                "AND alert_state='sending' AND owner IS ? AND EXISTS (SELECT 1 FROM dag_run r "
                "WHERE r.dag_id=deadline_miss.dag_id AND r.run_id=deadline_miss.run_id "
                "AND r.owner=?)", (owner, *key, found.owner, owner),
            ).rowcount:
                return dataclasses.replace(found, owner=owner)
            row = conn.execute(select, key).fetchone()
            return None if row is None else _miss_from(row)

        return await self._transaction(tx)

    async def set_deadline_alert_state(
        self, dag_id: str, run_id: str, task_id: str | None, alert_index: int,
        state: str, error: str | None = None, *, owner: str | None = None,
    ) -> bool:
        sql = f"UPDATE deadline_miss SET alert_state=?, alert_error=? WHERE {_MISS_KEY}"
        params: tuple[Any, ...] = (state, error, dag_id, run_id, task_id or "", alert_index)
        if owner is not None:
            sql += " AND owner=?"
            params += (owner,)
        return bool(await self._transaction(lambda conn: conn.execute(sql, params).rowcount))

    async def deadline_misses(
        self, dag_id: str, run_id: str | None = None
    ) -> list[DeadlineMissRecord]:
        sql = f"SELECT {_MISS_COLS} FROM deadline_miss WHERE dag_id=?"
        params: list[Any] = [dag_id]
        if run_id is not None:
            sql += " AND run_id=?"
            params.append(run_id)
        rows = await self._read(sql + " ORDER BY deadline_at, run_id, task_id, alert_index", params)
        return [_miss_from(r) for r in rows]

    # -- processes ----------------------------------------------------------------------
    async def register_process(self, process: ProcessRecord) -> None:
        await self._write(
            [
                (
                    "INSERT OR REPLACE INTO process (process_id, kind, hostname, pid, started_at, "
                    "heartbeat_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            process.process_id,
                            process.kind,
                            process.hostname,
                            process.pid,
                            dt_out(process.started_at),
                            dt_out(process.heartbeat_at),
                        )
                    ],
                )
            ]
        )

    async def heartbeat(self, process_id: str, now: datetime) -> None:
        await self._write(
            [("UPDATE process SET heartbeat_at=? WHERE process_id=?", [(dt_out(now), process_id)])]
        )

    async def unregister_process(self, process_id: str) -> None:
        await self._write([("DELETE FROM process WHERE process_id=?", [(process_id,)])])

    async def list_processes(self, kind: str | None = None) -> list[ProcessRecord]:
        sql = "SELECT process_id, kind, hostname, pid, started_at, heartbeat_at FROM process"
        params: list[Any] = []
        if kind is not None:
            sql += " WHERE kind=?"
            params.append(kind)
        rows = await self._read(sql + " ORDER BY started_at", params)
        return [
            ProcessRecord(r[0], r[1], r[2], r[3], dt_in(r[4]), dt_in(r[5]))  # type: ignore[arg-type]
            for r in rows
        ]


def _asset_rows_op(dags: Sequence[DagRecord]) -> Op:
    """Statements that record what the DAGs consume and the watchers they define."""
    consumers = [(d.dag_id, uri) for d in dags for uri in consumed_uris(d.structure)]
    watchers = [row for d in dags for row in watcher_rows(d.dag_id, d.structure)]
    op: Op = [("DELETE FROM asset_consumer WHERE dag_id=?", [(d.dag_id,) for d in dags])]
    if consumers:
        op.append(("INSERT OR IGNORE INTO asset_consumer (dag_id, uri) VALUES (?, ?)", consumers))
    op.append((
        "DELETE FROM asset_watcher WHERE dag_id=? AND uri || char(10) || name NOT IN "
        "(SELECT value FROM json_each(?))",
        [
            (d.dag_id, json_out([watcher_key(r[0], r[1]) for r in watcher_rows(d.dag_id, d.structure)]))
            for d in dags
        ],
    ))
    if watchers:
        op.append((_UPSERT_WATCHER, [(*row, row[4]) for row in watchers]))
    return op


_MISS_COLS = ("dag_id, run_id, task_id, alert_index, deadline_at, missed_at, description, "
              "owner, alert_state, alert_error")
_MISS_KEY = "dag_id=? AND run_id=? AND task_id=? AND alert_index=?"


def _miss_from(r: Sequence[Any]) -> DeadlineMissRecord:
    return DeadlineMissRecord(
        dag_id=r[0], run_id=r[1], task_id=r[2] or None, alert_index=r[3],
        deadline_at=dt_in(r[4]), missed_at=dt_in(r[5]),  # type: ignore[arg-type]
        description=r[6], owner=r[7], alert_state=r[8], alert_error=r[9],
    )


def _trigger_from(r: Sequence[Any]) -> TriggerRecord:
    return TriggerRecord(
        id=r[0],
        classpath=r[1],
        kwargs=json_in(r[2]),
        created_at=dt_in(r[3]),  # type: ignore[arg-type]
        timeout_at=dt_in(r[4]),
        owner=r[5],
        lease_until=dt_in(r[6]),
        dag_id=r[7],
        run_id=r[8],
        task_id=r[9],
        map_index=r[10],
        try_number=r[11],
        event=json_in(r[12]),
        fired_at=dt_in(r[13]),
    )


def _dag_from(r: Sequence[Any]) -> DagRecord:
    return DagRecord(
        dag_id=r[0],
        fileloc=r[1],
        structure=json_in(r[2]),
        is_paused=bool(r[3]),
        is_active=bool(r[4]),
        updated_at=dt_in(r[5]),
    )


def _migration_scripts() -> list[tuple[int, str, str]]:
    out = []
    folder = resources.files("aflow.store.sqlite").joinpath("migrations")
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        version_s, _, rest = name.partition("_")
        out.append((int(version_s), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(out)


def _split_statements(script: str) -> list[str]:
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        if not current and line.strip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
