"""SQLExecuteQueryOperator: run SQL on SQLite (aiosqlite) or PostgreSQL (asyncpg) through
an aflow Connection, with bound parameters, and hand the rows to XCom.

- `sql` is one statement or a list run in order in ONE transaction (all or nothing);
  `autocommit=True` commits each statement on its own instead.
- Parameters are always bound by the driver, never formatted into the text. A list binds
  positional placeholders (`?` on SQLite, `$1` on PostgreSQL) and is bound to every
  statement; a dict binds `:name` placeholders on both, each statement taking the names
  it uses. On PostgreSQL they are rewritten to `$n` outside literals, quoted identifiers,
  dollar-quoted bodies and comments (triggers.sql_placeholders), for every statement
  before connecting, so a name missing from the dict runs nothing.
- The XCom is the last statement's rows (`return_last=False`: one entry per statement);
  a statement that returns no rows (DDL, an INSERT without RETURNING) gives None. Rows
  are lists (`output_format="list"`) or dicts by column name (`"dict"`), their values
  made JSON-safe (decimals as numbers, times as ISO text, bytes as hex).
- `max_rows` bounds what one statement may return: with `on_max_rows="fail"` (the
  default) more rows fail the task, saying so; with `"truncate"` the first `max_rows` are
  kept and a warning is logged. Only `max_rows + 1` rows are ever fetched.

Connection types: `sqlite` (the file is the connection's schema or host:
`sqlite:////abs/file.db`, `sqlite:///relative.db`) and `postgres`/`postgresql` (host,
port, login, password, schema = database). A PostgreSQL connection is read exactly as
SqlTrigger reads it (triggers.sql.parse_dsn): its extras are those triggers.pg_options
accepts (`connect_timeout`, seconds > 0, default 10, 0 read as the default; asyncpg's
connection options such as `sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
`target_session_attrs`; the settings `search_path`, `application_name`, `options`),
handed to asyncpg as a DSN's options; extras only Airflow's hook or libpq reads (`cursor`,
`iam`, `keepalives_idle`, ...: triggers.pg_options.PG_IGNORED_OPTIONS) are ignored with a
warning; any other extra, or a bad value, fails the task, naming it, before any
connection is tried. A host given only in the extras is the host.
Errors name the connection and host, never the password.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import aiosqlite
import anyio
import asyncpg

from aflow.authoring.baseoperator import BaseOperator
from aflow.exceptions import AflowError, DagDefinitionError
from aflow.secrets.backends import lookup_connection
from aflow.secrets.connection import Connection
from aflow.secrets.masking import mask
from triggers.sql import Dsn, jsonable, parse_dsn
from triggers.sql_placeholders import pg_named_to_positional

log = logging.getLogger("aflow.task.sql")

DEFAULT_MAX_ROWS = 1000
SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_TYPES = ("sqlite",)
POSTGRES_TYPES = ("postgres", "postgresql")
APPLICATION_NAME = "aflow-sql-operator"  # unless the connection names one


class SqlOperatorError(AflowError):
    """A SQL task failed: no connection, a rejected statement, too many rows."""


@dataclass(frozen=True, slots=True)
class StatementResult:
    columns: list[str] | None  # None: the statement returns no rows
    rows: list[tuple[Any, ...]]
    truncated: bool


def _where(conn: Connection) -> str:
    """The connection as errors show it: type, host and database, never the password."""
    if conn.conn_type in SQLITE_TYPES:
        return f"sqlite file {conn.schema or conn.host!r}"
    host = conn.host or conn.extra.get("host") or "localhost"
    port = f":{conn.port}" if conn.port else ""
    return f"{conn.conn_type} at {host}{port}/{conn.schema or ''}"


PG_CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                     asyncpg.InternalClientError)  # (the last: no host fits target_session_attrs)
"""What connect_pg raises when the server cannot be reached or refuses."""


def pg_dsn_of(conn: Connection) -> Dsn:
    """A PostgreSQL connection as the SQL trigger reads it (triggers.sql.parse_dsn), so
    the operator, `aflow connections test` and the sensor accept the same extras and hand
    them to asyncpg the same way. ValueError names a bad extra and what is accepted."""
    if not conn.host and not conn.extra.get("host"):
        conn = dataclasses.replace(conn, host="localhost")
    return parse_dsn(conn.get_uri(), name=f"connection {conn.conn_id!r}")


async def connect_pg(dsn: Dsn) -> asyncpg.Connection:
    """One connection to `dsn` (see pg_dsn_of) within its connect timeout."""
    named = {key for key, _ in parse_qsl(urlsplit(dsn.target).query)}
    settings = None if "application_name" in named else {"application_name": APPLICATION_NAME}
    return await asyncpg.connect(dsn.target, timeout=dsn.connect_timeout, server_settings=settings)


class SQLExecuteQueryOperator(BaseOperator):
    """Run `sql` on the database of connection `conn_id`; the rows go to XCom."""

    template_fields: Sequence[str] = ("sql", "parameters", "conn_id")
    template_ext: Sequence[str] = (".sql",)
    ui_color = "#cdaaed"

    def __init__(
        self,
        *,
        sql: str | list[str],
        conn_id: str,
        parameters: list[Any] | tuple[Any, ...] | dict[str, Any] | None = None,
        autocommit: bool = False,
        return_last: bool = True,
        output_format: Literal["list", "dict"] = "list",
        max_rows: int = DEFAULT_MAX_ROWS,
        on_max_rows: Literal["fail", "truncate"] = "fail",
        **kwargs: Any,
    ) -> None:
        task_id = kwargs.get("task_id")
        if not isinstance(sql, str | list | tuple) or not sql:
            raise DagDefinitionError(f"task {task_id!r}: sql must be a statement or a list of them")
        if not isinstance(conn_id, str) or not conn_id:
            raise DagDefinitionError(f"task {task_id!r}: conn_id must name a connection")
        if parameters is not None and not isinstance(parameters, list | tuple | dict):
            raise DagDefinitionError(
                f"task {task_id!r}: parameters must be a list (positional) or a dict (named)"
            )
        if output_format not in ("list", "dict"):
            raise DagDefinitionError(f"task {task_id!r}: output_format must be 'list' or 'dict'")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0:
            raise DagDefinitionError(f"task {task_id!r}: max_rows must be an integer >= 0")
        if on_max_rows not in ("fail", "truncate"):
            raise DagDefinitionError(f"task {task_id!r}: on_max_rows must be 'fail' or 'truncate'")
        self.sql = list(sql) if isinstance(sql, tuple) else sql
        self.conn_id = conn_id
        self.parameters = parameters
        self.autocommit = autocommit
        self.return_last = return_last
        self.output_format = output_format
        self.max_rows = max_rows
        self.on_max_rows = on_max_rows
        super().__init__(**kwargs)

    def statements(self) -> list[str]:
        stmts = [self.sql] if isinstance(self.sql, str) else list(self.sql)
        for i, stmt in enumerate(stmts):
            if not isinstance(stmt, str) or not stmt.strip():
                raise SqlOperatorError(
                    f"task {self.task_id!r}: statement {i + 1} of sql is empty or not text"
                )
        return stmts

    async def execute(self, context: dict[str, Any]) -> Any:
        stmts = self.statements()
        conn = await lookup_connection(self.conn_id)
        if conn.conn_type in SQLITE_TYPES:
            results = await self._run_sqlite(conn, stmts)
        elif conn.conn_type in POSTGRES_TYPES:
            results = await self._run_postgres(conn, stmts)
        else:
            raise SqlOperatorError(
                f"connection {self.conn_id!r} has type {conn.conn_type!r}: "
                "SQLExecuteQueryOperator supports sqlite and postgres"
            )
        out = [self._output(i, r) for i, r in enumerate(results)]
        if not self.do_xcom_push:
            return None
        return out[-1] if self.return_last else out

    # -- results -------------------------------------------------------------------------
    def _check_rows(self, index: int, fetched: list[Any]) -> tuple[list[Any], bool]:
        if len(fetched) <= self.max_rows:
            return fetched, False
        what = f"statement {index + 1}" if not isinstance(self.sql, str) else "the query"
        if self.on_max_rows == "fail":
            raise SqlOperatorError(
                f"task {self.task_id!r}: {what} returned more than max_rows={self.max_rows} "
                "rows; raise max_rows, narrow the query, or pass on_max_rows='truncate'"
            )
        log.warning("%s returned more than max_rows=%d rows: keeping the first %d",
                    what, self.max_rows, self.max_rows)
        return fetched[: self.max_rows], True

    def _output(self, index: int, result: StatementResult) -> Any:
        if result.columns is None:
            return None
        log.info("statement %d returned %d row(s)%s", index + 1, len(result.rows),
                 " (truncated)" if result.truncated else "")
        if self.output_format == "dict":
            return [{c: jsonable(v) for c, v in zip(result.columns, row, strict=False)}
                    for row in result.rows]
        return [[jsonable(v) for v in row] for row in result.rows]

    # -- SQLite ----------------------------------------------------------------------------
    async def _run_sqlite(self, conn: Connection, stmts: list[str]) -> list[StatementResult]:
        path = conn.schema or conn.host
        if not path:
            raise SqlOperatorError(
                f"connection {self.conn_id!r}: a sqlite connection names its file "
                "(sqlite:////absolute/path.db or sqlite:///relative/path.db)"
            )
        params: Any = self.parameters
        if isinstance(params, list):
            params = tuple(params)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise SqlOperatorError(
                f"connection {self.conn_id!r}: cannot open {_where(conn)}: {exc}"
            ) from None
        results: list[StatementResult] = []
        try:
            await db.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if not self.autocommit:
                await db.execute("BEGIN")
            for i, stmt in enumerate(stmts):
                log.info("running statement %d on %s: %s", i + 1, _where(conn), stmt)
                try:
                    cursor = await db.execute(stmt, () if params is None else params)
                    if cursor.description is None:
                        results.append(StatementResult(None, [], False))
                    else:
                        columns = [d[0] for d in cursor.description]
                        fetched = await cursor.fetchmany(self.max_rows + 1)
                        rows, truncated = self._check_rows(i, [tuple(r) for r in fetched])
                        results.append(StatementResult(columns, rows, truncated))
                    await cursor.close()
                except (sqlite3.Error, ValueError) as exc:
                    raise SqlOperatorError(
                        f"connection {self.conn_id!r} ({_where(conn)}): statement {i + 1} "
                        f"failed: {type(exc).__name__}: {mask(str(exc))}\n  SQL: {stmt}"
                    ) from None
            if not self.autocommit:
                await db.execute("COMMIT")
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                except sqlite3.Error as exc:  # the original error matters more
                    log.warning("rollback on %s failed: %s", _where(conn), exc)
                await db.close()
            raise
        await db.close()
        return results

    # -- PostgreSQL ------------------------------------------------------------------------
    def _pg_dsn(self, conn: Connection) -> Dsn:
        """See pg_dsn_of: a bad extra fails the task naming the connection, the extra and
        what is accepted, before any connection is tried."""
        try:
            return pg_dsn_of(conn)
        except ValueError as exc:
            raise SqlOperatorError(f"connection {self.conn_id!r}: {mask(str(exc))}") from None

    async def _pg_connect(self, conn: Connection) -> asyncpg.Connection:
        dsn = self._pg_dsn(conn)
        try:
            return await connect_pg(dsn)
        except PG_CONNECT_ERRORS as exc:
            raise SqlOperatorError(
                f"connection {self.conn_id!r}: cannot connect to {_where(conn)} as "
                f"{conn.login!r}: {type(exc).__name__}: {mask(str(exc))}"
            ) from None

    def _pg_args(self, i: int, stmt: str) -> tuple[str, list[Any]]:
        """The statement as asyncpg takes it (`:name` rewritten to `$n`) and its values;
        done for every statement before connecting, so a missing value runs nothing."""
        if not isinstance(self.parameters, dict):
            return stmt, list(self.parameters or [])
        try:
            return pg_named_to_positional(stmt, self.parameters)
        except ValueError as exc:
            raise SqlOperatorError(
                f"task {self.task_id!r}: statement {i + 1}: {exc}\n  SQL: {stmt}"
            ) from None

    async def _pg_statement(
        self, db: asyncpg.Connection, i: int, text: str, args: list[Any]
    ) -> StatementResult:
        prepared = await db.prepare(text)
        columns = [a.name for a in prepared.get_attributes()]
        if not columns:
            await prepared.fetch(*args)
            return StatementResult(None, [], False)
        if db.is_in_transaction():
            fetched = await (await prepared.cursor(*args)).fetch(self.max_rows + 1)
        else:  # autocommit: a cursor needs a transaction of its own
            async with db.transaction():
                fetched = await (await prepared.cursor(*args)).fetch(self.max_rows + 1)
        rows, truncated = self._check_rows(i, [tuple(r) for r in fetched])
        return StatementResult(columns, rows, truncated)

    async def _run_postgres(self, conn: Connection, stmts: list[str]) -> list[StatementResult]:
        bound = [self._pg_args(i, stmt) for i, stmt in enumerate(stmts)]
        db = await self._pg_connect(conn)
        results: list[StatementResult] = []
        tx = None if self.autocommit else db.transaction()
        try:
            if tx is not None:
                await tx.start()
            for i, stmt in enumerate(stmts):
                log.info("running statement %d on %s: %s", i + 1, _where(conn), stmt)
                try:
                    results.append(await self._pg_statement(db, i, *bound[i]))
                except (asyncpg.PostgresError, asyncpg.InterfaceError, TypeError,
                        ValueError) as exc:
                    raise SqlOperatorError(
                        f"connection {self.conn_id!r} ({_where(conn)}): statement {i + 1} "
                        f"failed: {type(exc).__name__}: {mask(str(exc))}\n  SQL: {stmt}"
                    ) from None
            if tx is not None:
                await tx.commit()
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    if db.is_in_transaction() and tx is not None:
                        await tx.rollback()
                    await db.close(timeout=5)
                except Exception as exc:  # noqa: BLE001 - the original error matters more
                    log.warning("closing the session on %s failed: %s", _where(conn), exc)
                    db.terminate()
            raise
        await db.close(timeout=5)
        return results
