"""Acceptance: `aflow triggers list` shows parked triggers, not the rows a clear or mark
leaves for the process driving a run (Store.change_for_owner)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import anyio

from aflow.states import DagRunState, RunType, TaskState
from aflow.store.records import DagRunRecord, TaskInstanceRecord, TriggerRecord
from aflow.store.sqlite import SqliteStore
from tests.acceptance.conftest import CLI

T0 = datetime.now(UTC)


async def seed(url: str) -> None:
    run = DagRunRecord(
        dag_id="d", run_id="r1", run_type=RunType.MANUAL, state=DagRunState.RUNNING,
        logical_date=T0, data_interval_start=T0, data_interval_end=T0, created_at=T0,
        start_date=T0, owner="elsewhere:1", lease_until=T0 + timedelta(days=1),
    )
    ended = TaskInstanceRecord(dag_id="d", run_id="r1", task_id="a", state=TaskState.FAILED,
                               try_number=1, max_tries=1, start_date=T0, end_date=T0)
    async with SqliteStore(url) as store:
        await store.create_run(run, [])
        await store.finish_ti(ended)
        waiting = TaskInstanceRecord(dag_id="d", run_id="r1", task_id="w",
                                     state=TaskState.DEFERRED, try_number=1, max_tries=1)
        await store.defer_ti(waiting, TriggerRecord(
            classpath="triggers.temporal.DateTimeTrigger", kwargs={}, dag_id="d", run_id="r1",
            task_id="w", try_number=1, created_at=T0))
        await store.change_for_owner(
            "d", "r1", [dataclasses.replace(ended, state=TaskState.NONE)], now=T0)
        assert len(await store.list_triggers()) == 2


def test_triggers_list_leaves_out_changes_by_hand(cli: CLI) -> None:
    anyio.run(seed, f"sqlite:///{cli.home / 'aflow.db'}")
    rows = cli.json("triggers", "list")
    assert [(r["classpath"], r["waiting"], r["fired"]) for r in rows] == [
        ("triggers.temporal.DateTimeTrigger", 1, 0)]
