"""How a deadline alert is delivered when something goes wrong between recording the miss
and recording that its alert went out, through real Orchestrators on real SQLite and
PostgreSQL stores, with a real WebhookNotifier posting to a loopback server, on a
ManualClock:

- the commit of the miss is acknowledged to no one (a connection lost during COMMIT):
  the retry recognises its own row and the alert still goes out, once;
- a process died after recording a miss and before recording its alert's end (the row
  is left `sending`): the process that adopts the run sends the alert, once, whether the
  run's or a task's (even a task that has finished since);
- a miss whose alert is `sent`, `failed` or `none` is never alerted again;
- two processes that both drive the run (one stalled past its lease) and both find such
  a miss due: only the lease holder sends it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from aflow import (
    DAG,
    DeadlineAlert,
    ManualClock,
    Orchestrator,
    PythonOperator,
    WebhookNotifier,
)
from aflow.exceptions import StoreError
from aflow.store.postgres import PostgresStore
from aflow.store.records import DeadlineMissRecord
from aflow.store.sqlite import SqliteStore
from tests.integration import test_deadlines_engine, test_notifiers
from tests.integration.test_deadlines_engine import Fired, blocking, ten_minutes_after_queued
from tests.integration.test_notifiers import Hook

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)
GONE = "gone-host:4242:deadbeef"  # the owner id of a process that died
store_url = test_deadlines_engine.store_url  # the backends: SQLite and PostgreSQL
hook = test_notifiers.hook  # a loopback server that receives the notifiers' POSTs


class _LosesFirstAck:
    """A store whose first `record_deadline_miss` commits and then raises, as when the
    connection drops after COMMIT and before its answer arrives (no server can be made
    to do that on demand; everything else is the real store)."""

    lost = 0

    async def record_deadline_miss(self, miss: DeadlineMissRecord) -> bool:
        won = await super().record_deadline_miss(miss)  # type: ignore[misc]
        if not self.lost:
            self.lost += 1
            raise StoreError("PostgreSQL write failed: connection lost during COMMIT")
        return bool(won)


class _LossySqlite(_LosesFirstAck, SqliteStore):
    pass


class _LossyPostgres(_LosesFirstAck, PostgresStore):
    pass


async def test_a_lost_commit_acknowledgement_still_sends_the_alert_once(
    home: Path, store_url: str, hook: tuple[Hook, str],
) -> None:
    receiver, base = hook
    url = f"{base}/alert"
    store = _LossySqlite(store_url) if store_url.startswith("sqlite") else _LossyPostgres(store_url)
    clock = ManualClock(START)
    gate, started = anyio.Event(), anyio.Event()
    with DAG("lost_ack", start_date=START, deadline=ten_minutes_after_queued(WebhookNotifier(url))) as dag:
        PythonOperator(task_id="t", python_callable=blocking(gate, started))

    async with Orchestrator([dag], home=home, store=store, clock=clock, schedule=False,
                            shutdown_grace_s=0) as o:
        assert o.deadlines is not None
        fired = Fired()
        o.deadlines.on_fired.append(fired)
        handle = await o.trigger("lost_ack")
        with anyio.fail_after(15):
            await started.wait()
        clock.advance(timedelta(minutes=11))
        ((miss, won),) = await fired.wait_for(1)
        assert store.lost == 1  # the first attempt committed, and its answer was lost
        assert won and miss.alert_state == "sent"
        (body,) = await receiver.wait_for(1)
        assert body["reason"] == "deadline_missed" and body["run_id"] == handle.run_id
        (recorded,) = await o.store.deadline_misses("lost_ack", handle.run_id)
        assert (recorded.owner, recorded.alert_state) == (o.process_id, "sent")
        assert (o.deadlines.missed, o.deadlines.recorded_before) == (1, 0)
        gate.set()
        assert (await handle.wait(timeout=30)).state.value == "success"
    assert len(receiver.bodies) == 1


@pytest.mark.parametrize("left", ["sending", "sent", "failed", "none"])
async def test_the_adopter_sends_an_alert_a_dead_process_left_sending_and_nothing_else(
    home: Path, store_url: str, hook: tuple[Hook, str], left: str,
) -> None:
    """A first process drives the run, then stops; the rows it would have left had it
    died after recording two misses (the run's, and a task's that has finished since)
    are written as a dead owner's. The next process adopts the run with both deadlines
    past: it sends each alert left `sending` once, and nothing for any other state."""
    receiver, base = hook
    url = f"{base}/alert"
    clock = ManualClock(START)
    gate, started, quick_done = anyio.Event(), anyio.Event(), anyio.Event()
    notifier = WebhookNotifier(url)
    with DAG("adopted", start_date=START, deadline=ten_minutes_after_queued(notifier)) as dag:
        PythonOperator(task_id="quick", python_callable=quick_done.set,
                       deadline=DeadlineAlert(interval=timedelta(minutes=5), callback=notifier))
        PythonOperator(task_id="slow", python_callable=blocking(gate, started))

    async with Orchestrator([dag], home=home, store=store_url, clock=clock, schedule=False,
                            shutdown_grace_s=0) as first:
        handle = await first.trigger("adopted")
        run_id = handle.run_id
        with anyio.fail_after(15):
            await started.wait()
            await quick_done.wait()
            while {t.task_id: t.state.value for t in await handle.task_instances()  # noqa: ASYNC110
                   }.get("quick") != "success":  # (its end is committed: no event tells)
                await anyio.sleep(0.01)
        run = await first.store.get_run("adopted", run_id)
        assert run is not None and run.created_at is not None and run.start_date is not None
        left_behind = [
            DeadlineMissRecord(
                dag_id="adopted", run_id=run_id, task_id=task_id, alert_index=0,
                deadline_at=at, missed_at=at + timedelta(seconds=1),
                description="as the dead process described it", owner=GONE,
                alert_state=left, alert_error="HTTP 500" if left == "failed" else None)
            for task_id, at in ((None, run.created_at + timedelta(minutes=10)),
                                ("quick", run.start_date + timedelta(minutes=5)))
        ]
        for miss in left_behind:
            assert await first.store.record_deadline_miss(miss)
    # (the try of `slow` was interrupted by the shutdown: it runs again after the restart)

    clock.advance(timedelta(minutes=11))  # both deadlines have passed
    async with Orchestrator([dag], home=home, store=store_url, clock=clock, schedule=False,
                            shutdown_grace_s=0, hostname="another-host") as second:
        watcher = second.deadlines
        assert watcher is not None
        with anyio.fail_after(15):
            while watcher.recorded_before < 2:  # noqa: ASYNC110 - adopted during the start
                await anyio.sleep(0.01)
            await watcher.wait_idle()
        recorded = {m.task_id: m for m in await second.store.deadline_misses("adopted", run_id)}
        assert watcher.missed == 0  # nothing was recorded twice
        if left == "sending":
            assert watcher.taken_over == 2
            bodies = await receiver.wait_for(2)
            assert sorted(str(b["task_id"]) for b in bodies) == ["None", "quick"]
            for body in bodies:  # the miss as the dead process recorded it
                assert body["deadline"]["missed_at"] == recorded[body["task_id"]].missed_at.isoformat()
                assert body["deadline"]["description"] == "as the dead process described it"
            assert {(m.owner, m.alert_state) for m in recorded.values()} == {
                (second.process_id, "sent")}
        else:
            assert watcher.taken_over == 0
            assert {(m.owner, m.alert_state) for m in recorded.values()} == {(GONE, left)}
        gate.set()
        final = await (await second.get_run("adopted", run_id)).wait(timeout=30)
        assert final.state.value == "success"
    assert len(receiver.bodies) == (2 if left == "sending" else 0)


@pytest.mark.postgres
async def test_of_two_processes_that_both_drive_a_run_only_its_lease_holder_sends(
    home: Path, pg_schema_url: str, hook: tuple[Hook, str],
) -> None:
    """After a lease is lost, two schedulers on one PostgreSQL can both drive a run for a
    while: the one that stalled past its lease (it has not noticed yet) and the one that
    adopted the run. A miss a dead process left `sending` falls due in both at once: the
    alert goes out once, from the lease holder."""
    receiver, base = hook
    url = f"{base}/alert"
    clock = ManualClock(START)
    gate, started = anyio.Event(), anyio.Event()
    with DAG("contested", start_date=START, deadline=ten_minutes_after_queued(WebhookNotifier(url))) as dag:
        PythonOperator(task_id="t", python_callable=blocking(gate, started), retries=3)

    # `stalled` renews its lease only every 40 s (it would then see that it lost the run)
    # and claims nothing; `adopter` looks for runs to claim all the time.
    async with Orchestrator([dag], home=home / "stalled", store=pg_schema_url, clock=clock,
                            schedule=False, claim=False, lease_s=120,
                            shutdown_grace_s=0) as stalled, Orchestrator(
            [dag], home=home / "adopter", store=pg_schema_url, clock=clock, schedule=False,
            poll_s=0.05, sweep_s=0.05, shutdown_grace_s=0, hostname="another-host",
    ) as adopter:
        assert stalled.deadlines is not None and adopter.deadlines is not None
        handle = await stalled.trigger("contested")
        key = ("contested", handle.run_id)
        with anyio.fail_after(15):
            await started.wait()
        assert await adopter.store.expire_leases_of(stalled.process_id) == 1
        with anyio.fail_after(15):
            while key not in adopter.driver.runs:  # noqa: ASYNC110 - its sweep claims it
                await anyio.sleep(0.01)
        assert key in stalled.driver.runs  # both drive it now
        run = await adopter.store.get_run(*key)
        assert run is not None and run.owner == adopter.process_id and run.created_at
        assert await adopter.store.record_deadline_miss(DeadlineMissRecord(
            dag_id="contested", run_id=handle.run_id, task_id=None, alert_index=0,
            deadline_at=run.created_at + timedelta(minutes=10), missed_at=START,
            description="left by a dead process", owner=GONE))

        reports = {name: Fired() for name in ("stalled", "adopter")}
        stalled.deadlines.on_fired.append(reports["stalled"])
        adopter.deadlines.on_fired.append(reports["adopter"])
        clock.advance(timedelta(minutes=11))  # due in both processes at once
        ((by_stalled, stalled_sent),) = await reports["stalled"].wait_for(1)
        ((by_adopter, adopter_sent),) = await reports["adopter"].wait_for(1)
        assert (stalled_sent, adopter_sent) == (False, True)
        assert by_adopter.alert_state == "sent"
        (body,) = await receiver.wait_for(1)
        assert body["deadline"]["description"] == "left by a dead process"
        (recorded,) = await adopter.store.deadline_misses("contested", handle.run_id)
        assert (recorded.owner, recorded.alert_state) == (adopter.process_id, "sent")
        gate.set()
    assert len(receiver.bodies) == 1
