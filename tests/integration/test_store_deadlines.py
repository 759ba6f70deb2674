"""The store contract of deadline misses, on SQLite and PostgreSQL: recorded once per
(run, task, alert) however many writers race, listed, and their alert's end recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from aflow.store.base import Store
from aflow.store.records import DeadlineMissRecord
from tests.integration import test_store_contract
from tests.integration.test_store_contract import StoreFactory

pytestmark = pytest.mark.anyio

store_factory = test_store_contract.store_factory  # the backends: SQLite and PostgreSQL

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def miss(run_id: str = "r1", task_id: str | None = None, index: int = 0,
         owner: str = "p1", minutes: int = 10) -> DeadlineMissRecord:
    return DeadlineMissRecord(
        dag_id="d", run_id=run_id, task_id=task_id, alert_index=index,
        deadline_at=T0 + timedelta(minutes=minutes),
        missed_at=T0 + timedelta(minutes=minutes, seconds=1),
        description=f"0:{minutes:02d}:00 after dagrun_started_at", owner=owner,
    )


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    return await store_factory()


async def test_a_miss_is_recorded_once_and_listed_with_its_alert_state(store: Store) -> None:
    first = miss()
    assert await store.record_deadline_miss(first) is True
    assert await store.record_deadline_miss(miss(owner="p2", minutes=11)) is False  # same key
    task_miss = miss(task_id="slow", minutes=5)
    other_alert = miss(index=1, minutes=20)
    assert await store.record_deadline_miss(task_miss) is True
    assert await store.record_deadline_miss(other_alert) is True
    assert await store.record_deadline_miss(miss(run_id="r2")) is True

    assert await store.deadline_misses("d", "r1") == [task_miss, first, other_alert]
    assert len(await store.deadline_misses("d")) == 4
    assert await store.deadline_misses("other") == []

    await store.set_deadline_alert_state("d", "r1", None, 0, "failed", "HTTPStatusError: 500")
    await store.set_deadline_alert_state("d", "r1", "slow", 0, "sent")
    by_key = {(m.task_id, m.alert_index): m for m in await store.deadline_misses("d", "r1")}
    assert by_key[(None, 0)].alert_state == "failed"
    assert by_key[(None, 0)].alert_error == "HTTPStatusError: 500"
    assert by_key[(None, 0)].owner == "p1"  # the first writer's row stands
    assert by_key[("slow", 0)].alert_state == "sent"
    assert by_key[(None, 1)].alert_state == "sending"


async def test_racing_writers_on_one_database_record_a_miss_exactly_once(
    store_factory: StoreFactory,
) -> None:
    stores = [await store_factory() for _ in range(4)]
    won: list[bool] = []

    async def record(s: Store, n: int) -> None:
        won.append(await s.record_deadline_miss(miss(owner=f"p{n}")))

    async with anyio.create_task_group() as tg:
        for n, s in enumerate(stores * 3):
            tg.start_soon(record, s, n)
    assert sorted(won) == [False] * 11 + [True]
    (recorded,) = await stores[0].deadline_misses("d", "r1")
    assert recorded.owner in {f"p{n}" for n in range(12)}
