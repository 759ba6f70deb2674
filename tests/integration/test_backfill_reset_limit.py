"""A run that backfill resets (reset_failed) is driven under the backfill's own run limit,
as the runs it creates are, not held back by the DAG's max_active_runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, PythonOperator
from aflow.states import DagRunState
from tests.integration.test_backfill import UTC_START, orchestrator, utc

pytestmark = pytest.mark.anyio


async def test_a_reset_run_runs_beside_the_created_ones_under_the_backfills_limit(
    home: Path,
) -> None:
    """max_active_runs=1 on the DAG, 3 on the backfill: the run of 3 January (failed,
    reset, after those of 1 and 2 January were created) runs at the same time as them."""
    broken = {"yes": True}
    running: set[str] = set()
    peak = {"n": 0}

    async def work(ti: Any) -> None:
        if broken["yes"]:
            raise RuntimeError("fails on purpose")
        running.add(ti.run_id)
        peak["n"] = max(peak["n"], len(running))
        try:
            with anyio.move_on_after(10):
                while len(running) < 3:  # noqa: ASYNC110 - a test's gate
                    await anyio.sleep(0.01)
            await anyio.sleep(0.05)  # the others see all three too
        finally:
            running.discard(ti.run_id)

    with DAG("capped", schedule="@daily", start_date=UTC_START, max_active_runs=1) as dag:
        PythonOperator(task_id="work", python_callable=work)
    async with orchestrator(dag, home) as o:
        first = await o.backfill("capped", utc(2024, 1, 3), utc(2024, 1, 3))
        assert [r.state for r in first.runs] == [DagRunState.FAILED]
        broken["yes"] = False
        second = await o.backfill("capped", utc(2024, 1, 1), utc(2024, 1, 3), reset_failed=True,
                                  max_active_runs=3)
    assert [(r.action, r.state) for r in second.runs] == [
        ("created", DagRunState.SUCCESS), ("created", DagRunState.SUCCESS),
        ("reset", DagRunState.SUCCESS)]
    assert peak["n"] == 3
