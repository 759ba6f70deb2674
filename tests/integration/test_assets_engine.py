"""Asset-triggered runs end to end, in one process on a real SQLite file: a producer's
outlet starts a consumer run that sees the event; conditions wait for what they need;
events that arrive while a DAG is paused or at max_active_runs stay queued and start a
run later, which sees all of them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, AflowError, Asset, Orchestrator, PythonOperator, RunType, task
from aflow.states import DagRunState
from aflow.store.records import DagRunRecord

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)
RAW = Asset("s3://lake/raw")
REF = Asset("s3://lake/reference")


def producer(dag_id: str, asset: Asset) -> DAG:
    with DAG(dag_id, start_date=START) as dag:
        PythonOperator(task_id="write", python_callable=lambda: "written", outlets=[asset])
    return dag


def consumer(schedule: Any, seen: list[dict[str, Any]], **kwargs: Any) -> DAG:
    with DAG("consumer", schedule=schedule, start_date=START, **kwargs) as dag:

        @task
        def read(triggering_asset_events: Any = None, run_type: str = "") -> str:
            seen.append({u: list(evs) for u, evs in triggering_asset_events.items()})
            return run_type

        read()
        PythonOperator(
            task_id="templated",
            python_callable=lambda x: x,
            op_args=["{{ triggering_asset_events | length }}"],
        )
    return dag


async def runs_of(o: Orchestrator, dag_id: str) -> list[DagRunRecord]:
    return await o.store.list_runs(dag_id)


async def until(check: Callable[[], Any], timeout: float = 20) -> Any:  # noqa: ASYNC109 - a wait limit
    with anyio.fail_after(timeout):
        while True:
            value = await check()
            if value:
                return value
            await anyio.sleep(0.02)


async def finished_runs(o: Orchestrator, dag_id: str, n: int) -> list[DagRunRecord]:
    async def check() -> list[DagRunRecord] | None:
        runs = [r for r in await runs_of(o, dag_id) if r.state.finished]
        return runs if len(runs) >= n else None

    return await until(check)


async def test_an_outlet_starts_a_consumer_run_that_sees_the_event(home: Path) -> None:
    seen: list[dict[str, Any]] = []
    async with Orchestrator([producer("producer", RAW), consumer([RAW], seen)], home=home) as o:
        produced = await (await o.trigger("producer")).wait(timeout=30)
        [run] = await finished_runs(o, "consumer", 1)
        assert run.state is DagRunState.SUCCESS
        assert run.run_type is RunType.EVENT
        assert run.triggered_by == "assets"
        tis = {t.task_id: t for t in await o.store.get_tis("consumer", run.run_id)}
        assert tis["read"].state.value == "success"
        xcoms = {x.task_id: x.value for x in await o.store.get_xcoms("consumer", run.run_id)}
        assert xcoms == {"read": "event", "templated": "1"}
    [events] = seen
    [event] = events[RAW.uri]
    assert (event.source_dag_id, event.source_run_id, event.source_task_id) == (
        "producer", produced.run_id, "write"
    )
    # stored with the run
    async with Orchestrator([], home=home, schedule=False) as o:
        [stored] = await o.store.asset_events_of_run("consumer", run.run_id)
        assert stored == event


async def test_an_and_condition_waits_for_both(home: Path) -> None:
    seen: list[dict[str, Any]] = []
    dags = [producer("p_raw", RAW), producer("p_ref", REF), consumer(RAW & REF, seen)]
    async with Orchestrator(dags, home=home) as o:
        await (await o.trigger("p_raw")).wait(timeout=30)
        await (await o.trigger("p_raw")).wait(timeout=30)
        assert await o.scheduler.assets.create_due_runs() == 0  # REF has no event yet
        assert await runs_of(o, "consumer") == []
        await (await o.trigger("p_ref")).wait(timeout=30)
        [run] = await finished_runs(o, "consumer", 1)
        assert run.state is DagRunState.SUCCESS
    [events] = seen
    assert len(events[RAW.uri]) == 2 and len(events[REF.uri]) == 1


async def test_events_while_paused_stay_queued_and_run_after_unpause(home: Path) -> None:
    seen: list[dict[str, Any]] = []
    async with Orchestrator([producer("producer", RAW), consumer(RAW, seen)], home=home) as o:
        await o.store.set_dag_paused("consumer", True)
        for _ in range(3):
            await (await o.trigger("producer")).wait(timeout=30)
        assert await o.scheduler.assets.create_due_runs() == 0
        assert await runs_of(o, "consumer") == []
        assert len((await o.store.queued_asset_events())["consumer"]) == 3
        await o.store.set_dag_paused("consumer", False)
        o.scheduler.wake()
        [run] = await finished_runs(o, "consumer", 1)
        assert run.state is DagRunState.SUCCESS
        assert await o.store.queued_asset_events() == {}
    assert [len(s[RAW.uri]) for s in seen] == [3]  # three events, one run that sees all


async def test_events_at_max_active_runs_are_not_lost(home: Path) -> None:
    gate = anyio.Event()
    started = anyio.Event()
    counts: list[int] = []

    async def hold(triggering_asset_events: Any = None) -> None:
        counts.append(len(triggering_asset_events[RAW.uri]))
        started.set()
        await gate.wait()

    with DAG("consumer", schedule=[RAW], start_date=START, max_active_runs=1) as slow:
        PythonOperator(task_id="hold", python_callable=hold)
    async with Orchestrator([producer("producer", RAW), slow], home=home) as o:
        await (await o.trigger("producer")).wait(timeout=30)
        with anyio.fail_after(20):
            await started.wait()  # run 1 is running and holds the only active slot
        await (await o.trigger("producer")).wait(timeout=30)
        await (await o.trigger("producer")).wait(timeout=30)
        assert await o.scheduler.assets.create_due_runs() == 0
        assert len(await runs_of(o, "consumer")) == 1
        assert len((await o.store.queued_asset_events())["consumer"]) == 2
        gate.set()
        runs = await finished_runs(o, "consumer", 2)
        assert all(r.state is DagRunState.SUCCESS for r in runs)
    assert counts == [1, 2]


async def test_an_event_recorded_by_hand_starts_a_run(home: Path) -> None:
    seen: list[dict[str, Any]] = []
    async with Orchestrator([consumer([RAW], seen)], home=home) as o:
        with pytest.raises(AflowError, match="must not be empty"):
            await o.record_asset_event("")
        with pytest.raises(AflowError, match="extra is not JSON"):
            await o.record_asset_event(RAW.uri, {"when": object()})
        assert await o.store.list_asset_events() == []  # bad input changed nothing
        await o.record_asset_event(RAW.uri, {"rows": 3})
        [run] = await finished_runs(o, "consumer", 1)
        assert run.state is DagRunState.SUCCESS
    [events] = seen
    assert [e.extra for e in events[RAW.uri]] == [{"rows": 3}]


async def test_an_adopted_event_run_still_sees_its_events(home: Path) -> None:
    """A run created from events by a scheduler that died before driving it: the one
    that adopts it reads its triggering events from the store."""
    from aflow.runtime.run_factory import new_run
    from aflow.runtime.scheduler import dag_records
    from aflow.store.records import AssetEventRecord

    seen: list[dict[str, Any]] = []
    dag = consumer([RAW], seen)
    async with Orchestrator([dag], home=home, schedule=False, claim=False) as recorder:
        await recorder.store.upsert_dags(dag_records([dag], START))  # consumes RAW
        [event_id] = await recorder.store.record_asset_events(
            [AssetEventRecord(id=0, uri=RAW.uri, timestamp=START, extra={"n": 1})]
        )
        run, _ = new_run(dag, run_type=RunType.EVENT, logical_date=START, now=START,
                         run_id="event__orphan")
        assert await recorder.store.create_asset_run(run, [event_id])  # owned by no one
    async with Orchestrator([dag], home=home) as adopter:
        [done] = await finished_runs(adopter, "consumer", 1)
        assert done.run_id == "event__orphan" and done.state is DagRunState.SUCCESS
    assert [[e.extra for e in s[RAW.uri]] for s in seen] == [[{"n": 1}]]


PROCESS_CONSUMER = """
from datetime import UTC, datetime

from aflow import DAG, Asset, task

with DAG("consumer", schedule=[Asset("s3://lake/raw")],
         start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:

    @task(run_in="process")
    def read(triggering_asset_events=None):
        [event] = triggering_asset_events["s3://lake/raw"]
        return {"extra": event.extra, "at": event.timestamp.isoformat()}

    read()

with DAG("proc_producer", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as producer:

    @task(run_in="process", outlets=[Asset("s3://lake/raw")])
    def write(outlet_events=None):
        outlet_events["s3://lake/raw"].extra = {"k": "v"}

    write()
"""


async def test_tasks_in_child_processes_set_and_see_the_events(home: Path, tmp_path: Path) -> None:
    from aflow.runtime.dag_loader import load_file

    path = tmp_path / "process_consumer.py"
    path.write_text(PROCESS_CONSUMER)
    dags = load_file(path)
    async with Orchestrator(dags, home=home) as o:
        await (await o.trigger("proc_producer")).wait(timeout=60)  # sets extra in its child
        [run] = await finished_runs(o, "consumer", 1)
        assert run.state is DagRunState.SUCCESS
        [x] = await o.store.get_xcoms("consumer", run.run_id)
        [event] = await o.store.asset_events_of_run("consumer", run.run_id)
    assert x.value == {"extra": {"k": "v"}, "at": event.timestamp.isoformat()}


async def test_a_task_sets_the_extra_of_its_outlet_events(home: Path) -> None:
    seen: list[dict[str, Any]] = []

    def write(outlet_events: Any = None) -> None:
        outlet_events[RAW].extra = {"rows": 5}
        outlet_events["s3://lake/reference"].extra["note"] = "by uri"

    def bad(outlet_events: Any = None) -> None:
        outlet_events[Asset("s3://not/an/outlet")].extra = {"x": 1}

    with DAG("producer", start_date=START) as producing:
        PythonOperator(task_id="write", python_callable=write, outlets=[RAW, REF])
    with DAG("wrong", start_date=START) as wrong:
        PythonOperator(task_id="bad", python_callable=bad, outlets=[RAW])
    async with Orchestrator([producing, wrong, consumer(RAW & REF, seen)], home=home) as o:
        failed = await (await o.trigger("wrong")).wait(timeout=30)
        assert failed.state is DagRunState.FAILED  # not an outlet: the task fails, no event
        assert await o.store.list_asset_events() == []
        await (await o.trigger("producer")).wait(timeout=30)
        await finished_runs(o, "consumer", 1)
    [events] = seen
    assert events[RAW.uri][0].extra == {"rows": 5}
    assert events[REF.uri][0].extra == {"note": "by uri"}
