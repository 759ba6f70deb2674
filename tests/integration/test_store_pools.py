"""Store contract for pools, on every backend (SQLite and PostgreSQL): default_pool
always exists, pools are created, changed and deleted, and a delete is refused for
default_pool, an unknown pool, or a pool with task instances in it."""

from __future__ import annotations

import anyio
import pytest

from aflow.exceptions import PoolError, PoolNotFound
from aflow.states import DagRunState, TaskState
from aflow.store.records import DEFAULT_POOL, DEFAULT_POOL_SLOTS, PoolRecord
from tests.integration.test_store_contract import (
    StoreFactory,
    a_run,
    a_ti,
    store_factory,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.anyio


async def test_default_pool_exists_after_migration(store_factory: StoreFactory) -> None:  # noqa: F811
    store = await store_factory()
    assert await store.list_pools() == [
        PoolRecord(DEFAULT_POOL, DEFAULT_POOL_SLOTS, "Default pool", False)
    ]
    assert await store.get_pool(DEFAULT_POOL) == PoolRecord(
        DEFAULT_POOL, DEFAULT_POOL_SLOTS, "Default pool", False
    )
    assert await store.get_pool("nope") is None


async def test_set_creates_and_replaces_and_other_stores_see_it(store_factory: StoreFactory) -> None:  # noqa: F811
    store = await store_factory()
    other = await store_factory()
    await store.set_pool(PoolRecord("etl", 4, "nightly loads", include_deferred=True))
    assert await other.get_pool("etl") == PoolRecord("etl", 4, "nightly loads", True)
    await other.set_pool(PoolRecord("etl", 1))
    await store.set_pool(PoolRecord("api", -1, "unlimited"))
    assert [p.name for p in await store.list_pools()] == ["api", DEFAULT_POOL, "etl"]
    assert await store.get_pool("etl") == PoolRecord("etl", 1, "", False)
    await store.set_pool(PoolRecord(DEFAULT_POOL, 7))
    assert (await other.get_pool(DEFAULT_POOL)) == PoolRecord(DEFAULT_POOL, 7)


async def test_delete_refuses_default_unknown_and_busy_pools(store_factory: StoreFactory) -> None:  # noqa: F811
    store = await store_factory()
    await store.set_pool(PoolRecord("etl", 2))
    with pytest.raises(PoolError, match="default_pool cannot be deleted"):
        await store.delete_pool(DEFAULT_POOL)
    with pytest.raises(PoolNotFound, match="no pool 'nope'"):
        await store.delete_pool("nope")
    run = a_run(state=DagRunState.RUNNING)
    await store.create_run(run, [a_ti(run, "a", pool="etl", state=TaskState.RUNNING)])
    with pytest.raises(PoolError, match="1 task instance"):
        await store.delete_pool("etl")
    assert await store.get_pool("etl") is not None
    assert await store.pool_usage() == {"etl": {"running": 1}}
    await store.save_tis([a_ti(run, "a", pool="etl", state=TaskState.DEFERRED),
                          a_ti(run, "b", pool="etl", state=TaskState.DEFERRED),
                          a_ti(run, "c", pool=DEFAULT_POOL, state=TaskState.RUNNING)])
    assert await store.pool_usage() == {"etl": {"deferred": 2}, DEFAULT_POOL: {"running": 1}}
    await store.save_tis([a_ti(run, "a", pool="etl", state=TaskState.SUCCESS),
                          a_ti(run, "b", pool="etl", state=TaskState.FAILED)])
    await store.delete_pool("etl")
    assert await store.get_pool("etl") is None
    with pytest.raises(PoolNotFound):
        await store.delete_pool("etl")


async def test_pool_changes_are_announced(store_factory: StoreFactory) -> None:  # noqa: F811
    """On a store with notifications (PostgreSQL), set and delete wake POOLS_CHANNEL
    listeners of other stores; on SQLite nothing is announced (readers poll)."""
    store = await store_factory()
    listener = await store_factory()
    got: list[str] = []
    arrived = anyio.Event()

    def on_pool(payload: str) -> None:
        if payload:  # "" is the listener (re)connecting
            got.append(payload)
            arrived.set()

    unsubscribe = await listener.listen(listener.POOLS_CHANNEL, on_pool)
    try:
        if store_factory.backend != "postgresql":
            await store.set_pool(PoolRecord("etl", 3))
            assert got == []
            return
        with anyio.fail_after(10):
            while not listener.notifications_live:  # noqa: ASYNC110 - the listener connects
                await anyio.sleep(0.01)
        await store.set_pool(PoolRecord("etl", 3))
        with anyio.fail_after(10):
            await arrived.wait()
        arrived = anyio.Event()
        await store.delete_pool("etl")
        with anyio.fail_after(10):
            await arrived.wait()
        assert got == ["etl", "etl"]
    finally:
        unsubscribe()
