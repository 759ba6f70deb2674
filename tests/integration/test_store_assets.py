"""The store's asset methods on every backend: events recorded with a TI's end and queued
for the DAGs that consume their asset, consumed atomically by one run (never by two
concurrent consumers), and asset watchers recorded from DAGs, claimed with leases and
moved on with each event."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest

from aflow.states import RunType, TaskState
from aflow.store.base import Store
from aflow.store.records import AssetEventRecord, DagRecord
from tests.integration.test_store_contract import T0, StoreFactory, a_run, a_ti
from tests.integration.test_store_contract import store_factory as store_factory  # noqa: F401

pytestmark = pytest.mark.anyio

RAW = "s3://bucket/raw"
OTHER = "s3://bucket/other"


def a_dag(dag_id: str, consumes: list[str] | None = None, watchers: list[dict[str, Any]] | None = None) -> DagRecord:
    structure: dict[str, Any] = {"dag_id": dag_id, "tasks": []}
    if consumes:
        structure["asset_condition"] = {"all": [{"asset": u} for u in consumes]}
    if watchers:
        structure["asset_watchers"] = watchers
    return DagRecord(dag_id=dag_id, fileloc=None, structure=structure, updated_at=T0)


def an_event(uri: str = RAW, **kw: Any) -> AssetEventRecord:
    return AssetEventRecord(id=0, uri=uri, timestamp=T0, extra=kw.pop("extra", {}), **kw)


async def test_task_events_are_queued_for_consumers_with_the_tis_end(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await store.upsert_dags([a_dag("producer"), a_dag("c1", [RAW]), a_dag("c2", [RAW, OTHER])])
    run = a_run("r1", "producer")
    await store.create_run(run, [])
    ti = a_ti(run, "make", state=TaskState.SUCCESS, try_number=1)
    event = an_event(source_dag_id="producer", source_run_id="r1", source_task_id="make")
    await store.finish_ti(ti, [], asset_events=[event])
    assert (await store.get_tis("producer", "r1"))[0].state is TaskState.SUCCESS
    queued = await store.queued_asset_events()
    assert set(queued) == {"c1", "c2"}  # not the producer: it consumes nothing
    [got] = queued["c1"]
    assert (got.uri, got.source_dag_id, got.source_run_id, got.source_task_id) == (
        RAW, "producer", "r1", "make"
    )
    assert got.timestamp == T0
    assert (await store.list_asset_events(RAW))[0].id == got.id
    assert await store.queued_asset_events(["c2"]) == {"c2": [got]}


async def test_consuming_is_atomic_and_once(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await store.upsert_dags([a_dag("c1", [RAW])])
    ids = await store.record_asset_events([an_event(extra={"n": 1}), an_event(extra={"n": 2})])
    assert len(ids) == 2
    run = a_run("event__1", "c1", run_type=RunType.EVENT)
    assert await store.create_asset_run(run, ids)
    assert await store.queued_asset_events() == {}
    events = await store.asset_events_of_run("c1", "event__1")
    assert [e.extra for e in events] == [{"n": 1}, {"n": 2}]
    assert (await store.get_run("c1", "event__1")) is not None
    # the same events again: refused, and no run is created
    assert not await store.create_asset_run(a_run("event__2", "c1", run_type=RunType.EVENT), ids)
    assert await store.get_run("c1", "event__2") is None


async def test_paused_or_gone_dags(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await store.upsert_dags([a_dag("c1", [RAW]), a_dag("c2", [RAW])])
    await store.deactivate_dag_ids(["c2"])  # c2's file is gone: it consumes nothing more
    await store.record_asset_events([an_event()])
    assert set(await store.queued_asset_events()) == {"c1"}
    await store.upsert_dags([a_dag("c1", [OTHER])])  # c1 now waits for another asset
    await store.record_asset_events([an_event()])
    assert len((await store.queued_asset_events())["c1"]) == 1


async def test_two_concurrent_consumers_create_one_run(store_factory: StoreFactory) -> None:
    first, second = await store_factory(), await store_factory()
    await first.upsert_dags([a_dag("c1", [RAW])])
    for _round in range(5):
        ids = await first.record_asset_events([an_event(), an_event()])
        results: dict[str, bool] = {}

        async def consume(
            store: Store, name: str, ids: list[int] = ids, results: dict[str, bool] = results
        ) -> None:
            run = a_run(f"{name}-{ids[0]}", "c1", run_type=RunType.EVENT)
            results[name] = await store.create_asset_run(run, ids)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, first, "a")
            tg.start_soon(consume, second, "b")
        assert sorted(results.values()) == [False, True]
    runs = await first.list_runs("c1")
    assert len(runs) == 5
    for run in runs:
        assert len(await first.asset_events_of_run("c1", run.run_id)) == 2


def a_watcher(name: str = "w", kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"uri": RAW, "name": name, "classpath": "triggers.webhook.WebhookTrigger",
            "kwargs": kwargs or {"key": "k"}}


async def test_watchers_are_claimed_once_and_move_on(store_factory: StoreFactory) -> None:
    store, other = await store_factory(), await store_factory()
    await store.upsert_dags([a_dag("c1", [RAW], [a_watcher()])])
    lease = T0 + timedelta(seconds=30)
    [claimed] = await store.claim_asset_watchers("t1", T0, lease, 10)
    assert claimed.owner == "t1" and claimed.kwargs == {"key": "k"}
    assert await other.claim_asset_watchers("t2", T0, lease, 10) == []
    assert await store.owned_asset_watchers("t1") == {claimed.id: claimed.version}
    # fires: the event is queued and the watcher moves on, in one transaction
    event = an_event(source_watcher="w", extra={"id": 3})
    assert await store.fire_asset_watcher(claimed, claimed.version, event, {"key": "k", "after_id": 3})
    assert (await store.queued_asset_events())["c1"][0].source_watcher == "w"
    # re-recording the same DAG keeps its position and owner
    await store.upsert_dags([a_dag("c1", [RAW], [a_watcher()])])
    [row] = await store.list_asset_watchers()
    assert (row.kwargs, row.owner, row.version) == ({"key": "k", "after_id": 3}, "t1", claimed.version)
    # a triggerer that is not the owner records nothing
    stranger = type(claimed)(**{**_fields(claimed), "owner": "t2"})
    assert not await other.fire_asset_watcher(stranger, claimed.version, event, None)
    # the owner's lease expires: another triggerer takes over
    later = lease + timedelta(seconds=1)
    [taken] = await other.claim_asset_watchers("t2", later, later + timedelta(seconds=30), 10)
    assert taken.owner == "t2" and taken.kwargs == {"key": "k", "after_id": 3}
    assert not await store.fire_asset_watcher(claimed, claimed.version, event, None)  # old owner
    # the DAG file changes the watcher: a new version, back to its new definition, unowned
    await store.upsert_dags([a_dag("c1", [RAW], [a_watcher(kwargs={"key": "j"})])])
    [row] = await store.list_asset_watchers()
    assert (row.kwargs, row.owner, row.version) == ({"key": "j"}, None, taken.version + 1)
    assert not await other.fire_asset_watcher(taken, taken.version, event, None)
    # a one-shot watcher that fired is done: no one claims it again
    [again] = await other.claim_asset_watchers("t2", later, later + timedelta(seconds=30), 10)
    assert await other.fire_asset_watcher(again, again.version, event, None)
    await other.release_triggers("t2")
    assert await store.claim_asset_watchers("t3", later, later + timedelta(seconds=30), 10) == []
    # the DAG drops the watcher, then the DAG goes: the rows go
    await store.upsert_dags([a_dag("c1", [RAW], [a_watcher("x")])])
    assert [w.name for w in await store.list_asset_watchers()] == ["x"]
    await store.deactivate_dag_ids(["c1"])
    assert await store.list_asset_watchers() == []


async def test_released_watchers_are_claimable_at_once(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await store.upsert_dags([a_dag("c1", [RAW], [a_watcher()])])
    lease = T0 + timedelta(hours=1)
    assert len(await store.claim_asset_watchers("t1", T0, lease, 10)) == 1
    await store.release_triggers("t1")
    assert len(await store.claim_asset_watchers("t2", T0, lease, 10)) == 1


async def test_webhooks_after_an_id(store_factory: StoreFactory) -> None:
    store = await store_factory()
    first = await store.deliver_webhook("k", {"n": 1}, T0)
    second = await store.deliver_webhook("k", {"n": 2}, T0)
    assert await store.first_webhook("k") == (first, {"n": 1})
    assert await store.first_webhook("k", after_id=first) == (second, {"n": 2})
    assert await store.first_webhook("k", after_id=second) is None


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


async def test_concurrent_claims_split_watchers(store_factory: StoreFactory) -> None:
    stores = [await store_factory() for _ in range(3)]
    await stores[0].upsert_dags([a_dag("c1", [RAW], [a_watcher(f"w{i}") for i in range(30)])])
    lease = T0 + timedelta(seconds=30)
    got: dict[str, list[int]] = {}

    async def claim(store: Store, owner: str, got: dict[str, list[int]] = got) -> None:
        claimed: list[int] = []
        for _ in range(10):
            claimed += [w.id or 0 for w in await store.claim_asset_watchers(owner, T0, lease, 3)]
        got[owner] = claimed

    async with anyio.create_task_group() as tg:
        for n, store in enumerate(stores):
            tg.start_soon(claim, store, f"t{n}")
    every = [i for ids in got.values() for i in ids]
    assert len(every) == len(set(every)) == 30  # each watcher to exactly one triggerer
    rows = await stores[0].list_asset_watchers()
    assert {w.id: w.owner for w in rows} == {i: o for o, ids in got.items() for i in ids}
