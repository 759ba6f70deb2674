"""Backfill in-process on a real SQLite file: which intervals run, existing runs, the
run limit, reset_failed, stopping and resuming, and bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest

from aflow import DAG, BackfillProgress, Orchestrator, PythonOperator
from aflow.exceptions import BackfillError, DagNotFound
from aflow.runtime.backfill import backfill_intervals
from aflow.states import DagRunState, RunType

pytestmark = pytest.mark.anyio

UTC_START = datetime(2024, 1, 1, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def recording_dag(dag_id: str, schedule: Any, *, start: datetime = UTC_START,
                  calls: list[tuple[str, str]] | None = None, **kwargs: Any) -> DAG:
    """a >> b; each task appends (run_id, task_id) to `calls`."""
    calls = calls if calls is not None else []

    def record(ti: Any) -> None:
        calls.append((ti.run_id, ti.task_id))

    with DAG(dag_id, schedule=schedule, start_date=start, **kwargs) as dag:
        PythonOperator(task_id="a", python_callable=record) >> PythonOperator(
            task_id="b", python_callable=record)
    return dag


def orchestrator(dags: Any, home: Path, **kwargs: Any) -> Orchestrator:
    kwargs.setdefault("schedule", False)
    kwargs.setdefault("triggerer", False)
    return Orchestrator(dags, home=home, **kwargs)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


async def test_daily_backfill_runs_each_interval_once(home: Path) -> None:
    calls: list[tuple[str, str]] = []
    dag = recording_dag("daily", "@daily", calls=calls)
    async with orchestrator(dag, home) as o:
        result = await o.backfill("daily", utc(2024, 1, 2), utc(2024, 1, 4))
        runs = await o.store.list_runs("daily")
    assert [r.logical_date for r in result.runs] == [utc(2024, 1, d) for d in (2, 3, 4)]
    assert [(r.action, r.state) for r in result.runs] == [("created", DagRunState.SUCCESS)] * 3
    assert result.ok and not result.interrupted
    assert sorted(r.run_id for r in runs) == [
        f"backfill__2024-01-0{d}T00:00:00+00:00" for d in (2, 3, 4)
    ]
    assert {r.run_type for r in runs} == {RunType.BACKFILL}
    first = min(runs, key=lambda r: r.logical_date)
    assert (first.data_interval_start, first.data_interval_end) == (utc(2024, 1, 2), utc(2024, 1, 3))
    assert sorted(calls) == sorted((r.run_id, t) for r in runs for t in ("a", "b"))


# -- which intervals -----------------------------------------------------------------------
def test_cron_intervals_in_the_dags_zone_across_dst() -> None:
    # 06:00 in Berlin: 05:00 UTC in winter, 04:00 UTC from 2024-03-31 (clocks spring forward).
    dag = recording_dag("berlin", "0 6 * * *", start=datetime(2024, 1, 1, tzinfo=BERLIN))
    infos = backfill_intervals(dag, datetime(2024, 3, 30), datetime(2024, 4, 1, 6))
    assert [i.logical_date for i in infos] == [
        utc(2024, 3, 30, 5), utc(2024, 3, 31, 4), utc(2024, 4, 1, 4)
    ]
    assert infos[0].data_interval_end == infos[1].logical_date  # back to back
    assert infos[-1].data_interval_end == utc(2024, 4, 2, 4)
    # the end is included up to the instant: a minute before 06:00 leaves 1 April out
    late = backfill_intervals(dag, datetime(2024, 3, 30), datetime(2024, 4, 1, 5, 59))
    assert [i.logical_date for i in late] == [utc(2024, 3, 30, 5), utc(2024, 3, 31, 4)]
    # an aware bound is taken as it is: 05:00 UTC on 30 March is 06:00 in Berlin
    aware = backfill_intervals(dag, utc(2024, 3, 30, 5), utc(2024, 3, 30, 5))
    assert [i.logical_date for i in aware] == [utc(2024, 3, 30, 5)]


def test_timedelta_and_preset_intervals() -> None:
    every6h = recording_dag("every6h", timedelta(hours=6), start=utc(2024, 1, 1, 3))
    infos = backfill_intervals(every6h, utc(2024, 1, 1, 3), utc(2024, 1, 2, 3))
    assert [i.logical_date.hour for i in infos] == [3, 9, 15, 21, 3]
    assert all(i.data_interval_end - i.data_interval_start == timedelta(hours=6) for i in infos)
    # a start between grid points begins at the next point
    assert backfill_intervals(every6h, utc(2024, 1, 1, 4), utc(2024, 1, 1, 9))[0].logical_date == (
        utc(2024, 1, 1, 9))
    monthly = recording_dag("monthly", "@monthly")
    infos = backfill_intervals(monthly, datetime(2024, 1, 15), datetime(2024, 4, 1))
    assert [i.logical_date for i in infos] == [utc(2024, 2, 1), utc(2024, 3, 1), utc(2024, 4, 1)]
    assert infos[0].data_interval_end == utc(2024, 3, 1)
    # a range before start_date is cut at start_date
    assert backfill_intervals(monthly, datetime(2023, 1, 1), datetime(2024, 1, 1))[0].logical_date == (
        UTC_START)


async def test_naive_dates_are_read_in_the_dags_zone(home: Path) -> None:
    calls: list[tuple[str, str]] = []
    dag = recording_dag("berlin", "0 6 * * *", start=datetime(2024, 1, 1, tzinfo=BERLIN),
                        calls=calls)
    async with orchestrator(dag, home) as o:
        result = await o.backfill("berlin", datetime(2024, 3, 30), datetime(2024, 4, 1))
        runs = await o.store.list_runs("berlin")
    assert result.ok
    assert result.start == datetime(2024, 3, 30, tzinfo=BERLIN)
    assert sorted(r.logical_date for r in runs) == [utc(2024, 3, 30, 5), utc(2024, 3, 31, 4)]
    assert "backfill__2024-03-31T04:00:00+00:00" in {r.run_id for r in runs}


# -- existing runs -------------------------------------------------------------------------
async def test_dates_with_a_run_are_not_run_again(home: Path) -> None:
    calls: list[tuple[str, str]] = []
    dag = recording_dag("daily", "@daily", calls=calls)
    async with orchestrator(dag, home) as o:
        manual = await o.trigger("daily", logical_date=utc(2024, 1, 3))
        await manual.wait(timeout=30)
        first = await o.backfill("daily", utc(2024, 1, 1), utc(2024, 1, 4))
        calls_after_first = list(calls)
        second = await o.backfill("daily", utc(2024, 1, 1), utc(2024, 1, 4))
        runs = await o.store.list_runs("daily")
    assert [r.action for r in first.runs] == ["created", "created", "existing", "created"]
    assert first.runs[2].run_id == manual.run_id and first.runs[2].run_type is RunType.MANUAL
    assert first.ok
    assert [r.action for r in second.runs] == ["existing"] * 4
    assert calls == calls_after_first  # the second backfill ran nothing
    assert len(runs) == 4
    ran = {run_id for run_id, _ in calls}
    assert len(calls) == 2 * len(ran) == 8  # each task of each run once


async def test_follows_a_run_another_process_drives(home: Path) -> None:
    """A backfill run left unfinished (no owner) is driven by a scheduler elsewhere; the
    backfill follows it through the store and creates only the missing runs."""
    from aflow.runtime.run_factory import new_run

    calls: list[tuple[str, str]] = []
    dag = recording_dag("daily", "@daily", calls=calls)
    store_url = f"sqlite:///{home / 'aflow.db'}"
    left, _ = new_run(dag, run_type=RunType.BACKFILL, logical_date=utc(2024, 1, 2),
                      data_interval=(utc(2024, 1, 2), utc(2024, 1, 3)), now=utc(2024, 1, 5))
    # claim=False: this orchestrator drives only the runs it creates
    async with orchestrator(dag, home, store=store_url, claim=False) as o:
        await o.store.create_run(left, [])
        async with orchestrator(dag, home, store=store_url, poll_s=0.05):  # "the scheduler"
            result = await o.backfill("daily", utc(2024, 1, 1), utc(2024, 1, 3))
    assert [(r.action, r.state) for r in result.runs] == [
        ("created", DagRunState.SUCCESS), ("resumed", DagRunState.SUCCESS),
        ("created", DagRunState.SUCCESS),
    ]
    assert result.runs[1].run_id == left.run_id
    assert sorted(calls) == sorted(
        (r.run_id, t) for r in result.runs if r.run_id for t in ("a", "b")
    )


# -- the limit -----------------------------------------------------------------------------
def gated_dag(dag_id: str, seen: dict[str, Any], **kwargs: Any) -> DAG:
    """a >> b, async: a run counts as active from its `a`'s start to its `b`'s end. `a`
    waits (up to 0.5 s) until `seen["limit"]` runs are active, so the count reaches the
    limit whenever the limit allows it."""
    active: set[str] = seen.setdefault("active", set())
    seen.setdefault("max", 0)

    async def enter(ti: Any) -> None:
        active.add(ti.run_id)
        seen["max"] = max(seen["max"], len(active))
        with anyio.move_on_after(0.5):
            while len(active) < seen["limit"]:  # noqa: ASYNC110 - a test's gate
                await anyio.sleep(0.005)

    async def leave(ti: Any) -> None:
        await anyio.sleep(0.01)
        active.discard(ti.run_id)

    with DAG(dag_id, schedule="@daily", start_date=UTC_START, **kwargs) as dag:
        PythonOperator(task_id="a", python_callable=enter) >> PythonOperator(
            task_id="b", python_callable=leave)
    return dag


@pytest.mark.parametrize(("dag_limit", "override", "expected"), [(3, None, 3), (3, 2, 2), (1, 4, 4)])
async def test_max_active_runs_is_never_exceeded(
    home: Path, dag_limit: int, override: int | None, expected: int
) -> None:
    seen: dict[str, Any] = {"limit": expected}
    dag = gated_dag("limited", seen, max_active_runs=dag_limit)
    reported: list[BackfillProgress] = []
    async with orchestrator(dag, home) as o:
        result = await o.backfill("limited", utc(2024, 1, 1), utc(2024, 1, 7),
                                  max_active_runs=override, on_progress=reported.append)
    assert result.ok and len(result.runs) == 7
    assert seen["max"] == expected  # reached, never passed
    assert max(p.active_runs for p in reported) <= expected
    assert reported[-1].done == 7 and reported[-1].eta_s == 0.0


# -- stopping and resuming -----------------------------------------------------------------
async def test_stop_then_resume_runs_nothing_twice(home: Path) -> None:
    calls: list[tuple[str, str]] = []
    dag = recording_dag("daily", "@daily", calls=calls, max_active_runs=1)
    stop_after_first = anyio.Event()

    def progress(p: BackfillProgress) -> None:
        if p.done >= 1:
            stop_after_first.set()

    async with orchestrator(dag, home) as o:
        first = await o.backfill("daily", utc(2024, 1, 1), utc(2024, 1, 5),
                                 on_progress=progress, stop=stop_after_first)
        created = await o.backfill("daily", utc(2024, 1, 1), utc(2024, 1, 5),
                                   stop=stop_after_first)  # already stopped: nothing new
    assert first.interrupted and not first.ok
    assert first.not_created and first.runs[0].state is DagRunState.SUCCESS
    assert [r.run_id for r in created.runs] == [r.run_id for r in first.runs]
    async with orchestrator(dag, home) as o:
        second = await o.backfill("daily", utc(2024, 1, 1), utc(2024, 1, 5))
        runs = await o.store.list_runs("daily")
    assert second.ok and not second.interrupted
    assert second.runs[0].action == "existing"
    assert {r.action for r in second.runs[1:]} <= {"created", "resumed", "existing"}
    assert len(runs) == 5
    assert sorted(calls) == sorted(set(calls))  # no task of any run ran twice
    assert len(calls) == 10


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize(("dag_id", "start", "end", "kwargs", "error", "words"), [
    ("nope", utc(2024, 1, 1), utc(2024, 1, 2), {}, DagNotFound, ["nope"]),
    ("manual", utc(2024, 1, 1), utc(2024, 1, 2), {}, BackfillError, ["'manual'", "no schedule"]),
    ("daily", utc(2024, 1, 3), utc(2024, 1, 2), {}, BackfillError, ["after end"]),
    ("daily", utc(2023, 1, 1), utc(2023, 12, 31), {}, BackfillError, ["no interval", "2023-12-31"]),
    ("monthly", utc(2024, 2, 2), utc(2024, 2, 20), {}, BackfillError, ["no interval", "@monthly"]),
    ("daily", utc(2024, 1, 1), utc(2024, 1, 2), {"max_active_runs": 0}, BackfillError,
     ["max_active_runs", "0"]),
])
async def test_bad_input_raises_and_creates_nothing(
    home: Path, dag_id: str, start: datetime, end: datetime, kwargs: dict[str, Any],
    error: type[Exception], words: list[str],
) -> None:
    with DAG("manual", schedule=None, start_date=UTC_START) as manual:
        PythonOperator(task_id="a", python_callable=lambda: None)
    dags = [recording_dag("daily", "@daily"), recording_dag("monthly", "@monthly"), manual]
    async with orchestrator(dags, home) as o:
        with pytest.raises(error) as caught:
            await o.backfill(dag_id, start, end, **kwargs)
        assert await o.store.list_runs() == []
    for word in words:
        assert word in str(caught.value)


async def test_a_backfill_process_claims_only_its_dags_runs(home: Path) -> None:
    from aflow.runtime.run_factory import new_run

    one, other = recording_dag("one", "@daily"), recording_dag("other", "@daily")
    async with orchestrator([one, other], home, claim=False) as o:
        for dag in (one, other):
            run, _ = new_run(dag, run_type=RunType.MANUAL, logical_date=utc(2024, 1, 1),
                             now=utc(2024, 1, 1))
            await o.store.create_run(run, [])
    async with orchestrator([one, other], home, claim_dags=["one"]) as o:
        await o.wait_for_run("one", "manual__2024-01-01T00:00:00+00:00")
        other_run = await o.store.get_run("other", "manual__2024-01-01T00:00:00+00:00")
        assert o.scheduler is not None and o.scheduler.claim_passes >= 1
    assert other_run is not None
    assert other_run.state is DagRunState.QUEUED and other_run.owner is None


# -- reset_failed --------------------------------------------------------------------------
async def test_reset_failed_reruns_only_the_failed_task_instances(home: Path) -> None:
    """a >> b >> c and a lone d; b fails on 2024-01-02 while `broken` holds. A second
    backfill with reset_failed runs b and c of that run again, and nothing else."""
    calls: list[tuple[str, str]] = []
    broken = {"yes": True}

    def record(ti: Any, ds: str) -> None:
        if ti.task_id == "b" and ds == "2024-01-02" and broken["yes"]:
            raise RuntimeError("fails on purpose")
        calls.append((ds, ti.task_id))

    with DAG("flaky", schedule="@daily", start_date=UTC_START) as dag:
        a, b, c, d = (PythonOperator(task_id=t, python_callable=record) for t in "abcd")
        a >> b >> c
    async with orchestrator(dag, home) as o:
        first = await o.backfill("flaky", utc(2024, 1, 1), utc(2024, 1, 3))
        assert [r.state for r in first.runs] == [
            DagRunState.SUCCESS, DagRunState.FAILED, DagRunState.SUCCESS]
        assert not first.ok
        without = await o.backfill("flaky", utc(2024, 1, 1), utc(2024, 1, 3))
        assert [r.action for r in without.runs] == ["existing"] * 3
        assert without.runs[1].state is DagRunState.FAILED
        before = list(calls)
        broken["yes"] = False
        second = await o.backfill("flaky", utc(2024, 1, 1), utc(2024, 1, 3), reset_failed=True)
        runs = await o.store.list_runs("flaky")
        tis = {t.task_id: t for t in await o.store.get_tis("flaky", second.runs[1].run_id or "")}
    assert [(r.action, r.state) for r in second.runs] == [
        ("existing", DagRunState.SUCCESS), ("reset", DagRunState.SUCCESS),
        ("existing", DagRunState.SUCCESS),
    ]
    assert second.ok
    assert sorted(calls[len(before):]) == [("2024-01-02", "b"), ("2024-01-02", "c")]
    assert len(runs) == 3
    assert tis["b"].try_number == 2 and tis["a"].try_number == 1 and tis["d"].try_number == 1


async def test_max_active_tasks_holds_across_backfill_runs(home: Path) -> None:
    """Four parallel tasks per run, three runs at once, max_active_tasks=2: never more than
    two tries of the DAG at once (and two are reached)."""
    running: set[tuple[str, str]] = set()
    peak = {"n": 0}

    async def work(ti: Any) -> None:
        running.add((ti.run_id, ti.task_id))
        peak["n"] = max(peak["n"], len(running))
        with anyio.move_on_after(0.5):
            while len(running) < 2:  # noqa: ASYNC110 - a test's gate
                await anyio.sleep(0.005)
        running.discard((ti.run_id, ti.task_id))

    with DAG("wide", schedule="@daily", start_date=UTC_START, max_active_tasks=2) as dag:
        for t in "abcd":
            PythonOperator(task_id=t, python_callable=work)
    async with orchestrator(dag, home) as o:
        result = await o.backfill("wide", utc(2024, 1, 1), utc(2024, 1, 3), max_active_runs=3)
    assert result.ok
    assert peak["n"] == 2


async def test_backfill_on_postgres(home: Path, pg_schema_url: str) -> None:
    calls: list[tuple[str, str]] = []
    dag = recording_dag("daily", "@daily", calls=calls, max_active_runs=2)
    async with orchestrator(dag, home, store=pg_schema_url) as o:
        first = await o.backfill("daily", datetime(2024, 1, 1), datetime(2024, 1, 5))
        second = await o.backfill("daily", datetime(2024, 1, 1), datetime(2024, 1, 6))
    assert first.ok and [r.action for r in first.runs] == ["created"] * 5
    assert [r.action for r in second.runs] == ["existing"] * 5 + ["created"]
    assert second.ok and len(calls) == 12 == len(set(calls))


async def test_reset_failed_leaves_a_failed_run_with_nothing_to_clear(home: Path) -> None:
    dag = recording_dag("daily", "@daily")
    async with orchestrator(dag, home) as o:
        first = await o.backfill("daily", utc(2024, 1, 1), utc(2024, 1, 2))
        run_id = first.runs[0].run_id
        assert run_id is not None
        await o.mark_run("daily", run_id, "failed")  # every TI had succeeded
        second = await o.backfill("daily", utc(2024, 1, 1), utc(2024, 1, 2), reset_failed=True)
    assert [(r.action, r.state) for r in second.runs] == [
        ("existing", DagRunState.FAILED), ("existing", DagRunState.SUCCESS)]
    assert not second.ok


async def test_deferred_tasks_resume_in_the_backfill_process(home: Path) -> None:
    """A deferrable sensor waiting for its interval's end (past) goes through the
    triggerer of the backfill's own orchestrator."""
    from aflow import DateTimeSensor

    calls: list[tuple[str, str]] = []
    with DAG("sensed", schedule="@daily", start_date=UTC_START) as dag:
        DateTimeSensor(task_id="wait", target_time="{{ data_interval_end }}") >> PythonOperator(
            task_id="after", python_callable=lambda ti: calls.append((ti.run_id, ti.task_id)))
    async with Orchestrator(dag, home=home, schedule=False) as o:
        with anyio.fail_after(60):
            result = await o.backfill("sensed", utc(2024, 1, 1), utc(2024, 1, 3))
    assert result.ok and len(calls) == 3
