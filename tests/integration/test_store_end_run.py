"""Store contract of `end_run` (a driven run's end, or `queued` again when a change by hand
arrived meanwhile), `delete_triggers` (by id) and `flush` (queued writes commit first), on
SQLite and on PostgreSQL (the `store_factory` backends)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import anyio
import anyio.lowlevel
import pytest

from aflow.exceptions import RunNotFound
from aflow.states import DagRunState, TaskState
from aflow.store.base import BY_HAND_CLASSPATH
from tests.integration import test_store_contract
from tests.integration.test_store_by_hand import LATER, T0, a_run, a_ti, cleared, seeded, states
from tests.integration.test_store_contract import StoreFactory

pytestmark = pytest.mark.anyio

store_factory = test_store_contract.store_factory  # the backends: SQLite and PostgreSQL


async def test_end_run_ends_a_run_without_changes_by_hand(store_factory: StoreFactory) -> None:
    store = await store_factory()
    running = a_run(state=DagRunState.RUNNING, owner="driver", lease_until=LATER)
    await seeded(store, running)
    ended = dataclasses.replace(running, state=DagRunState.FAILED, end_date=T0 + timedelta(hours=2))
    after = await store.end_run(ended)
    assert (after.state, after.end_date) == (DagRunState.FAILED, ended.end_date)
    assert await store.get_run("d", "r1") == after
    # other trigger rows are no change by hand: they stay
    assert [t.task_id for t in await store.list_triggers()] == ["b"]
    with pytest.raises(RunNotFound):
        await store.end_run(dataclasses.replace(ended, run_id="nope"))


async def test_end_run_queues_the_run_again_when_a_change_by_hand_waits(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    running = a_run(state=DagRunState.RUNNING, owner="driver", lease_until=LATER)
    await seeded(store, running)
    await store.delete_trigger("d", "r1", "b")
    tis = {t.task_id: t for t in await store.get_tis("d", "r1")}
    await store.change_for_owner("d", "r1", [cleared(tis["b"], 5)], now=T0)
    ended = dataclasses.replace(running, state=DagRunState.FAILED, end_date=T0 + timedelta(hours=2))
    after = await store.end_run(ended)
    assert (after.state, after.start_date, after.end_date, after.owner, after.lease_until) == (
        DagRunState.QUEUED, None, None, None, None)
    assert await store.get_run("d", "r1") == after
    assert await store.list_triggers() == []  # the change's rows went with it
    assert (await states(store))["b"] == ("none", 3, 5)  # the change itself stays
    # a scheduler can claim it again
    assert [r.run_id for r in await store.claim_runs("other", LATER, LATER, 10)] == ["r1"]


async def test_delete_triggers_deletes_by_id_only(store_factory: StoreFactory) -> None:
    """Two changes by hand of the same TI: deleting the first's row by id leaves the
    second's."""
    store = await store_factory()
    await seeded(store, a_run(state=DagRunState.RUNNING, owner="driver", lease_until=LATER))
    await store.delete_trigger("d", "r1", "b")
    tis = {t.task_id: t for t in await store.get_tis("d", "r1")}
    marked = dataclasses.replace(tis["b"], state=TaskState.SUCCESS, error=None)
    await store.change_for_owner("d", "r1", [marked], now=T0)
    [first] = await store.fired_triggers([("d", "r1")])
    await store.change_for_owner("d", "r1", [tis["b"]], now=T0)  # marked failed again
    [second] = await store.fired_triggers([("d", "r1")])
    assert first.id != second.id
    assert first.id is not None
    await store.delete_triggers([first.id])
    assert [(t.id, t.classpath) for t in await store.fired_triggers([("d", "r1")])] == [
        (second.id, BY_HAND_CLASSPATH)]
    await store.delete_triggers([])  # nothing: no error
    assert second.id is not None
    await store.delete_triggers([second.id])
    assert await store.list_triggers() == []


async def test_flush_returns_once_queued_writes_have_committed(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await store.create_run(a_run(state=DagRunState.RUNNING), [])
    many = [a_ti(f"t{i}", TaskState.SUCCESS) for i in range(200)]
    async with anyio.create_task_group() as tg:
        for ti in many:
            tg.start_soon(store.save_tis, [ti])
        await anyio.lowlevel.checkpoint()  # all of them are queued now
        await store.flush()
        assert len(await store.get_tis("d", "r1")) == len(many)


async def test_claim_runs_of_one_run_id(store_factory: StoreFactory) -> None:
    store = await store_factory()
    for run_id in ("r1", "r2"):
        await store.create_run(a_run(run_id, state=DagRunState.QUEUED), [])
    [claimed] = await store.claim_runs("me", T0, LATER, 10, dag_ids=["d"], run_id="r2")
    assert (claimed.run_id, claimed.owner) == ("r2", "me")
    assert await store.claim_runs("other", T0, LATER, 10, dag_ids=["d"], run_id="r2") == []
    assert await store.claim_runs("other", T0, LATER, 10, run_id="nope") == []
    assert [r.run_id for r in await store.claim_runs("other", T0, LATER, 10)] == ["r1"]
