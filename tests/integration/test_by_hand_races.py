"""Clearing and marking by hand at awkward moments of a run this process drives: a mark of
the run while tasks wait for a slot, a clear while a TI's end is still being committed,
a clear made by another process in a run driven by a process that claims no runs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, Orchestrator, PythonOperator, RunBusy
from aflow.states import DagRunState, TaskState
from aflow.store.base import BY_HAND_CLASSPATH
from tests.integration.test_clear_and_mark import WAIT_S, tries, until

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


async def no_slots_in_use(o: Orchestrator) -> None:
    with anyio.fail_after(WAIT_S):
        while o.slots_in_use:  # noqa: ASYNC110 - the slot count has no event
            await anyio.sleep(0.01)


async def test_mark_run_keeps_tasks_waiting_for_a_slot_from_starting(
    orchestrator_factory: Any,
) -> None:
    """max_active_tasks=1: while one task runs, the other waits for the slot (scheduled
    in memory). The run is marked success; when the slot frees, the waiting one must not
    start (it would write a `running` row over the mark and leave it there)."""
    calls: list[str] = []
    gate = anyio.Event()

    async def work(ti: Any) -> None:
        calls.append(ti.task_id)
        await gate.wait()

    with DAG("capped", start_date=START, max_active_tasks=1) as dag:
        PythonOperator(task_id="one", python_callable=work)
        PythonOperator(task_id="two", python_callable=work)
    o = await orchestrator_factory(dag)
    run = await o.trigger("capped")

    async def one_running() -> bool:
        return bool(calls) and ("running", 1) in (await tries(o, "capped", run.run_id)).values()

    await until(one_running)
    [running] = calls
    waiting = "two" if running == "one" else "one"
    assert o.driver.runs[("capped", run.run_id)].tis[waiting].state is TaskState.SCHEDULED
    assert (await o.mark_run("capped", run.run_id, "success")).state is DagRunState.SUCCESS
    gate.set()
    await no_slots_in_use(o)
    await anyio.sleep(0.2)  # a wrongly started try would have written its row by now
    assert await tries(o, "capped", run.run_id) == {
        running: ("success", 1), waiting: ("success", 0)}
    assert calls == [running]
    assert (await o.store.get_run("capped", run.run_id)).state is DagRunState.SUCCESS


def window_dag(failing: set[str], seen: list[Orchestrator], release: anyio.Event) -> DAG:
    """x >> d >> e << f, e all_done; x fails (while in `failing`) once f's end is
    counted for e, and else succeeds once `release` is set."""

    async def x() -> None:
        with anyio.fail_after(WAIT_S):
            if "x" not in failing:
                await release.wait()
                return
            [rs] = seen[0].driver.runs.values()
            while "e" not in rs.counts:  # noqa: ASYNC110 - driver memory, no event
                await anyio.sleep(0.01)
            raise ValueError("x fails")

    with DAG("window", start_date=START) as dag:
        xt = PythonOperator(task_id="x", python_callable=x)
        dt = PythonOperator(task_id="d", python_callable=lambda: None)
        ft = PythonOperator(task_id="f", python_callable=lambda: None)
        et = PythonOperator(task_id="e", python_callable=lambda: None, trigger_rule="all_done")
        xt >> dt >> et
        ft >> et
    return dag


async def test_a_clear_while_an_end_is_being_committed_does_not_hang_the_run(
    orchestrator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """x fails, so d is decided upstream_failed; while d's row commits (and before e's
    counts hold it), x is cleared with its downstream. The counts of e must stay right:
    the run ends once x and d have run again."""
    failing = {"x"}
    seen: list[Orchestrator] = []
    release = anyio.Event()
    o = await orchestrator_factory(window_dag(failing, seen, release))
    seen.append(o)
    store = o.store
    save_tis = store.save_tis
    in_window = anyio.Event()
    go_on = anyio.Event()

    async def held_save_tis(tis: Any) -> None:
        await save_tis(tis)
        if any(t.task_id == "d" and t.state is TaskState.UPSTREAM_FAILED for t in tis):
            in_window.set()
            with anyio.fail_after(WAIT_S):
                await go_on.wait()

    monkeypatch.setattr(store, "save_tis", held_save_tis)
    run = await o.trigger("window")
    with anyio.fail_after(WAIT_S):
        await in_window.wait()
    failing.clear()
    async with anyio.create_task_group() as tg:
        cleared: list[list[str]] = []

        async def clear() -> None:
            # The clear waits while d's end commits; once d is counted, e (all_done) starts
            # at once, and a clear that looks while e runs is refused (RunBusy, "wait until
            # they end"): it is asked again, as a user would, until e has ended.
            with anyio.fail_after(WAIT_S):
                while True:
                    try:
                        cleared.append(await o.clear_tasks("window", run.run_id, ["x"],
                                                           downstream=True))
                        return
                    except RunBusy:
                        await anyio.sleep(0.01)

        tg.start_soon(clear)
        await anyio.sleep(0.1)  # the clear has looked at the run meanwhile
        go_on.set()
    await anyio.sleep(0.1)  # d's end is decided on (or wrongly counted) meanwhile
    release.set()
    final = await run.wait(timeout=WAIT_S)
    assert final.state is DagRunState.SUCCESS
    assert cleared[0][:2] == ["x", "d"]
    states = await tries(o, "window", run.run_id)
    assert states["x"] == ("success", 2)
    assert states["d"][0] == "success" and states["e"][0] == "success"


async def test_a_clear_by_another_process_reaches_a_driver_that_claims_no_runs(
    home: Path, orchestrator_factory: Any
) -> None:
    """The driving process claims no runs (as `aflow dags test`): it still applies a clear
    another process makes in the store, so its run does not wait forever."""
    calls: list[str] = []
    failing = {"flaky"}
    gate = anyio.Event()

    def flaky() -> None:
        calls.append("flaky")
        if "flaky" in failing:
            raise ValueError("flaky fails")

    async def slow() -> None:
        await gate.wait()

    with DAG("noclaim", start_date=START) as dag:
        f = PythonOperator(task_id="flaky", python_callable=flaky)
        a = PythonOperator(task_id="after", python_callable=lambda: None)
        s = PythonOperator(task_id="slow", python_callable=slow)
        j = PythonOperator(task_id="join", python_callable=lambda: None)
        f >> a >> j
        s >> j
    driver = await orchestrator_factory(dag, claim=False, poll_s=0.05)
    other = await orchestrator_factory(dag, claim=False, triggerer=False)
    run = await driver.trigger("noclaim")

    async def flaky_ended() -> bool:
        return (await tries(other, "noclaim", run.run_id))["join"] == ("upstream_failed", 0)

    await until(flaky_ended)
    failing.clear()
    assert await other.clear_tasks("noclaim", run.run_id, ["flaky"], downstream=True) == [
        "flaky", "after", "join"]

    async def after_done() -> bool:
        return (await tries(other, "noclaim", run.run_id))["after"] == ("success", 1)

    await until(after_done)
    assert [t for t in await other.store.list_triggers() if t.classpath == BY_HAND_CLASSPATH] == []
    gate.set()
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
    assert calls == ["flaky", "flaky"]
