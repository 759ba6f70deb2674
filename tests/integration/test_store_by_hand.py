"""Store contract of the changes made by hand (clear, mark): `reset_tis` and `rewrite_run`,
on SQLite and on PostgreSQL (the `store_factory` backends)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel
import pytest

from aflow.exceptions import RunBusy, RunNotFound
from aflow.states import DagRunState, RunType, TaskState
from aflow.store.base import Store
from aflow.store.records import DagRunRecord, TaskInstanceRecord, TriggerRecord, XComRecord
from tests.integration import test_store_contract
from tests.integration.test_store_contract import StoreFactory

pytestmark = pytest.mark.anyio

store_factory = test_store_contract.store_factory  # the backends: SQLite and PostgreSQL

T0 = datetime(2024, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)


def a_run(run_id: str = "r1", *, state: DagRunState = DagRunState.FAILED, owner: str | None = None,
          lease_until: datetime | None = None) -> DagRunRecord:
    return DagRunRecord(
        dag_id="d", run_id=run_id, run_type=RunType.MANUAL, state=state, logical_date=T0,
        data_interval_start=T0, data_interval_end=T0, created_at=T0, start_date=T0,
        end_date=None if not state.finished else T0 + timedelta(minutes=1),
        owner=owner, lease_until=lease_until,
    )


def a_ti(task_id: str, state: TaskState, try_number: int = 1, run_id: str = "r1") -> TaskInstanceRecord:
    return TaskInstanceRecord(
        dag_id="d", run_id=run_id, task_id=task_id, state=state, try_number=try_number,
        max_tries=try_number, start_date=T0, end_date=T0 + timedelta(seconds=1), error="boom",
    )


async def seeded(store: Store, run: DagRunRecord) -> None:
    """A run: a succeeded with an XCom, b failed with an XCom, c upstream_failed, and a
    trigger row left for b."""
    await store.create_run(run, [])
    await store.finish_ti(a_ti("a", TaskState.SUCCESS, run_id=run.run_id),
                          [XComRecord("d", run.run_id, "a", "return_value", {"x": 1})])
    await store.finish_ti(a_ti("b", TaskState.FAILED, 3, run_id=run.run_id),
                          [XComRecord("d", run.run_id, "b", "return_value", "stale")])
    await store.save_tis([a_ti("c", TaskState.UPSTREAM_FAILED, 0, run_id=run.run_id)])
    await store.defer_ti(a_ti("b", TaskState.FAILED, 3, run_id=run.run_id), TriggerRecord(
        classpath="triggers.temporal.DateTimeTrigger", kwargs={}, dag_id="d", run_id=run.run_id,
        task_id="b", try_number=3, created_at=T0))


def cleared(ti: TaskInstanceRecord, max_tries: int) -> TaskInstanceRecord:
    return dataclasses.replace(ti, state=TaskState.NONE, max_tries=max_tries, start_date=None,
                               end_date=None, error=None)


async def states(store: Store, run_id: str = "r1") -> dict[str, tuple[str, int, int]]:
    return {t.task_id: (t.state.value, t.try_number, t.max_tries)
            for t in await store.get_tis("d", run_id)}


async def test_rewrite_run_requeues_an_ended_run_with_the_cleared_tis_in_one_go(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    await seeded(store, a_run(owner="old-scheduler", lease_until=T0))
    tis = {t.task_id: t for t in await store.get_tis("d", "r1")}
    run = await store.rewrite_run(
        "d", "r1", [cleared(tis["b"], 5), cleared(tis["c"], 2)], owner="cli", now=LATER,
        run_state=DagRunState.QUEUED,
    )
    assert (run.state, run.start_date, run.end_date, run.owner, run.lease_until) == (
        DagRunState.QUEUED, None, None, None, None)
    assert run == await store.get_run("d", "r1")
    assert await states(store) == {"a": ("success", 1, 1), "b": ("none", 3, 5), "c": ("none", 0, 2)}
    # the cleared TI's XComs and trigger row went; the others' XComs stay
    assert [(x.task_id, x.value) for x in await store.get_xcoms("d", "r1")] == [("a", {"x": 1})]
    assert await store.get_trigger("d", "r1", "b") is None
    # unowned and queued: any scheduler claims it
    claimed = await store.claim_runs("sched", LATER, LATER + timedelta(minutes=1), 10)
    assert [r.run_id for r in claimed] == ["r1"]


async def test_rewrite_run_is_refused_while_another_live_owner_drives_the_run(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    await seeded(store, a_run(state=DagRunState.RUNNING, owner="other", lease_until=LATER))
    tis = {t.task_id: t for t in await store.get_tis("d", "r1")}
    with pytest.raises(RunBusy, match=r"driven by another process \(other"):
        await store.rewrite_run("d", "r1", [cleared(tis["b"], 5)], owner="cli", now=T0)
    # nothing written
    assert await states(store) == {"a": ("success", 1, 1), "b": ("failed", 3, 3),
                                   "c": ("upstream_failed", 0, 0)}
    assert len(await store.get_xcoms("d", "r1")) == 2
    assert await store.get_trigger("d", "r1", "b") is not None
    assert (await store.get_run("d", "r1")).owner == "other"  # type: ignore[union-attr]
    # its own owner may; and so may anyone once the lease has expired
    await store.rewrite_run("d", "r1", [cleared(tis["b"], 5)], owner="other", now=T0)
    assert (await states(store))["b"] == ("none", 3, 5)
    await store.rewrite_run("d", "r1", [cleared(tis["c"], 2)], owner="cli",
                            now=LATER + timedelta(seconds=1))
    assert (await states(store))["c"] == ("none", 0, 2)
    run = await store.get_run("d", "r1")
    assert run is not None and run.state is DagRunState.RUNNING and run.owner == "other"


async def test_rewrite_run_marks_a_run_ended_and_releases_it(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await seeded(store, a_run(state=DagRunState.RUNNING, owner="dead", lease_until=T0))
    marked = dataclasses.replace(a_ti("c", TaskState.SKIPPED, 0), end_date=LATER, error=None)
    run = await store.rewrite_run("d", "r1", [marked], owner="cli", now=LATER,
                                  run_state=DagRunState.SUCCESS)
    assert (run.state, run.start_date, run.end_date, run.owner) == (
        DagRunState.SUCCESS, T0, LATER, None)
    assert (await states(store))["c"] == ("skipped", 0, 0)
    assert len(await store.get_xcoms("d", "r1")) == 2  # a TI that is not `none` keeps them
    assert await store.claim_runs("sched", LATER, LATER, 10) == []


async def test_rewrite_run_of_an_unknown_run_raises_and_writes_nothing(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        await store.rewrite_run("d", "nope", [a_ti("a", TaskState.NONE, run_id="nope")],
                                owner="cli", now=T0, run_state=DagRunState.QUEUED)
    assert await store.get_tis("d", "nope") == []


async def test_reset_tis_is_group_committed_after_earlier_writes_of_the_same_tis(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    await seeded(store, a_run(state=DagRunState.RUNNING, owner="me", lease_until=LATER))
    tis = {t.task_id: t for t in await store.get_tis("d", "r1")}
    async with anyio.create_task_group() as tg:  # queued together: order of submission holds
        tg.start_soon(store.save_tis, [dataclasses.replace(tis["b"], error="late write")])
        await anyio.lowlevel.checkpoint()
        tg.start_soon(store.reset_tis, [cleared(tis["b"], 5)])
    assert (await states(store))["b"] == ("none", 3, 5)
    assert [x.task_id for x in await store.get_xcoms("d", "r1")] == ["a"]
    assert await store.get_trigger("d", "r1", "b") is None
    assert (await store.get_run("d", "r1")).state is DagRunState.RUNNING  # type: ignore[union-attr]
