"""Backfill: run the intervals of a DAG's schedule whose logical dates fall in a range.

    result = await orchestrator.backfill("etl", datetime(2024, 1, 1), datetime(2024, 1, 31))

As `airflow dags backfill` does: every interval of the DAG's timetable whose logical date
(the interval's start) lies in ``[start, end]``, both ends included, gets one run of run
type ``backfill`` with the deterministic run id ``backfill__<logical date in UTC>``, so a
second backfill of the same range recognises the runs of the first. Naive ``start`` and
``end`` are read in the DAG's time zone (its ``start_date``'s, as its cron schedule is).

* **Existing runs.** A logical date that already has a run, of any run type, is not run
  again: an unfinished one is followed to its end, a finished one is reported as it is.
  With ``reset_failed`` a failed run in the range gets its failed task instances cleared
  and runs again (only those, and what they had held back downstream).
* **Limit.** At most ``max_active_runs`` runs of the range (default: the DAG's
  ``max_active_runs``) are unfinished at once; the next interval's run is created when
  one ends, oldest logical date first. The backfill's own limit replaces the DAG's for
  the runs it creates and resets; ``max_active_tasks``, ``parallelism`` and pools apply
  as to any run.
* **Who drives.** Runs created here, and runs reset here, are owned and driven by this
  orchestrator (a reset run unless another process claims it first, between its clear
  and this orchestrator's claim). Runs left unfinished by an interrupted backfill are
  claimed by whichever process claims first (this orchestrator if it claims runs, or an
  ``aflow scheduler`` on the same store); the backfill follows every run through the
  store to its end.
* **Stopping.** Once ``stop`` is set no run is created or reset any more and the call
  returns (``interrupted=True``) without waiting for the runs in flight: leaving the
  orchestrator drains them as usual (running tries get the grace period). Calling
  backfill again over the same range resumes: finished runs are not run again,
  unfinished ones are followed, missing ones are created.

Bad input (an unknown DAG, a DAG without a schedule, ``start`` after ``end``, a range
holding no interval, a limit below 1) raises before anything is created.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Literal

import anyio

from aflow.authoring.dag import DAG
from aflow.exceptions import AflowError, BackfillError, RunAlreadyExists
from aflow.runtime.run_factory import run_id_for
from aflow.runtime.timetable import DagRunInfo, dag_timezone, timetable_for
from aflow.states import DagRunState, RunType, TaskState
from aflow.store.base import Store
from aflow.store.records import DagRunRecord

if TYPE_CHECKING:
    from aflow.orchestrator import Orchestrator

__all__ = [
    "BackfillAction",
    "BackfillProgress",
    "BackfillResult",
    "BackfillRun",
    "backfill_intervals",
    "refresh_result",
    "run_backfill",
]

log = logging.getLogger(__name__)

PROGRESS_POLL_S = 0.5  # the store is re-read (and progress reported) at least this often

# What the backfill did about one interval:
#   created      it created the interval's run
#   resumed      a run of the interval was unfinished when it (or its orchestrator)
#                started: an interrupted backfill's, or one another process was
#                driving; it followed it to its end
#   existing     a run of the interval had finished already: it left it as it was
#   reset        a failed run: its failed task instances were cleared and it ran again
#   not_created  stopped before the interval's turn came
BackfillAction = Literal["created", "resumed", "existing", "reset", "not_created"]


@dataclass(frozen=True, slots=True)
class BackfillRun:
    """One interval of a backfill and the run that covers it (None: not created)."""

    logical_date: datetime
    data_interval_start: datetime
    data_interval_end: datetime
    action: BackfillAction
    run_id: str | None = None
    run_type: RunType | None = None
    state: DagRunState | None = None

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.finished


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    """A backfill as it goes (passed to `on_progress`)."""

    dag_id: str
    total: int  # intervals in the range
    done: int  # of them, with a finished run
    succeeded: int
    failed: int
    active_runs: int  # runs of the range not finished yet
    tasks_running: int  # tries running in those runs
    tasks_failed: int  # failed task instances in those runs (finished runs: see `failed`)
    elapsed_s: float
    eta_s: float | None  # from the pace of the runs finished so far (None: none yet)
    stopping: bool


@dataclass(frozen=True, slots=True)
class BackfillResult:
    """What a backfill did, one entry per interval in logical-date order."""

    dag_id: str
    start: datetime
    end: datetime
    runs: tuple[BackfillRun, ...]
    interrupted: bool
    wall_s: float

    @property
    def succeeded(self) -> list[BackfillRun]:
        return [r for r in self.runs if r.state is DagRunState.SUCCESS]

    @property
    def failed(self) -> list[BackfillRun]:
        return [r for r in self.runs if r.state is DagRunState.FAILED]

    @property
    def unfinished(self) -> list[BackfillRun]:
        """Runs that exist and have not finished (only after an interruption)."""
        return [r for r in self.runs if r.state is not None and not r.finished]

    @property
    def not_created(self) -> list[BackfillRun]:
        return [r for r in self.runs if r.run_id is None]

    @property
    def ok(self) -> bool:
        """Every interval's run succeeded."""
        return len(self.succeeded) == len(self.runs)


def _in_zone(value: datetime, zone: tzinfo) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=zone)


def backfill_intervals(dag: DAG, start: datetime, end: datetime) -> list[DagRunInfo]:
    """The intervals a backfill of `dag` over ``[start, end]`` runs (naive datetimes are
    read in the DAG's time zone). Raises BackfillError when there is none to run."""
    timetable = timetable_for(dag)
    if timetable is None:
        raise BackfillError(
            f"DAG {dag.dag_id!r} has no schedule (schedule=None), so it has no intervals to "
            "backfill; trigger runs of it instead"
        )
    zone = dag_timezone(dag)
    lo, hi = _in_zone(start, zone), _in_zone(end, zone)
    if lo > hi:
        raise BackfillError(f"start {lo.isoformat()} is after end {hi.isoformat()}")
    infos = timetable.intervals_between(lo, hi)
    if not infos:
        bounds = f"start_date {dag.start_date.isoformat() if dag.start_date else None}"
        if dag.end_date is not None:
            bounds += f", end_date {dag.end_date.isoformat()}"
        raise BackfillError(
            f"no interval of the schedule of DAG {dag.dag_id!r} ({timetable.summary}; {bounds}) "
            f"has a logical date from {lo.isoformat()} to {hi.isoformat()}"
        )
    return infos


@dataclass(slots=True)
class _Interval:
    info: DagRunInfo
    action: BackfillAction = "not_created"
    run: DagRunRecord | None = None
    reset: bool = False  # waiting for its turn to be reset
    running: int = 0  # tries running (while unfinished)
    tis_failed: int = 0

    @property
    def key(self) -> tuple[str, str]:
        assert self.run is not None
        return (self.run.dag_id, self.run.run_id)

    def public(self) -> BackfillRun:
        run = self.run
        return BackfillRun(
            logical_date=self.info.logical_date,
            data_interval_start=self.info.data_interval_start,
            data_interval_end=self.info.data_interval_end,
            action=self.action,
            run_id=run.run_id if run else None,
            run_type=run.run_type if run else None,
            state=run.state if run else None,
        )


@dataclass(slots=True)
class _Backfill:
    o: Orchestrator
    dag: DAG
    start: datetime
    end: datetime
    intervals: list[_Interval]
    reset_failed: bool
    limit: int
    on_progress: Callable[[BackfillProgress], None] | None
    stop: anyio.Event | None
    started_at: float = field(default_factory=time.monotonic)
    pending: deque[_Interval] = field(default_factory=deque)
    active: dict[tuple[str, str], _Interval] = field(default_factory=dict)
    finished_here: int = 0  # runs seen to finish during this call (for the ETA)
    wake: anyio.Event = field(default_factory=anyio.Event)

    @property
    def store(self) -> Store:
        return self.o.store

    @property
    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    # -- planning ------------------------------------------------------------------------
    async def plan(self) -> None:
        """Sort the intervals: runs to follow now, runs to create or reset in turn."""
        for interval in self.intervals:
            run = await self._existing(interval.info.logical_date)
            if run is None:
                self.pending.append(interval)
                continue
            interval.run = run
            if not run.state.finished:
                interval.action = "resumed"
                self.active[interval.key] = interval
            elif self._ended_here(run):
                interval.action = "resumed"
            elif run.state is DagRunState.FAILED and self.reset_failed:
                interval.reset = True
                self.pending.append(interval)
            else:
                interval.action = "existing"

    def _ended_here(self, run: DagRunRecord) -> bool:
        """A run this orchestrator adopted as it started (one an interrupted backfill left
        unfinished) and drove to its end before the plan was made."""
        started = self.o.started_at
        return (
            run.owner == self.o.process_id
            and started is not None
            and run.created_at is not None
            and run.created_at < started
            and run.end_date is not None
            and run.end_date >= started
        )

    async def _existing(self, logical_date: datetime) -> DagRunRecord | None:
        """The run of this logical date: the backfill's own if there is one, else any."""
        runs = await self.store.list_runs(self.dag.dag_id, logical_date=logical_date, limit=100)
        ours = run_id_for(RunType.BACKFILL, logical_date)
        for run in runs:
            if run.run_id == ours:
                return run
        return runs[0] if runs else None

    # -- the loop ----------------------------------------------------------------------------
    async def go(self) -> BackfillResult:
        assert self.o.driver is not None
        self.o.driver.on_run_finished.append(self._run_finished)
        try:
            async with anyio.create_task_group() as tg:
                if self.stop is not None:
                    tg.start_soon(self._wake_on_stop, self.stop)
                await self._loop()
                tg.cancel_scope.cancel()
        finally:
            self.o.driver.on_run_finished.remove(self._run_finished)
        return self.result()

    def _run_finished(self, rs: object) -> None:
        self.wake.set()

    async def _wake_on_stop(self, stop: anyio.Event) -> None:
        await stop.wait()
        self.wake.set()

    async def _loop(self) -> None:
        while True:
            self.wake = anyio.Event()  # before reading: a run ending from now on wakes us
            await self._refresh()
            if not self.stopping:
                while self.pending and len(self.active) < self.limit and not self.stopping:
                    await self._start(self.pending.popleft())
            self._report()
            if self.stopping or not (self.pending or self.active):
                return
            with anyio.move_on_after(PROGRESS_POLL_S):
                await self.wake.wait()

    async def _refresh(self) -> None:
        """Read the state of each unfinished run: from this process's driver when it drives
        the run, else from the store (another process drives it, or no one yet)."""
        assert self.o.driver is not None
        for key, interval in list(self.active.items()):
            rs = self.o.driver.runs.get(key)
            if rs is not None and not rs.lost:
                interval.run = rs.run
                states = [t.state for t in rs.all_tis()]
            else:
                run = await self.store.get_run(*key)
                if run is None:  # gone from the store: nothing left to follow
                    log.warning("run %s of %s disappeared from the store", key[1], key[0])
                    interval.run, interval.action = None, "not_created"
                    del self.active[key]
                    continue
                interval.run = run
                if run.state.finished:
                    interval.running = interval.tis_failed = 0
                    del self.active[key]
                    self.finished_here += 1
                    continue
                states = [t.state for t in await self.store.get_tis(*key)]
            interval.running = states.count(TaskState.RUNNING)
            interval.tis_failed = states.count(TaskState.FAILED)

    async def _start(self, interval: _Interval) -> None:
        if interval.reset:
            await self._reset(interval)
            return
        logical_date = interval.info.logical_date
        existing = await self._existing(logical_date)  # made meanwhile, e.g. by a scheduler
        if existing is not None:
            interval.run = existing
            if existing.state.finished:
                interval.action = "existing"
                return
            interval.action = "resumed"
        else:
            interval.run = await self._create(interval.info)
            if interval.run is None:  # another backfill of this range created it just now
                run_id = run_id_for(RunType.BACKFILL, logical_date)
                interval.run = await self.store.get_run(self.dag.dag_id, run_id)
                if interval.run is None:
                    raise AflowError(f"run {run_id} of {self.dag.dag_id} was created and is gone")
                interval.action = "resumed"
            else:
                interval.action = "created"
        self.active[interval.key] = interval

    async def _create(self, info: DagRunInfo) -> DagRunRecord | None:
        """Create (and start driving) the run of an interval; None if its id is taken."""
        assert self.o.scheduler is not None
        try:
            return await self.o.scheduler.create_run(
                self.dag,
                run_type=RunType.BACKFILL,
                logical_date=info.logical_date,
                data_interval=(info.data_interval_start, info.data_interval_end),
                run_id=run_id_for(RunType.BACKFILL, info.logical_date),
                triggered_by="backfill",
                check_max_active_runs=False,
            )
        except RunAlreadyExists:
            return None

    async def _reset(self, interval: _Interval) -> None:
        assert interval.run is not None
        run_id = interval.run.run_id
        cleared = await _clear_failed(self.o, self.dag.dag_id, run_id)
        interval.reset = False
        interval.run = await self.store.get_run(self.dag.dag_id, run_id) or interval.run
        if not cleared:  # failed with no failed task instance (e.g. marked failed by hand)
            log.warning("backfill: run %s of %s failed but has no failed task instance to "
                        "clear; left as it is", run_id, self.dag.dag_id)
            interval.action = "existing"
            return
        log.info("backfill reset run %s of %s: cleared %s", run_id, self.dag.dag_id,
                 ", ".join(cleared))
        interval.action = "reset"
        self.active[interval.key] = interval
        if self.o.scheduler is not None:
            # driven here under the backfill's limit, as the runs it creates (a scheduler
            # would admit it against the DAG's max_active_runs); unless another process
            # claimed it first, which then drives it
            await self.o.scheduler.drive_run(self.dag, run_id)

    # -- reporting -----------------------------------------------------------------------
    def _report(self) -> None:
        if self.on_progress is None:
            return
        done = [i for i in self.intervals if i.run is not None and i.run.state.finished]
        succeeded = sum(1 for i in done if i.run and i.run.state is DagRunState.SUCCESS)
        elapsed = time.monotonic() - self.started_at
        left = len(self.intervals) - len(done)
        eta = elapsed / self.finished_here * left if self.finished_here else None
        self.on_progress(
            BackfillProgress(
                dag_id=self.dag.dag_id,
                total=len(self.intervals),
                done=len(done),
                succeeded=succeeded,
                failed=len(done) - succeeded,
                active_runs=len(self.active),
                tasks_running=sum(i.running for i in self.active.values()),
                tasks_failed=sum(i.tis_failed for i in self.active.values()),
                elapsed_s=elapsed,
                eta_s=0.0 if left == 0 else eta,
                stopping=self.stopping,
            )
        )

    def result(self) -> BackfillResult:
        runs = tuple(i.public() for i in self.intervals)
        return BackfillResult(
            dag_id=self.dag.dag_id,
            start=self.start,
            end=self.end,
            runs=runs,
            interrupted=self.stopping and any(not r.finished for r in runs),
            wall_s=time.monotonic() - self.started_at,
        )


async def _clear_failed(o: Orchestrator, dag_id: str, run_id: str) -> list[str]:
    """Clear the failed (and upstream_failed) task instances of a failed run: the run goes
    back to queued, for a scheduler to drive again (see Orchestrator.clear_tasks)."""
    return await o.clear_tasks(dag_id, run_id, only_failed=True)


async def run_backfill(
    o: Orchestrator,
    dag_id: str,
    start: datetime,
    end: datetime,
    *,
    reset_failed: bool = False,
    max_active_runs: int | None = None,
    on_progress: Callable[[BackfillProgress], None] | None = None,
    stop: anyio.Event | None = None,
) -> BackfillResult:
    """Backfill `dag_id` over ``[start, end]`` on the started orchestrator `o` (see the
    module doc). Returns once every run has finished, or at once after `stop` is set."""
    dag = o.dagbag.get_dag(dag_id)
    intervals = backfill_intervals(dag, start, end)
    limit = dag.max_active_runs if max_active_runs is None else max_active_runs
    if limit < 1:
        raise BackfillError(f"max_active_runs must be at least 1, got {limit}")
    zone = dag_timezone(dag)
    job = _Backfill(
        o=o,
        dag=dag,
        start=_in_zone(start, zone),
        end=_in_zone(end, zone),
        intervals=[_Interval(info) for info in intervals],
        reset_failed=reset_failed,
        limit=limit,
        on_progress=on_progress,
        stop=stop,
    )
    await job.plan()
    return await job.go()


async def refresh_result(store: Store, result: BackfillResult) -> BackfillResult:
    """`result` with each run's state as the store has it now (e.g. after the orchestrator
    that ran an interrupted backfill has drained its runs)."""
    runs = []
    for r in result.runs:
        record = await store.get_run(result.dag_id, r.run_id) if r.run_id else None
        runs.append(replace(r, state=record.state) if record is not None else r)
    runs_t = tuple(runs)
    return replace(
        result,
        runs=runs_t,
        interrupted=result.interrupted and any(not r.finished for r in runs_t),
    )
