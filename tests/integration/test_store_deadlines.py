"""The store contract of deadline misses, on SQLite and PostgreSQL: recorded once per
(run, task, alert) however many writers race (a writer's retry after a lost answer
recognising its own row), listed, their alert's end recorded, and an alert left
`sending` taken over by the run's owner alone."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from aflow.store.base import Store
from aflow.store.records import DeadlineMissRecord
from tests.integration import test_store_contract
from tests.integration.test_store_contract import StoreFactory, a_run

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


async def test_a_retry_after_a_lost_commit_answer_recognises_its_own_row(store: Store) -> None:
    """The same record again (same owner, `missed_at`, state): the first attempt
    committed and its answer was lost, so this caller recorded it. Anything else found
    under the key is someone else's (or an earlier life's) miss."""
    first = miss()
    assert await store.record_deadline_miss(first) is True
    assert await store.record_deadline_miss(first) is True  # the retry
    assert await store.record_deadline_miss(miss(owner="p2")) is False
    later = replace(first, missed_at=first.missed_at + timedelta(seconds=1))
    assert await store.record_deadline_miss(later) is False  # this owner, another firing
    assert await store.record_deadline_miss(replace(first, alert_state="none")) is False
    assert await store.record_deadline_miss(replace(first, owner=None)) is False
    assert await store.set_deadline_alert_state("d", "r1", None, 0, "sent", owner="p1")
    assert await store.record_deadline_miss(first) is False  # its alert went out already
    assert await store.deadline_misses("d", "r1") == [replace(first, alert_state="sent")]


async def driven_by(store: Store, owner: str, run_id: str = "r1", *, hour: int = 0) -> None:
    """`owner` claims the run `run_id` of DAG d (created if new) at `hour` past T0, for
    half an hour: a later hour finds the lease expired."""
    if await store.get_run("d", run_id) is None:
        await store.create_run(a_run(run_id, "d"), [])
    now = T0 + timedelta(hours=hour)
    claimed = await store.claim_runs(owner, now, now + timedelta(minutes=30), 1,
                                     dag_ids=["d"], run_id=run_id)
    assert [r.owner for r in claimed] == [owner]


async def test_an_alert_left_sending_is_claimed_by_the_run_owner_and_only_then(
    store: Store,
) -> None:
    await driven_by(store, "p2")
    assert await store.claim_deadline_alert("d", "r1", None, 0, "p2") is None  # no miss
    left = miss(owner="gone")
    assert await store.record_deadline_miss(left)
    # not p3's to take: p2 drives the run (p3 lost it, or never had it)
    assert await store.claim_deadline_alert("d", "r1", None, 0, "p3") == left
    claimed = await store.claim_deadline_alert("d", "r1", None, 0, "p2")
    assert claimed == replace(left, owner="p2")
    # p2 asking again (its answer was lost) finds it its own
    assert await store.claim_deadline_alert("d", "r1", None, 0, "p2") == claimed
    # the run moves on to p3 (p2 lost it while sending): p3 takes the alert over, and
    # p2, taken for gone, can no longer record the alert's end
    await driven_by(store, "p3", hour=1)
    assert await store.claim_deadline_alert("d", "r1", None, 0, "p3") == replace(
        left, owner="p3")
    assert await store.set_deadline_alert_state("d", "r1", None, 0, "failed", "x",
                                                owner="p2") is False
    assert await store.set_deadline_alert_state("d", "r1", None, 0, "sent", owner="p3")
    (recorded,) = await store.deadline_misses("d", "r1")
    assert (recorded.owner, recorded.alert_state, recorded.alert_error) == ("p3", "sent", None)
    assert await store.set_deadline_alert_state("d", "nope", None, 0, "sent") is False

    for n, state in enumerate(["sent", "failed", "none"]):
        await driven_by(store, "p2", f"done{n}")
        done = replace(miss(run_id=f"done{n}", owner="gone"), alert_state=state)
        assert await store.record_deadline_miss(done)
        # unchanged: not to be sent again
        assert await store.claim_deadline_alert("d", f"done{n}", None, 0, "p2") == done
    await driven_by(store, "p2", "ownerless")
    ownerless = miss(run_id="ownerless", owner=None)  # (a row written without an owner)
    assert await store.record_deadline_miss(ownerless)
    assert await store.claim_deadline_alert("d", "ownerless", None, 0, "p2") == replace(
        ownerless, owner="p2")


async def test_racing_claimers_of_an_alert_left_sending_exactly_one_wins(
    store_factory: StoreFactory,
) -> None:
    """Twelve claimers on four connections, each sure it drives the run (after a lease
    expired, a stalled process and the one that adopted its run can both be): exactly
    one gets the alert to send, the run's owner."""
    stores = [await store_factory() for _ in range(4)]
    await driven_by(stores[0], "p7")
    assert await stores[0].record_deadline_miss(miss(task_id="slow", owner="gone"))
    seen: dict[str, DeadlineMissRecord | None] = {}

    async def claim(s: Store, n: int) -> None:
        seen[f"p{n}"] = await s.claim_deadline_alert("d", "r1", "slow", 0, f"p{n}")

    async with anyio.create_task_group() as tg:
        for n, s in enumerate(stores * 3):
            tg.start_soon(claim, s, n)
    winners = [me for me, row in seen.items()
               if row is not None and row.owner == me and row.alert_state == "sending"]
    assert winners == ["p7"], seen
    (recorded,) = await stores[0].deadline_misses("d", "r1")
    assert recorded.owner == "p7"
