"""HttpSensor and SqlSensor in poke, reschedule and deferrable modes against a real
loopback HTTP server and a real SQLite file: the same outcome in every mode."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from aflow import DAG, PythonOperator
from aflow.authoring.sensors import HttpSensor, SqlSensor
from aflow.states import TaskState

pytestmark = pytest.mark.anyio
START = datetime(2024, 1, 1, tzinfo=UTC)
MODES = [{"mode": "poke"}, {"mode": "reschedule"}, {"deferrable": True}]
IDS = ["poke", "reschedule", "deferrable"]


class Service:
    """A loopback HTTP service whose readiness the test flips."""

    def __init__(self) -> None:
        self.ready = False
        self.hits = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if not self.ready:
            return web.json_response({"state": "warming"}, status=503)
        return web.json_response({"job": {"state": "done", "rows": 7}})


@pytest.fixture
async def service() -> AsyncIterator[tuple[Service, str]]:
    svc = Service()
    app = web.Application()
    app.router.add_get("/status", svc.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield svc, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _until_waiting(handle: Any, task_id: str, svc_hits: Any) -> None:
    with anyio.fail_after(30):
        while svc_hits() < 2:  # noqa: ASYNC110 - waits until the sensor has checked twice
            await anyio.sleep(0.01)


@pytest.mark.parametrize("mode", MODES, ids=IDS)
async def test_http_sensor_modes_agree(
    orchestrator_factory: Any, service: tuple[Service, str], mode: dict[str, Any]
) -> None:
    svc, base = service
    with DAG(f"http_{'_'.join(mode)}", start_date=START) as dag:
        wait = HttpSensor(task_id="wait", url=f"{base}/status", json_path="job.state",
                          json_equals="done", poke_interval=0.05, **mode)
        wait >> PythonOperator(task_id="rows",
                               python_callable=lambda ti: ti.xcom_pull(task_ids="wait")["body"]["job"]["rows"])
    o = await orchestrator_factory([dag])
    handle = await o.trigger(dag.dag_id)
    await _until_waiting(handle, "wait", lambda: svc.hits)
    svc.ready = True
    final = await handle.wait(timeout=30)
    assert final.state.value == "success"
    xcoms = {x.task_id: x.value for x in await o.store.get_xcoms(dag.dag_id, final.run_id)}
    assert xcoms["rows"] == 7
    assert xcoms["wait"]["status"] == 200
    tis = {t.task_id: t for t in await handle.task_instances()}
    assert tis["wait"].try_number == 1 and tis["wait"].state is TaskState.SUCCESS


@pytest.mark.parametrize("mode", MODES, ids=IDS)
async def test_sql_sensor_modes_agree(
    orchestrator_factory: Any, tmp_path: Path, mode: dict[str, Any]
) -> None:
    db = tmp_path / "warehouse.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE loads (day TEXT, rows INTEGER)")
    with DAG(f"sql_{'_'.join(mode)}", start_date=START) as dag:
        SqlSensor(task_id="wait", dsn=f"sqlite:///{db}",
                  sql="SELECT rows FROM loads WHERE day = ?", parameters=["{{ ds }}"],
                  poke_interval=0.05, **mode)
    o = await orchestrator_factory([dag])
    handle = await o.trigger(dag.dag_id, logical_date=datetime(2024, 5, 1, tzinfo=UTC))
    with anyio.fail_after(30):
        while True:  # noqa: ASYNC110 - waits for the sensor to start waiting
            (ti,) = await handle.task_instances()
            if ti.state in (TaskState.RUNNING, TaskState.DEFERRED, TaskState.UP_FOR_RESCHEDULE):
                break
            await anyio.sleep(0.01)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO loads VALUES ('2024-04-30', 1)")  # another day: not it
        conn.execute("INSERT INTO loads VALUES ('2024-05-01', 42)")
    final = await handle.wait(timeout=30)
    assert final.state.value == "success"
    (xcom,) = await o.store.get_xcoms(dag.dag_id, final.run_id)
    assert xcom.value == {"value": 42}
