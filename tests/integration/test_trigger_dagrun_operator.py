"""TriggerDagRunOperator end to end on a real store: a run of another DAG is created and
driven, its id is the XCom; waiting for it defers (with one slot in all, the triggered
run still gets to run) and fails when the triggered run fails; the poke form waits too."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from aflow import DAG, PythonOperator, TriggerDagRunOperator
from aflow.exceptions import DagDefinitionError

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


def child_work(params: dict[str, Any]) -> Any:
    if params.get("fail"):
        raise RuntimeError("told to fail")
    return {"got": params.get("x")}


def make_child() -> DAG:
    with DAG("child", start_date=START, params={"x": 0, "fail": False}) as dag:
        PythonOperator(task_id="work", python_callable=child_work)
    return dag


async def run_parent(o: Any, parent_id: str) -> tuple[str, dict[str, Any], Any]:
    handle = await o.trigger(parent_id)
    final = await handle.wait(timeout=60)
    tis = {t.task_id: t for t in await handle.task_instances()}
    assert final.state.value in ("success", "failed")
    return final.state.value, tis, handle


async def xcom(o: Any, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
    for r in await o.store.get_xcoms(dag_id, run_id):
        if r.task_id == task_id and r.key == key:
            return r.value
    return None


async def test_trigger_without_waiting(orchestrator_factory: Any) -> None:
    with DAG("parent_nowait", start_date=START) as parent:
        TriggerDagRunOperator(task_id="go", trigger_dag_id="child",
                              conf={"x": "{{ run_id }}"}, trigger_run_id="from_parent_1",
                              logical_date="2024-03-04T05:06:07+00:00")
        TriggerDagRunOperator(task_id="again", trigger_dag_id="child",
                              trigger_run_id="from_parent_1", skip_when_already_exists=True,
                              trigger_rule="all_done")
        TriggerDagRunOperator(task_id="dup", trigger_dag_id="child",
                              trigger_run_id="from_parent_1", trigger_rule="all_done")
        TriggerDagRunOperator(task_id="nope", trigger_dag_id="no_such_dag")
        parent.get_task("go") >> [parent.get_task("again"), parent.get_task("dup")]
    o = await orchestrator_factory([parent, make_child()])
    state, tis, handle = await run_parent(o, "parent_nowait")
    assert tis["go"].state.value == "success", tis["go"].error
    assert await xcom(o, "parent_nowait", handle.run_id, "go") == "from_parent_1"
    assert await xcom(o, "parent_nowait", handle.run_id, "go", "trigger_run_id") == "from_parent_1"
    assert tis["again"].state.value == "skipped"
    assert tis["dup"].state.value == "failed" and "from_parent_1" in tis["dup"].error
    assert tis["nope"].state.value == "failed" and "no_such_dag" in tis["nope"].error
    child_run = await (await o.get_run("child", "from_parent_1")).wait(timeout=60)
    assert child_run.state.value == "success"
    assert child_run.conf == {"x": handle.run_id}
    assert child_run.logical_date == datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert child_run.triggered_by == f"parent_nowait.go ({handle.run_id})"
    assert await xcom(o, "child", "from_parent_1", "work") == {"got": handle.run_id}


async def test_wait_deferred_frees_the_only_slot(orchestrator_factory: Any) -> None:
    with DAG("parent_wait", start_date=START) as parent:
        TriggerDagRunOperator(task_id="ok", trigger_dag_id="child", conf={"x": 5},
                              trigger_run_id="waited_ok", wait_for_completion=True,
                              poke_interval=0.05)
        TriggerDagRunOperator(task_id="bad", trigger_dag_id="child", conf={"fail": True},
                              trigger_run_id="waited_bad", wait_for_completion=True,
                              poke_interval=0.05)
    # One slot: a waiting task that kept its slot would starve the runs it waits for.
    o = await orchestrator_factory([parent, make_child()], parallelism=1)
    deferrals: list[int] = []
    o.driver.on_deferred.append(lambda: deferrals.append(1))
    state, tis, handle = await run_parent(o, "parent_wait")
    assert tis["ok"].state.value == "success", tis["ok"].error
    assert await xcom(o, "parent_wait", handle.run_id, "ok") == "waited_ok"
    assert await xcom(o, "parent_wait", handle.run_id, "ok", "trigger_run_id") == "waited_ok"
    assert tis["bad"].state.value == "failed"
    assert "waited_bad" in tis["bad"].error and "'failed'" in tis["bad"].error
    assert state == "failed"
    assert len(deferrals) >= 2  # both waits went through the triggerer
    assert (await o.store.get_run("child", "waited_ok")).state.value == "success"
    assert (await o.store.get_run("child", "waited_bad")).state.value == "failed"


async def test_wait_by_polling(orchestrator_factory: Any) -> None:
    with DAG("parent_poll", start_date=START) as parent:
        TriggerDagRunOperator(task_id="ok", trigger_dag_id="child", trigger_run_id="polled",
                              wait_for_completion=True, deferrable=False, poke_interval=0.05)
        TriggerDagRunOperator(task_id="inverted", trigger_dag_id="child",
                              trigger_run_id="polled_inverted", conf={"fail": True},
                              wait_for_completion=True, deferrable=False, poke_interval=0.05,
                              allowed_states=["failed"], failed_states=["success"])
    o = await orchestrator_factory([parent, make_child()], parallelism=3)
    deferrals: list[int] = []
    o.driver.on_deferred.append(lambda: deferrals.append(1))
    state, tis, handle = await run_parent(o, "parent_poll")
    assert state == "success", {k: (t.state, t.error) for k, t in tis.items()}
    assert await xcom(o, "parent_poll", handle.run_id, "ok") == "polled"
    assert deferrals == []


def test_bad_arguments_are_named() -> None:
    with DAG("trig_bad", start_date=START):
        with pytest.raises(DagDefinitionError, match="'a'.*'done' is not a run state"):
            TriggerDagRunOperator(task_id="a", trigger_dag_id="x", allowed_states=["done"])
        with pytest.raises(DagDefinitionError, match="'b'.*share"):
            TriggerDagRunOperator(task_id="b", trigger_dag_id="x", allowed_states=["failed"])


@pytest.mark.postgres
async def test_wait_deferred_on_postgres_store(orchestrator_factory: Any, pg_schema_url: str) -> None:
    with DAG("parent_pg", start_date=START) as parent:
        TriggerDagRunOperator(task_id="ok", trigger_dag_id="child", trigger_run_id="pg_ok",
                              wait_for_completion=True, poke_interval=0.05)
        TriggerDagRunOperator(task_id="bad", trigger_dag_id="child", conf={"fail": True},
                              trigger_run_id="pg_bad", wait_for_completion=True,
                              poke_interval=0.05)
    o = await orchestrator_factory([parent, make_child()], parallelism=1, store=pg_schema_url)
    state, tis, handle = await run_parent(o, "parent_pg")
    assert tis["ok"].state.value == "success", tis["ok"].error
    assert tis["bad"].state.value == "failed" and "pg_bad" in tis["bad"].error
