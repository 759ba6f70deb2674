"""Variables and Connections from task code in every execution mode (the event loop, a
worker thread, a child process), in templates, and through the triggers' connection
lookup; and secret masking: no secret ever reaches a log file or a task's error."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aflow.runtime import services
from aflow.secrets import Connection, configure_secrets, connection_to_record, generate_key
from aflow.secrets.masking import forget_secrets
from aflow.store.records import VariableRecord
from tests.integration.test_execution_modes import write_dag_file

pytestmark = pytest.mark.anyio

KEY = generate_key()
DB_PASSWORD = "Db-Pa55-w0rd-7731"
API_TOKEN = "tok-91c0-ffee-5ecret"


@pytest.fixture(autouse=True)
def secrets_settings() -> Iterator[None]:
    configure_secrets(fernet_key=KEY)
    forget_secrets()
    yield
    configure_secrets()
    forget_secrets()


async def _seed(store: Any) -> None:
    await store.set_variables([
        VariableRecord("greeting", "hello"),
        VariableRecord("cfg", json.dumps({"n": 3, "names": ["a", "b"]})),
        VariableRecord("partner_api_token", API_TOKEN),
    ])
    await store.set_connection(connection_to_record(Connection(
        "db", "postgresql", host="db.internal", port=5432, login="etl", password=DB_PASSWORD,
        schema="warehouse", extra={"sslmode": "require"}), KEY))


MODES_DAG = """
from datetime import UTC, datetime

from aflow import DAG, Connection, PythonOperator, Variable, task

with DAG("var_modes", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:

    @task
    def in_thread():
        Variable.set("written_by_thread", "yes")
        return {{"greeting": Variable.get("greeting"),
                 "cfg": Variable.get("cfg", deserialize_json=True),
                 "missing": Variable.get("nope", default="dflt"),
                 "host": Connection.get("db").host,
                 "env": Variable.get("from_env")}}

    @task
    async def on_loop():
        await Variable.aset("written_on_loop", "yes")
        conn = await Connection.aget("db")
        return {{"greeting": await Variable.aget("greeting"), "host": conn.host,
                 "uri_has_password": conn.password in conn.get_uri()}}

    @task(run_in="process")
    def in_process():
        Variable.set("written_by_child", "yes")
        conn = Connection.get("db")
        return {{"greeting": Variable.get("greeting"), "host": conn.host,
                 "password_ok": conn.password == {password}, "env": Variable.get("from_env"),
                 "cfg": Variable.get("cfg", deserialize_json=True)}}

    in_thread()
    on_loop()
    in_process()

    def show(**kwargs):
        return {{k: v for k, v in kwargs.items() if k in ("text", "fallback", "port", "env_conn")}}

    PythonOperator(task_id="templated", python_callable=show, op_kwargs={{
        "text": "{{{{ var.value.greeting }}}} {{{{ var.json.cfg.n }}}} {{{{ conn.db.host }}}}",
        "fallback": "{{{{ var.value.get('absent', 'fallback') }}}}",
        "port": "{{{{ conn.db.port }}}} {{{{ conn['db'].login }}}}",
        "env_conn": "{{{{ conn.envonly.host }}}}",
    }})
    PythonOperator(task_id="templated_in_process", python_callable=show, run_in="process",
                   op_kwargs={{"text": "{{{{ var.value.greeting }}}}/{{{{ conn.db.schema }}}}"}})
"""


async def test_tasks_in_every_mode_reach_variables_and_connections(
    orchestrator_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFLOW_VAR_FROM_ENV", "env-value")
    monkeypatch.setenv("AFLOW_CONN_ENVONLY", "http://env.example:8080")
    dag = write_dag_file(tmp_path, "var_modes_dag", MODES_DAG, password=DB_PASSWORD)
    o = await orchestrator_factory([dag])
    await _seed(o.store)
    handle = await o.trigger("var_modes")
    final = await handle.wait(timeout=60)
    tis = {t.task_id: t for t in await handle.task_instances()}
    assert final.state.value == "success", {k: (t.state, t.error) for k, t in tis.items()}
    x = {r.task_id: r.value for r in await o.store.get_xcoms("var_modes", handle.run_id)}
    cfg = {"n": 3, "names": ["a", "b"]}
    assert x["in_thread"] == {"greeting": "hello", "cfg": cfg, "missing": "dflt",
                              "host": "db.internal", "env": "env-value"}
    assert x["on_loop"] == {"greeting": "hello", "host": "db.internal", "uri_has_password": True}
    assert x["in_process"] == {"greeting": "hello", "host": "db.internal", "password_ok": True,
                               "env": "env-value", "cfg": cfg}
    assert x["templated"] == {"text": "hello 3 db.internal", "fallback": "fallback",
                              "port": "5432 etl", "env_conn": "env.example"}
    assert x["templated_in_process"] == {"text": "hello/warehouse"}
    for key in ("written_by_thread", "written_on_loop", "written_by_child"):
        assert await o.store.get_variable(key) == VariableRecord(key, "yes")


@pytest.mark.slow
async def test_every_mode_on_postgresql(
    orchestrator_factory: Any, tmp_path: Path, pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child process opens the PostgreSQL store (its own schema) from the URL."""
    monkeypatch.setenv("AFLOW_VAR_FROM_ENV", "env-value")
    monkeypatch.setenv("AFLOW_CONN_ENVONLY", "http://env.example:8080")
    dag = write_dag_file(tmp_path, "var_modes_dag", MODES_DAG, password=DB_PASSWORD)
    o = await orchestrator_factory([dag], store=pg_schema_url)
    await _seed(o.store)
    handle = await o.trigger("var_modes")
    final = await handle.wait(timeout=60)
    tis = {t.task_id: (t.state.value, t.error) for t in await handle.task_instances()}
    assert final.state.value == "success", tis
    assert await o.store.get_variable("written_by_child") == VariableRecord(
        "written_by_child", "yes")


BAD_TEMPLATE_DAG = """
from datetime import UTC, datetime

from aflow import DAG, PythonOperator

with DAG("bad_refs", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
    PythonOperator(task_id="no_var", python_callable=lambda **kw: None,
                   op_kwargs={{"x": "{{{{ var.value.never_set }}}}"}})
    PythonOperator(task_id="no_conn", python_callable=lambda **kw: None,
                   op_kwargs={{"x": "{{{{ conn.never_added.host }}}}"}})
"""


async def test_unknown_names_in_templates_fail_the_task_naming_them(
    orchestrator_factory: Any, tmp_path: Path
) -> None:
    dag = write_dag_file(tmp_path, "bad_refs_dag", BAD_TEMPLATE_DAG)
    o = await orchestrator_factory([dag])
    handle = await o.trigger("bad_refs")
    final = await handle.wait(timeout=60)
    assert final.state.value == "failed"
    tis = {t.task_id: t for t in await handle.task_instances()}
    assert "unknown variable 'never_set'" in (tis["no_var"].error or "")
    assert "unknown connection 'never_added'" in (tis["no_conn"].error or "")


async def test_a_blocking_get_on_the_loop_says_to_await_the_async_form() -> None:
    from aflow import Variable
    from aflow.exceptions import AflowError

    with pytest.raises(AflowError, match=r"await Variable\.aget"):
        Variable.get("x")


async def test_triggers_resolve_connection_ids_through_the_same_lookup(
    orchestrator_factory: Any, home: Path
) -> None:
    """A SqlSensor's conn_id names a stored (encrypted) connection; `aflow_store` still
    names aflow's own database."""
    from datetime import UTC, datetime

    from aflow import DAG, SqlSensor

    target = home / "target.db"
    import sqlite3

    db = sqlite3.connect(target)
    db.execute("CREATE TABLE t (x INTEGER)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    db.close()
    with DAG("sql_conn", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        SqlSensor(task_id="poked", conn_id="target", sql="SELECT count(*) FROM t",
                  poke_interval=0.05, timeout=30)
        SqlSensor(task_id="deferred", conn_id="target", sql="SELECT count(*) FROM t",
                  poke_interval=0.05, timeout=30, deferrable=True)
        SqlSensor(task_id="own_store", conn_id="aflow_store",
                  sql="SELECT count(*) FROM variable", poke_interval=0.05, timeout=30)
    o = await orchestrator_factory([dag])
    await o.store.set_variables([VariableRecord("a", "b")])
    await o.store.set_connection(connection_to_record(
        Connection("target", "sqlite", schema=str(target), extra={"note": "x"}), KEY))
    handle = await o.trigger("sql_conn")
    final = await handle.wait(timeout=60)
    tis = {t.task_id: (t.state.value, t.error) for t in await handle.task_instances()}
    assert final.state.value == "success", tis


async def test_connection_uri_of_the_store_connection(orchestrator_factory: Any) -> None:
    o = await orchestrator_factory([])
    uri = await services.connection_uri("aflow_store", o.store)
    assert uri == f"sqlite:///{o.store.abspath}"


# -- masking ------------------------------------------------------------------------------
MASKING_DAG = """
import logging
from datetime import UTC, datetime

from aflow import DAG, Connection, Variable, task

log = logging.getLogger("user.code")

with DAG("masking", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:

    def leak(where):
        password = Connection.get("db").password
        token = Variable.get("partner_api_token")
        print("printed:", password, "and", token)
        log.warning("logged: %s / %s", password, token)
        log.info("uri: %s", Connection.get("db").get_uri())
        raise RuntimeError(f"{{where}} failed with password={{password}} token={{token}}")

    @task(retries=0)
    def thread_leak():
        leak("thread")

    @task(retries=0, run_in="process")
    def process_leak():
        leak("process")

    @task(retries=0)
    async def loop_leak():
        conn = await Connection.aget("db")
        print("on the loop:", conn.password, await Variable.aget("partner_api_token"))
        raise ValueError("loop " + conn.password)

    thread_leak()
    process_leak()
    loop_leak()
"""


async def test_no_secret_ever_reaches_a_log_file_or_a_task_error(
    orchestrator_factory: Any, tmp_path: Path, home: Path
) -> None:
    dag = write_dag_file(tmp_path, "masking_dag", MASKING_DAG)
    o = await orchestrator_factory([dag])
    await _seed(o.store)
    handle = await o.trigger("masking")
    final = await handle.wait(timeout=60)
    assert final.state.value == "failed"
    tis = {t.task_id: t for t in await handle.task_instances()}
    assert {t.state.value for t in tis.values()} == {"failed"}

    texts, every_file = _read_logs(Path(o.log_dir))
    assert len(texts) == 3
    for name, text in texts.items():
        assert DB_PASSWORD not in text, name
        assert API_TOKEN not in text, name
        assert "***" in text, name
    for name in ("thread_leak", "process_leak"):
        assert "printed: *** and ***" in texts[name]
        assert "logged: *** / ***" in texts[name]
        assert "postgresql://etl:***@db.internal:5432/warehouse" in texts[name]
        assert "failed with password=*** token=***" in texts[name]
    assert "on the loop: *** ***" in texts["loop_leak"]
    for ti in tis.values():
        assert ti.error and DB_PASSWORD not in ti.error and API_TOKEN not in ti.error
        assert "***" in ti.error
    # Nothing anywhere under the log folder holds a secret.
    for path, data in every_file.items():
        assert DB_PASSWORD.encode() not in data and API_TOKEN.encode() not in data, path
    assert os.fspath(home) in os.fspath(o.log_dir)


def _read_logs(folder: Path) -> tuple[dict[str, str], dict[Path, bytes]]:
    """Each task's log text by task id, and the bytes of every file under `folder`."""
    texts = {p.parent.name.removeprefix("task_id="): p.read_text() for p in folder.rglob("*.log")}
    return texts, {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
