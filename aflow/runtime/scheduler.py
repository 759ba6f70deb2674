"""The scheduler: creates due runs from each DAG's timetable (and, for DAGs scheduled on
assets, from their queued asset events: see aflow.runtime.asset_runs), claims runs that
have no live owner, and holds (renews) its leases on the runs it drives.

Ownership: a run is driven by the one process that holds its lease. Leases are renewed
every `lease_s / 3`; a process that dies stops renewing and its runs are adopted by any
scheduler once the lease expires — at once on this host when its pid is gone. A renewal
that finds a run owned by someone else (this process stalled past its lease and was
taken over) stops driving that run here.

Claiming: a pass claims runs when the store announces one (Store.listen: LISTEN/NOTIFY
on PostgreSQL), when a run ends here, and on a periodic sweep: every `poll_s` (1 s), or
every `sweep_s` (5 s) while the store's notifications are live. Spreading across
schedulers: alone, a scheduler claims up to `claim_batch` runs per transaction; while
other schedulers are alive (a heartbeat younger than a lease), it claims one run at a
time and first waits `claim_stagger_s` (10 ms) per run it already drives (at most
0.5 s), so the least loaded scheduler reaches a new run first. The claim itself locks
rows with SKIP LOCKED, so two schedulers never take the same run.

Orphans: a run whose DAG no scheduler defines any more is claimed by no one (claims are
limited to the DAGs a scheduler has loaded). Each scheduler re-records its DAGs every
`orphan_grace_s / 4` (at most every 60 s; so keep the grace above a minute and alike on
every scheduler); an unfinished run with no live owner whose DAG is not loaded here
and has not been recorded by any scheduler for `orphan_grace_s` (600 s, as Airflow's
`dag_stale_not_seen_duration`) is failed with the note "DAG <id> is no longer defined"
and its unfinished task instances are marked `removed`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from aflow.authoring.dag import DAG
from aflow.clock import Clock
from aflow.exceptions import RunAlreadyExists, StoreError
from aflow.runtime.asset_runs import AssetRuns
from aflow.runtime.dag_loader import DagBag
from aflow.runtime.peers import LivePeers
from aflow.runtime.run_driver import RunDriver, RunState
from aflow.runtime.run_factory import manual_interval, new_run, run_id_for
from aflow.runtime.timetable import DagRunInfo, timetable_for
from aflow.states import FINISHED_TASK_STATES, DagRunState, RunType, TaskState
from aflow.store.base import Store
from aflow.store.records import DagRecord, DagRunRecord, TaskInstanceRecord

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 30.0
DEFAULT_POLL_S = 1.0
DEFAULT_SWEEP_S = 5.0
DEFAULT_ORPHAN_GRACE_S = 600.0
DEFAULT_CLAIM_BATCH = 100
CLAIM_STAGGER_S = 0.01
MAX_CLAIM_STAGGER_S = 0.5
ORPHAN_CHECK_MAX_S = 60.0  # DAGs are re-recorded at least this often

_UNFINISHED_RUNS = (DagRunState.QUEUED, DagRunState.RUNNING)


def dag_records(dags: Iterable[DAG], now: datetime) -> list[DagRecord]:
    """Rows that record loaded DAGs (and that they were seen loaded at `now`)."""
    return [
        DagRecord(
            dag_id=d.dag_id,
            fileloc=d.fileloc,
            structure=d.structure(),
            is_paused=bool(d.is_paused_upon_creation),
            updated_at=now,
        )
        for d in dags
    ]


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
        lease_s: float = DEFAULT_LEASE_S,
        poll_s: float = DEFAULT_POLL_S,
        sweep_s: float = DEFAULT_SWEEP_S,
        orphan_grace_s: float = DEFAULT_ORPHAN_GRACE_S,
        create_scheduled_runs: bool = True,
        claim_runs: bool = True,
        drive_created_runs: bool = True,
        claim_dag_ids: Iterable[str] | None = None,
        claim_batch: int = DEFAULT_CLAIM_BATCH,
        claim_stagger_s: float = CLAIM_STAGGER_S,
    ) -> None:
        self.store = store
        self.clock = clock
        self.driver = driver
        self._dagbag = dagbag
        self.owner = owner
        self.hostname = hostname
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.sweep_s = sweep_s
        self.orphan_grace_s = orphan_grace_s
        self.create_scheduled_runs = create_scheduled_runs
        self.claim_runs = claim_runs
        self.drive_created_runs = drive_created_runs
        # Claim only the runs of these DAGs (a backfill process); None: of every loaded DAG.
        # A scheduler limited so fails no orphans: that is the full schedulers' duty.
        self.claim_dag_ids = frozenset(claim_dag_ids) if claim_dag_ids is not None else None
        self.claim_batch = claim_batch
        self.claim_stagger_s = claim_stagger_s
        self.claim_passes = 0  # how many claim passes ran (for tests and stats)
        self._claim_now = anyio.Event()
        self._admit_lock = anyio.Lock()
        self._peers = LivePeers(
            store, clock, kind="scheduler", me=owner, fresh_s=lease_s, reread_s=lease_s / 3
        )
        self._tg: TaskGroup | None = None
        self._timetables: dict[str, tuple[DAG, anyio.CancelScope]] = {}
        driver.on_run_finished.append(self._on_run_finished)
        self.assets = AssetRuns(self)  # runs of DAGs scheduled on assets
        driver.on_asset_events.append(self.assets.wake)

    @property
    def dagbag(self) -> DagBag:
        return self._dagbag()

    def lease_until(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.lease_s)

    # -- main loops -------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        subscriptions: list[Callable[[], None]] = []
        try:
            if self.claim_runs:
                # Wake-ups from other processes (a run created by the CLI, a trigger fired
                # by a triggerer elsewhere); before the first pass, so none falls between.
                for channel in (Store.RUNS_CHANNEL, Store.TRIGGERS_FIRED_CHANNEL):
                    subscriptions.append(await self.store.listen(channel, self._notified))
                await self._reap_dead_local_owners()
                await self.claim_once()
            else:
                # The runs it drives (created here) still get changes made by hand in
                # another process, as fired trigger rows (Store.change_for_owner).
                subscriptions.append(
                    await self.store.listen(Store.TRIGGERS_FIRED_CHANNEL, self._notified)
                )
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._lease_loop)
                if self.claim_runs:
                    tg.start_soon(self._claim_loop)
                    if self.claim_dag_ids is None:
                        tg.start_soon(self._orphan_loop)
                else:
                    tg.start_soon(self._fired_loop)
                if self.create_scheduled_runs:
                    tg.start_soon(self.assets.loop)
                self._tg = tg
                self.sync_timetables()
                task_status.started()
        finally:
            self._tg = None
            for unsubscribe in subscriptions:
                unsubscribe()

    def _notified(self, payload: str) -> None:
        self.wake()

    async def _lease_loop(self) -> None:
        while True:
            await anyio.sleep(self.lease_s / 3)
            try:
                held = await self.store.renew_leases(self.owner, self.lease_until())
                await self.store.heartbeat(self.owner, self.clock.now())
                if held < len(self.driver.runs):
                    await self._drop_lost_runs()
            except StoreError:
                log.exception("could not renew leases; retrying")

    async def _drop_lost_runs(self) -> None:
        """Fewer runs renewed than driven here: a run that ended meanwhile, or one another
        scheduler took over after this process missed its lease. Stop driving the latter."""
        for key in list(self.driver.runs):
            record = await self.store.get_run(*key)
            if record is None or (
                record.state in _UNFINISHED_RUNS and record.owner != self.owner
            ):
                log.error(
                    "run %s of %s is now driven by %s (this process missed its lease of "
                    "%gs): no longer driving it here",
                    key[1], key[0], record.owner if record else "no one", self.lease_s,
                )
                self.driver.abandon(key)

    async def _claim_loop(self) -> None:
        while True:
            # Slow safety sweep while other processes' notifications arrive, else a poll.
            wait = self.sweep_s if self.store.notifications_live else self.poll_s
            with anyio.move_on_after(wait):
                await self._claim_now.wait()
            self._claim_now = anyio.Event()
            try:
                await self._reap_dead_local_owners()
                await self.resume_fired()
                await self.claim_once()
            except StoreError:
                log.exception("claiming runs failed; retrying")

    async def _fired_loop(self) -> None:
        """Without claiming: resume the TIs of driven runs whose triggers fired in another
        process, and apply the changes other processes made by hand in those runs."""
        while True:
            wait = self.sweep_s if self.store.notifications_live else self.poll_s
            with anyio.move_on_after(wait):
                await self._claim_now.wait()
            self._claim_now = anyio.Event()
            try:
                await self.resume_fired()
            except StoreError:
                log.exception("looking for fired triggers failed; retrying")

    def wake(self) -> None:
        """Claim at once (e.g. a run of a DAG at max_active_runs ended), and see whether
        queued asset events now start a run."""
        self._claim_now.set()
        self.assets.wake()

    async def claim_once(self) -> int:
        """One claim pass: claim and start runs until none is left for this scheduler.
        Returns how many it started."""
        self.claim_passes += 1
        bag = self.dagbag
        dag_ids = set(bag.dags)
        if self.claim_dag_ids is not None:
            dag_ids &= self.claim_dag_ids
        started = 0
        while dag_ids:
            batch = self.claim_batch
            if await self._peers.count():
                batch = 1
                await self._let_less_loaded_peers_first()
            claimed = await self.store.claim_runs(
                self.owner, self.clock.now(), self.lease_until(), batch, dag_ids=dag_ids
            )
            for run in claimed:
                if await self._admit(bag.dags[run.dag_id], run):
                    started += 1
                else:
                    dag_ids.discard(run.dag_id)  # at max_active_runs: its other runs wait too
            if len(claimed) < batch:
                break
        return started

    async def _let_less_loaded_peers_first(self) -> None:
        held = len(self.driver.runs)
        if held:
            await anyio.sleep(min(held * self.claim_stagger_s, MAX_CLAIM_STAGGER_S))

    async def _admit(
        self,
        dag: DAG,
        run: DagRunRecord,
        tis: list[TaskInstanceRecord] | None = None,
        *,
        check_max_active_runs: bool = True,
    ) -> bool:
        """Drive a claimed run, unless it is queued and its DAG is at max_active_runs.
        `tis` are the run's TI rows when the caller has them (a run it just created)."""
        if run.state is DagRunState.QUEUED and check_max_active_runs:
            # One admission at a time in this process: a claim pass and a trigger() must
            # not both see room for the last run allowed (adopt commits it as running).
            async with self._admit_lock:
                active = await self.store.count_runs(dag.dag_id, states=[DagRunState.RUNNING])
                if active >= dag.max_active_runs:
                    await self.store.release_runs(self.owner, [(run.dag_id, run.run_id)])
                    return False
                if tis is None:
                    tis = await self.store.get_tis(run.dag_id, run.run_id)
                await self.driver.adopt(dag, run, tis)
                return True
        if tis is None:
            tis = await self.store.get_tis(run.dag_id, run.run_id)
        await self.driver.adopt(dag, run, tis)
        return True

    async def drive_run(self, dag: DAG, run_id: str) -> bool:
        """Claim one run that has no live owner (e.g. one a backfill has just reset) and
        drive it here, whatever the DAG's max_active_runs: the caller keeps a limit of
        its own. False if another process holds it (or it has ended)."""
        for run in await self.store.claim_runs(
            self.owner, self.clock.now(), self.lease_until(), 1, dag_ids=[dag.dag_id],
            run_id=run_id,
        ):
            return await self._admit(dag, run, check_max_active_runs=False)
        return False

    async def admit_new(self, dag: DAG, run: DagRunRecord, tis: list[TaskInstanceRecord]) -> bool:
        """Drive a run this scheduler has just created and owns (see `_admit`)."""
        return await self._admit(dag, run, tis)

    async def resume_fired(self) -> int:
        """Resume deferred TIs of owned runs whose triggers fired in another process (a
        triggerer in this process hands them over at once instead)."""
        if not self.driver.runs:
            return 0
        fired = await self.store.fired_triggers(list(self.driver.runs))
        return sum(1 for trigger in fired if self.driver.resume(trigger))

    def _on_run_finished(self, rs: RunState) -> None:
        self.wake()

    # -- orphans ---------------------------------------------------------------------------
    async def record_dags(self) -> None:
        """Record this scheduler's DAGs as loaded now (see orphans in the module doc)."""
        records = dag_records(self.dagbag.dags.values(), self.clock.now())
        if records:
            await self.store.upsert_dags(records)

    async def _orphan_loop(self) -> None:
        period = min(max(1.0, self.orphan_grace_s / 4), ORPHAN_CHECK_MAX_S)
        while True:
            await anyio.sleep(period)
            try:
                await self.record_dags()
                await self.fail_orphans()
            except StoreError:
                log.exception("checking for runs of vanished DAGs failed; retrying")

    async def fail_orphans(self) -> int:
        """Fail unfinished runs whose DAG no scheduler defines any more (see the module
        doc); returns how many."""
        now = self.clock.now()
        stale_before = now - timedelta(seconds=self.orphan_grace_s)
        loaded = self.dagbag.dags
        candidates = {
            r.dag_id
            for r in await self.store.list_runs(states=_UNFINISHED_RUNS, limit=10_000)
            if r.dag_id not in loaded
            and (r.owner is None or r.lease_until is None or r.lease_until < now)
            and (r.created_at is None or r.created_at < stale_before)
        }
        gone = []
        for dag_id in sorted(candidates):
            record = await self.store.get_dag(dag_id)
            if record is None or record.updated_at is None or record.updated_at < stale_before:
                gone.append(dag_id)
        if not gone:
            return 0
        # Claimed first, so that two schedulers never fail the same run at once.
        claimed = await self.store.claim_runs(
            self.owner, now, self.lease_until(), 10_000, dag_ids=gone
        )
        orphans = [r for r in claimed if r.created_at is None or r.created_at < stale_before]
        for run in orphans:
            await self._fail_orphan(run, now)
        young = [(r.dag_id, r.run_id) for r in claimed if r not in orphans]
        if young:  # created within the grace period: their DAG may still come (back)
            await self.store.release_runs(self.owner, young)
        return len(orphans)

    async def _fail_orphan(self, run: DagRunRecord, now: datetime) -> None:
        note = (
            f"DAG {run.dag_id} is no longer defined: no scheduler has loaded it for "
            f"{self.orphan_grace_s:g}s (its file was removed or no longer defines it)"
        )
        unfinished = [
            t for t in await self.store.get_tis(run.dag_id, run.run_id)
            if t.state not in FINISHED_TASK_STATES and t.state is not TaskState.NONE
        ]
        for ti in unfinished:
            if ti.state is TaskState.DEFERRED:
                await self.store.delete_trigger(ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        if unfinished:
            await self.store.save_tis(
                [
                    dataclasses.replace(t, state=TaskState.REMOVED, end_date=now, error=note)
                    for t in unfinished
                ]
            )
        await self.store.save_run(
            dataclasses.replace(
                run,
                state=DagRunState.FAILED,
                start_date=run.start_date or now,
                end_date=now,
                note=note,
            )
        )
        await self.store.release_runs(self.owner, [(run.dag_id, run.run_id)])
        log.error("run %s failed: %s", run.run_id, note)

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
    def sync_timetables(self) -> None:
        """One timetable loop per scheduled DAG of the DagBag as it is now: start loops for
        new DAGs, stop those of DAGs gone, restart those of DAGs replaced by a new version
        (a restarted loop resumes after the DAG's latest scheduled run)."""
        if self._tg is None or not self.create_scheduled_runs:
            return
        dags = self.dagbag.dags
        for dag_id, (dag, scope) in list(self._timetables.items()):
            if dags.get(dag_id) is not dag:
                scope.cancel()
                del self._timetables[dag_id]
        for dag_id, dag in dags.items():
            if dag.schedule is not None and dag_id not in self._timetables:
                scope = anyio.CancelScope()
                self._timetables[dag_id] = (dag, scope)
                self._tg.start_soon(self._timetable_scope, dag, scope)

    async def _timetable_scope(self, dag: DAG, scope: anyio.CancelScope) -> None:
        with scope:  # a loop that ends (no next run) keeps its entry: nothing to restart
            await self._timetable_loop(dag)

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
        check_max_active_runs: bool = True,
    ) -> DagRunRecord:
        """Create and commit a run owned by this scheduler, then start driving it (at
        once unless the DAG is at max_active_runs; a caller with a limit of its own, a
        backfill, passes `check_max_active_runs=False`). A scheduler that does not drive
        the runs it creates (a web server's) commits it unowned instead, for any scheduler
        to claim (PostgreSQL tells them at once; on SQLite their next sweep finds it)."""
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
            owner=self.owner if self.drive_created_runs else None,
            lease_until=self.lease_until() if self.drive_created_runs else None,
        )
        await self.store.create_run(run, [])  # TI rows are written as they first change
        if not self.drive_created_runs:
            return dataclasses.replace(run)
        if not await self._admit(dag, run, tis, check_max_active_runs=check_max_active_runs):
            log.info("run %s of %s is queued: max_active_runs reached", run.run_id, dag.dag_id)
        return dataclasses.replace(run)
