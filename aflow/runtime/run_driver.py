"""The run driver: drives the runs this process owns, event-driven.

When a TI reaches an end state and that state is committed, the counts of its
downstream tasks are updated and each one's trigger rule is decided at once: ready
tasks go to the slots, tasks that can no longer run are marked skipped/upstream_failed
(committed, then propagated further). Nothing polls between a task's end and its
downstream's start.

Durability (DESIGN.md contract 1): a try's `running` row (with its try number) is
committed before user code runs, and a TI's end state and XComs are committed in one
transaction before any downstream task is decided on them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from aflow.authoring.baseoperator import is_loop_safe
from aflow.authoring.dag import DAG
from aflow.authoring.mapped import ExpandError, ResolvedInput
from aflow.clock import Clock
from aflow.exceptions import SkipTask, StoreError, TaskDeferred
from aflow.runtime import services, skips
from aflow.runtime.by_hand import run_mark_state
from aflow.runtime.logs import TaskLog, log_path
from aflow.runtime.run_factory import new_ti
from aflow.runtime.services import RunCreator
from aflow.runtime.slots import Slots, task_limits
from aflow.runtime.task_runner import (
    Resume,
    TryJob,
    build_context,
    call_callback,
    retry_delay_for,
    run_try,
)
from aflow.runtime.ti import RuntimeTaskInstance
from aflow.runtime.trigger_rules import Decision, UpstreamCounts, decide
from aflow.runtime.xcom import RETURN_KEY, XComView, check_json
from aflow.states import (
    FINISHED_TASK_STATES,
    DagRunState,
    RunType,
    TaskState,
    mapped_task_state,
)
from aflow.store.base import BY_HAND_CLASSPATH, Store
from aflow.store.records import (
    AssetEventRecord,
    DagRunRecord,
    TaskInstanceRecord,
    TriggerRecord,
    XComRecord,
)
from triggers.base import check_kwargs

log = logging.getLogger(__name__)

_RUNNABLE_AGAIN = (TaskState.SCHEDULED, TaskState.QUEUED)


@dataclass(slots=True)
class TIState:
    """A TI as the driver holds it in memory (mutable). It has the attributes of a
    TaskInstanceRecord, so the store writes it as it is (see TaskInstanceRow)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    state: TaskState
    try_number: int
    max_tries: int
    operator: str | None
    priority_weight: int
    pool: str
    start_date: datetime | None = None
    end_date: datetime | None = None
    hostname: str | None = None
    next_retry_at: datetime | None = None
    error: str | None = None
    next_method: str | None = None
    next_kwargs: dict[str, Any] | None = None
    next_event: dict[str, Any] | None = None  # in memory only: read from the trigger row
    same_try: bool = False  # in memory: the next start goes on with this try (reschedule)
    pool_hold: Any = None  # in memory: the PoolHold of the pool slots it holds (slots.py)
    # in memory: the end state added to the downstream tasks' counts (None: no end of
    # this TI is counted now), so a clear or mark takes out exactly what was added
    counted: TaskState | None = None

    @classmethod
    def from_record(cls, r: TaskInstanceRecord) -> TIState:
        return cls(
            dag_id=r.dag_id,
            run_id=r.run_id,
            task_id=r.task_id,
            map_index=r.map_index,
            state=r.state,
            try_number=r.try_number,
            max_tries=r.max_tries,
            operator=r.operator,
            priority_weight=r.priority_weight,
            pool=r.pool,
            start_date=r.start_date,
            end_date=r.end_date,
            hostname=r.hostname,
            next_retry_at=r.next_retry_at,
            error=r.error,
            next_method=r.next_method,
            next_kwargs=r.next_kwargs,
        )


# The in-memory state of a mapped task's map-index -1 TI once the task is expanded: its
# instances stand for it from then on (it is never written, nor counted downstream).
EXPANDED = TaskState.REMOVED


class RunState:
    """One owned run in memory."""

    def __init__(self, dag: DAG, run: DagRunRecord, tis: Iterable[TaskInstanceRecord]) -> None:
        self.dag = dag
        self.run = run
        # One TI per task (map index -1); a mapped task's instances, once it is expanded,
        # are in `mapped`, in map-index order.
        self.tis: dict[str, TIState] = {}
        self.mapped: dict[str, list[TIState]] = {}
        # The last try numbers of the `removed` instances of a mapped task (a clear's, or
        # beyond a shorter input), by map index: when the task expands again, an index
        # found here goes on from its try (as an unmapped TI does after a clear), so each
        # try keeps a log of its own. Empty until a mapped task is cleared.
        self.tries_before: dict[str, dict[int, int]] = {}
        for t in tis:
            if t.map_index < 0:
                self.tis[t.task_id] = TIState.from_record(t)
            elif t.state is not TaskState.REMOVED:
                self.mapped.setdefault(t.task_id, []).append(TIState.from_record(t))
            elif t.try_number:
                self.tries_before.setdefault(t.task_id, {})[t.map_index] = t.try_number
        # Made when a task's first upstream ends: a run of 2,000 sensors waiting for days
        # holds none (100 such runs: ~20 MiB saved).
        self.counts: dict[str, UpstreamCounts] = {}
        self.xcoms = XComView()
        self.inputs: dict[str, ResolvedInput] = {}  # expand inputs of mapped tasks, resolved
        for task_id, group in self.mapped.items():
            group.sort(key=lambda t: t.map_index)
            self.tis[task_id].state = EXPANDED
            self.xcoms.set_mapped(task_id, len(group))
        self.unfinished = sum(1 for t in self.all_tis() if t.state not in FINISHED_TASK_STATES)
        self.done = anyio.Event()
        self.finishing = False
        self.lost = False  # another process took the run over: start and finish nothing
        self.ended_by_hand = False  # marked success/failed: its tries' outcomes are not recorded
        self.marked_as: DagRunState | None = None  # the state it was marked with, by hand
        self.changes_pending = False  # TIs cleared in the store by another process wait to be applied

    def all_tis(self) -> Iterator[TIState]:
        """Every TI of the run: a mapped task's instances instead of its -1 TI once it
        is expanded."""
        mapped = self.mapped
        for task_id, ti in self.tis.items():
            if task_id in mapped:
                yield from mapped[task_id]
            else:
                yield ti

    def task_tis(self, task_id: str) -> list[TIState]:
        """The TIs of one task: its instances if it is an expanded mapped task."""
        group = self.mapped.get(task_id)
        return group if group is not None else [self.tis[task_id]]

    def ti_at(self, task_id: str, map_index: int) -> TIState | None:
        if map_index < 0:
            return self.tis.get(task_id)
        group = self.mapped.get(task_id)
        return group[map_index] if group is not None and map_index < len(group) else None

    def task_state(self, task_id: str) -> TaskState:
        """A task's state as a change by hand sees it (see `states.mapped_task_state`)."""
        group = self.mapped.get(task_id)
        if group is None:
            return self.tis[task_id].state
        return mapped_task_state(t.state for t in group)

    def _upstream_total(self, task_id: str) -> int:
        """How many upstream TIs `task_id` waits for: an expanded mapped task counts
        each of its instances (a trigger rule sees every one, as in Airflow)."""
        ups = self.dag.task_dict[task_id].upstream_task_ids
        if not self.mapped:
            return len(ups)
        return sum(len(self.mapped[u]) if u in self.mapped else 1 for u in ups)

    def counts_for(self, task_id: str) -> UpstreamCounts:
        """The counts of `task_id`'s upstream end states, kept from now on."""
        counts = self.counts.get(task_id)
        if counts is None:
            counts = self.counts[task_id] = UpstreamCounts(total=self._upstream_total(task_id))
        return counts

    def peek_counts(self, task_id: str) -> UpstreamCounts:
        """The counts to decide `task_id` on now (fresh ones, not kept, if none ended)."""
        counts = self.counts.get(task_id)
        if counts is None:
            return UpstreamCounts(total=self._upstream_total(task_id))
        return counts

    def change_totals(self, task_id: str, delta: int) -> None:
        """`task_id` now has `delta` more TIs (expanded, or no longer): its downstream
        tasks wait for that many more."""
        for down in self.dag.task_dict[task_id].downstream_task_ids:
            counts = self.counts.get(down)
            if counts is not None:
                counts.total += delta

    @property
    def key(self) -> tuple[str, str]:
        return (self.run.dag_id, self.run.run_id)


def _resumes_at_once(task: Any, resume: Resume) -> bool:
    """A resumed try whose whole work is a quick call on the loop (a built-in sensor's
    `execute_complete`): no `running` row is worth committing before it."""
    if task.run_in in ("thread", "process") or task.on_execute_callback:
        return False
    if resume.event.get("kind") != "event":
        return True  # a trigger error or timeout ends the try without calling the task
    method = getattr(task, resume.method_name, None)
    return method is not None and is_loop_safe(method)


def _ends_inline(task: Any, ti: TIState) -> bool:
    """A resumed TI that may end without a try: its resume method is `loop_safe` (a
    built-in sensor's `execute_complete`, which needs no rendered templates) and nothing
    else would run around it (no callbacks of any kind, not in a thread or process)."""
    if ti.next_method is None or ti.next_event is None:
        return False
    if (task.on_success_callback or task.on_failure_callback or task.on_retry_callback
            or task.execution_timeout is not None or task.outlets):
        return False
    return _resumes_at_once(task, Resume(ti.next_method, {}, ti.next_event))


async def durably(write: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """A state write that what follows cannot go on without: retried with backoff until
    it commits (a store outage pauses the run instead of losing or wedging it). Returns
    what it returns."""
    delay = 0.1
    while True:
        try:
            return await write(*args)
        except StoreError as exc:
            log.warning("store write failed (%s); retrying in %.1fs", exc, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)


class RunDriver:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        slots: Slots,
        task_group: TaskGroup,
        hostname: str,
        log_dir: Path,
        thread_limiter: anyio.CapacityLimiter,
    ) -> None:
        self.store = store
        self.clock = clock
        self.slots = slots
        self._tg = task_group
        self.hostname = hostname
        self.log_dir = log_dir
        self.thread_limiter = thread_limiter
        self.runs: dict[tuple[str, str], RunState] = {}
        slots.on_unrunnable = self._on_unrunnable
        self.on_run_finished: list[Any] = []  # callables(RunState), e.g. the scheduler's
        self.on_deferred: list[Any] = []  # callables(), e.g. waking the triggerer
        self.on_try_started: list[Callable[[RunState, TIState], None]] = []  # e.g. metrics
        self.on_asset_events: list[Any] = []  # callables(), e.g. the scheduler's asset wake-up
        self.on_run_adopted: list[Callable[[RunState], None]] = []  # e.g. deadline timers
        self.callbacks_running = 0  # DAG callbacks (e.g. notifiers) started and not done
        self._callbacks_changed = anyio.Event()
        self.tries_started = 0
        self.create_run: RunCreator | None = None  # set by the orchestrator: runs from tasks
        self._inline: list[tuple[RunState, TIState]] = []  # resumed sensors to end in a batch
        self._inline_pending = False

    # -- adopting a run ------------------------------------------------------------
    async def adopt(self, dag: DAG, run: DagRunRecord, tis: list[TaskInstanceRecord]) -> RunState:
        """Take over a run: recover TIs a dead owner left mid-try, then start what is ready."""
        key = (run.dag_id, run.run_id)
        if key in self.runs:
            return self.runs[key]
        now = self.clock.now()
        known = {t.task_id for t in tis if t.map_index < 0}
        # A task with no row has not run yet: runs are created without TI rows (a TI's
        # first write is its first try), which saves a row write per task. (A mapped
        # task's -1 TI has no row once expanded: its instances' rows stand for it.)
        missing = [new_ti(task, run.run_id) for task in dag.tasks if task.task_id not in known]
        removed = [
            dataclasses.replace(t, state=TaskState.REMOVED)
            for t in tis
            if t.state is not TaskState.REMOVED and (
                t.task_id not in dag.task_dict
                or (t.map_index >= 0 and not dag.task_dict[t.task_id].is_mapped))
        ]
        if removed:
            await self._durably(self.store.save_tis, removed)
        removed_keys = {(t.task_id, t.map_index) for t in removed}
        tis = [t for t in tis if t.task_id in dag.task_dict
               and (t.task_id, t.map_index) not in removed_keys] + missing
        if run.run_type is RunType.EVENT and not run.triggering_asset_events:
            events = await self.store.asset_events_of_run(run.dag_id, run.run_id)
            run = dataclasses.replace(run, triggering_asset_events=tuple(events))
        rs = RunState(dag, run, tis)
        self.runs[key] = rs
        if run.state is not DagRunState.RUNNING:
            rs.run = dataclasses.replace(run, state=DagRunState.RUNNING, start_date=run.start_date or now)
            await self._durably(self.store.save_run, rs.run)
        for listener in self.on_run_adopted:
            listener(rs)
        if any(t.state is TaskState.SUCCESS for t in rs.all_tis()):
            for x in await self.store.get_xcoms(run.dag_id, run.run_id):
                rs.xcoms.set_one(x.task_id, x.map_index, x.key, x.value)

        # Counts from end states that were committed before this adoption.
        for ti in rs.all_tis():
            if ti.state in FINISHED_TASK_STATES:
                ti.counted = ti.state
                for down in dag.task_dict[ti.task_id].downstream_task_ids:
                    rs.counts_for(down).add(ti.state)

        # A try that was running (or a TI queued) when its owner died.
        recovered: list[TIState] = []
        to_save: list[TaskInstanceRecord] = []
        for ti in rs.all_tis():
            if ti.state is TaskState.RUNNING and ti.next_method is not None:
                # It died going on from a deferral: the trigger's event is still committed
                # in its row, so it goes on again from there, in the same try.
                trigger = await self.store.get_trigger(
                    run.dag_id, run.run_id, ti.task_id, ti.map_index
                )
                if trigger and trigger.event is not None and trigger.try_number == ti.try_number:
                    ti.state = TaskState.DEFERRED
                    to_save.append(ti)
                    continue
            if ti.state is TaskState.RUNNING:
                msg = f"the process running try {ti.try_number} ({ti.hostname}) stopped; the try is lost"
                ti.error = msg
                self._write_to_log(rs, ti, f"ERROR - {msg}")
                if ti.try_number <= ti.max_tries:
                    ti.state = TaskState.UP_FOR_RETRY
                    ti.next_retry_at = now + retry_delay_for(dag.task_dict[ti.task_id], ti.try_number)
                else:
                    ti.state = TaskState.FAILED
                    ti.end_date = now
                    recovered.append(ti)
                to_save.append(ti)
            elif ti.state in _RUNNABLE_AGAIN:
                ti.state = TaskState.NONE
                to_save.append(ti)
        if to_save:
            await self._durably(self.store.save_tis, to_save)
        for ti in rs.all_tis():
            if ti.state in (TaskState.UP_FOR_RETRY, TaskState.UP_FOR_RESCHEDULE):
                self._tg.start_soon(self._retry_later, rs, ti)
        # A fired trigger whose TI already ended (its owner died between committing the
        # outcome and removing the row) is left over: remove it.
        for trigger in await self.store.fired_triggers([(run.dag_id, run.run_id)]):
            owner_ti = rs.ti_at(trigger.task_id, trigger.map_index)
            # (a clear made in the store while another process drove the run: its TI
            # rows, just read, already say so)
            if (owner_ti is None or owner_ti.state in FINISHED_TASK_STATES
                    or trigger.classpath == BY_HAND_CLASSPATH):
                await self._durably(
                    self.store.delete_trigger, run.dag_id, run.run_id, trigger.task_id,
                    trigger.map_index,
                )
        # Deferred TIs keep waiting on their triggers (any triggerer adopts those); one
        # whose trigger fired while no one drove the run goes on now. In a pool that
        # counts deferred tasks, each holds its slots here from now on.
        for ti in [t for t in rs.all_tis() if t.state is TaskState.DEFERRED]:
            if self.slots.include_deferred(ti.pool):
                self.slots.take_hold(ti, ti.pool, dag.task_dict[ti.task_id].pool_slots)
            trigger = await self.store.get_trigger(run.dag_id, run.run_id, ti.task_id, ti.map_index)
            if trigger is not None and trigger.event is not None:
                self.resume(trigger)
            elif trigger is None:
                self.slots.release_hold(ti)
                ti.state = TaskState.FAILED
                ti.end_date = now
                ti.error = "deferred, but its trigger row is gone"
                await self._durably(self.store.save_tis, [ti])
                recovered.append(ti)
        if recovered:
            rs.unfinished -= len(recovered)
            await self._after_end(rs, recovered)
        # Start whatever is ready now (roots, `always` tasks, tasks whose upstream ended).
        ready: list[TIState] = []
        decided: list[TIState] = []
        for task in dag.topological_order():
            ti = rs.tis[task.task_id]
            if task.task_id in rs.mapped:  # expanded: its instances that have not started
                for instance in rs.mapped[task.task_id]:
                    if instance.state is TaskState.NONE:
                        instance.state = TaskState.SCHEDULED
                        ready.append(instance)
            elif ti.state is TaskState.NONE:
                self._decide(rs, ti, rs.peek_counts(task.task_id), now, ready, decided)
        self._submit_all(rs, ready)
        if decided:
            await self._commit_decided(rs, decided)
        if rs.unfinished == 0:
            await self._finish_run(rs)
        return rs

    def abandon(self, key: tuple[str, str]) -> None:
        """Stop driving a run that another process has taken over (this one missed its
        lease): nothing more starts or finishes here. Tries already running end as they
        will; the new owner has recovered them as lost tries, by their retry policy."""
        rs = self.runs.pop(key, None)
        if rs is not None:
            rs.lost = True
            for ti in rs.all_tis():
                if ti.state is not TaskState.RUNNING:  # a running try gives its own back
                    self.slots.release_hold(ti)
            rs.done.set()

    # -- changes by hand (clear, mark) ------------------------------------------------
    def record_of(self, ti: TIState) -> TaskInstanceRecord:
        """A snapshot of a TI held in memory."""
        return TaskInstanceRecord(
            dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=ti.map_index,
            state=ti.state, try_number=ti.try_number, max_tries=ti.max_tries,
            start_date=ti.start_date, end_date=ti.end_date, hostname=ti.hostname,
            operator=ti.operator, priority_weight=ti.priority_weight, pool=ti.pool,
            next_retry_at=ti.next_retry_at, next_method=ti.next_method,
            next_kwargs=ti.next_kwargs, error=ti.error,
        )

    def _forget_end(self, rs: RunState, ti: TIState) -> None:
        """Take an ended TI's state out of its downstream tasks' counts: the state that
        was added (none if its end is still being committed, which `_after_end` then
        leaves uncounted since the TI is no longer in that end state)."""
        state, ti.counted = ti.counted, None
        if state is None:
            return
        for down_id in rs.dag.task_dict[ti.task_id].downstream_task_ids:
            counts = rs.counts.get(down_id)
            if counts is not None:
                counts.add(state, -1)

    @staticmethod
    def settling(rs: RunState, task_ids: Iterable[str]) -> list[str]:
        """Of `task_ids`, the TIs whose end is being committed or decided on right now
        (ended in memory, not yet counted downstream): a clear or mark waits for them."""
        return [t for t in task_ids
                if any(ti.state in FINISHED_TASK_STATES and ti.counted is None
                       for ti in rs.task_tis(t))]

    async def clear(self, rs: RunState, task_ids: list[str]) -> None:
        """Make these ended TIs (in topological order; `none` ones are left alone) run
        again in this driven run: their state goes out of their downstream tasks' counts,
        their reset is committed (Store.reset_tis), then each is decided afresh, so tasks
        downstream of a cleared one wait for it. The caller has checked that none of them
        is running or waiting (they hold no slot, timer or trigger)."""
        held: list[TIState] = []
        instances: list[TIState] = []
        for task_id in task_ids:
            ti = rs.tis[task_id]
            if ti.state not in FINISHED_TASK_STATES:
                continue
            instances += self._unexpand(rs, task_id)
            self._forget_end(rs, ti)
            retries = rs.dag.task_dict[task_id].retries
            ti.state = TaskState.NONE
            ti.max_tries = ti.try_number + retries
            ti.start_date = ti.end_date = ti.next_retry_at = None
            ti.next_method = ti.next_kwargs = ti.next_event = None
            ti.error = None
            rs.xcoms.set_task(task_id, ti.map_index, {})
            rs.unfinished += 1
            held.append(ti)
        if not held:
            return
        rows = [self.record_of(ti) for ti in held + instances]
        # Until the reset is committed nothing decides them (they are not `none` in
        # memory), so no start of theirs can be committed before it.
        for ti in held:
            ti.state = TaskState.QUEUED
        await self._durably(self.store.reset_tis, rows)
        if rs.lost or rs.key not in self.runs:
            return
        for ti in held:
            ti.state = TaskState.NONE
        now = self.clock.now()
        ready: list[TIState] = []
        decided: list[TIState] = []
        for ti in held:
            self._decide(rs, ti, rs.peek_counts(ti.task_id), now, ready, decided)
        self._submit_all(rs, ready)
        if decided:
            await self._commit_decided(rs, decided)

    async def _apply_changes(self, rs: RunState) -> None:
        """Another process cleared or marked ended TIs of this driven run in the store
        (Store.change_for_owner): make the same change in memory, remove the rows that
        said so, then decide on it (marked TIs' downstream, cleared TIs themselves).
        Until now nothing here could have decided on them: the tasks right after them had
        all ended (the other process checked), and end states do not change here."""
        await anyio.lowlevel.checkpoint()  # events of one change arrive together
        rs.changes_pending = False
        if rs.lost or rs.finishing or rs.key not in self.runs:
            return  # `_finish_run` queues the run again if the change came too late
        events = [t for t in await self.store.fired_triggers([rs.key])
                  if t.classpath == BY_HAND_CLASSPATH]
        rows = {r.task_id: r for r in await self.store.get_tis(*rs.key) if r.map_index < 0}
        if rs.lost or rs.finishing or rs.key not in self.runs:
            return
        held: list[TIState] = []
        marked: list[TIState] = []
        for event in events:
            ti, row = rs.tis.get(event.task_id), rows.get(event.task_id)
            if ti is None or row is None or ti.state not in FINISHED_TASK_STATES:
                continue
            if row.state is TaskState.NONE:
                self._unexpand(rs, ti.task_id)  # (the other process removed its instances)
                self._forget_end(rs, ti)
                ti.state = TaskState.QUEUED  # held: decided once its event row is gone
                ti.max_tries = row.max_tries
                ti.start_date = ti.end_date = ti.next_retry_at = None
                ti.next_method = ti.next_kwargs = ti.next_event = None
                ti.error = None
                rs.xcoms.set_task(ti.task_id, ti.map_index, {})
                rs.unfinished += 1
                held.append(ti)
            elif row.state in FINISHED_TASK_STATES and row.state is not ti.state:
                self._forget_end(rs, ti)
                ti.state = row.state
                ti.start_date, ti.end_date, ti.error = row.start_date, row.end_date, row.error
                marked.append(ti)
        rs.unfinished += 1  # the run stays open until all of this is done
        try:
            # by id: a newer change of the same TI (another row) stays, to be applied next
            await self._durably(self.store.delete_triggers,
                                [e.id for e in events if e.id is not None])
            if rs.lost or rs.key not in self.runs:
                return
            changed = [t.task_id for t in marked + held]
            if changed:
                log.info("changed by another process in run %s of %s: %s", rs.run.run_id,
                         rs.run.dag_id, ", ".join(changed))
            if marked:
                await self._after_end(rs, marked)  # their new end states, downstream
            order = {t.task_id: i for i, t in enumerate(rs.dag.topological_order())}
            held.sort(key=lambda t: order[t.task_id])
            for ti in held:
                ti.state = TaskState.NONE
            now = self.clock.now()
            ready: list[TIState] = []
            decided: list[TIState] = []
            for ti in held:
                self._decide(rs, ti, rs.peek_counts(ti.task_id), now, ready, decided)
            self._submit_all(rs, ready)
            if decided:
                await self._commit_decided(rs, decided)
        finally:
            rs.unfinished -= 1
        if rs.unfinished == 0 and not rs.lost and rs.key in self.runs:
            await self._finish_run(rs)

    async def mark(self, rs: RunState, task_id: str, state: TaskState, then_clear: list[str]) -> None:
        """End a TI that is not running or waiting (ended or `none`) with `state`: its end
        is committed, its downstream tasks are decided on it, then the ended TIs of
        `then_clear` run again (see `clear`)."""
        ti = rs.tis[task_id]
        now = self.clock.now()
        if ti.state in FINISHED_TASK_STATES:
            self._forget_end(rs, ti)
        else:
            rs.unfinished -= 1
        rs.unfinished += 1  # the run stays open until all of this is done
        try:
            ti.state = state
            ti.start_date = ti.start_date or now
            ti.end_date = now
            ti.next_retry_at = None
            ti.next_method = ti.next_kwargs = ti.next_event = None
            ti.error = None if state is TaskState.SUCCESS else "marked failed by hand"
            await self._durably(functools.partial(self.store.finish_ti, end_trigger=True), ti, [])
            await self._after_end(rs, [ti])
            if then_clear:
                await self.clear(rs, then_clear)
        finally:
            rs.unfinished -= 1
        if rs.unfinished == 0 and not rs.lost:
            await self._finish_run(rs)

    async def mark_run(self, rs: RunState, state: DagRunState, *, owner: str) -> DagRunRecord:
        """End this driven run with `state` by hand: its unfinished TIs end as
        `by_hand.run_mark_state` says, in one transaction with the run's row, and the run
        is no longer driven here. Tries running now run on to their end, but their
        outcome is not recorded (the TI is already marked)."""
        now = self.clock.now()
        rs.lost = rs.ended_by_hand = True  # nothing more starts or is recorded here
        rs.marked_as = state
        self.runs.pop(rs.key, None)
        ti_state = TaskState(state.value)
        rows = []
        for ti in rs.all_tis():
            new = run_mark_state(ti.state, ti_state)
            if new is None:
                continue
            ti.state = new
            ti.start_date = ti.start_date or now
            ti.end_date = now
            ti.next_retry_at = None
            ti.next_method = ti.next_kwargs = ti.next_event = None
            ti.error = None if new is not TaskState.FAILED else "its run was marked failed by hand"
            rows.append(self.record_of(ti))
        delay = 0.1
        while True:  # as `_durably`: the run is no longer driven here, its end must commit
            try:
                # Writes of this run still queued for the group commit (a `running` row, a
                # deferral's trigger row) commit first, so none lands over the mark; none
                # is made from now on (`rs.lost`).
                await self.store.flush()
                rs.run = await self.store.rewrite_run(
                    rs.run.dag_id, rs.run.run_id, rows, owner=owner, now=now, run_state=state
                )
                break
            except StoreError as exc:
                log.warning("store write failed (%s); retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
        rs.done.set()
        for listener in self.on_run_finished:
            listener(rs)
        return rs.run

    # -- deciding -----------------------------------------------------------------
    def _decision(self, rs: RunState, task_id: str, counts: UpstreamCounts) -> Decision:
        """What the `none` TI of `task_id` does now, on its upstream counts, a committed
        branch / short-circuit choice and a teardown's setups (skips.py)."""
        decision = decide(rs.dag.task_dict[task_id].trigger_rule, counts)
        return skips.override(rs.dag, task_id, decision, rs.xcoms,
                              lambda t: [ti.state for ti in rs.task_tis(t)])

    def _decide(
        self,
        rs: RunState,
        ti: TIState,
        counts: UpstreamCounts,
        now: datetime,
        ready: list[TIState],
        decided: list[TIState],
    ) -> None:
        """Decide a `none` TI: ready ones go to `ready`, ended ones to `decided`."""
        self._apply_decision(rs, ti, self._decision(rs, ti.task_id, counts), now, ready, decided)

    def _apply_decision(
        self,
        rs: RunState,
        ti: TIState,
        decision: Decision,
        now: datetime,
        ready: list[TIState],
        decided: list[TIState],
    ) -> None:
        if decision is Decision.RUN:
            ti.state = TaskState.SCHEDULED
            ready.append(ti)
        elif decision is Decision.SKIP:
            ti.state = TaskState.SKIPPED
            ti.start_date = ti.end_date = now
            decided.append(ti)
        elif decision is Decision.UPSTREAM_FAILED:
            ti.state = TaskState.UPSTREAM_FAILED
            ti.start_date = ti.end_date = now
            decided.append(ti)

    async def _commit_decided(self, rs: RunState, decided: list[TIState]) -> None:
        await self._durably(self.store.save_tis, decided)
        rs.unfinished -= len(decided)
        await self._after_end(rs, decided)

    async def _after_end(self, rs: RunState, ended: list[TIState]) -> None:
        """`ended` TIs' end states are committed: decide their downstream tasks."""
        frontier = ended
        while frontier:
            now = self.clock.now()
            ready: list[TIState] = []
            decided: list[TIState] = []
            for ti in frontier:
                if ti.counted is not None or ti.state not in FINISHED_TASK_STATES:
                    continue  # counted already, or cleared or marked while it committed
                ti.counted = ti.state
                task = rs.dag.task_dict[ti.task_id]
                for down_id in task.downstream_task_ids:
                    counts = rs.counts_for(down_id)
                    counts.add(ti.state)
                    down = rs.tis[down_id]
                    if down.state is not TaskState.NONE:
                        continue
                    self._decide(rs, down, counts, now, ready, decided)
                for teardown_id in skips.indirect_teardowns(rs.dag, ti.task_id):
                    teardown = rs.tis[teardown_id]  # (a setup it waited for has ended)
                    if teardown.state is TaskState.NONE:
                        self._decide(rs, teardown, rs.peek_counts(teardown_id), now, ready, decided)
            self._submit_all(rs, ready)
            if decided:
                await self._durably(self.store.save_tis, decided)
                rs.unfinished -= len(decided)
            frontier = decided
        if rs.unfinished == 0:
            await self._finish_run(rs)

    # -- running a try --------------------------------------------------------------
    def _submit_all(self, rs: RunState, tis: list[TIState]) -> None:
        """Queue tries that became ready together: they start in priority_weight order
        among themselves, not in the order they are listed. (Called at every end, most
        often with none or one: those cost no batch.)"""
        if len(tis) < 2:
            if tis:
                self._submit(rs, tis[0])
            return
        with self.slots.batch():
            for ti in tis:
                self._submit(rs, ti)

    def _submit(self, rs: RunState, ti: TIState) -> None:
        if rs.lost:
            return
        dag = rs.dag
        task = dag.task_dict[ti.task_id]
        if ti.map_index < 0 and task.is_mapped:
            self._tg.start_soon(self._expand, rs, ti)  # no slot: no user code runs
            return
        per_dag, per_dagrun = task.max_active_tis_per_dag, task.max_active_tis_per_dagrun
        self.slots.submit(
            rs.run.dag_id,
            dag.priority_weights()[ti.task_id],
            dag.max_active_tasks,
            lambda: self._run_ti_or_fail(rs, ti),
            pool=ti.pool,
            pool_slots=task.pool_slots,
            holder=ti,
            limits=None if per_dag is None and per_dagrun is None else task_limits(
                rs.run.dag_id, rs.run.run_id, ti.task_id, per_dag, per_dagrun),
        )

    def _on_unrunnable(self, entry: Any, reason: str) -> None:
        """A TI waits for a pool that does not exist or is too small for it: say so in
        the log and on its row (state `scheduled`, `error`), once per reason. It starts
        when the pools change so that it fits."""
        ti = entry.holder
        if not isinstance(ti, TIState) or ti.error == reason:
            return
        log.warning("task %s of run %s (DAG %s) is %s", ti.task_id, ti.run_id, ti.dag_id, reason)
        ti.error = reason
        self._tg.start_soon(self._durably, self.store.save_tis, [ti])

    async def _run_ti_or_fail(self, rs: RunState, ti: TIState) -> bool:
        """`_run_ti`, and if it breaks on a bug of aflow's own (not the task's: those are
        outcomes), the TI fails with that error instead of staying `running` in memory
        with its run never ending. True when the TI deferred keeping its pool slots."""
        if rs.lost:
            return False  # another process took the run over while this try waited
        try:
            return await self._run_ti(rs, ti)
        except Exception as exc:
            log.exception("internal error while running %s of %s", ti.task_id, rs.run.run_id)
            if ti.state in FINISHED_TASK_STATES or rs.lost or rs.key not in self.runs:
                return False  # its end is recorded (the error came after): nothing is left open
            await self._fail(rs, ti, f"aflow internal error: {type(exc).__name__}: {exc}")
            return False

    async def _fail(
        self, rs: RunState, ti: TIState, error: str, exc: BaseException | None = None
    ) -> None:
        """End a TI as failed with `error` (logged, with `exc`'s traceback if given, and on
        its row), without a try's outcome; the trigger row of a deferral it went on from
        goes with it."""
        await self._end_without_try(rs, ti, TaskState.FAILED, error, exc)

    async def _end_without_try(
        self, rs: RunState, ti: TIState, state: TaskState, why: str,
        exc: BaseException | None = None,
    ) -> None:
        """End a TI as `state` (failed, or skipped) with `why` logged and, if it failed,
        on its row; see _fail."""
        now = self.clock.now()
        ti.state = state
        ti.start_date = ti.start_date or now
        ti.end_date = now
        failed = state is TaskState.FAILED
        ti.error = why if failed else None
        trace = ""
        if exc is not None and failed:
            trace = "\n" + "".join(traceback.format_exception(exc)).rstrip()
        self._write_to_log(rs, ti, f"{'ERROR' if failed else 'INFO'} - {why}{trace}")
        await self._durably(
            functools.partial(self.store.finish_ti, end_trigger=ti.next_method is not None),
            ti, [],
        )
        rs.unfinished -= 1
        await self._after_end(rs, [ti])

    # -- mapped tasks -----------------------------------------------------------------
    async def _expand(self, rs: RunState, ti: TIState) -> None:
        """A mapped task's -1 TI was decided to run: resolve its expand input, commit a
        `none` row per instance (one transaction: adoption sees all of them or none),
        then send every instance to the slots. An input that cannot be mapped over fails
        the task; an empty one skips it (as Airflow)."""
        task = rs.dag.task_dict[ti.task_id]
        try:
            resolved = task.resolve_input(rs.xcoms)  # type: ignore[attr-defined]
        except ExpandError as exc:
            await self._fail(rs, ti, str(exc))
            return
        n = resolved.length
        if n == 0:
            log.info("task %s of run %s maps over nothing: skipped", ti.task_id, ti.run_id)
            ti.state = TaskState.SKIPPED
            ti.start_date = ti.end_date = self.clock.now()
            await self._commit_decided(rs, [ti])
            return
        weight = rs.dag.priority_weights()[ti.task_id]
        group = [
            TIState(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=i,
                    state=TaskState.NONE, try_number=0, max_tries=task.retries,
                    operator=task.operator_name, priority_weight=weight, pool=task.pool)
            for i in range(n)
        ]
        before = rs.tries_before.pop(ti.task_id, None)
        if before is not None:  # expanded before, then cleared: each index goes on counting
            for i, tries in before.items():
                if i < n:
                    group[i].try_number = tries
                    group[i].max_tries = tries + task.retries
            beyond = {i: tries for i, tries in before.items() if i >= n}
            if beyond:  # (their rows stay `removed`, with these tries, in case it grows back)
                rs.tries_before[ti.task_id] = beyond
        # (the -1 TI's row, if a clear left one, says `removed` from now on)
        gone = dataclasses.replace(self.record_of(ti), state=TaskState.REMOVED)
        await self._durably(self.store.save_tis, [*group, gone])
        if rs.ended_by_hand and rs.marked_as is not None:
            # the run was marked as these rows committed: they end as its other TIs did
            new = run_mark_state(TaskState.NONE, TaskState(rs.marked_as.value))
            if new is not None:
                now = self.clock.now()
                for instance in group:
                    instance.state, instance.start_date, instance.end_date = new, now, now
                await self._durably(self.store.save_tis, [*group, gone])
            return
        if rs.lost or rs.key not in self.runs or ti.state is not TaskState.SCHEDULED:
            return  # taken over meanwhile
        log.info("task %s of run %s expanded into %d instances", ti.task_id, ti.run_id, n)
        rs.mapped[ti.task_id] = group
        rs.inputs[ti.task_id] = resolved
        rs.xcoms.set_mapped(ti.task_id, n)
        ti.state = EXPANDED
        rs.unfinished += n - 1
        rs.change_totals(ti.task_id, n - 1)
        for instance in group:  # (one by one: all of one weight, the first starts at once)
            instance.state = TaskState.SCHEDULED
            self._submit(rs, instance)

    def _unexpand(self, rs: RunState, task_id: str) -> list[TIState]:
        """Forget the instances of an expanded mapped task whose TIs have all ended (it
        is being cleared: it expands again when it is next decided). Returns them, now
        `removed`, for their rows to be reset so."""
        group = rs.mapped.pop(task_id, None)
        if group is None:
            return []
        before = rs.tries_before.setdefault(task_id, {})
        for instance in group:
            self._forget_end(rs, instance)
            instance.state = TaskState.REMOVED
            rs.xcoms.set_task(task_id, instance.map_index, {})
            if instance.try_number:
                before[instance.map_index] = instance.try_number
        rs.xcoms.set_mapped(task_id, None)
        rs.inputs.pop(task_id, None)
        rs.change_totals(task_id, 1 - len(group))
        return group

    @staticmethod
    def _instance(rs: RunState, ti: TIState) -> Any:
        """The operator a mapped task's instance runs as."""
        task = rs.dag.task_dict[ti.task_id]
        resolved = rs.inputs.get(ti.task_id)
        if resolved is None:  # adopted after a restart: the same upstream XComs, the same input
            resolved = task.resolve_input(rs.xcoms)  # type: ignore[attr-defined]
            expanded = len(rs.mapped.get(ti.task_id, ()))
            if resolved.length != expanded:
                raise ExpandError(
                    f"its input now has {resolved.length} elements, not the {expanded} it was "
                    "expanded into (did the DAG file change?); clear the task to expand it again"
                )
            rs.inputs[ti.task_id] = resolved
        return task.unmap(ti.map_index, resolved)  # type: ignore[attr-defined]

    def _task_of(self, rs: RunState, ti: TIState) -> Any:
        """The operator `ti` runs as: its task, or the instance of a mapped one."""
        return self._instance(rs, ti) if ti.map_index >= 0 else rs.dag.task_dict[ti.task_id]

    async def _run_ti(self, rs: RunState, ti: TIState) -> bool:
        """Runs in a slot: the try (or a deferred try going on) and its outcome's commit.
        True when the TI deferred and keeps its pool slots (an include_deferred pool)."""
        if rs.lost:
            return False  # marked by hand (the TI with it) or taken over while it waited for a slot
        task = rs.dag.task_dict[ti.task_id]
        if ti.map_index >= 0:
            try:
                task = self._instance(rs, ti)
            except Exception as exc:  # noqa: BLE001 - a bad mapped value fails its instance
                if (ti.next_method is None or ti.next_event is None) and not ti.same_try:
                    # the try it was to start fails: its own log says why (not the last
                    # one's, nor, after a clear, a log of the run before); so does an
                    # error in a .map() function, called as the instance is built
                    ti.try_number += 1
                    ti.start_date = self.clock.now()
                if isinstance(exc, SkipTask):  # (raised by a .map() function: as in Airflow)
                    why = f"map index {ti.map_index} of task {ti.task_id!r} skipped as it was built"
                    await self._end_without_try(
                        rs, ti, TaskState.SKIPPED, f"{why}: {exc}" if str(exc) else why
                    )
                    return False
                await self._fail(rs, ti, f"cannot build map index {ti.map_index} of task "
                                         f"{ti.task_id!r}: {type(exc).__name__}: {exc}", exc)
                return False
        now = self.clock.now()
        resume: Resume | None = None
        if ti.next_method is not None and ti.next_event is not None:
            # A deferred try goes on: same try number (as in Airflow), its trigger's event.
            resume = Resume(ti.next_method, dict(ti.next_kwargs or {}), ti.next_event)
            # next_method stays on the running row until the try ends: if this process dies
            # meanwhile, adoption finds it and goes on again from the committed event.
            ti.next_event = None
        elif ti.same_try:
            ti.same_try = False  # a rescheduled sensor pokes again within its try
        else:
            ti.try_number += 1
            ti.start_date = now
        ti.state = TaskState.RUNNING
        ti.end_date = None
        ti.hostname = self.hostname
        ti.next_retry_at = None
        ti.error = None
        if resume is None or not _resumes_at_once(task, resume):
            try:
                await self._durably(self.store.save_tis, [ti])
            except anyio.get_cancelled_exc_class():
                # Shutdown while the `running` row commits (a queued write commits even
                # if its caller is cancelled): as for a try cut short while it runs.
                await self._cut_short(rs, ti, resume)
                raise
            if rs.lost:
                # the run was marked by hand (committed after this row) or taken over
                # while the row committed: the try does not start
                return False
        # else the row stays `deferred` with its fired trigger until the outcome commits:
        # a crash in between resumes it again, exactly as a committed `running` row would.
        self.tries_started += 1
        for listener in self.on_try_started:
            listener(rs, ti)
        job = TryJob(
            task=task,
            run=rs.run,
            map_index=ti.map_index,
            try_number=ti.try_number,
            max_tries=ti.max_tries,
            start_date=ti.start_date or now,  # a rescheduled or resumed try keeps its start
            hostname=self.hostname,
            xcoms=rs.xcoms,
            log_path=self._log_path(rs, ti),
            thread_limiter=self.thread_limiter,
            store=self.store,
            resume=resume,
            create_run=self.create_run,
        )
        try:
            result = await run_try(job)
        except anyio.get_cancelled_exc_class():
            await self._cut_short(rs, ti, resume)
            raise
        if rs.ended_by_hand:
            # the run was marked meanwhile, and with it this TI: the mark stands
            self._write_to_log(rs, ti, "WARNING - the run was marked by hand while this try "
                                       "ran; its outcome is not recorded")
            return False
        now = self.clock.now()
        if resume is not None:
            ti.next_method = ti.next_kwargs = None
        if result.deferred is not None:
            return await self._defer(rs, ti, result.deferred, now)  # replaces the old trigger row
        # The trigger row goes with the outcome, not before: until the outcome is committed,
        # the event must stay to go on from after a crash.
        ended = await self._record_outcome(rs, ti, task, result, now, end_trigger=resume is not None)
        if ended:
            rs.unfinished -= 1
            await self._after_end(rs, [ti])
        return False

    async def _record_outcome(
        self, rs: RunState, ti: TIState, task: Any, result: Any, now: datetime, end_trigger: bool
    ) -> bool:
        """Commit a try's outcome (and, with `end_trigger`, remove the trigger row of the
        deferral it went on from); True if the TI ended (its downstream is then decided)."""
        if result.reschedule_at is not None:
            ti.state = TaskState.UP_FOR_RESCHEDULE
            ti.next_retry_at = result.reschedule_at
            await self._save_waiting(rs, ti, end_trigger)
            self._tg.start_soon(self._retry_later, rs, ti)
            return False
        ti.end_date = now
        ti.error = result.error
        if result.state is TaskState.FAILED and result.retryable and ti.try_number <= ti.max_tries:
            ti.state = TaskState.UP_FOR_RETRY
            ti.next_retry_at = now + retry_delay_for(task, ti.try_number)
            await self._save_waiting(rs, ti, end_trigger)
            self._tg.start_soon(self._retry_later, rs, ti)
            return False
        ti.state = result.state
        xcoms = [
            XComRecord(rs.run.dag_id, rs.run.run_id, ti.task_id, key, value, ti.map_index)
            for key, value in result.xcoms.items()
        ]
        if task.outlets and ti.state is TaskState.SUCCESS:
            extras = result.outlet_extras or {}
            await self._finish_with_outlets(rs, ti, task, xcoms, extras, now, end_trigger)
        else:
            await self._durably(
                functools.partial(self.store.finish_ti, end_trigger=end_trigger), ti, xcoms
            )
        if result.xcoms and ti.state is result.state:  # (not cleared as it committed)
            rs.xcoms.set_task(ti.task_id, ti.map_index, result.xcoms)
        return True

    async def _finish_with_outlets(
        self, rs: RunState, ti: TIState, task: Any, xcoms: list[XComRecord],
        extras: dict[str, dict[str, Any]], now: datetime, end_trigger: bool,
    ) -> None:
        """A success that updates assets: an event per outlet (with the `extra` the task
        set through `outlet_events`), committed with the TI's end, then a wake-up for the
        DAGs they may start."""
        events = [
            AssetEventRecord(
                id=0, uri=asset.uri, timestamp=now, extra=extras.get(asset.uri, {}),
                source_dag_id=rs.run.dag_id,
                source_run_id=rs.run.run_id, source_task_id=ti.task_id,
                source_map_index=ti.map_index,
            )
            for asset in task.outlets
        ]
        await self._durably(
            functools.partial(self.store.finish_ti, end_trigger=end_trigger, asset_events=events),
            ti, xcoms,
        )
        for listener in self.on_asset_events:
            listener()

    async def _save_waiting(self, rs: RunState, ti: TIState, end_trigger: bool) -> None:
        """A TI that will run again (retry, reschedule): its row, then its spent trigger."""
        await self._durably(self.store.save_tis, [ti])
        if end_trigger and not rs.lost:  # (a mark by hand deleted it with the rest)
            await self._durably(
                self.store.delete_trigger, ti.dag_id, ti.run_id, ti.task_id, ti.map_index
            )

    async def _defer(self, rs: RunState, ti: TIState, deferral: TaskDeferred, now: datetime) -> bool:
        """Park the TI on its trigger: the TI row and the trigger row commit together; its
        slot is free once this returns. The triggerer fires it; `resume` picks it up from
        there. Returns True when the TI keeps its pool slots while deferred (its pool has
        include_deferred): it holds them until it ends (see `_end_batch`, `abandon`)."""
        try:
            classpath, kwargs = deferral.trigger.serialize()
            check_kwargs(classpath, kwargs)
        except Exception as exc:  # noqa: BLE001 - a bad trigger fails its task, not the run
            await self._fail(rs, ti, f"cannot defer: the trigger does not serialize: {exc}")
            return False
        keep = self.slots.include_deferred(ti.pool) and not rs.lost
        if not keep:
            self.slots.release_hold(ti)  # now, before the TI can be resumed
        ti.state = TaskState.DEFERRED
        ti.next_method = deferral.method_name
        ti.next_kwargs = deferral.kwargs or None  # most defer without any: no dict per TI
        trigger = TriggerRecord(
            classpath=classpath,
            kwargs=kwargs,
            dag_id=rs.run.dag_id,
            run_id=rs.run.run_id,
            task_id=ti.task_id,
            map_index=ti.map_index,
            try_number=ti.try_number,
            created_at=now,
            timeout_at=now + deferral.timeout if deferral.timeout is not None else None,
        )
        await self._durably(self.store.defer_ti, ti, trigger)
        for listener in self.on_deferred:
            listener()
        return keep

    def resume(self, trigger: TriggerRecord) -> bool:
        """A trigger fired (its event is committed): send its TI on, if this process
        drives the run and the TI still waits on that try. Returns whether it did."""
        rs = self.runs.get((trigger.dag_id, trigger.run_id))
        if rs is None or trigger.event is None:
            return False
        if trigger.classpath == BY_HAND_CLASSPATH:
            if not rs.changes_pending:
                rs.changes_pending = True
                self._tg.start_soon(self._apply_changes, rs)
            return True
        ti = rs.ti_at(trigger.task_id, trigger.map_index)
        if ti is None or ti.state is not TaskState.DEFERRED or ti.try_number != trigger.try_number:
            return False
        ti.next_event = trigger.event
        ti.state = TaskState.SCHEDULED
        try:
            task = self._task_of(rs, ti)
        except Exception:  # noqa: BLE001 - the ordinary try fails it, saying why
            task = None
        if task is not None and _ends_inline(task, ti):
            self._inline.append((rs, ti))
            if not self._inline_pending:
                self._inline_pending = True
                self._tg.start_soon(self._end_inline)
        else:
            self._submit(rs, ti)
        return True

    async def _end_inline(self) -> None:
        """End, in one batch, the resumed sensors whose whole remaining work is a quick
        `execute_complete` that returns their XCom (see `_ends_inline`): no slot, no try
        machinery, one transaction for all of their ends and trigger rows. Whatever does
        not end in success here (an error, a timeout, a method that raises) goes on as an
        ordinary resumed try instead, which logs, retries and calls back as usual."""
        await anyio.lowlevel.checkpoint()  # triggers firing in this same tick join the batch
        batch, self._inline = self._inline, []
        self._inline_pending = False
        handed_on: set[int] = set()
        try:
            await self._end_batch(batch, handed_on)
        except Exception:  # noqa: BLE001 - a bug here must not strand the sensors
            log.exception("ending %d resumed sensors in a batch failed; each goes on alone", len(batch))
            for rs, ti in batch:
                if id(ti) not in handed_on and ti.state is TaskState.SCHEDULED:
                    self._submit(rs, ti)

    async def _end_batch(self, batch: list[tuple[RunState, TIState]], handed_on: set[int]) -> None:
        now = self.clock.now()
        ended: list[tuple[RunState, TIState, dict[str, Any]]] = []
        for rs, ti in batch:
            if rs.lost or rs.key not in self.runs:
                handed_on.add(id(ti))
                continue
            xcoms = self._inline_outcome(rs, ti, now)
            if xcoms is None:
                handed_on.add(id(ti))
                self._submit(rs, ti)  # the ordinary way, with its log, retries and callbacks
            else:
                ended.append((rs, ti, xcoms))
        if not ended:
            return
        for _, ti, _ in ended:
            ti.state = TaskState.SUCCESS
            ti.start_date = ti.start_date or now
            ti.end_date = now
            ti.hostname = self.hostname
            ti.error = None
            ti.next_method = ti.next_kwargs = ti.next_event = None
        ends = [
            (ti, [XComRecord(rs.run.dag_id, rs.run.run_id, ti.task_id, k, v, ti.map_index)
                  for k, v in xcoms.items()])
            for rs, ti, xcoms in ended
        ]
        await self._durably(functools.partial(self.store.finish_tis, end_trigger=True), ends)
        handed_on.update(id(ti) for _, ti, _ in ended)  # committed: theirs to finish here
        for _, ti, _ in ended:
            self.slots.release_hold(ti)  # the slots an include_deferred pool kept
        by_run: dict[tuple[str, str], tuple[RunState, list[TIState]]] = {}
        for rs, ti, xcoms in ended:
            if xcoms:
                rs.xcoms.set_task(ti.task_id, ti.map_index, xcoms)
            rs.unfinished -= 1
            by_run.setdefault(rs.key, (rs, []))[1].append(ti)
        for rs, tis in by_run.values():
            await self._after_end(rs, tis)

    def _inline_outcome(self, rs: RunState, ti: TIState, now: datetime) -> dict[str, Any] | None:
        """The XComs of a resumed sensor that ends in success now, or None to run it as an
        ordinary resumed try."""
        event = ti.next_event or {}
        if event.get("kind") != "event":
            return None
        try:
            task = self._task_of(rs, ti)
            context = build_context(task, self._runtime_ti(rs, ti, now), rs.run)
            method = task.resume_method(ti.next_method or "")
            value = method(context, event=event.get("payload"), **(ti.next_kwargs or {}))
            if value is None or not task.do_xcom_push:
                return {}
            return {RETURN_KEY: check_json(value, task_id=task.task_id, key=RETURN_KEY)}
        except Exception:  # noqa: BLE001 - the ordinary try calls it again and records why
            return None

    def _runtime_ti(self, rs: RunState, ti: TIState, now: datetime) -> RuntimeTaskInstance:
        task = rs.dag.task_dict[ti.task_id]
        return RuntimeTaskInstance(
            dag_id=rs.run.dag_id, run_id=rs.run.run_id, task_id=ti.task_id,
            map_index=ti.map_index, try_number=ti.try_number, max_tries=ti.max_tries,
            start_date=ti.start_date or now, hostname=self.hostname, xcoms=rs.xcoms,
            upstream_task_ids=task.upstream_task_ids,
        )

    async def _cut_short(self, rs: RunState, ti: TIState, resume: Resume | None) -> None:
        """Shutdown cancelled a try as it started or while it ran. A fresh try is recorded
        as interrupted: without that, a restart would find its `running` row and count
        the try as lost, using up a retry. A resumed try is left as committed (`running`
        with its method, or `deferred`, and its fired trigger either way), so adoption
        resumes it from the same event in the same try instead of running `execute`
        again. Nothing is written for a run marked by hand or taken over meanwhile."""
        if resume is not None or rs.ended_by_hand or rs.lost:
            return
        with anyio.CancelScope(shield=True):
            await self._interrupted(rs, ti)

    async def _interrupted(self, rs: RunState, ti: TIState) -> None:
        """Shutdown cancelled a running try: leave it to be run again, without using a retry."""
        ti.state = TaskState.SCHEDULED
        ti.max_tries += 1
        ti.error = "interrupted by shutdown; will run again when aflow restarts"
        self._write_to_log(rs, ti, f"WARNING - {ti.error}")
        try:
            await self.store.save_tis([ti])
        except Exception:  # noqa: BLE001 - recovery on restart treats it as a lost try
            log.exception("could not record the interruption of %s", ti.task_id)

    async def _retry_later(self, rs: RunState, ti: TIState) -> None:
        """Wait until a retry (or a rescheduled sensor's next poke) is due, then queue it."""
        assert ti.next_retry_at is not None
        await self.clock.sleep_until(ti.next_retry_at)
        waiting = ti.state
        if waiting in (TaskState.UP_FOR_RETRY, TaskState.UP_FOR_RESCHEDULE) and rs.key in self.runs:
            ti.same_try = waiting is TaskState.UP_FOR_RESCHEDULE
            ti.state = TaskState.SCHEDULED
            self._submit(rs, ti)

    # -- finishing a run -------------------------------------------------------------
    async def _finish_run(self, rs: RunState) -> None:
        if rs.finishing or rs.lost:
            return
        rs.finishing = True
        leaves = skips.leaf_ids(rs.dag)  # (teardowns do not count: see skips.py)
        failed = any(
            ti.state in (TaskState.FAILED, TaskState.UPSTREAM_FAILED)
            for t in leaves for ti in rs.task_tis(t)
        )
        state = DagRunState.FAILED if failed else DagRunState.SUCCESS
        ended = dataclasses.replace(rs.run, state=state, end_date=self.clock.now())
        # One transaction: the end, or, if another process changed TIs of the run by hand
        # in the store meanwhile (before its rows were applied here), `queued` again.
        rs.run = await self._durably(self.store.end_run, ended)
        self.runs.pop(rs.key, None)
        if rs.run.state is DagRunState.QUEUED:
            log.info("run %s of %s: TIs were changed by hand as it ended; queued again",
                     rs.run.run_id, rs.run.dag_id)
            rs.lost = True  # waiters follow it in the store; a scheduler adopts it afresh
            for listener in self.on_run_finished:
                listener(rs)
            rs.done.set()
            return
        log.info("run %s of %s ended: %s", rs.run.run_id, rs.run.dag_id, state.value)
        callbacks = rs.dag.on_failure_callback if failed else rs.dag.on_success_callback
        if callbacks is not None:
            self.callbacks_running += 1  # (counted now: a shutdown waits for it, see below)
            self._tg.start_soon(self._dag_callback, rs, callbacks)
        for listener in self.on_run_finished:
            listener(rs)
        rs.done.set()

    async def _dag_callback(self, rs: RunState, cb: Any) -> None:
        failed = rs.run.state is DagRunState.FAILED
        context = {
            "dag": rs.dag,
            "dag_run": rs.run,
            "run_id": rs.run.run_id,
            "logical_date": rs.run.logical_date,
            "reason": "task_failure" if failed else "success",
            "failed_task_ids": sorted({t.task_id for t in rs.all_tis()
                                       if t.state is TaskState.FAILED}),
        }
        token = services.set_store(self.store)  # a notifier looks its Connection up there
        try:
            for one in cb if isinstance(cb, list | tuple) else [cb]:  # one, or a list
                try:
                    await call_callback(one, context, self.thread_limiter)
                except Exception:  # noqa: BLE001 - a callback never changes the run
                    log.exception("DAG %s callback failed", rs.dag.dag_id)
        finally:
            services.reset_store(token)
            self.callbacks_running -= 1
            self._callbacks_changed.set()

    async def wait_callbacks(self) -> None:
        """Return once no DAG callback is running (a shutdown lets them finish, within
        its grace period, as it does running tries)."""
        while self.callbacks_running:
            self._callbacks_changed = anyio.Event()
            await self._callbacks_changed.wait()

    async def _durably(self, write: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await durably(write, *args)

    # -- logs -------------------------------------------------------------------------
    def _log_path(self, rs: RunState, ti: TIState) -> str:
        return log_path(self.log_dir, rs.run.dag_id, rs.run.run_id, ti.task_id, ti.try_number, ti.map_index)

    def _write_to_log(self, rs: RunState, ti: TIState, line: str) -> None:
        if ti.try_number < 1:
            return
        task_log = TaskLog(self._log_path(rs, ti))
        try:
            task_log.write_line(f"[{self.clock.now().isoformat()}] {line}")
        finally:
            task_log.close()

