"""Sensors on aflow's own state, in poke and deferrable modes: ExternalTaskSensor (another
DAG's task or run) and WebhookSensor (events delivered to aflow by key)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from aflow import DAG, PythonOperator
from aflow.authoring.sensors import ExternalTaskSensor, WebhookSensor
from aflow.states import TaskState

pytestmark = pytest.mark.anyio
START = datetime(2024, 1, 1, tzinfo=UTC)
WHEN = datetime(2024, 3, 1, 6, tzinfo=UTC)

MODES = [{"deferrable": False}, {"deferrable": True}]
IDS = ["poke", "deferrable"]


async def _wait_state(handle: Any, task_id: str, states: tuple[TaskState, ...]) -> None:
    with anyio.fail_after(30):
        while True:  # noqa: ASYNC110 - polls the store
            tis = {t.task_id: t for t in await handle.task_instances()}
            if tis[task_id].state in states:
                return
            await anyio.sleep(0.01)


@pytest.mark.parametrize("mode", MODES, ids=IDS)
@pytest.mark.parametrize("external_task_id", ["load", None], ids=["task", "run"])
async def test_external_task_sensor_waits_for_the_other_dag(
    orchestrator_factory: Any, mode: dict[str, Any], external_task_id: str | None
) -> None:
    gate = anyio.Event()

    async def load() -> str:
        await gate.wait()
        return "loaded"

    with DAG("upstream", start_date=START) as upstream:
        PythonOperator(task_id="load", python_callable=load)
    with DAG("downstream", start_date=START) as downstream:
        ExternalTaskSensor(task_id="wait", external_dag_id="upstream",
                           external_task_id=external_task_id, poke_interval=0.05, **mode)

    o = await orchestrator_factory([upstream, downstream])
    down = await o.trigger("downstream", logical_date=WHEN)
    up = await o.trigger("upstream", logical_date=WHEN)
    waiting = (TaskState.DEFERRED,) if mode["deferrable"] else (TaskState.RUNNING,)
    await _wait_state(down, "wait", waiting)
    gate.set()
    assert (await up.wait(timeout=30)).state.value == "success"
    final = await down.wait(timeout=30)
    assert final.state.value == "success"


@pytest.mark.parametrize("mode", MODES, ids=IDS)
async def test_external_task_sensor_fails_on_a_failed_state(
    orchestrator_factory: Any, mode: dict[str, Any]
) -> None:
    def boom() -> None:
        raise RuntimeError("upstream broke")

    with DAG("upstream_bad", start_date=START) as upstream:
        PythonOperator(task_id="load", python_callable=boom)
    with DAG("downstream_bad", start_date=START) as downstream:
        ExternalTaskSensor(task_id="wait", external_dag_id="upstream_bad",
                           external_task_id="load", poke_interval=0.05, **mode)
    o = await orchestrator_factory([upstream, downstream])
    await (await o.trigger("upstream_bad", logical_date=WHEN)).wait(timeout=30)
    final = await (await o.trigger("downstream_bad", logical_date=WHEN)).wait(timeout=30)
    assert final.state.value == "failed"


@pytest.mark.parametrize("mode", MODES, ids=IDS)
@pytest.mark.parametrize("early", [True, False], ids=["delivered-before", "delivered-after"])
async def test_webhook_sensor_gets_the_payload(
    orchestrator_factory: Any, mode: dict[str, Any], early: bool
) -> None:
    with DAG("hooked", start_date=START) as dag:
        wait = WebhookSensor(task_id="wait", key="order-{{ dag_run.conf['order'] }}",
                             poke_interval=0.05, **mode)
        wait >> PythonOperator(task_id="use", python_callable=lambda ti: ti.xcom_pull(task_ids="wait"))
    o = await orchestrator_factory([dag])
    if early:
        await o.deliver_webhook("order-42", {"paid": True})
    handle = await o.trigger("hooked", conf={"order": 42})
    if not early:
        waiting = (TaskState.DEFERRED,) if mode["deferrable"] else (TaskState.RUNNING,)
        await _wait_state(handle, "wait", waiting)
        await o.deliver_webhook("order-41", {"paid": False})  # another key: ignored
        await o.deliver_webhook("order-42", {"paid": True})
    final = await handle.wait(timeout=30)
    assert final.state.value == "success"
    xcoms = {x.task_id: x.value for x in await o.store.get_xcoms("hooked", final.run_id)}
    assert xcoms["use"] == {"paid": True}


@pytest.mark.postgres
async def test_deferrable_external_task_sensor_on_postgres(
    orchestrator_factory: Any, pg_schema_url: str
) -> None:
    """The deferrable sensor's SQL trigger reads aflow's own tables: on PostgreSQL too
    (its dialect and the store's schema are the store's, not SQLite's)."""
    with DAG("pg_upstream", start_date=START) as upstream:
        PythonOperator(task_id="load", python_callable=lambda: "loaded")
    with DAG("pg_downstream", start_date=START) as downstream:
        ExternalTaskSensor(task_id="wait", external_dag_id="pg_upstream",
                           external_task_id="load", poke_interval=0.05, deferrable=True)
    o = await orchestrator_factory([upstream, downstream], store=pg_schema_url)
    down = await o.trigger("pg_downstream", logical_date=WHEN)
    await _wait_state(down, "wait", (TaskState.DEFERRED,))
    assert (await (await o.trigger("pg_upstream", logical_date=WHEN)).wait(timeout=30)).state.value == "success"
    final = await down.wait(timeout=30)
    assert final.state.value == "success"
    (wait,) = [t for t in await down.task_instances() if t.task_id == "wait"]
    assert wait.state is TaskState.SUCCESS
