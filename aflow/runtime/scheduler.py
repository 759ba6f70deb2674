"""The scheduler: creates due runs from each DAG's timetable, claims runs that have no
live owner, and holds (renews) its leases on the runs it drives.

Ownership: a run is driven by the one process that holds its lease. Leases are renewed
every `lease_s / 3`; a process that dies stops renewing and its runs are adopted by any
scheduler once the lease expires — at once on this host when its pid is gone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
from anyio.abc import TaskStatus

from aflow.authoring.dag import DAG
from aflow.clock import Clock
from aflow.exceptions import RunAlreadyExists, StoreError
from aflow.runtime.dag_loader import DagBag
from aflow.runtime.run_driver import RunDriver, RunState
from aflow.runtime.run_factory import manual_interval, new_run, run_id_for
from aflow.runtime.timetable import DagRunInfo, timetable_for
from aflow.states import DagRunState, RunType
from aflow.store.base import Store
from aflow.store.records import DagRunRecord, TaskInstanceRecord

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Scheduler:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        driver: RunDriver,
        dagbag: Callable[[], DagBag],
        owner: str,
        hostname: str,
        lease_s: float = 30.0,
        poll_s: float = 1.0,
        create_scheduled_runs: bool = True,
        claim_runs: bool = True,
        claim_batch: int = 100,
    ) -> None:
        self.store = store
        self.clock = clock
        self.driver = driver
        self._dagbag = dagbag
        self.owner = owner
        self.hostname = hostname
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.create_scheduled_runs = create_scheduled_runs
        self.claim_runs = claim_runs
        self.claim_batch = claim_batch
        self._claim_now = anyio.Event()
        driver.on_run_finished.append(self._on_run_finished)

    @property
    def dagbag(self) -> DagBag:
        return self._dagbag()

    def lease_until(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.lease_s)

    # -- main loops -------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if self.claim_runs:
            await self._reap_dead_local_owners()
            await self.claim_once()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._lease_loop)
            if self.claim_runs:
                tg.start_soon(self._claim_loop)
            if self.create_scheduled_runs:
                for dag in self.dagbag.dags.values():
                    if dag.schedule is not None:
                        tg.start_soon(self._timetable_loop, dag)
            task_status.started()

    async def _lease_loop(self) -> None:
        while True:
            await anyio.sleep(self.lease_s / 3)
            try:
                await self.store.renew_leases(self.owner, self.lease_until())
                await self.store.heartbeat(self.owner, self.clock.now())
            except StoreError:
                log.exception("could not renew leases; retrying")

    async def _claim_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.poll_s):
                await self._claim_now.wait()
            self._claim_now = anyio.Event()
            try:
                await self._reap_dead_local_owners()
                await self.claim_once()
                await self.resume_fired()
            except StoreError:
                log.exception("claiming runs failed; retrying")

    def wake(self) -> None:
        """Claim at once (e.g. a run of a DAG at max_active_runs ended)."""
        self._claim_now.set()

    async def claim_once(self) -> int:
        bag = self.dagbag
        if not bag.dags:
            return 0
        claimed = await self.store.claim_runs(
            self.owner, self.clock.now(), self.lease_until(), self.claim_batch, dag_ids=bag.dags
        )
        started = 0
        for run in claimed:
            if await self._admit(bag.dags[run.dag_id], run):
                started += 1
        return started

    async def _admit(
        self, dag: DAG, run: DagRunRecord, tis: list[TaskInstanceRecord] | None = None
    ) -> bool:
        """Drive a claimed run, unless it is queued and its DAG is at max_active_runs.
        `tis` are the run's TI rows when the caller has them (a run it just created)."""
        if run.state is DagRunState.QUEUED:
            active = await self.store.list_runs(
                dag.dag_id, states=[DagRunState.RUNNING], limit=dag.max_active_runs
            )
            if len(active) >= dag.max_active_runs:
                await self.store.release_runs(self.owner, [(run.dag_id, run.run_id)])
                return False
        if tis is None:
            tis = await self.store.get_tis(run.dag_id, run.run_id)
        await self.driver.adopt(dag, run, tis)
        return True

    async def resume_fired(self) -> int:
        """Resume deferred TIs of owned runs whose triggers fired in another process (a
        triggerer in this process hands them over at once instead)."""
        if not self.driver.runs:
            return 0
        fired = await self.store.fired_triggers(list(self.driver.runs))
        return sum(1 for trigger in fired if self.driver.resume(trigger))

    def _on_run_finished(self, rs: RunState) -> None:
        self.wake()

    async def _reap_dead_local_owners(self) -> None:
        for proc in await self.store.list_processes():
            if proc.process_id == self.owner or proc.hostname != self.hostname:
                continue
            if not pid_alive(proc.pid):
                n = await self.store.expire_leases_of(proc.process_id)
                # its triggerer's triggers too (owned by this id): any triggerer claims them
                # now instead of after their lease; once the record goes, nothing would
                await self.store.release_triggers(proc.process_id)
                await self.store.unregister_process(proc.process_id)
                if n:
                    log.warning(
                        "process %s (pid %d) is gone; its %d run(s) are adopted",
                        proc.process_id,
                        proc.pid,
                        n,
                    )

    # -- timetables ------------------------------------------------------------------------
    async def _timetable_loop(self, dag: DAG) -> None:
        timetable = timetable_for(dag)
        assert timetable is not None
        while True:
            try:
                last_run = await self.store.latest_run(dag.dag_id, RunType.SCHEDULED.value)
                last = (
                    DagRunInfo(
                        logical_date=last_run.logical_date,
                        data_interval_start=last_run.data_interval_start or last_run.logical_date,
                        data_interval_end=last_run.data_interval_end or last_run.logical_date,
                        run_after=last_run.data_interval_end or last_run.logical_date,
                    )
                    if last_run
                    else None
                )
                info = timetable.next_run(last, now=self.clock.now(), catchup=dag.catchup)
            except StoreError:
                log.exception("scheduling %s failed; retrying", dag.dag_id)
                await anyio.sleep(self.poll_s)
                continue
            if info is None:
                return
            await self.clock.sleep_until(info.run_after)
            record = await self.store.get_dag(dag.dag_id)
            if record is not None and record.is_paused:
                await anyio.sleep(self.poll_s)
                continue
            try:
                await self.create_run(
                    dag,
                    run_type=RunType.SCHEDULED,
                    logical_date=info.logical_date,
                    data_interval=(info.data_interval_start, info.data_interval_end),
                    triggered_by="scheduler",
                )
            except RunAlreadyExists:
                pass  # another scheduler created it: the unique run id de-duplicates

    # -- creating runs ---------------------------------------------------------------------
    async def create_run(
        self,
        dag: DAG,
        *,
        run_type: RunType,
        logical_date: datetime | None = None,
        data_interval: tuple[datetime, datetime] | None = None,
        conf: dict[str, Any] | None = None,
        run_id: str | None = None,
        triggered_by: str | None = None,
    ) -> DagRunRecord:
        """Create and commit a run owned by this scheduler, then start driving it."""
        now = self.clock.now()
        logical_date = logical_date or now
        if data_interval is None:
            data_interval = manual_interval(dag, logical_date)
        run, tis = new_run(
            dag,
            run_type=run_type,
            logical_date=logical_date,
            now=now,
            data_interval=data_interval,
            conf=conf,
            run_id=run_id or run_id_for(run_type, logical_date),
            triggered_by=triggered_by,
            owner=self.owner,
            lease_until=self.lease_until(),
        )
        await self.store.create_run(run, [])  # TI rows are written as they first change
        if not await self._admit(dag, run, tis):
            log.info("run %s of %s is queued: max_active_runs reached", run.run_id, dag.dag_id)
        return dataclasses.replace(run)
