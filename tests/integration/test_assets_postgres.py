"""Asset-triggered runs across processes on one PostgreSQL (each Orchestrator stands for
a process): an event committed by one wakes the scheduler of another through
LISTEN/NOTIFY, with its periodic sweep made too slow to be what finds it; and several
schedulers that all consume the same events never create two runs from one event."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, Asset, Orchestrator, PythonOperator

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

START = datetime(2024, 1, 1, tzinfo=UTC)
RAW = Asset("s3://lake/raw")


def producer() -> DAG:
    with DAG("producer", start_date=START) as dag:
        PythonOperator(task_id="write", python_callable=lambda: None, outlets=[RAW])
    return dag


def consumer() -> DAG:
    with DAG("consumer", schedule=[RAW], start_date=START) as dag:
        PythonOperator(task_id="read", python_callable=lambda: None)
    return dag


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:  # noqa: ASYNC109 - a wait limit
    with anyio.fail_after(timeout):
        while True:
            value = await check()
            if value:
                return value
            await anyio.sleep(0.05)


async def test_an_event_elsewhere_wakes_the_consumer_through_notify(
    home: Path, pg_schema_url: str
) -> None:
    async with (
        Orchestrator([consumer()], store=pg_schema_url, home=home, triggerer=False,
                     poll_s=600, sweep_s=600) as consuming,
        Orchestrator([producer()], store=pg_schema_url, home=home, schedule=False,
                     triggerer=False) as producing,
    ):
        async def live() -> bool:
            return consuming.store.notifications_live

        await until(live)
        await (await producing.trigger("producer")).wait(timeout=30)

        async def consumer_runs() -> list[Any]:
            return [r for r in await consuming.store.list_runs("consumer") if r.state.finished]

        [run] = await until(consumer_runs)
        assert run.state.value == "success"
        assert len(await consuming.store.asset_events_of_run("consumer", run.run_id)) == 1


async def test_several_schedulers_consume_each_event_once(home: Path, pg_schema_url: str) -> None:
    rounds = 6
    async with (
        Orchestrator([producer(), consumer()], store=pg_schema_url, home=home,
                     triggerer=False) as first,
        Orchestrator([consumer()], store=pg_schema_url, home=home, triggerer=False) as second,
        Orchestrator([consumer()], store=pg_schema_url, home=home, triggerer=False) as third,
    ):
        for _ in range(rounds):
            await (await first.trigger("producer")).wait(timeout=30)
            for o in (second, third):
                o.scheduler.wake()  # all three race for the same queued events

        async def all_consumed() -> bool:
            runs = await first.store.list_runs("consumer")
            queued = await first.store.queued_asset_events()
            return not queued and bool(runs) and all(r.state.finished for r in runs)

        await until(all_consumed)
        consumed: Counter[int] = Counter()
        for run in await first.store.list_runs("consumer"):
            consumed.update(e.id for e in await first.store.asset_events_of_run("consumer", run.run_id))
        produced = {e.id for e in await first.store.list_asset_events(RAW.uri)}
        assert len(produced) == rounds
        assert set(consumed) == produced
        assert set(consumed.values()) == {1}  # no event went to two runs


async def test_two_triggerers_run_a_watcher_once(home: Path, pg_schema_url: str) -> None:
    from aflow import AssetWatcher
    from triggers.webhook import WebhookTrigger

    hooked = Asset("webhook://orders", watchers=[AssetWatcher("orders", WebhookTrigger("orders"))])
    with DAG("on_order", schedule=[hooked], start_date=START) as dag:
        PythonOperator(task_id="read", python_callable=lambda: None)
    async with (
        Orchestrator([dag], store=pg_schema_url, home=home) as first,
        Orchestrator([dag], store=pg_schema_url, home=home) as second,
    ):
        async def claimed() -> bool:
            return all(w.owner for w in await first.store.list_asset_watchers())

        await until(claimed)
        for n in range(5):
            await first.deliver_webhook("orders", {"n": n})
            second.triggerer.inbox.notify("orders")  # whichever runs the watcher hears it

        async def five() -> list[Any] | None:
            events = await first.store.list_asset_events(hooked.uri)
            return events if len(events) >= 5 else None

        events = await until(five)
        [watcher] = await first.store.list_asset_watchers()
        assert watcher.owner in (first.process_id, second.process_id)
        running = [o for o in (first, second) if o.triggerer.asset_watchers.running]
        assert len(running) == 1
        assert sorted(e.extra["payload"]["n"] for e in events) == [0, 1, 2, 3, 4]
