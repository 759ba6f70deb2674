"""Backfill in-process on a real SQLite file: which intervals run, existing runs, the
run limit, reset_failed, stopping and resuming, and bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest

from aflow import DAG, BackfillProgress, Orchestrator, PythonOperator
from aflow.exceptions import BackfillError, DagNotFound
from aflow.runtime.backfill import backfill_intervals
from aflow.states import DagRunState, RunType

pytestmark = pytest.mark.anyio

UTC_START = datetime(2024, 1, 1, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def recording_dag(dag_id: str, schedule: Any, *, start: datetime = UTC_START,
                  calls: list[tuple[str, str]] | None = None, **kwargs: Any) -> DAG:
    """a >> b; each task appends (run_id, task_id) to `calls`."""
    calls = calls if calls is not None else []

    def record(ti: Any) -> None:
        calls.append((ti.run_id, ti.task_id))

    with DAG(dag_id, schedule=schedule, start_date=start, **kwargs) as dag:
        PythonOperator(task_id="a", python_callable=record) >> PythonOperator(
            task_id="b", python_callable=record)
    return dag


def orchestrator(dags: Any, home: Path, **kwargs: Any) -> Orchestrator:
    kwargs.setdefault("schedule", False)
    kwargs.setdefault("triggerer", False)
    return Orchestrator(dags, home=home, **kwargs)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


async def test_daily_backfill_runs_each_interval_once(home: Path) -> None:
    calls: list[tuple[str, str]] = []
    dag = recording_dag("daily", "@daily", calls=calls)
    async with orchestrator(dag, home) as o:
        result = await o.backfill("daily", utc(2024, 1, 2), utc(2024, 1, 4))
        runs = await o.store.list_runs("daily")
    assert [r.logical_date for r in result.runs] == [utc(2024, 1, d) for d in (2, 3, 4)]
    assert [(r.action, r.state) for r in result.runs] == [("created", DagRunState.SUCCESS)] * 3
    assert result.ok and not result.interrupted
    assert sorted(r.run_id for r in runs) == [
        f"backfill__2024-01-0{d}T00:00:00+00:00" for d in (2, 3, 4)
    ]
    assert {r.run_type for r in runs} == {RunType.BACKFILL}
    first = min(runs, key=lambda r: r.logical_date)
    assert (first.data_interval_start, first.data_interval_end) == (utc(2024, 1, 2), utc(2024, 1, 3))
    assert sorted(calls) == sorted((r.run_id, t) for r in runs for t in ("a", "b"))
