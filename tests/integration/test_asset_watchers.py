"""AssetWatchers end to end, in one process on a real SQLite file: the triggerer runs the
watcher's trigger (no task instance, no task polling) and each event starts a run of
the DAG scheduled on the asset: a file landing in a real directory (once per new file),
a webhook delivery (once per delivery), a SQL condition (once per time it turns true)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, Asset, AssetWatcher, Orchestrator, PythonOperator
from aflow.states import RunType
from aflow.store.records import AssetEventRecord
from triggers.file import FileTrigger
from triggers.sql import SqlTrigger
from triggers.webhook import WebhookTrigger

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


def consumer(asset: Asset, seen: list[Any]) -> DAG:
    with DAG("consumer", schedule=[asset], start_date=START) as dag:

        def read(triggering_asset_events: Any = None) -> None:
            seen.extend(e.extra for e in triggering_asset_events[asset.uri])

        PythonOperator(task_id="read", python_callable=read)
    return dag


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 20) -> Any:  # noqa: ASYNC109 - a wait limit
    with anyio.fail_after(timeout):
        while True:
            value = await check()
            if value:
                return value
            await anyio.sleep(0.02)


async def events_of(o: Orchestrator, uri: str, n: int) -> list[AssetEventRecord]:
    async def check() -> list[AssetEventRecord] | None:
        events = await o.store.list_asset_events(uri)
        return events if len(events) >= n else None

    return list(reversed(await until(check)))


async def all_runs_done(o: Orchestrator, dag_id: str) -> list[Any]:
    async def check() -> list[Any] | None:
        runs = await o.store.list_runs(dag_id)
        queued = await o.store.queued_asset_events([dag_id])
        return runs if runs and not queued and all(r.state.finished for r in runs) else None

    return await until(check)


async def test_a_file_landing_starts_a_run_once_per_new_file(home: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    asset = Asset(
        "file:///landing",
        watchers=[AssetWatcher("csv", FileTrigger(str(landing / "*.csv"), poke_interval=0.1))],
    )
    seen: list[Any] = []
    async with Orchestrator([consumer(asset, seen)], home=home) as o:
        [watcher] = await o.store.list_asset_watchers()
        (landing / "a.csv").write_text("1\n")
        [first] = await events_of(o, asset.uri, 1)
        assert first.extra == {"path": str(landing / "a.csv")}
        assert first.source_watcher == "csv"
        [run] = await all_runs_done(o, "consumer")
        assert run.run_type is RunType.EVENT and run.state.value == "success"
        (landing / "b.csv").write_text("2\n")
        (landing / "ignored.txt").write_text("not a csv\n")
        events = await events_of(o, asset.uri, 2)
        await all_runs_done(o, "consumer")
        # a.csv is not reported again; b.csv once
        assert [e.extra["path"] for e in events] == [str(landing / "a.csv"), str(landing / "b.csv")]
        # the wait is the triggerer's: no task deferred or polled for it
        assert await o.store.list_triggers() == []
        assert watcher.owner is None or watcher.owner == o.process_id
        [row] = await o.store.list_asset_watchers()
        assert row.owner == o.process_id
        assert sorted(row.kwargs["ignore"]) == [str(landing / "a.csv"), str(landing / "b.csv")]
    assert [s["path"] for s in seen] == [str(landing / "a.csv"), str(landing / "b.csv")]


async def test_a_webhook_delivery_starts_a_run(home: Path) -> None:
    asset = Asset("webhook://orders", watchers=[AssetWatcher("orders", WebhookTrigger("orders"))])
    seen: list[Any] = []
    async with Orchestrator([consumer(asset, seen)], home=home) as o:
        await o.deliver_webhook("orders", {"order": 1})
        await events_of(o, asset.uri, 1)
        await all_runs_done(o, "consumer")
        await o.deliver_webhook("orders", {"order": 2})
        await o.deliver_webhook("other", {"order": 99})  # another key: not this watcher's
        events = await events_of(o, asset.uri, 2)
        await all_runs_done(o, "consumer")
        assert [e.extra["payload"] for e in events] == [{"order": 1}, {"order": 2}]
    assert [s["payload"] for s in seen] == [{"order": 1}, {"order": 2}]


async def test_a_sql_condition_fires_when_it_becomes_true(
    home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triggers.sql")
    db = tmp_path / "flags.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")  # the watcher's reads never block our writes
        conn.execute("CREATE TABLE flag (ready INTEGER)")
        conn.execute("INSERT INTO flag VALUES (0)")

    def set_flag(value: int) -> None:
        with sqlite3.connect(db, timeout=30) as conn:
            conn.execute("UPDATE flag SET ready=?", (value,))

    trigger = SqlTrigger("SELECT ready FROM flag", dsn=f"sqlite:///{db}", poke_interval=0.05,
                         max_interval=0.05)
    asset = Asset("db://flags/ready", watchers=[AssetWatcher("ready", trigger)])
    seen: list[Any] = []
    async with Orchestrator([consumer(asset, seen)], home=home) as o:
        set_flag(1)
        await events_of(o, asset.uri, 1)
        await all_runs_done(o, "consumer")
        # it stays true: no new event until it has been false and turns true again
        set_flag(0)

        async def saw_false() -> bool:
            return "condition no longer met" in caplog.text

        await until(saw_false)
        set_flag(2)
        events = await events_of(o, asset.uri, 2)
        await all_runs_done(o, "consumer")
        # it stayed true for many checks after each edge, yet each edge is one event
        assert len(await o.store.list_asset_events(asset.uri)) == 2
        assert [e.extra for e in events] == [{"value": 1}, {"value": 2}]


WATCHED_DAG = '''
from aflow import DAG, Asset, AssetWatcher, EmptyOperator
from triggers.webhook import WebhookTrigger

with DAG("watched", schedule=[Asset("webhook://orders", watchers=[
        AssetWatcher("hook", WebhookTrigger("{key}"))])]):
    EmptyOperator(task_id="t")
'''


async def test_a_watcher_stops_when_its_dag_changes_or_goes(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    path = folder / "watched.py"
    path.write_text(WATCHED_DAG.format(key="a"))
    async with Orchestrator(folder, home=home) as o:
        assert o.triggerer is not None
        watchers = o.triggerer.asset_watchers

        async def running_version() -> int | None:
            rows = await o.store.list_asset_watchers()
            if len(rows) == 1 and rows[0].id in watchers.running:
                if watchers.running[rows[0].id][0] == rows[0].version:
                    return rows[0].version
            return None

        first = await until(running_version)
        # the file changes the watcher's trigger: the new definition runs instead
        path.write_text(WATCHED_DAG.format(key="b"))

        async def replaced() -> bool:
            version = await running_version()
            return version is not None and version > first

        await until(replaced)
        [row] = await o.store.list_asset_watchers()
        assert row.kwargs == {"key": "b"}
        await o.deliver_webhook("a", {"old": True})  # the old key starts nothing
        await o.deliver_webhook("b", {"new": True})
        [event] = await events_of(o, "webhook://orders", 1)
        assert event.extra == {"key": "b", "payload": {"new": True}, "id": event.extra["id"]}
        # the file goes: the DAG is deactivated and its watcher stops
        path.unlink()

        async def gone() -> bool:
            return not watchers.running and not await o.store.list_asset_watchers()

        await until(gone)
