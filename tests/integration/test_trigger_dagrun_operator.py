"""TriggerDagRunOperator end to end on a real store: a run of another DAG is created and
driven, its id is the XCom; waiting for it defers (with one slot in all, the triggered
run still gets to run) and fails when the triggered run fails; the poke form waits too.
A try that dies after triggering does not make its retry trigger a second run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, PythonOperator, TriggerDagRunOperator
from aflow.authoring.operators.trigger_dagrun import MAX_RUN_ID_LENGTH, default_run_id
from aflow.exceptions import DagDefinitionError
from aflow.orchestrator import Orchestrator

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


# -- one run per task instance, whatever happens to its tries ------------------------------


class DiesAfterTriggering(TriggerDagRunOperator):
    """Its first try dies once the run it triggered is committed: before returning, or
    (waiting) before its deferral is recorded."""

    async def execute(self, context: dict[str, Any]) -> Any:
        self._first_try = context["ti"].try_number == 1
        result = await super().execute(context)
        if self._first_try:
            raise RuntimeError("the try dies after triggering")
        return result

    def defer(self, **kwargs: Any) -> Any:
        if self._first_try:
            raise RuntimeError("the try dies before its deferral is recorded")
        return super().defer(**kwargs)


async def child_runs(o: Any) -> list[Any]:
    return await o.store.list_runs("child")


async def test_a_retry_follows_the_run_its_first_try_triggered(orchestrator_factory: Any) -> None:
    await check_retry_follows_the_run(orchestrator_factory)


@pytest.mark.postgres
async def test_a_retry_follows_the_run_on_postgres_store(
    orchestrator_factory: Any, pg_schema_url: str
) -> None:
    await check_retry_follows_the_run(orchestrator_factory, store=pg_schema_url)


async def check_retry_follows_the_run(orchestrator_factory: Any, **kwargs: Any) -> None:
    retry = {"retries": 1, "retry_delay": timedelta(0)}
    with DAG("parent_retry", start_date=START) as parent:
        DiesAfterTriggering(task_id="no_wait", trigger_dag_id="child", conf={"x": 1}, **retry)
        DiesAfterTriggering(task_id="waits", trigger_dag_id="child", conf={"x": 2},
                            wait_for_completion=True, poke_interval=0.05, **retry)
        TriggerDagRunOperator.partial(task_id="mapped", trigger_dag_id="child").expand(
            conf=[{"x": 3}, {"x": 4}])
    o = await orchestrator_factory([parent, make_child()], **kwargs)
    state, tis, handle = await run_parent(o, "parent_retry")
    assert state == "success", {k: (t.state, t.error) for k, t in tis.items()}
    expected = {
        default_run_id("parent_retry", handle.run_id, "no_wait"): 1,
        default_run_id("parent_retry", handle.run_id, "waits"): 2,
        default_run_id("parent_retry", handle.run_id, "mapped", 0): 3,
        default_run_id("parent_retry", handle.run_id, "mapped", 1): 4,
    }
    assert f"triggered__parent_retry__{handle.run_id}__mapped[1]" in expected
    runs = await child_runs(o)
    assert sorted(r.run_id for r in runs) == sorted(expected)  # one per task instance
    for run in runs:
        run = await (await o.get_run("child", run.run_id)).wait(timeout=60)
        assert run.state.value == "success"
        assert run.conf == {"x": expected[run.run_id]}
    assert run_tries(await handle.task_instances()) == {
        ("no_wait", -1): 2, ("waits", -1): 2, ("mapped", 0): 1, ("mapped", 1): 1}
    run_id = default_run_id("parent_retry", handle.run_id, "waits")
    assert await xcom(o, "parent_retry", handle.run_id, "waits") == run_id
    assert (await o.store.get_run("child", run_id)).triggered_by == (
        f"parent_retry.waits ({handle.run_id})")
    mapped = await o.store.get_run("child", default_run_id("parent_retry", handle.run_id,
                                                           "mapped", 1))
    assert mapped.triggered_by == f"parent_retry.mapped[1] ({handle.run_id})"


def run_tries(tis: list[Any]) -> dict[tuple[str, int], int]:
    return {(t.task_id, t.map_index): t.try_number for t in tis}


async def test_a_try_cut_short_by_shutdown_is_followed_after_restart(home: Path) -> None:
    """A real death: the orchestrator stops while the first try, having triggered its
    run, is still inside execute. Another one on the same store runs the task again."""
    triggered = anyio.Event()

    class StopsAfterTriggering(TriggerDagRunOperator):
        async def execute(self, context: dict[str, Any]) -> Any:
            result = await super().execute(context)
            if context["ti"].try_number == 1:
                triggered.set()
                await anyio.sleep(60)  # the shutdown cancels it
            return result

    with DAG("parent_restart", start_date=START) as parent:
        StopsAfterTriggering(task_id="go", trigger_dag_id="child", wait_for_completion=True,
                             deferrable=False, poke_interval=0.05)
    dags = [parent, make_child()]
    async with Orchestrator(dags, home=home, schedule=False, shutdown_grace_s=0) as o:
        handle = await o.trigger("parent_restart")
        with anyio.fail_after(30):
            await triggered.wait()
        assert len(await child_runs(o)) == 1
    async with Orchestrator(dags, home=home, schedule=False) as o:
        final = await (await o.get_run("parent_restart", handle.run_id)).wait(timeout=60)
        tis = {t.task_id: t for t in await o.store.get_tis("parent_restart", handle.run_id)}
        runs = await child_runs(o)
    assert final.state.value == "success", tis["go"].error
    assert tis["go"].try_number == 2
    assert [r.run_id for r in runs] == [default_run_id("parent_restart", handle.run_id, "go")]
    assert runs[0].state.value == "success"


async def test_a_cleared_task_follows_the_run_it_triggered(orchestrator_factory: Any) -> None:
    with DAG("parent_cleared", start_date=START) as parent:
        TriggerDagRunOperator(task_id="go", trigger_dag_id="child", wait_for_completion=True,
                              poke_interval=0.05)
    o = await orchestrator_factory([parent, make_child()])
    state, _, handle = await run_parent(o, "parent_cleared")
    assert state == "success"
    await o.clear_tasks("parent_cleared", handle.run_id, ["go"])
    final = await handle.wait(timeout=60)
    tis = {t.task_id: t for t in await handle.task_instances()}
    assert final.state.value == "success", tis["go"].error
    assert tis["go"].try_number == 2
    assert [r.run_id for r in await child_runs(o)] == [
        default_run_id("parent_cleared", handle.run_id, "go")]


async def test_a_run_of_the_default_id_made_by_another_is_not_followed(
    orchestrator_factory: Any,
) -> None:
    with DAG("parent_taken", start_date=START) as parent:
        TriggerDagRunOperator(task_id="go", trigger_dag_id="child")
        TriggerDagRunOperator(task_id="skips", trigger_dag_id="child",
                              skip_when_already_exists=True)
    o = await orchestrator_factory([parent, make_child()])
    for task_id in ("go", "skips"):  # made by hand with the ids the tasks will ask for
        await o.trigger("child", run_id=default_run_id("parent_taken", "p1", task_id))
    handle = await o.trigger("parent_taken", run_id="p1")
    await handle.wait(timeout=60)
    tis = {t.task_id: t for t in await handle.task_instances()}
    assert tis["go"].state.value == "failed"
    assert "'triggered__parent_taken__p1__go'" in tis["go"].error
    assert "triggered by 'api', not by this task instance" in tis["go"].error
    assert tis["skips"].state.value == "skipped"
    assert len(await child_runs(o)) == 2


def test_default_run_id_is_readable_and_bounded() -> None:
    assert default_run_id("p", "manual__2024-01-01T00:00:00+00:00", "go") == (
        "triggered__p__manual__2024-01-01T00:00:00+00:00__go")
    assert default_run_id("p", "r", "go", 7) == "triggered__p__r__go[7]"
    long_a = default_run_id("p" * 200, "r" * 100, "a")
    long_b = default_run_id("p" * 200, "r" * 100, "b")
    assert len(long_a) == len(long_b) == MAX_RUN_ID_LENGTH
    assert long_a.startswith("triggered__ppp") and long_a != long_b
    assert long_a == default_run_id("p" * 200, "r" * 100, "a")
