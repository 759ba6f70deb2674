"""Asset-triggered runs: a DAG scheduled on assets runs when its queued events satisfy
its condition.

Every asset event is queued (by the store, in the transaction that records it) for each
active DAG whose schedule names its asset. A pass looks at the queued events of the DAGs
this scheduler has loaded; for each DAG whose condition they satisfy, and that is neither
paused nor at `max_active_runs` (runs queued or running), it creates ONE run of type
`event` that consumes ALL of the DAG's queued events, in one transaction with the run
(Store.create_asset_run): of several schedulers on one database, one wins and the others
find the events gone. The run sees them as `triggering_asset_events` ({uri: [events]}).

Events that arrive while a DAG is paused, at `max_active_runs`, or whose condition is
not met yet stay queued, never dropped: several events of one asset collapse into the
one run that comes next, which sees them all.

Passes run when a task with outlets succeeds here (a direct wake-up), on the store's
ASSETS_CHANNEL notification from other processes (an event recorded elsewhere), when a
run ends or the scheduler is woken, and on the scheduler's periodic sweep.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import anyio

from aflow.exceptions import RunAlreadyExists, StoreError
from aflow.runtime.run_factory import new_run, run_id_for
from aflow.states import DagRunState, RunType
from aflow.store.base import Store

if TYPE_CHECKING:
    from aflow.runtime.scheduler import Scheduler

log = logging.getLogger(__name__)

_ACTIVE = (DagRunState.QUEUED, DagRunState.RUNNING)


class AssetRuns:
    """The scheduler's part that turns queued asset events into runs."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.store = scheduler.store
        self.passes = 0
        self._now = anyio.Event()

    def wake(self) -> None:
        self._now.set()

    async def loop(self) -> None:
        unsubscribe = await self.store.listen(Store.ASSETS_CHANNEL, lambda _payload: self.wake())
        try:
            while True:
                try:
                    await self.create_due_runs()
                except StoreError:
                    log.exception("creating asset-triggered runs failed; retrying")
                s = self.scheduler
                wait = s.sweep_s if self.store.notifications_live else s.poll_s
                with anyio.move_on_after(wait):
                    await self._now.wait()
                self._now = anyio.Event()
        finally:
            unsubscribe()

    async def create_due_runs(self) -> int:
        """One pass; returns how many runs it created."""
        self.passes += 1
        consumers = {
            dag_id: dag
            for dag_id, dag in self.scheduler.dagbag.dags.items()
            if dag.asset_condition is not None
        }
        if not consumers:
            return 0
        created = 0
        queued = await self.store.queued_asset_events(consumers)
        for dag_id, events in queued.items():
            dag = consumers.get(dag_id)
            if dag is None or dag.asset_condition is None:
                continue
            if not dag.asset_condition.evaluate({e.uri for e in events}):
                continue  # waits for more
            record = await self.store.get_dag(dag_id)
            if record is not None and record.is_paused:
                continue  # stays queued until it is unpaused
            if await self.store.count_runs(dag_id, states=_ACTIVE) >= dag.max_active_runs:
                continue  # stays queued until a run ends
            now = self.scheduler.clock.now()
            run, tis = new_run(
                dag,
                run_type=RunType.EVENT,
                logical_date=now,
                now=now,
                data_interval=(events[0].timestamp, events[-1].timestamp),
                run_id=run_id_for(RunType.EVENT, now),
                triggered_by="assets",
                owner=self.scheduler.owner,
                lease_until=self.scheduler.lease_until(),
            )
            run = dataclasses.replace(run, triggering_asset_events=tuple(events))
            try:
                won = await self.store.create_asset_run(run, [e.id for e in events])
            except RunAlreadyExists:
                self.wake()  # the same instant as another run of it: try again
                continue
            if not won:
                continue  # another scheduler consumed them first
            created += 1
            log.info(
                "run %s of %s created by %d asset event(s)", run.run_id, dag_id, len(events)
            )
            await self.scheduler.admit_new(dag, run, tis)
        return created
