"""TriggerDagRunOperator end to end on a real store: a run of another DAG is created and
driven, its id is the XCom; waiting for it defers (with one slot in all, the triggered
run still gets to run) and fails when the triggered run fails; the poke form waits too.
Each try triggers a run of its own (a retry after the run failed, a cleared task), except
that a try that died after triggering does not make its retry trigger a second run while
its run is still going."""

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


# -- one run per try, and none twice for a try that died ------------------------------------


class Held:
    """Child runs whose conf has an `x` held here wait until it is let go: the run a try
    triggered is then still going when the next try looks for it, as the run of a try
    that died usually is."""

    def __init__(self, *xs: int) -> None:
        self.events = {x: anyio.Event() for x in xs}
        self.waiting = {x: anyio.Event() for x in xs}  # a run of x is inside its task

    async def wait(self, x: Any) -> None:
        event = self.events.get(x)
        if event is not None:
            self.waiting[x].set()
            with anyio.fail_after(30):
                await event.wait()

    def let_go(self, x: Any) -> None:
        if x in self.events:
            self.events[x].set()


def make_held_child(held: Held) -> DAG:
    async def work(params: dict[str, Any]) -> Any:
        await held.wait(params.get("x"))
        return child_work(params)

    with DAG("child", start_date=START, params={"x": 0, "fail": False}) as dag:
        PythonOperator(task_id="work", python_callable=work)
    return dag


def dies_after_triggering(held: Held) -> type[TriggerDagRunOperator]:
    class DiesAfterTriggering(TriggerDagRunOperator):
        """Its first try dies once the run it triggered is committed: before returning,
        or (waiting) before its deferral is recorded. A later try lets that run end
        once it has chosen which run to go on with."""

        async def execute(self, context: dict[str, Any]) -> Any:
            self._first_try = context["ti"].try_number == 1
            try:
                result = await super().execute(context)
            finally:
                if not self._first_try:
                    held.let_go((self.conf or {}).get("x"))
            if self._first_try:
                raise RuntimeError("the try dies after triggering")
            return result

        def defer(self, **kwargs: Any) -> Any:
            if self._first_try:
                raise RuntimeError("the try dies before its deferral is recorded")
            return super().defer(**kwargs)

    return DiesAfterTriggering


async def child_runs(o: Any, dag_id: str = "child") -> list[Any]:
    return await o.store.list_runs(dag_id)


def run_tries(tis: list[Any]) -> dict[tuple[str, int], int]:
    return {(t.task_id, t.map_index): t.try_number for t in tis}


async def test_a_retry_follows_the_run_its_first_try_triggered(orchestrator_factory: Any) -> None:
    await check_retry_follows_the_run(orchestrator_factory)


@pytest.mark.postgres
async def test_a_retry_follows_the_run_on_postgres_store(
    orchestrator_factory: Any, pg_schema_url: str
) -> None:
    await check_retry_follows_the_run(orchestrator_factory, store=pg_schema_url)


async def check_retry_follows_the_run(orchestrator_factory: Any, **kwargs: Any) -> None:
    retry = {"retries": 1, "retry_delay": timedelta(0)}
    held = Held(1, 2)
    dies = dies_after_triggering(held)
    with DAG("parent_retry", start_date=START) as parent:
        dies(task_id="no_wait", trigger_dag_id="child", conf={"x": 1}, **retry)
        dies(task_id="waits", trigger_dag_id="child", conf={"x": 2}, wait_for_completion=True,
             poke_interval=0.05, **retry)
        TriggerDagRunOperator.partial(task_id="mapped", trigger_dag_id="child").expand(
            conf=[{"x": 3}, {"x": 4}])
    o = await orchestrator_factory([parent, make_held_child(held)], **kwargs)
    state, tis, handle = await run_parent(o, "parent_retry")
    assert state == "success", {k: (t.state, t.error) for k, t in tis.items()}
    made = {  # by the first tries; the second ones made none
        default_run_id("parent_retry", handle.run_id, "no_wait", try_number=1): 1,
        default_run_id("parent_retry", handle.run_id, "waits", try_number=1): 2,
        default_run_id("parent_retry", handle.run_id, "mapped", 0, try_number=1): 3,
        default_run_id("parent_retry", handle.run_id, "mapped", 1, try_number=1): 4,
    }
    assert f"triggered__parent_retry__{handle.run_id}__mapped[1]__try1" in made
    runs = await child_runs(o)
    assert sorted(r.run_id for r in runs) == sorted(made)  # one per task instance
    for run in runs:
        run = await (await o.get_run("child", run.run_id)).wait(timeout=60)
        assert run.state.value == "success"
        assert run.conf == {"x": made[run.run_id]}
    assert run_tries(await handle.task_instances()) == {
        ("no_wait", -1): 2, ("waits", -1): 2, ("mapped", 0): 1, ("mapped", 1): 1}
    run_id = default_run_id("parent_retry", handle.run_id, "waits", try_number=1)
    assert await xcom(o, "parent_retry", handle.run_id, "waits") == run_id
    assert await xcom(o, "parent_retry", handle.run_id, "no_wait") == default_run_id(
        "parent_retry", handle.run_id, "no_wait", try_number=1)
    assert (await o.store.get_run("child", run_id)).triggered_by == (
        f"parent_retry.waits ({handle.run_id})")
    mapped = await o.store.get_run("child", default_run_id("parent_retry", handle.run_id,
                                                           "mapped", 1, try_number=1))
    assert mapped.triggered_by == f"parent_retry.mapped[1] ({handle.run_id})"


async def test_a_try_cut_short_by_shutdown_is_followed_after_restart(home: Path) -> None:
    """A real death: the orchestrator stops while the first try, having triggered its
    run, is still inside execute. Another one on the same store runs the task again, as
    try 2 (an interrupted try does not use up a retry, but its number is not reused)."""
    triggered = anyio.Event()
    held = Held(0)

    class StopsAfterTriggering(TriggerDagRunOperator):
        def _push(self, context: dict[str, Any], run_id: str, logical_date_iso: str) -> None:
            super()._push(context, run_id, logical_date_iso)  # the run is chosen
            if context["ti"].try_number == 1:
                triggered.set()  # then it waits for the run, until the shutdown cancels it
            else:
                held.let_go(0)

    with DAG("parent_restart", start_date=START) as parent:
        StopsAfterTriggering(task_id="go", trigger_dag_id="child", wait_for_completion=True,
                             deferrable=False, poke_interval=0.05)
    dags = [parent, make_held_child(held)]
    async with Orchestrator(dags, home=home, schedule=False, shutdown_grace_s=0) as o:
        handle = await o.trigger("parent_restart")
        with anyio.fail_after(30):
            await triggered.wait()
            await held.waiting[0].wait()  # (its task's try has started, so is interrupted)
        assert len(await child_runs(o)) == 1
    async with Orchestrator(dags, home=home, schedule=False) as o:
        final = await (await o.get_run("parent_restart", handle.run_id)).wait(timeout=60)
        tis = {t.task_id: t for t in await o.store.get_tis("parent_restart", handle.run_id)}
        runs = await child_runs(o)
        child_tis = [await o.store.get_tis("child", r.run_id) for r in runs]
    assert final.state.value == "success", (tis["go"].error, child_tis)
    assert tis["go"].try_number == 2
    assert [r.run_id for r in runs] == [
        default_run_id("parent_restart", handle.run_id, "go", try_number=1)]
    assert runs[0].state.value == "success"


async def test_a_cleared_task_triggers_a_new_run(orchestrator_factory: Any) -> None:
    """As in Airflow: clearing the task triggers the target again, mapped or not (the
    runs the first tries made have ended: the tasks waited for them)."""
    wait = {"wait_for_completion": True, "poke_interval": 0.05}
    with DAG("parent_cleared", start_date=START) as parent:
        TriggerDagRunOperator(task_id="go", trigger_dag_id="child", **wait)
        TriggerDagRunOperator.partial(task_id="fan", trigger_dag_id="child", **wait).expand(
            conf=[{"x": 1}, {"x": 2}])
    o = await orchestrator_factory([parent, make_child()])
    state, _, handle = await run_parent(o, "parent_cleared")
    assert state == "success"
    assert len(await child_runs(o)) == 3
    await o.clear_tasks("parent_cleared", handle.run_id, ["go", "fan"])
    final = await handle.wait(timeout=60)
    tis = await handle.task_instances()
    assert final.state.value == "success", [(t.task_id, t.map_index, t.error) for t in tis]
    assert run_tries(tis) == {("go", -1): 2, ("fan", 0): 2, ("fan", 1): 2}
    expected = [default_run_id("parent_cleared", handle.run_id, task_id, i, try_number=n)
                for task_id, i in (("go", -1), ("fan", 0), ("fan", 1)) for n in (1, 2)]
    runs = await child_runs(o)
    assert sorted(r.run_id for r in runs) == sorted(expected)  # two each, distinct ids
    assert all(r.state.value == "success" for r in runs)
    assert await xcom(o, "parent_cleared", handle.run_id, "go") == expected[1]


def make_flaky_child(folder: Path) -> DAG:
    """Its run fails the first time for a given `flag` and succeeds from then on."""

    def work(params: dict[str, Any]) -> str:
        flag = folder / params["flag"]
        if not flag.exists():
            flag.touch()
            raise RuntimeError(f"{flag.name} was absent: fails this once")
        return "ok"

    with DAG("flaky", start_date=START, params={"flag": ""}) as dag:
        PythonOperator(task_id="work", python_callable=work)
    return dag


async def test_a_retry_after_the_run_failed_triggers_a_new_one(
    orchestrator_factory: Any, tmp_path: Path
) -> None:
    await check_retry_after_failed_run(orchestrator_factory, tmp_path)


@pytest.mark.postgres
async def test_a_retry_after_the_run_failed_on_postgres_store(
    orchestrator_factory: Any, tmp_path: Path, pg_schema_url: str
) -> None:
    await check_retry_after_failed_run(orchestrator_factory, tmp_path, store=pg_schema_url)


async def check_retry_after_failed_run(orchestrator_factory: Any, folder: Path,
                                       **kwargs: Any) -> None:
    """wait_for_completion with retries, as in Airflow: the run try 1 waited for failed,
    so try 2 triggers a fresh one and succeeds with it (deferred wait, and polled)."""
    retry = {"retries": 1, "retry_delay": timedelta(0), "wait_for_completion": True,
             "poke_interval": 0.05}
    with DAG("parent_flaky", start_date=START) as parent:
        TriggerDagRunOperator(task_id="deferred", trigger_dag_id="flaky",
                              conf={"flag": "deferred"}, **retry)
        TriggerDagRunOperator(task_id="polled", trigger_dag_id="flaky", conf={"flag": "polled"},
                              deferrable=False, **retry)
    o = await orchestrator_factory([parent, make_flaky_child(folder)], **kwargs)
    state, tis, handle = await run_parent(o, "parent_flaky")
    assert state == "success", {k: (t.state, t.error) for k, t in tis.items()}
    assert run_tries(list(tis.values())) == {("deferred", -1): 2, ("polled", -1): 2}
    runs = {r.run_id: r.state.value for r in await child_runs(o, "flaky")}
    for task_id in ("deferred", "polled"):
        first, second = (default_run_id("parent_flaky", handle.run_id, task_id, try_number=n)
                         for n in (1, 2))
        assert runs.pop(first) == "failed"
        assert runs.pop(second) == "success"
        assert await xcom(o, "parent_flaky", handle.run_id, task_id) == second
    assert runs == {}


async def test_a_run_of_the_default_id_made_by_another_is_not_followed(
    orchestrator_factory: Any,
) -> None:
    with DAG("parent_taken", start_date=START) as parent:
        TriggerDagRunOperator(task_id="go", trigger_dag_id="child")
        TriggerDagRunOperator(task_id="skips", trigger_dag_id="child",
                              skip_when_already_exists=True)
        # its try 1 fails on the taken id; try 2 does not take that run for try 1's
        TriggerDagRunOperator(task_id="retried", trigger_dag_id="child", retries=1,
                              retry_delay=timedelta(0))
    held = Held(0)  # the runs made by hand stay queued or running meanwhile
    o = await orchestrator_factory([parent, make_held_child(held)])
    for task_id in ("go", "skips", "retried"):  # made with the ids try 1 will ask for
        await o.trigger("child", run_id=default_run_id("parent_taken", "p1", task_id,
                                                       try_number=1))
    handle = await o.trigger("parent_taken", run_id="p1")
    await handle.wait(timeout=60)
    tis = {t.task_id: t for t in await handle.task_instances()}
    assert tis["go"].state.value == "failed"
    assert "'triggered__parent_taken__p1__go__try1'" in tis["go"].error
    assert "triggered by 'api', not by this task instance" in tis["go"].error
    assert tis["skips"].state.value == "skipped"
    assert tis["retried"].state.value == "success", tis["retried"].error
    assert tis["retried"].try_number == 2
    retried = default_run_id("parent_taken", "p1", "retried", try_number=2)
    assert await xcom(o, "parent_taken", "p1", "retried") == retried
    assert len(await child_runs(o)) == 4
    held.let_go(0)


async def test_a_try_whose_own_id_this_task_instance_took_follows_it(
    orchestrator_factory: Any,
) -> None:
    """The same try running again (a safeguard: an interrupted try runs again under the
    next number) finds its own id taken by a run of this task instance: it follows it,
    ended or not."""
    with DAG("parent_own", start_date=START) as parent:
        TriggerDagRunOperator(task_id="go", trigger_dag_id="child", wait_for_completion=True,
                              poke_interval=0.05)
    o = await orchestrator_factory([parent, make_child()])
    own = default_run_id("parent_own", "p1", "go", try_number=1)
    made = await o.trigger("child", {"x": 7}, run_id=own, triggered_by="parent_own.go (p1)")
    assert (await made.wait(timeout=60)).state.value == "success"
    handle = await o.trigger("parent_own", run_id="p1")
    assert (await handle.wait(timeout=60)).state.value == "success"
    assert [r.run_id for r in await child_runs(o)] == [own]
    assert await xcom(o, "parent_own", "p1", "go") == own


def test_default_run_id_is_readable_and_bounded() -> None:
    assert default_run_id("p", "manual__2024-01-01T00:00:00+00:00", "go", try_number=1) == (
        "triggered__p__manual__2024-01-01T00:00:00+00:00__go__try1")
    assert default_run_id("p", "r", "go", 7, try_number=3) == "triggered__p__r__go[7]__try3"
    assert default_run_id("p", "r", "go", try_number=2) != default_run_id(
        "p", "r", "go", try_number=1)
    long_a = default_run_id("p" * 200, "r" * 100, "a", try_number=12)
    long_b = default_run_id("p" * 200, "r" * 100, "b", try_number=12)
    long_c = default_run_id("p" * 200, "r" * 100, "a", try_number=13)
    assert len(long_a) == len(long_b) == len(long_c) == MAX_RUN_ID_LENGTH
    assert long_a.startswith("triggered__ppp") and long_a.endswith("__try12")
    assert len({long_a, long_b, long_c}) == 3
    assert long_a == default_run_id("p" * 200, "r" * 100, "a", try_number=12)
    with pytest.raises(ValueError, match="try_number must be 1 or more, not 0"):
        default_run_id("p", "r", "go", try_number=0)
