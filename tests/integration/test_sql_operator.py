"""SQLExecuteQueryOperator through the real engine on a real SQLite file and a real
PostgreSQL: bound parameters (an injection attempt stays a literal), one transaction for a
list of statements, the row limit, JSON-safe rows, and errors that name the connection
but never leak its password (read back from the task's log file)."""

from __future__ import annotations

import json
import select
import socket
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aflow import DAG, SQLExecuteQueryOperator
from aflow.runtime.logs import log_path, read_log

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_secrets")]

PASSWORD = "Sql-Pa55-" + uuid.uuid4().hex[:10]
START = datetime(2024, 1, 1, tzinfo=UTC)




async def run_one(o_factory: Any, dag: DAG) -> tuple[str, dict[str, Any], dict[str, Any], Any]:
    """Run `dag` on a real orchestrator: (run state, {task: xcom}, {task: ti}, orchestrator)."""
    o = await o_factory([dag])
    handle = await o.trigger(dag.dag_id)
    final = await handle.wait(timeout=60)
    tis = {t.task_id: t for t in await handle.task_instances()}
    xcoms = {r.task_id: r.value for r in await o.store.get_xcoms(dag.dag_id, handle.run_id)
             if r.key == "return_value"}
    return final.state.value, xcoms, tis, o


def task_log(o: Any, ti: Any) -> str:
    path = log_path(o.log_dir, ti.dag_id, ti.run_id, ti.task_id, ti.try_number, ti.map_index)
    return read_log(path)[0]


@pytest.fixture
def sqlite_conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "data.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, score REAL)")
        c.executemany("INSERT INTO users (name, score) VALUES (?, ?)",
                      [("ann", 1.5), ("bob", 2.0), ("cyd", 3.25)])
    monkeypatch.setenv("AFLOW_CONN_LOCAL_DB", f"sqlite:///{db}")  # absolute: sqlite:////...
    return db


async def test_sqlite_rows_params_and_injection(orchestrator_factory: Any, sqlite_conn: Path) -> None:
    evil = "x'); DROP TABLE users; --"
    with DAG("sql_sqlite", start_date=START) as dag:
        SQLExecuteQueryOperator(
            task_id="select", conn_id="local_db",
            sql="SELECT id, name, score FROM users WHERE score >= ? ORDER BY id",
            parameters=[2.0])
        SQLExecuteQueryOperator(
            task_id="named_dicts", conn_id="local_db", output_format="dict",
            sql="SELECT name FROM users WHERE name = :who", parameters={"who": "{{ params.who }}"},
            params={"who": "ann"})
        SQLExecuteQueryOperator(
            task_id="inject", conn_id="local_db",
            sql=["INSERT INTO users (name, score) VALUES (:name, 0)",
                 "SELECT name FROM users WHERE name = :name"],
            parameters={"name": evil})
    state, x, tis, _ = await run_one(orchestrator_factory, dag)
    assert state == "success", {k: (t.state, t.error) for k, t in tis.items()}
    assert x["select"] == [[2, "bob", 2.0], [3, "cyd", 3.25]]
    assert x["named_dicts"] == [{"name": "ann"}]
    assert x["inject"] == [[evil]]  # the literal was stored and found
    with sqlite3.connect(sqlite_conn) as c:  # and the table is still there
        assert c.execute("SELECT count(*) FROM users").fetchone() == (4,)


async def test_sqlite_list_is_one_transaction(orchestrator_factory: Any, sqlite_conn: Path) -> None:
    with DAG("sql_tx", start_date=START) as dag:
        SQLExecuteQueryOperator(
            task_id="half", conn_id="local_db",
            sql=["INSERT INTO users (name, score) VALUES ('dan', 4)",
                 "INSERT INTO no_such_table VALUES (1)"])
        SQLExecuteQueryOperator(
            task_id="auto", conn_id="local_db", autocommit=True,
            sql=["INSERT INTO users (name, score) VALUES ('eve', 5)",
                 "INSERT INTO no_such_table VALUES (1)"])
        SQLExecuteQueryOperator(
            task_id="all_last", conn_id="local_db", return_last=False,
            sql=["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('a'), ('b')",
                 "SELECT v FROM t ORDER BY v"])
    state, x, tis, o = await run_one(orchestrator_factory, dag)
    assert state == "failed"
    assert tis["half"].state.value == "failed"
    assert "no_such_table" in tis["half"].error and "'local_db'" in tis["half"].error
    assert "statement 2" in tis["half"].error
    assert tis["auto"].state.value == "failed"
    assert x["all_last"] == [None, None, [["a"], ["b"]]]
    with sqlite3.connect(sqlite_conn) as c:
        names = {r[0] for r in c.execute("SELECT name FROM users")}
    assert "dan" not in names  # rolled back with the failing statement
    assert "eve" in names  # autocommit kept the first statement


async def test_sqlite_max_rows(orchestrator_factory: Any, sqlite_conn: Path) -> None:
    with DAG("sql_limit", start_date=START) as dag:
        SQLExecuteQueryOperator(task_id="fails", conn_id="local_db", max_rows=2,
                                sql="SELECT name FROM users ORDER BY id")
        SQLExecuteQueryOperator(task_id="truncates", conn_id="local_db", max_rows=2,
                                on_max_rows="truncate", sql="SELECT name FROM users ORDER BY id")
        SQLExecuteQueryOperator(task_id="exact", conn_id="local_db", max_rows=3,
                                sql="SELECT name FROM users ORDER BY id")
    state, x, tis, o = await run_one(orchestrator_factory, dag)
    assert tis["fails"].state.value == "failed"
    assert "max_rows=2" in tis["fails"].error
    assert x["truncates"] == [["ann"], ["bob"]]
    assert "keeping the first 2" in task_log(o, tis["truncates"])
    assert x["exact"] == [["ann"], ["bob"], ["cyd"]]


def test_bad_arguments_are_named() -> None:
    from aflow.exceptions import DagDefinitionError

    with DAG("sql_bad", start_date=START):
        with pytest.raises(DagDefinitionError, match="'q'.*on_max_rows"):
            SQLExecuteQueryOperator(task_id="q", conn_id="c", sql="SELECT 1", on_max_rows="x")
        with pytest.raises(DagDefinitionError, match="'r'.*parameters"):
            SQLExecuteQueryOperator(task_id="r", conn_id="c", sql="SELECT 1", parameters="a")


async def test_bad_connection_extras_fail_before_connecting(
    orchestrator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL connection whose extra cannot be used fails its task with an error
    that names the connection, the extra and its value, and what is accepted; nothing
    reaches the listening port the connection points at."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        base = f"postgresql://etl:{PASSWORD}@127.0.0.1:{port}/db"
        bad = {
            "timeout_text": (f"{base}?connect_timeout=abc", "connect_timeout='abc'", "seconds > 0"),
            "timeout_negative": (f"{base}?connect_timeout=-1", "connect_timeout='-1'", "seconds > 0"),
            "timeout_nan": (f"{base}?connect_timeout=nan", "connect_timeout='nan'", "seconds > 0"),
            "timeout_json": (json.dumps({"conn_type": "postgres", "host": "127.0.0.1",
                                         "port": port, "extra": {"connect_timeout": -2.5}}),
                             "connect_timeout=-2.5", "seconds > 0"),
            "ssl_mode": (f"{base}?sslmode=always", "sslmode='always'", "verify-full"),
            "search_path": (json.dumps({"conn_type": "postgres", "host": "127.0.0.1",
                                        "port": port, "extra": {"search_path": ["a", "b"]}}),
                            "search_path of type list", "use text"),
            # a typo is an error (an extra only Airflow or libpq reads is ignored)
            "unknown": (f"{base}?sslmode=verify-full&sslrootcert=/etc/ca.pem&cursor=dictcursor"
                        "&keepalives_idle=30&sslmdoe=require&serach_path=x",
                        "unknown extras serach_path, sslmdoe",
                        "takes connect_timeout, sslmode, sslrootcert, sslcert, sslkey"),
            "encoding": (f"{base}?client_encoding=LATIN1", "client_encoding 'LATIN1'",
                         "UTF8 only"),
            # a value that is not text is named by its type: it may be a secret
            "secret_not_text": (json.dumps({"conn_type": "postgres", "host": "127.0.0.1",
                                            "port": port, "extra": {"sslpassword": 73019582}}),
                                "sslpassword of type int", "use text"),
            "session_attrs": (f"{base}?target_session_attrs=master",
                              "target_session_attrs='master'", "read-write"),
            "not_text": (json.dumps({"conn_type": "postgres", "host": "127.0.0.1",
                                     "port": port, "extra": {"application_name": 5}}),
                         "application_name of type int", "use text"),
        }
        for conn_id, (uri, _, _) in bad.items():
            monkeypatch.setenv(f"AFLOW_CONN_{conn_id.upper()}", uri)
        with DAG("sql_bad_extras", start_date=START) as dag:
            for conn_id in bad:
                SQLExecuteQueryOperator(task_id=conn_id, conn_id=conn_id, sql="SELECT 1")
        state, _, tis, o = await run_one(orchestrator_factory, dag)
        readable, _, _ = select.select([server], [], [], 0)
    assert readable == []  # no connection was tried
    assert state == "failed"
    for conn_id, (_, shown, accepted) in bad.items():
        ti = tis[conn_id]
        assert ti.state.value == "failed", conn_id
        assert ti.error.startswith("SqlOperatorError"), ti.error
        assert f"connection {conn_id!r}" in ti.error and shown in ti.error, ti.error
        assert accepted in ti.error, ti.error
        assert PASSWORD not in ti.error
        assert "73019582" not in ti.error


# -- PostgreSQL ---------------------------------------------------------------------------------
@pytest.fixture
async def pg_conn(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A connection `pg` (with a password the server does not ask for, to check it never
    reaches a log) to a schema of this test's own."""
    from urllib.parse import urlsplit

    import asyncpg

    schema = f"aflow_sqlop_{uuid.uuid4().hex[:10]}"
    parts = urlsplit(postgres_dsn)
    db = await asyncpg.connect(postgres_dsn, timeout=10)
    await db.execute(f'CREATE SCHEMA "{schema}"')
    user = parts.username or "postgres"
    monkeypatch.setenv(
        "AFLOW_CONN_PG",
        f"postgres://{user}:{PASSWORD}@{parts.hostname}:{parts.port or 5432}"
        f"{parts.path}?search_path={schema}",
    )
    try:
        yield db, schema
    finally:
        await db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await db.close()


@pytest.mark.postgres
async def test_postgres_rows_types_params_and_transaction(
    orchestrator_factory: Any, pg_conn: Any
) -> None:
    db, schema = pg_conn
    evil = "'; DROP TABLE items; --"
    with DAG("sql_pg", start_date=START) as dag:
        SQLExecuteQueryOperator(
            task_id="setup", conn_id="pg",
            sql=["CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(8,2), "
                 "made timestamptz, payload jsonb)",
                 "INSERT INTO items VALUES (1, 'a', 1.50, '2024-01-02T03:04:05Z', '{\"k\": 1}'), "
                 "(2, 'b', 2, NULL, NULL)"])
        sel = SQLExecuteQueryOperator(
            task_id="select", conn_id="pg", output_format="dict",
            sql="SELECT id, name, price, made FROM items WHERE id BETWEEN $1 AND $2 ORDER BY id",
            parameters=[1, 2])  # not 3 or 4: the tasks beside it insert those meanwhile
        inj = SQLExecuteQueryOperator(
            task_id="inject", conn_id="pg",
            sql=["INSERT INTO items (id, name) VALUES (3, :name)",
                 "SELECT name, id::text FROM items WHERE name = :name"],
            parameters={"name": evil})
        bad = SQLExecuteQueryOperator(
            task_id="rolled_back", conn_id="pg",
            sql=["INSERT INTO items (id, name) VALUES (4, 'four')",
                 "INSERT INTO items (id, name) VALUES (1, 'duplicate key')"])
        limited = SQLExecuteQueryOperator(task_id="limited", conn_id="pg", max_rows=1,
                                          sql="SELECT id FROM items ORDER BY id",
                                          trigger_rule="all_done")
        dag.get_task("setup") >> [sel, inj, bad] >> limited
    state, x, tis, o = await run_one(orchestrator_factory, dag)
    assert tis["setup"].state.value == "success", tis["setup"].error
    assert tis["select"].state.value == "success", tis["select"].error
    assert x["select"] == [
        {"id": 1, "name": "a", "price": 1.5, "made": "2024-01-02T03:04:05+00:00"},
        {"id": 2, "name": "b", "price": 2, "made": None},
    ]
    assert x["inject"] == [[evil, "3"]]
    assert tis["rolled_back"].state.value == "failed"
    assert "duplicate key" in tis["rolled_back"].error
    assert await db.fetchval(f'SELECT count(*) FROM "{schema}".items WHERE id = 4') == 0
    assert tis["limited"].state.value == "failed"
    assert "max_rows=1" in tis["limited"].error
    for ti in tis.values():
        if ti.try_number:
            text = task_log(o, ti)
            assert PASSWORD not in text
    assert PASSWORD not in (tis["rolled_back"].error or "")
    assert "'pg'" in tis["rolled_back"].error


@pytest.mark.postgres
async def test_postgres_connection_error_names_conn_and_host_not_password(
    orchestrator_factory: Any, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str
) -> None:
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AFLOW_CONN_DOWN", f"postgresql://etl:{PASSWORD}@127.0.0.1:{port}/nowhere")
    with DAG("sql_down", start_date=START) as dag:
        SQLExecuteQueryOperator(task_id="q", conn_id="down", sql="SELECT 1")
    state, _, tis, o = await run_one(orchestrator_factory, dag)
    assert state == "failed"
    error = tis["q"].error
    assert "'down'" in error and f"127.0.0.1:{port}" in error
    assert PASSWORD not in error
    assert PASSWORD not in task_log(o, tis["q"])


@pytest.mark.postgres
async def test_postgres_connect_timeout_extra_is_used(
    orchestrator_factory: Any, pg_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A good connect_timeout (text, as a URI gives it) connects as before."""
    import os

    monkeypatch.setenv("AFLOW_CONN_PG_TIMEOUT", os.environ["AFLOW_CONN_PG"] + "&connect_timeout=2.5")
    with DAG("sql_pg_timeout", start_date=START) as dag:
        SQLExecuteQueryOperator(task_id="q", conn_id="pg_timeout", sql="SELECT 41 + 1")
    state, x, tis, _ = await run_one(orchestrator_factory, dag)
    assert state == "success", tis["q"].error
    assert x["q"] == [[42]]


@pytest.mark.postgres
async def test_postgres_connect_timeout_zero_is_the_default(
    orchestrator_factory: Any, pg_conn: Any, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str
) -> None:
    """connect_timeout=0 is libpq's "wait indefinitely" (connections copied from libpq or
    Airflow have it). It was refused; now it is the default, 10 s, for the operator and
    the sensor alike, with a warning logged once per connection."""
    import os

    from aflow.authoring.sensors import SqlSensor

    _, schema = pg_conn
    tag = uuid.uuid4().hex[:8]  # a connection never warned about before in this process
    monkeypatch.setenv(f"AFLOW_CONN_PG_ZERO_{tag.upper()}", os.environ["AFLOW_CONN_PG"] + "&connect_timeout=0")
    monkeypatch.setenv(f"AFLOW_CONN_PG_ZERO_JSON_{tag.upper()}", _json_connection(
        postgres_dsn, {"connect_timeout": 0, "search_path": schema}))
    with DAG("sql_pg_timeout_zero", start_date=START) as dag:
        first = SQLExecuteQueryOperator(task_id="first", conn_id=f"pg_zero_{tag}",
                                        sql="SELECT 41 + 1")
        second = SQLExecuteQueryOperator(task_id="second", conn_id=f"pg_zero_{tag}",
                                         sql="SELECT 43 - 1")
        from_json = SQLExecuteQueryOperator(task_id="from_json", conn_id=f"pg_zero_json_{tag}",
                                            sql="SELECT 42")
        wait = SqlSensor(task_id="wait", conn_id=f"pg_zero_json_{tag}", sql="SELECT 42",
                         deferrable=True, poke_interval=0.05, timeout=60)
        first >> second
        from_json >> wait
    _, x, tis, o = await run_one(orchestrator_factory, dag)
    for task_id in ("first", "second", "from_json", "wait"):
        assert tis[task_id].state.value == "success", (task_id, tis[task_id].error)
    assert x["first"] == x["second"] == x["from_json"] == [[42]]
    warning = "connect_timeout=0 (no limit, in libpq) is read as 10 s"
    assert f"connection 'pg_zero_{tag}': {warning}" in task_log(o, tis["first"])
    assert warning not in task_log(o, tis["second"])  # once per connection
    assert f"connection 'pg_zero_json_{tag}': {warning}" in task_log(o, tis["from_json"])


@pytest.mark.postgres
async def test_postgres_named_parameters_skip_bodies_comments_and_literals(
    orchestrator_factory: Any, pg_conn: Any
) -> None:
    """`:word` inside a dollar-quoted function body, a comment or a literal is text, not a
    placeholder, even when `word` is a key of the parameters; a name with no value fails
    the task before any statement runs."""
    db, schema = pg_conn
    params = {"who": "ann", "word": "W"}
    with DAG("sql_pg_scan", start_date=START) as dag:
        SQLExecuteQueryOperator(
            task_id="scan", conn_id="pg", parameters=params,
            sql=[
                "CREATE FUNCTION greet(who text) RETURNS text LANGUAGE plpgsql AS $body$\n"
                "DECLARE msg text := 'hi ';  -- :word in the body's comment\n"
                "BEGIN /* :word */ RETURN msg || who; END\n"
                "$body$",
                "SELECT greet(:who) AS greeting, $q$ :word $q$ AS raw, ':word' AS literal,\n"
                "  :word::text AS word, :who AS who  -- :word\n"
                "/* :word /* nested :word */ :who */",
            ])
        SQLExecuteQueryOperator(
            task_id="missing", conn_id="pg", autocommit=True, parameters={"n": 1},
            sql=["CREATE TABLE touched (n int)", "SELECT :n, :absent"])
        # `$1` beside `:n` would have been bound to n's value (both became $1)
        SQLExecuteQueryOperator(
            task_id="mixed", conn_id="pg", autocommit=True, parameters={"n": 1},
            sql=["CREATE TABLE touched_too (n int)", "SELECT $1::int, :n"])
        # `$1` alone is the function's argument: it binds nothing from the dict
        SQLExecuteQueryOperator(
            task_id="body", conn_id="pg", parameters={"n": 41},
            sql=["CREATE FUNCTION add_one(int) RETURNS int RETURN $1 + 1", "SELECT add_one(:n)"])
    state, x, tis, _ = await run_one(orchestrator_factory, dag)
    assert tis["scan"].state.value == "success", tis["scan"].error
    assert x["scan"] == [["hi ann", " :word ", ":word", "W", "ann"]]
    error = tis["missing"].error
    assert tis["missing"].state.value == "failed"
    assert "placeholder :absent" in error and "statement 2" in error and "'missing'" in error
    exists = await db.fetchval("SELECT to_regclass($1)", f'"{schema}".touched')
    assert exists is None  # statement 1 never ran, although autocommit was on
    error = tis["mixed"].error
    assert tis["mixed"].state.value == "failed"
    assert "positional placeholder $1 (line 1)" in error and "statement 2" in error, error
    assert await db.fetchval("SELECT to_regclass($1)", f'"{schema}".touched_too') is None
    assert tis["body"].state.value == "success", tis["body"].error
    assert x["body"] == [[42]]


def make_then_sense(conn_id: str) -> None:
    """In the current DAG: `make` creates and fills a table through `conn_id`, then a
    deferrable SqlSensor `wait` reads it through the same connection (the operator's and
    the trigger's ways of reading one connection, side by side)."""
    from aflow.authoring.sensors import SqlSensor

    make = SQLExecuteQueryOperator(
        task_id="make", conn_id=conn_id,
        sql=["CREATE TABLE ready (n int)", "INSERT INTO ready VALUES (7)"])
    wait = SqlSensor(task_id="wait", conn_id=conn_id, sql="SELECT n FROM ready",
                     deferrable=True, poke_interval=0.05, timeout=60)
    make >> wait


def _json_connection(postgres_dsn: str, extra: dict[str, Any]) -> str:
    """The test server as a connection in Airflow's JSON form, with a password the server
    does not ask for."""
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_dsn)
    return json.dumps({"conn_type": "postgres", "host": parts.hostname,
                       "port": parts.port or 5432, "login": parts.username or "postgres",
                       "password": PASSWORD, "schema": parts.path.lstrip("/"), "extra": extra})


@pytest.mark.postgres
async def test_postgres_json_connection_with_a_numeric_extra_serves_operator_and_sensor(
    orchestrator_factory: Any, pg_conn: Any, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str
) -> None:
    """A connection whose extra holds a number (`"connect_timeout": 5`, as Airflow's JSON
    form has it) reaches a trigger as `?__extra__=<JSON>`. The SqlSensor sent that to the
    server as a setting, which refused it ("unrecognized configuration parameter
    __extra__"), and lost connect_timeout and search_path inside it. The table here is
    found through that search_path alone."""

    _, schema = pg_conn
    monkeypatch.setenv("AFLOW_CONN_PG_JSON", _json_connection(
        postgres_dsn, {"connect_timeout": 5, "search_path": schema}))
    with DAG("sql_pg_json_conn", start_date=START) as dag:
        make_then_sense("pg_json")
    state, x, tis, o = await run_one(orchestrator_factory, dag)
    assert tis["make"].state.value == "success", tis["make"].error
    assert tis["wait"].state.value == "success", tis["wait"].error
    assert x["wait"] == {"value": 7}
    assert PASSWORD not in task_log(o, tis["wait"])


@pytest.mark.postgres
async def test_postgres_connection_ported_from_airflow_serves_operator_and_sensor(
    orchestrator_factory: Any, pg_conn: Any, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str
) -> None:
    """A connection ported from Airflow carries extras only Airflow's hook or libpq reads
    (`cursor`, `iam`, `keepalives_idle`, a UTF8 `client_encoding`). They failed every SQL
    task as unknown; now they are ignored, with one warning per connection naming them."""
    from aflow.authoring.sensors import SqlSensor

    _, schema = pg_conn
    tag = uuid.uuid4().hex[:8]  # a connection never warned about before in this process
    monkeypatch.setenv(f"AFLOW_CONN_PG_PORTED_{tag.upper()}", _json_connection(postgres_dsn, {
        "cursor": "dictcursor", "iam": False, "aws_conn_id": "aws_default",
        "keepalives": 1, "keepalives_idle": "30", "client_encoding": "utf8",
        "search_path": schema}))
    with DAG("sql_pg_ported", start_date=START) as dag:
        make = SQLExecuteQueryOperator(
            task_id="make", conn_id=f"pg_ported_{tag}",
            sql=["CREATE TABLE ported (n int)", "INSERT INTO ported VALUES (5)"])
        again = SQLExecuteQueryOperator(task_id="again", conn_id=f"pg_ported_{tag}",
                                        sql="SELECT n + 1 FROM ported")
        wait = SqlSensor(task_id="wait", conn_id=f"pg_ported_{tag}", sql="SELECT n FROM ported",
                         deferrable=True, poke_interval=0.05, timeout=60)
        make >> again >> wait
    _, x, tis, o = await run_one(orchestrator_factory, dag)
    for task_id in ("make", "again", "wait"):
        assert tis[task_id].state.value == "success", (task_id, tis[task_id].error)
    assert x["again"] == [[6]]
    assert x["wait"] == {"value": 5}
    warning = (f"connection 'pg_ported_{tag}': these extras have no effect in aflow and are "
               "ignored")
    first = task_log(o, tis["make"])
    assert warning in first
    assert "aws_conn_id, cursor, iam, keepalives, keepalives_idle" in first
    assert warning not in task_log(o, tis["again"])  # once per connection
    assert PASSWORD not in first


@pytest.mark.postgres
async def test_postgres_host_only_in_the_extra_is_used_by_operator_and_sensor(
    orchestrator_factory: Any, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str
) -> None:
    """A connection with a port but its host only in the extra became
    `postgres://u:p@:5432/db?host=...`, and asyncpg took the empty host before the port
    for the host (and failed to resolve it), ignoring the extra's."""
    from urllib.parse import urlsplit

    from aflow.authoring.sensors import SqlSensor

    parts = urlsplit(postgres_dsn)
    monkeypatch.setenv("AFLOW_CONN_PG_EXTRA_HOST", json.dumps({
        "conn_type": "postgres", "port": parts.port or 5432,
        "login": parts.username or "postgres", "password": PASSWORD,
        "schema": parts.path.lstrip("/"), "extra": {"host": parts.hostname}}))
    with DAG("sql_pg_extra_host", start_date=START) as dag:
        q = SQLExecuteQueryOperator(task_id="q", conn_id="pg_extra_host",
                                    sql="SELECT inet_server_port()")
        wait = SqlSensor(task_id="wait", conn_id="pg_extra_host", sql="SELECT 1",
                         deferrable=True, poke_interval=0.05, timeout=60)
        q >> wait
    state, x, tis, _ = await run_one(orchestrator_factory, dag)
    assert tis["q"].state.value == "success", tis["q"].error
    assert tis["wait"].state.value == "success", tis["wait"].error
    assert state == "success"
    assert x["q"] == [[parts.port or 5432]]


@pytest.mark.postgres
async def test_postgres_tls_options_reach_the_driver_for_operator_and_sensor(
    orchestrator_factory: Any, pg_conn: Any, monkeypatch: pytest.MonkeyPatch,
    postgres_dsn: str, tmp_path: Path,
) -> None:
    """`sslmode=verify-full&sslrootcert=<CA file>`: the operator dropped sslrootcert, so
    asyncpg looked for ~/.postgresql/root.crt and the task failed, while a SqlSensor on
    the same connection connected. Through a TLS front whose certificate a CA of its own
    issued, both connect with that CA's file; with another CA's, the certificate is
    refused (the check is real, not skipped)."""
    from urllib.parse import urlsplit

    from tests.pg_tls import tls_front

    _, schema = pg_conn
    parts = urlsplit(postgres_dsn)
    user = parts.username or "postgres"
    async with tls_front(parts.hostname or "127.0.0.1", parts.port or 5432, tmp_path) as front:
        def uri(ca_file: Path) -> str:
            return (f"postgres://{user}:{PASSWORD}@127.0.0.1:{front.port}{parts.path}"
                    f"?sslmode=verify-full&sslrootcert={ca_file}&search_path={schema}")

        monkeypatch.setenv("AFLOW_CONN_PG_TLS", uri(front.ca_file))
        monkeypatch.setenv("AFLOW_CONN_PG_OTHER_CA", uri(front.other_ca_file))
        with DAG("sql_pg_tls", start_date=START) as dag:
            make_then_sense("pg_tls")
            SQLExecuteQueryOperator(task_id="other_ca", conn_id="pg_other_ca", sql="SELECT 1")
        _, x, tis, _ = await run_one(orchestrator_factory, dag)
    assert tis["make"].state.value == "success", tis["make"].error
    assert tis["wait"].state.value == "success", tis["wait"].error
    assert x["wait"] == {"value": 7}
    assert front.handshakes >= 2
    error = tis["other_ca"].error
    assert tis["other_ca"].state.value == "failed"
    assert "'pg_other_ca'" in error and "certificate verify failed" in error, error
    assert PASSWORD not in error


@pytest.mark.postgres
async def test_postgres_target_session_attrs_reach_the_driver_for_operator_and_sensor(
    orchestrator_factory: Any, pg_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection option asyncpg reads (not a server setting) is used by the operator as
    by the trigger: the test server is a primary, so `target_session_attrs=standby` finds
    no server for either, and `read-write` finds it for both (the sensor's sessions are
    read-only, so it asks for the primary instead)."""
    import os

    from aflow.authoring.sensors import SqlSensor

    base = os.environ["AFLOW_CONN_PG"]
    monkeypatch.setenv("AFLOW_CONN_PG_RW", base + "&target_session_attrs=read-write")
    monkeypatch.setenv("AFLOW_CONN_PG_STANDBY", base + "&target_session_attrs=standby")
    with DAG("sql_pg_attrs", start_date=START) as dag:
        SQLExecuteQueryOperator(task_id="rw", conn_id="pg_rw", sql="SELECT 41 + 1")
        SqlSensor(task_id="rw_wait", conn_id="pg_rw", sql="SELECT 42", deferrable=True,
                  poke_interval=0.05, timeout=60)
        SQLExecuteQueryOperator(task_id="standby", conn_id="pg_standby", sql="SELECT 1")
        SqlSensor(task_id="standby_wait", conn_id="pg_standby", sql="SELECT 1", deferrable=True,
                  poke_interval=0.05, timeout=60)
    _, x, tis, o = await run_one(orchestrator_factory, dag)
    assert tis["rw"].state.value == "success", tis["rw"].error
    assert x["rw"] == [[42]]
    assert tis["rw_wait"].state.value == "success", tis["rw_wait"].error
    assert tis["standby"].state.value == "failed"
    assert "'pg_standby'" in tis["standby"].error
    assert "target attribute requirement" in tis["standby"].error
    assert tis["standby_wait"].state.value == "failed"
    assert "target attribute requirement" in task_log(o, tis["standby_wait"])
