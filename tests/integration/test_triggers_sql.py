"""SqlTrigger on a real SQLite file and, under the postgres_dsn fixture, a real PostgreSQL
(polling, and LISTEN/NOTIFY)."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from triggers.base import BaseTrigger, TriggerEvent, load_trigger
from triggers.shared import Resources, default_resources, use_resources
from triggers.sql import (
    LISTEN_APPLICATION_NAME,
    SqliteBackend,
    SqlQueryError,
    SqlTrigger,
    parse_dsn,
    sql_hub,
)

pytestmark = pytest.mark.anyio

DEADLINE_S = 20


def rebuilt(trigger: BaseTrigger) -> BaseTrigger:
    """The trigger as a triggerer would see it: rebuilt from its serialized form."""
    classpath, kwargs = trigger.serialize()
    return load_trigger(classpath, json.loads(json.dumps(kwargs)))


async def first_event(trigger: BaseTrigger) -> TriggerEvent:
    events = trigger.run()
    try:
        return await events.__anext__()  # type: ignore[attr-defined, no-any-return]
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        await trigger.cleanup()


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - polls state that other tasks change
        await anyio.sleep(0.01)


class Fired:
    """Runs a trigger in the background and keeps its event or error."""

    def __init__(self) -> None:
        self.event: TriggerEvent | None = None
        self.error: BaseException | None = None

    @property
    def ended(self) -> bool:
        return self.event is not None or self.error is not None

    async def __call__(self, trigger: BaseTrigger) -> None:
        try:
            self.event = await first_event(trigger)
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


# -- SQLite ----------------------------------------------------------------------------------------


def make_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE ready (id INTEGER PRIMARY KEY, flag INTEGER NOT NULL)")
    db.close()


def write(path: Path, sql: str, *args: Any) -> None:
    db = sqlite3.connect(path)
    try:
        with db:
            db.execute(sql, args)
    finally:
        db.close()


class Counter:
    """A user-defined SQLite function that counts how often the query really ran."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.calls += 1
        return 0


async def counted_backend(resources: Resources, dsn: str) -> Counter:
    counter = Counter()
    backend = await (await sql_hub(resources)).backend(parse_dsn(dsn))
    assert isinstance(backend, SqliteBackend)
    await backend.create_function("checked", 0, counter)
    return counter


async def test_sqlite_fires_when_a_row_makes_the_first_cell_truthy(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_db(path)
    dsn = f"sqlite:///{path}"
    async with default_resources() as resources:
        counter = await counted_backend(resources, dsn)
        trigger = rebuilt(
            SqlTrigger(
                "SELECT (SELECT flag FROM ready ORDER BY id DESC LIMIT 1), checked()",
                dsn=dsn,
                poke_interval=0.02,
                max_interval=0.1,
            )
        )
        fired = Fired()
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fired, trigger)
                await until(lambda: counter.calls >= 2)  # no row yet: NULL
                await anyio.to_thread.run_sync(write, path, "INSERT INTO ready (flag) VALUES (0)")
                seen = counter.calls
                await until(lambda: counter.calls >= seen + 2)  # a row, but falsy
                assert not fired.ended
                await anyio.to_thread.run_sync(write, path, "INSERT INTO ready (flag) VALUES (7)")
    assert fired.error is None
    assert fired.event == TriggerEvent({"value": 7})


@pytest.mark.slow
async def test_sqlite_identical_queries_are_coalesced(tmp_path: Path) -> None:
    """100 triggers on the same query: one execution per tick serves all of them."""
    path = tmp_path / "coalesce.db"
    make_db(path)
    dsn = f"sqlite:///{path}"
    n = 100
    sql = "SELECT EXISTS (SELECT 1 FROM ready WHERE flag = ?), checked()"
    async with default_resources() as resources:
        counter = await counted_backend(resources, dsn)
        fired = [Fired() for _ in range(n)]
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                for f in fired:
                    trigger = SqlTrigger(
                        sql, dsn=dsn, parameters=[1], poke_interval=0.02, max_interval=0.02
                    )
                    tg.start_soon(f, rebuilt(trigger))
                await until(lambda: counter.calls >= 10)
                assert not any(f.ended for f in fired)
                await anyio.to_thread.run_sync(write, path, "INSERT INTO ready (flag) VALUES (1)")
                calls_at_insert = counter.calls
        hub = await sql_hub(resources)
        assert hub.stats() == {"queries": 0, "waiters": 0}
    assert [f.error for f in fired if f.error is not None] == []
    assert all(f.event == TriggerEvent({"value": 1}) for f in fired)
    # Uncoalesced, 100 waiters would run >= 100 queries before the insert and 100 after.
    assert counter.calls < n
    assert counter.calls <= calls_at_insert + 2


async def test_cancelled_triggers_release_the_shared_query(tmp_path: Path) -> None:
    """A trigger cancelled mid-wait (a timeout, a move to another triggerer) leaves its
    shared query; the last one out stops the poller, and a later trigger starts afresh."""
    path = tmp_path / "cancel.db"
    make_db(path)
    dsn = f"sqlite:///{path}"
    async with default_resources() as resources:
        counter = await counted_backend(resources, dsn)
        hub = await sql_hub(resources)
        sql = "SELECT max(flag), checked() FROM ready"
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(first_event, SqlTrigger(sql, dsn=dsn, poke_interval=0.02))
                await until(lambda: hub.stats() == {"queries": 1, "waiters": 3})
                await until(lambda: counter.calls >= 2)
                tg.cancel_scope.cancel()
            assert hub.stats() == {"queries": 0, "waiters": 0}
            await anyio.to_thread.run_sync(write, path, "INSERT INTO ready (flag) VALUES (1)")
            event = await first_event(SqlTrigger(sql, dsn=dsn, poke_interval=0.02))
    assert event == TriggerEvent({"value": 1})


async def test_sqlite_named_parameters_and_a_missing_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file does not exist at first: "not yet", logged; once it appears, it fires."""
    caplog.set_level(logging.WARNING, logger="triggers")
    path = tmp_path / "later.db"
    trigger = rebuilt(
        SqlTrigger(
            "SELECT flag FROM ready WHERE id = :id",
            dsn=f"sqlite:///{path}",
            parameters={"id": 3},
            poke_interval=0.02,
            max_interval=0.1,
        )
    )
    fired = Fired()
    async with default_resources():
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fired, trigger)
                await until(lambda: logged(caplog, "database unreachable"))
                assert not fired.ended
                staging = tmp_path / "staging.db"
                make_db(staging)
                write(staging, "INSERT INTO ready (id, flag) VALUES (3, 42)")
                os.replace(staging, path)
    assert fired.error is None
    assert fired.event == TriggerEvent({"value": 42})


async def test_sqlite_bad_and_writing_queries_raise(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    make_db(path)
    dsn = f"sqlite:///{path}"
    async with default_resources():
        with anyio.fail_after(DEADLINE_S):
            with pytest.raises(SqlQueryError, match="syntax error"):
                await first_event(SqlTrigger("SELEC 1 FRM ready", dsn=dsn))
            with pytest.raises(SqlQueryError, match="no such table: nope"):
                await first_event(SqlTrigger("SELECT 1 FROM nope", dsn=dsn))
            with pytest.raises(SqlQueryError, match="readonly"):
                await first_event(
                    SqlTrigger("INSERT INTO ready (flag) VALUES (1) RETURNING 1", dsn=dsn)
                )
            event = await first_event(SqlTrigger("SELECT 'still works'", dsn=dsn))
    assert event == TriggerEvent({"value": "still works"})
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM ready").fetchone() == (0,)
    db.close()


async def test_sql_serialize_round_trip_and_validation(tmp_path: Path) -> None:
    trigger = SqlTrigger(
        "SELECT 1", conn_id="warehouse", parameters={"a": 1}, poke_interval=2, max_interval=9,
        listen_channel="chan",
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "triggers.sql.SqlTrigger"
    assert load_trigger(classpath, kwargs).serialize() == (classpath, kwargs)
    with pytest.raises(ValueError, match="exactly one of dsn and conn_id"):
        SqlTrigger("SELECT 1")
    with pytest.raises(ValueError, match="listen_channel needs a PostgreSQL"):
        SqlTrigger("SELECT 1", dsn=f"sqlite:///{tmp_path}/x.db", listen_channel="c")
    with pytest.raises(ValueError, match="unsupported DSN scheme"):
        SqlTrigger("SELECT 1", dsn="mysql://h/db")
    with pytest.raises(ValueError, match="SQLite DSNs name a file"):
        SqlTrigger("SELECT 1", dsn="sqlite://")
    assert parse_dsn("postgres://u:pw@h:5/db").shown == "postgresql://u:***@h:5/db"


async def test_conn_id_is_resolved_at_run_time(tmp_path: Path) -> None:
    path = tmp_path / "conn.db"
    make_db(path)
    write(path, "INSERT INTO ready (flag) VALUES (5)")
    asked: list[str] = []

    def resolve(conn_id: str) -> str:
        asked.append(conn_id)
        return f"sqlite:///{path}"

    async with Resources(resolve_connection=resolve) as resources:
        with use_resources(resources), anyio.fail_after(DEADLINE_S):
            event = await first_event(
                rebuilt(SqlTrigger("SELECT max(flag) FROM ready", conn_id="local_db"))
            )
    assert event == TriggerEvent({"value": 5})
    assert asked == ["local_db"]


def test_dsn_connect_timeout_is_checked_and_taken_out() -> None:
    """libpq's connect_timeout option is the pool's connect timeout, not a server setting
    (the server refuses unknown settings); a bad one is named, with what is accepted."""
    dsn = parse_dsn("postgresql://u:pw@h:5/db?sslmode=disable&connect_timeout=2.5&options=x")
    assert dsn.connect_timeout == 2.5
    assert dsn.target == "postgresql://u:pw@h:5/db?sslmode=disable&options=x"
    assert parse_dsn("postgresql://h/db").connect_timeout == 10.0
    for value in ("abc", "-1", "-0.5", "nan", "inf", ""):
        with pytest.raises(ValueError, match=r"connect_timeout='.*' is not a number of seconds > 0"
                           ) as caught:
            parse_dsn(f"postgresql://u:pw@h/db?connect_timeout={value}")
        assert "pw" not in str(caught.value) and "postgresql://u:***@h/db" in str(caught.value)


def test_dsn_options_are_those_the_sql_operator_takes() -> None:
    """An option asyncpg reads itself (sslrootcert, target_session_attrs, ...) stays in the
    DSN for it; one it would send the server as a setting is refused before connecting,
    naming it and what is accepted, as SQLExecuteQueryOperator refuses it."""
    good = ("postgresql://h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
            "&target_session_attrs=primary&options=-c+statement_timeout%3D5000")
    assert parse_dsn(good).target == good
    with pytest.raises(ValueError, match=r"unknown extras statement_timeout, sursor: a PostgreSQL "
                       r"connection takes connect_timeout, sslmode, sslrootcert, .*, options; "
                       r"another server setting goes in options") as caught:
        parse_dsn("postgresql://u:pw@h/db?statement_timeout=5000&sursor=x&cursor=x")
    assert "pw" not in str(caught.value)
    with pytest.raises(ValueError, match="target_session_attrs='master' is not valid: use one of"):
        parse_dsn("postgresql://h/db?target_session_attrs=master")


def test_dsn_connect_timeout_zero_is_the_default_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """libpq reads connect_timeout=0 as "wait indefinitely", and connections copied from
    libpq or Airflow use it; aflow bounds every wait, so it is the default, 10 s, with a
    warning once per connection (it was refused, which broke those connections)."""
    caplog.set_level(logging.WARNING, logger="triggers")
    name = f"connection 'zero_{uuid.uuid4().hex[:8]}'"
    for dsn in ("postgresql://u:pw@h/db?connect_timeout=0",
                'postgresql://u:pw@h/db?__extra__={"connect_timeout": 0}',
                "postgresql://u:pw@h/db?connect_timeout=0.0"):
        parsed = parse_dsn(dsn, name=name)
        assert parsed.connect_timeout == 10.0
        assert parsed.target == "postgresql://u:pw@h/db"
    warnings = [r.getMessage() for r in caplog.records if "connect_timeout=0" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{name}: connect_timeout=0 (no limit, in libpq) is read as 10 s")
    parse_dsn("postgresql://u:pw@other/db?connect_timeout=0")  # another connection: its own
    warnings = [r.getMessage() for r in caplog.records if "connect_timeout=0" in r.getMessage()]
    assert len(warnings) == 2 and warnings[1].startswith("postgresql://u:***@other/db:"), warnings


async def test_bad_connect_timeout_of_a_connection_is_named() -> None:
    def resolve(conn_id: str) -> str:
        return "postgresql://u@127.0.0.1:1/db?connect_timeout=abc"

    async with Resources(resolve_connection=resolve) as resources:
        with use_resources(resources), anyio.fail_after(DEADLINE_S):
            with pytest.raises(ValueError, match="connection 'warehouse': connect_timeout='abc'"):
                await first_event(SqlTrigger("SELECT 1", conn_id="warehouse"))


def test_dsn_extra_json_is_opened_into_options() -> None:
    """`?__extra__=<JSON object>` is how Connection.get_uri writes an extra that holds a
    number; its items become the DSN's options (connect_timeout taken out as ever), never
    a setting named __extra__ sent to the server."""
    from aflow.secrets.connection import Connection

    uri = Connection(conn_id="pg", conn_type="postgres", host="h", login="u", password="pw",
                     schema="db", extra={"connect_timeout": 5, "sslmode": "disable"}).get_uri()
    assert "__extra__" in uri
    dsn = parse_dsn(uri)
    assert dsn.connect_timeout == 5.0
    assert dsn.target == "postgresql://u:pw@h/db?sslmode=disable"
    assert "__extra__" not in dsn.target and dsn.shown == "postgresql://u:***@h/db?sslmode=disable"
    # plain options and __extra__ together: the later one of a key wins, as in from_uri
    both = parse_dsn('postgresql://h/db?application_name=a&__extra__={"application_name":"b"}')
    assert both.target == "postgresql://h/db?application_name=b"
    for bad, why in (("%7Bnope", "__extra__ is not valid JSON"),
                     ("%5B1%5D", "__extra__ is not a JSON object"),
                     ('{"search_path": ["a"]}', r"extra search_path of type list is not valid: use text")):
        with pytest.raises(ValueError, match=why) as caught:
            parse_dsn(f"postgresql://u:pw@h/db?__extra__={bad}")
        assert "pw" not in str(caught.value), caught.value


async def test_bad_extra_json_of_a_connection_is_named() -> None:
    def resolve(conn_id: str) -> str:
        return 'postgresql://u:pw@127.0.0.1:1/db?sslpassword=key-pw&__extra__={"connect_timeout": 5'

    async with Resources(resolve_connection=resolve) as resources:
        with use_resources(resources), anyio.fail_after(DEADLINE_S):
            with pytest.raises(ValueError, match="connection 'warehouse': __extra__ is not valid JSON"
                               ) as caught:
                await first_event(SqlTrigger("SELECT 1", conn_id="warehouse"))
    assert "pw" not in str(caught.value) and "__extra__=***" in str(caught.value)


async def test_postgres_placeholder_without_a_value_is_named() -> None:
    """Found while rewriting `:name` to `$n`, before the database is asked (so even while
    it is unreachable the sensor fails with the name, instead of retrying)."""
    trigger = SqlTrigger("SELECT :ready AND :steady", dsn="postgresql://u@127.0.0.1:1/db",
                         parameters={"ready": True}, poke_interval=0.02)
    async with default_resources():
        with anyio.fail_after(DEADLINE_S):
            with pytest.raises(SqlQueryError, match=r"placeholder :steady \(line 1\)"):
                await first_event(rebuilt(trigger))


async def test_unreachable_postgres_is_retried_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="triggers")
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        trigger = SqlTrigger(
            "SELECT 1", dsn=f"postgresql://u:pw@127.0.0.1:{port}/db", poke_interval=0.02,
            max_interval=0.05,
        )
        fired = Fired()
        async with default_resources():
            with anyio.fail_after(DEADLINE_S):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(fired, trigger)
                    await until(lambda: logged(caplog, "database unreachable"))
                    assert not fired.ended
                    tg.cancel_scope.cancel()
    assert not any("pw" in r.getMessage() for r in caplog.records)


# -- PostgreSQL ------------------------------------------------------------------------------------


class PgWorld:
    """A schema of its own in the test database, and a probe channel that counts how
    often the trigger's query really ran (the query calls pg_notify)."""

    def __init__(self, dsn: str, conn: asyncpg.Connection, schema: str) -> None:
        self.dsn = dsn
        self.conn = conn
        self.schema = schema
        self.probe = f"{schema}_probe"
        self.channel = f"{schema}_wake"
        self.checks = 0

    def on_probe(self, *_args: Any) -> None:
        self.checks += 1

    def sql(self) -> str:
        return (
            f"SELECT (SELECT count(*) FROM {self.schema}.events WHERE done), "
            f"pg_notify('{self.probe}', '')"
        )


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[PgWorld]:
    schema = f"aflow_trig_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(
            f"CREATE TABLE {schema}.events (id serial PRIMARY KEY, done boolean NOT NULL)"
        )
        world = PgWorld(postgres_dsn, conn, schema)
        await conn.add_listener(world.probe, world.on_probe)
        yield world
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


@pytest.mark.postgres
async def test_postgres_polling_fires_and_coalesces(pg: PgWorld) -> None:
    n = 20
    async with default_resources():
        fired = [Fired() for _ in range(n)]
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                for f in fired:
                    trigger = SqlTrigger(
                        pg.sql(), dsn=pg.dsn, poke_interval=0.02, max_interval=0.02
                    )
                    tg.start_soon(f, rebuilt(trigger))
                await until(lambda: pg.checks >= 5)
                assert not any(f.ended for f in fired)
                await pg.conn.execute(f"INSERT INTO {pg.schema}.events (done) VALUES (false)")
                seen = pg.checks
                await until(lambda: pg.checks >= seen + 2)
                assert not any(f.ended for f in fired)
                await pg.conn.execute(f"INSERT INTO {pg.schema}.events (done) VALUES (true)")
                checks_at_insert = pg.checks
    assert [f.error for f in fired if f.error is not None] == []
    assert all(f.event == TriggerEvent({"value": 1}) for f in fired)
    await anyio.sleep(0.05)  # let the last probe notifications arrive before counting
    assert pg.checks <= checks_at_insert + 3  # not one query per waiter


@pytest.mark.postgres
async def test_postgres_named_parameters_and_errors(pg: PgWorld) -> None:
    await pg.conn.execute(f"INSERT INTO {pg.schema}.events (done) VALUES (true)")
    async with default_resources():
        with anyio.fail_after(DEADLINE_S):
            event = await first_event(
                SqlTrigger(
                    f"SELECT count(*)::int FROM {pg.schema}.events WHERE done = :done "
                    "AND ':not_a_param' <> ''",
                    dsn=pg.dsn,
                    parameters={"done": True},
                )
            )
            assert event == TriggerEvent({"value": 1})
            with pytest.raises(SqlQueryError, match="does not exist"):
                await first_event(SqlTrigger(f"SELECT 1 FROM {pg.schema}.nope", dsn=pg.dsn))
            with pytest.raises(SqlQueryError, match="read-only transaction"):
                await first_event(
                    SqlTrigger(
                        f"INSERT INTO {pg.schema}.events (done) VALUES (true) RETURNING 1",
                        dsn=pg.dsn,
                    )
                )
    assert await pg.conn.fetchval(f"SELECT count(*) FROM {pg.schema}.events") == 1


@pytest.mark.postgres
async def test_postgres_array_slice_without_lower_bound(pg: PgWorld) -> None:
    """`arr[:hi]` slices up to the column hi when hi is not a parameter (it failed
    "placeholder :hi has no value" with any dict); when hi is one, `:hi` is its value
    (`arr[$1]`: an element), and `arr[: :hi]` is the slice up to it."""
    sql = "SELECT (ARRAY[10, 20, 30])[:hi] FROM (SELECT 2 AS hi) AS s WHERE :on"
    async with default_resources():
        with anyio.fail_after(DEADLINE_S):
            event = await first_event(SqlTrigger(sql, dsn=pg.dsn, parameters={"on": True}))
            assert event == TriggerEvent({"value": [10, 20]})
            event = await first_event(SqlTrigger(sql, dsn=pg.dsn, parameters={"on": True, "hi": 3}))
            assert event == TriggerEvent({"value": 30})
            event = await first_event(SqlTrigger("SELECT (ARRAY[10, 20, 30])[: :hi]", dsn=pg.dsn,
                                                 parameters={"hi": 1}))
            assert event == TriggerEvent({"value": [10]})


@pytest.mark.postgres
async def test_postgres_connection_with_connect_timeout(pg: PgWorld) -> None:
    """A connection URI with connect_timeout (as SQLExecuteQueryOperator documents it)
    works for the trigger too, polling and listening."""
    await pg.conn.execute(f"INSERT INTO {pg.schema}.events (done) VALUES (true)")
    sep = "&" if "?" in pg.dsn else "?"

    def resolve(conn_id: str) -> str:
        return f"{pg.dsn}{sep}connect_timeout=5&application_name={pg.schema}"

    async with Resources(resolve_connection=resolve) as resources:
        with use_resources(resources), anyio.fail_after(DEADLINE_S):
            for channel in (None, f"{pg.schema}_chan"):
                event = await first_event(SqlTrigger(
                    f"SELECT count(*)::int FROM {pg.schema}.events WHERE done",
                    conn_id="pg", listen_channel=channel, poke_interval=0.02))
                assert event == TriggerEvent({"value": 1})


@pytest.mark.postgres
async def test_postgres_listen_mode_wakes_on_notify(pg: PgWorld) -> None:
    """poke_interval and the safety poll are an hour: only the NOTIFY can wake it."""
    trigger = rebuilt(
        SqlTrigger(
            pg.sql(), dsn=pg.dsn, poke_interval=3600, max_interval=3600,
            listen_channel=pg.channel,
        )
    )
    fired = Fired()
    async with default_resources():
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fired, trigger)
                await until(lambda: pg.checks >= 1)  # the first check, after LISTEN
                await pg.conn.execute(f"NOTIFY {pg.channel}")  # nothing changed: still waits
                await until(lambda: pg.checks >= 2)
                assert not fired.ended
                async with pg.conn.transaction():
                    await pg.conn.execute(f"INSERT INTO {pg.schema}.events (done) VALUES (true)")
                    await pg.conn.execute(f"NOTIFY {pg.channel}, 'new row'")
    assert fired.error is None
    assert fired.event == TriggerEvent({"value": 1})


@pytest.mark.postgres
async def test_postgres_listener_reconnects_and_rechecks(pg: PgWorld) -> None:
    """The LISTEN connection is killed: the listener reconnects, re-checks the query (a
    NOTIFY may have been lost meanwhile) and NOTIFY wakes it again."""
    trigger = SqlTrigger(
        pg.sql(), dsn=pg.dsn, poke_interval=3600, max_interval=3600, listen_channel=pg.channel
    )
    find_listener = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE $2"
    )
    pattern = f"%LISTEN%{pg.channel}%"
    fired = Fired()
    async with default_resources():
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fired, rebuilt(trigger))
                await until(lambda: pg.checks >= 1)
                found = await pg.conn.fetch(find_listener, LISTEN_APPLICATION_NAME, pattern)
                pids = [r["pid"] for r in found]
                assert len(pids) == 1
                assert await pg.conn.fetchval("SELECT pg_terminate_backend($1)", pids[0])
                await until(lambda: pg.checks >= 2)  # re-checked after reconnecting
                new = await pg.conn.fetch(find_listener, LISTEN_APPLICATION_NAME, pattern)
                assert [r["pid"] for r in new] != pids and len(new) == 1
                assert not fired.ended
                await pg.conn.execute(f"INSERT INTO {pg.schema}.events (done) VALUES (true)")
                await pg.conn.execute(f"SELECT pg_notify('{pg.channel}', 'go')")
    assert fired.error is None
    assert fired.event == TriggerEvent({"value": 1})
