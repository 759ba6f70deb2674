"""Several triggerers on one store share a burst of deferrals evenly.

On SQLite, where the triggerers find new work by polling (PostgreSQL's NOTIFY wakes them
all at once, which splits a burst by itself): whichever polls first would otherwise take
the whole burst."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from aflow.orchestrator import Orchestrator
from aflow.states import DagRunState, RunType, TaskState
from aflow.store.factory import open_store_url
from aflow.store.records import DagRunRecord, TaskInstanceRecord, TriggerRecord

pytestmark = pytest.mark.anyio

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


async def test_two_triggerers_split_a_burst_of_deferrals(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"

    def triggerer(name: str) -> Orchestrator:
        home = tmp_path / name
        home.mkdir()
        return Orchestrator([], store=url, home=home, schedule=False, claim=False)

    async with triggerer("t1") as t1, triggerer("t2") as t2:
        assert t1.triggerer is not None and t2.triggerer is not None
        with anyio.fail_after(30):  # each knows of the other before the burst
            while (await t1.triggerer.peers.count(), await t2.triggerer.peers.count()) != (1, 1):  # noqa: ASYNC110 - polls the process table
                await anyio.sleep(0.1)
        await _burst_of_deferrals(url, TRIGGERS)
        with anyio.fail_after(60):
            while len(t1.triggerer.running) + len(t2.triggerer.running) < TRIGGERS:  # noqa: ASYNC110 - polls two triggerers' claims
                await anyio.sleep(0.05)
        shares = sorted([len(t1.triggerer.running), len(t2.triggerer.running)])
        assert sum(shares) == TRIGGERS
        # Even within a claim share or so: neither took the burst alone.
        assert shares[0] >= TRIGGERS * 0.3, shares
