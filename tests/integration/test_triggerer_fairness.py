"""Several triggerers on one PostgreSQL share a burst of deferrals evenly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from aflow.orchestrator import Orchestrator
from aflow.runtime.triggerer import PEERS_REREAD_S
from aflow.states import DagRunState, RunType, TaskState
from aflow.store.factory import open_store_url
from aflow.store.records import DagRunRecord, TaskInstanceRecord, TriggerRecord

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

TRIGGERS = 1200  # more than one claim batch (1,000): one triggerer alone would take it all


async def _burst_of_deferrals(url: str, n: int) -> None:
    """n deferred TIs of one run, their trigger rows committed within moments."""
    now = datetime.now(UTC)
    run = DagRunRecord("burst", "r1", RunType.MANUAL, DagRunState.RUNNING, now, now, now)
    async with open_store_url(url) as store:
        await store.create_run(run, [])
        async with anyio.create_task_group() as tg:  # concurrent: group-committed together
            for i in range(n):
                ti = TaskInstanceRecord("burst", "r1", f"s{i}", state=TaskState.DEFERRED,
                                        try_number=1, next_method="execute_complete")
                trigger = TriggerRecord(
                    classpath="triggers.temporal.DateTimeTrigger",
                    kwargs={"moment": (now + timedelta(days=1)).isoformat()},
                    dag_id="burst", run_id="r1", task_id=ti.task_id, try_number=1, created_at=now,
                )
                tg.start_soon(store.defer_ti, ti, trigger)


async def test_two_triggerers_split_a_burst_of_deferrals(tmp_path: Path, pg_schema_url: str) -> None:
    def triggerer(name: str) -> Orchestrator:
        home = tmp_path / name
        home.mkdir()
        return Orchestrator([], store=pg_schema_url, home=home, schedule=False, claim=False)

    async with triggerer("t1") as t1, triggerer("t2") as t2:
        assert t1.triggerer is not None and t2.triggerer is not None
        await anyio.sleep(PEERS_REREAD_S * 1.5)  # both have looked for peers since both began
        await _burst_of_deferrals(pg_schema_url, TRIGGERS)
        with anyio.fail_after(60):
            while len(t1.triggerer.running) + len(t2.triggerer.running) < TRIGGERS:  # noqa: ASYNC110 - polls two triggerers' claims
                await anyio.sleep(0.05)
        shares = sorted([len(t1.triggerer.running), len(t2.triggerer.running)])
        assert sum(shares) == TRIGGERS
        # Even within a claim share or so: neither took the burst alone.
        assert shares[0] >= TRIGGERS * 0.3, shares
