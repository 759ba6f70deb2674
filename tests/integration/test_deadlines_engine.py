"""Deadline alerts through the real engine on a real SQLite store, on a ManualClock (no
sleeping): a run and a task that overrun alert once, are recorded and shown (REST API
and run page) and go on to finish; a run that ends in time alerts nothing; a restarted
orchestrator does not alert again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest

from aflow import DAG, DeadlineAlert, DeadlineReference, ManualClock, Orchestrator, PythonOperator
from aflow.api import serve_api
from aflow.exceptions import DagDefinitionError
from aflow.store.records import DeadlineMissRecord
from tests.auth_helpers import bearer

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


class Fired:
    """Collects the watcher's `on_fired` reports; a test waits for the n-th one."""

    def __init__(self) -> None:
        self.items: list[tuple[DeadlineMissRecord, bool]] = []
        self._event = anyio.Event()

    def __call__(self, miss: DeadlineMissRecord, won: bool) -> None:
        self.items.append((miss, won))
        self._event.set()

    async def wait_for(self, n: int) -> list[tuple[DeadlineMissRecord, bool]]:
        with anyio.fail_after(15):
            while len(self.items) < n:
                self._event = anyio.Event()
                await self._event.wait()
        return self.items


class Alerts:
    """An async deadline callback that records its contexts."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    async def __call__(self, context: dict[str, Any]) -> None:
        self.contexts.append(context)


def ten_minutes_after_queued(callback: Any) -> DeadlineAlert:
    """The run deadline these tests miss on purpose: 10 minutes after the run was queued
    (the tests advance their ManualClock past it)."""
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT,
                         interval=timedelta(minutes=10), callback=callback)


def blocking(gate: anyio.Event, started: anyio.Event | None = None) -> Any:
    async def work() -> str:
        if started is not None:
            started.set()
        await gate.wait()
        return "late but done"

    return work


async def test_an_overrunning_run_and_task_alert_once_are_recorded_shown_and_not_cancelled(
    home: Path,
) -> None:
    clock = ManualClock(START)
    alerts = Alerts()
    gate, started = anyio.Event(), anyio.Event()
    five = DeadlineAlert(interval=timedelta(minutes=5), callback=alerts)
    with DAG("overrun", start_date=START,
             deadline=DeadlineAlert(reference=DeadlineReference.DAGRUN_STARTED_AT,
                                    interval=timedelta(minutes=10), callback=[alerts])) as dag:
        fast = PythonOperator(task_id="fast", python_callable=lambda: 1, deadline=five)
        slow = PythonOperator(task_id="slow", python_callable=blocking(gate, started), deadline=five)
        fast >> slow

    async with Orchestrator([dag], home=home, clock=clock, schedule=False,
                            shutdown_grace_s=0) as o:
        assert o.deadlines is not None
        fired = Fired()
        o.deadlines.on_fired.append(fired)
        handle = await o.trigger("overrun")
        with anyio.fail_after(15):
            await started.wait()  # so `fast` has ended (in time) and `slow` runs
        assert o.deadlines.pending == 3  # (fast's too: a timer is checked when due)

        clock.advance(timedelta(minutes=6))
        ((slow_miss, won),) = await fired.wait_for(1)
        assert won and slow_miss.task_id == "slow"  # not fast: it ended in time
        assert slow_miss.deadline_at == START + timedelta(minutes=5)
        assert slow_miss.alert_state == "sent"

        clock.advance(timedelta(minutes=5))
        _, (run_miss, won) = await fired.wait_for(2)
        assert won and run_miss.task_id is None
        assert run_miss.deadline_at == START + timedelta(minutes=10)
        assert run_miss.missed_at == START + timedelta(minutes=11)

        assert [c["reason"] for c in alerts.contexts] == ["deadline_missed"] * 2
        assert [c["task_id"] for c in alerts.contexts] == ["slow", None]
        assert alerts.contexts[0]["ti"].state.value == "running"
        assert alerts.contexts[1]["dag_run"].run_id == handle.run_id

        recorded = await o.store.deadline_misses("overrun", handle.run_id)
        assert [(m.task_id, m.alert_state) for m in recorded] == [("slow", "sent"), (None, "sent")]

        async with serve_api(o) as url, httpx.AsyncClient(
            base_url=url, headers=await bearer(o.store, "viewer")
        ) as client:
            run_path = f"/dags/overrun/runs/{quote(handle.run_id, safe='')}"
            answer = await client.get(f"/api/v1{run_path}/deadlines")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            by_task = {d["task_id"]: d for d in body["deadlines"]}
            assert body["total_entries"] == 3
            assert by_task[None]["status"] == "missed" and by_task[None]["alert_state"] == "sent"
            assert by_task["slow"]["status"] == "missed"
            assert by_task["fast"]["status"] == "met"
            assert by_task[None]["description"] == "0:10:00 after dagrun_started_at"

            page = await client.get(run_path)
            assert page.status_code == 200
            assert 'id="deadlines"' in page.text
            assert page.text.count('data-status="missed"') == 2
            assert page.text.count('data-status="met"') == 1

        gate.set()  # nothing was cancelled: the late task still finishes the run
        final = await handle.wait(timeout=30)
        assert final.state.value == "success"
        assert {t.task_id: t.state.value for t in await handle.task_instances()} == {
            "fast": "success", "slow": "success"}
        assert o.deadlines.pending == 0
        assert len(alerts.contexts) == 2


async def test_a_run_that_ends_in_time_alerts_nothing(home: Path) -> None:
    clock = ManualClock(START)
    alerts = Alerts()
    gate = anyio.Event()
    with DAG("in_time", start_date=START, deadline=DeadlineAlert(
            interval=timedelta(minutes=10), callback=alerts)) as dag:
        PythonOperator(task_id="t", python_callable=blocking(gate),
                       deadline=DeadlineAlert(interval=timedelta(minutes=1), callback=alerts))

    async with Orchestrator([dag], home=home, clock=clock, schedule=False,
                            shutdown_grace_s=0) as o:
        assert o.deadlines is not None
        fired = Fired()
        o.deadlines.on_fired.append(fired)
        handle = await o.trigger("in_time")
        with anyio.fail_after(15):
            while o.deadlines.pending < 2:  # adopted: both timers are set
                await anyio.lowlevel.checkpoint()
        clock.advance(timedelta(seconds=59))  # just in time
        gate.set()
        assert (await handle.wait(timeout=30)).state.value == "success"
        assert o.deadlines.pending == 0  # the run's end dropped both timers

        clock.advance(timedelta(hours=1))
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert fired.items == []
        assert alerts.contexts == []
        assert await o.store.deadline_misses("in_time") == []


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, home: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{home / 'aflow.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


async def test_after_a_restart_a_recorded_miss_is_not_alerted_again(
    home: Path, store_url: str,
) -> None:
    """The second process may be this one restarted or another scheduler on the same
    PostgreSQL adopting the run: either way the miss is recorded, so no second alert."""
    clock = ManualClock(START)
    alerts = Alerts()
    gate, started = anyio.Event(), anyio.Event()
    with DAG("restart", start_date=START, deadline=ten_minutes_after_queued(alerts)) as dag:
        PythonOperator(task_id="t", python_callable=blocking(gate, started))

    async with Orchestrator([dag], home=home, store=store_url, clock=clock, schedule=False,
                            shutdown_grace_s=0) as first:
        assert first.deadlines is not None
        fired = Fired()
        first.deadlines.on_fired.append(fired)
        handle = await first.trigger("restart")
        with anyio.fail_after(15):
            await started.wait()  # the try runs: the shutdown interrupts it cleanly
        clock.advance(timedelta(minutes=11))
        ((miss, won),) = await fired.wait_for(1)
        assert won and miss.alert_state == "sent"
        run_id = handle.run_id
    # (the try was interrupted by the shutdown: it runs again after the restart)

    async with Orchestrator([dag], home=home, store=store_url, clock=clock, schedule=False,
                            shutdown_grace_s=0, hostname="another-host") as second:
        assert second.deadlines is not None
        again = Fired()
        second.deadlines.on_fired.append(again)
        if second.deadlines.recorded_before == 0:  # (it may have come during the start)
            ((miss2, won2),) = await again.wait_for(1)
            assert not won2 and miss2.task_id is None
        assert second.deadlines.recorded_before == 1  # due at once on adoption, but recorded
        assert second.deadlines.missed == 0
        gate.set()
        final = await (await second.get_run("restart", run_id)).wait(timeout=30)
        assert final.state.value == "success"
        (recorded,) = await second.store.deadline_misses("restart", run_id)
        assert recorded.owner == first.process_id and recorded.alert_state == "sent"
    assert len(alerts.contexts) == 1


def test_deadline_arguments_are_checked_with_clear_errors() -> None:
    with pytest.raises(DagDefinitionError, match="DAG 'x': deadline must be a DeadlineAlert"):
        DAG("x", deadline=timedelta(minutes=5))  # type: ignore[arg-type]
    with pytest.raises(DagDefinitionError, match="task 'y': deadline must be a DeadlineAlert"):
        PythonOperator(task_id="y", python_callable=print, deadline="soon")
    with pytest.raises(DagDefinitionError, match="timezone-aware"):
        DeadlineAlert(reference=datetime(2024, 1, 1))
    with pytest.raises(DagDefinitionError, match="unknown reference 'whenever'"):
        DeadlineAlert(reference="whenever")  # type: ignore[arg-type]
    with pytest.raises(DagDefinitionError, match="is not callable"):
        DeadlineAlert(callback="page someone")  # type: ignore[arg-type]
    fixed = DeadlineAlert(reference=DeadlineReference.FIXED_DATETIME(START), interval=60)
    assert fixed.interval == timedelta(minutes=1)
    assert fixed.describe() == "by 2024-01-01T00:01:00+00:00"


async def test_a_deadline_notifier_posts_its_alert_and_a_failing_one_is_recorded_failed(
    home: Path,
) -> None:
    from aiohttp import web

    from aflow import WebhookNotifier
    from tests.integration.test_notifiers import Hook

    good, bad = Hook(), Hook()
    bad.status = 500
    app = web.Application()
    app.router.add_post("/good", good.handle)
    app.router.add_post("/bad", bad.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        clock = ManualClock(START)
        gate, started = anyio.Event(), anyio.Event()
        with DAG("late_webhook", start_date=START, deadline=DeadlineAlert(
                reference=DeadlineReference.DAGRUN_LOGICAL_DATE, interval=timedelta(hours=1),
                callback=[WebhookNotifier(f"{base}/good", slack=True),
                          WebhookNotifier(f"{base}/bad")])) as dag:
            PythonOperator(task_id="t", python_callable=blocking(gate, started))
        async with Orchestrator([dag], home=home, clock=clock, schedule=False,
                                shutdown_grace_s=0) as o:
            assert o.deadlines is not None
            fired = Fired()
            o.deadlines.on_fired.append(fired)
            handle = await o.trigger("late_webhook", logical_date=START - timedelta(minutes=30))
            with anyio.fail_after(15):
                await started.wait()
            clock.advance(timedelta(minutes=31))
            ((miss, won),) = await fired.wait_for(1)
            assert won and miss.deadline_at == START + timedelta(minutes=30)
            assert miss.alert_state == "failed" and "500" in (miss.alert_error or "")
            (slack,) = good.bodies
            assert "missed its deadline" in slack["text"] and handle.run_id in slack["text"]
            (generic,) = bad.bodies
            assert generic["reason"] == "deadline_missed" and generic["state"] == "running"
            assert generic["deadline"]["deadline_at"] == miss.deadline_at.isoformat()
            (recorded,) = await o.store.deadline_misses("late_webhook", handle.run_id)
            assert recorded.alert_state == "failed"
            gate.set()
            assert (await handle.wait(timeout=30)).state.value == "success"  # not cancelled
    finally:
        await runner.cleanup()
