"""The deadline watcher: fires the DeadlineAlerts of the runs this process drives.

Timer-driven, never a scan: when the run driver adopts a run (RunDriver.on_run_adopted),
each alert of its DAG and tasks becomes one entry of a heap ordered by deadline, and one
task sleeps on the injectable clock until the earliest entry is due (it is woken when an
earlier one arrives). A run that ends (RunDriver.on_run_finished) drops its entries.

When an entry is due and its run (or task: every instance of it) has not finished, the
miss is recorded first (Store.record_deadline_miss, unique per run, task and alert), and
the alert's callbacks are called only if that insert won: across restarts (a re-adopted
run finds its miss recorded) and across processes on one PostgreSQL (only one insert
wins), a miss is alerted by the process that recorded it. A retry of the insert after a
lost commit acknowledgement recognises its own row (same owner, `missed_at` and state),
so the alert still goes out. Nothing about the run changes: no task is cancelled or
failed. How the alert ended (`sent`, `failed`) is recorded afterwards, while the row is
still this process's.

A process can die (or lose its run) between recording a miss and recording how its
alert ended: the row stays `sending`. The next process to drive the run takes the row
over and sends the alert itself (Store.claim_deadline_alert: only the run's lease holder
can, in one conditional update, so of processes that each think they drive the run one
at most gets it). That rides on the same timers, no scan: a deadline that has passed
when its run is adopted is due at once, and for an alert with callbacks its entry is
made, and checked, even if its task (or the run) has finished since. The guarantee: the
callbacks of a missed deadline are called once while the processes driving its run stay
up; across a crash, at least once: they are called again only if the process died, or
lost the run, after calling some of them and before recording the end (a callback
called before the crash is called again by the new owner). A run that has ended before
another process adopts it is not adopted, so an alert its dead owner left `sending`
stays so.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from aflow.authoring.dag import DAG
from aflow.authoring.deadlines import DeadlineAlert
from aflow.clock import Clock
from aflow.notifications.base import BaseNotifier
from aflow.runtime import services
from aflow.runtime.run_driver import RunDriver, RunState, durably
from aflow.runtime.task_runner import call_callback
from aflow.secrets.masking import mask
from aflow.states import FINISHED_TASK_STATES
from aflow.store.base import Store
from aflow.store.records import DeadlineMissRecord

log = logging.getLogger(__name__)

_COMPACT_MIN = 64  # rebuild the heap when over half of at least this many entries are dead


@dataclass(eq=False, slots=True)
class _Timer:
    when: datetime
    rs: RunState
    task_id: str | None  # None: the run's own deadline
    index: int
    alert: DeadlineAlert
    dead: bool = False
    # Overdue on adoption with callbacks: a miss recorded by a process that is gone may
    # wait for its alert (its row `sending`), so the entry is checked even if the run or
    # task has finished by the time it is due.
    overdue: bool = False


def alerts_of(dag: DAG) -> list[tuple[str | None, int, DeadlineAlert]]:
    """(task_id or None, index, alert) of every DeadlineAlert of `dag` and its tasks."""
    out: list[tuple[str | None, int, DeadlineAlert]] = [
        (None, i, a) for i, a in enumerate(getattr(dag, "deadlines", ()))
    ]
    for task in dag.tasks:
        out.extend((task.task_id, i, a) for i, a in enumerate(getattr(task, "deadlines", ())))
    return out


class DeadlineWatcher:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        driver: RunDriver,
        owner: str,
        thread_limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.driver = driver
        self.owner = owner
        self.thread_limiter = thread_limiter
        self.missed = 0  # misses this process recorded (and so alerted)
        self.firing = 0  # due deadlines being recorded and alerted now
        self._fire_done = anyio.Event()
        self.recorded_before = 0  # due deadlines whose miss another process (or life) recorded
        self.taken_over = 0  # of those, alerts left `sending` by a gone process, sent here
        # Called once a due deadline is dealt with: (the miss as recorded, whether this
        # process sent its alert: it recorded the miss, or took over an alert a gone
        # process left unsent). For metrics and tests.
        self.on_fired: list[Callable[[DeadlineMissRecord, bool], None]] = []
        self._sending: set[tuple[str, str, str | None, int]] = set()  # misses firing here
        self._heap: list[tuple[datetime, int, _Timer]] = []
        self._by_run: dict[tuple[str, str], list[_Timer]] = {}
        self._dead = 0
        self._seq = itertools.count()
        self._wake = anyio.Event()
        self._alerts: weakref.WeakKeyDictionary[DAG, list[Any]] = weakref.WeakKeyDictionary()
        self._tg: TaskGroup | None = None
        driver.on_run_adopted.append(self._adopted)
        driver.on_run_finished.append(self._finished)

    @property
    def pending(self) -> int:
        """Deadlines waiting to fall due."""
        return len(self._heap) - self._dead

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await self._loop()
            finally:
                self._tg = None

    # -- listeners of the run driver ------------------------------------------------------
    def _adopted(self, rs: RunState) -> None:
        alerts = self._alerts.get(rs.dag)
        if alerts is None:
            alerts = self._alerts[rs.dag] = alerts_of(rs.dag)
        if not alerts:
            return
        self._drop(rs.key)  # adopted again: its deadlines are computed afresh
        timers = []
        now = self.clock.now()
        for task_id, index, alert in alerts:
            when = alert.deadline_for(rs.run)
            if when is None:
                continue
            overdue = bool(alert.callbacks) and when <= now
            if not overdue and task_id is not None and _task_finished(rs, task_id):
                continue
            timer = _Timer(when, rs, task_id, index, alert, overdue=overdue)
            timers.append(timer)
            heapq.heappush(self._heap, (when, next(self._seq), timer))
            if self._heap[0][2] is timer:
                self._wake.set()
        if timers:
            self._by_run[rs.key] = timers

    def _finished(self, rs: RunState) -> None:
        self._drop(rs.key)

    def _drop(self, key: tuple[str, str]) -> None:
        for timer in self._by_run.pop(key, ()):
            if not timer.dead:
                timer.dead = True
                self._dead += 1
        if self._dead > _COMPACT_MIN and self._dead * 2 > len(self._heap):
            self._heap = [e for e in self._heap if not e[2].dead]
            heapq.heapify(self._heap)
            self._dead = 0

    # -- the timer --------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            self._wake = anyio.Event()
            while self._heap and self._heap[0][2].dead:
                heapq.heappop(self._heap)
                self._dead -= 1
            if not self._heap:
                await self._wake.wait()
                continue
            when, _, timer = self._heap[0]
            if when > self.clock.now():
                await self._sleep_until(when)
                continue
            heapq.heappop(self._heap)
            timer.dead = True  # (not counted in _dead: it has left the heap)
            timers = self._by_run.get(timer.rs.key)
            if timers is not None and timer in timers:  # (a run adopted again has others)
                timers.remove(timer)
                if not timers:
                    del self._by_run[timer.rs.key]
            if self._still_open(timer):
                self._start(self._record_and_alert, timer)
            elif timer.overdue and self._driven_here(timer.rs):
                self._start(self._take_over, timer)

    def _start(self, fire: Callable[[_Timer], Any], timer: _Timer) -> None:
        key = _key_of(timer)
        if key in self._sending:  # (the run was adopted again while this one fires)
            return
        assert self._tg is not None
        self._sending.add(key)
        self.firing += 1
        self._tg.start_soon(self._fire, fire, timer, key)

    async def wait_idle(self) -> None:
        """Return once no due deadline is being recorded or alerted (a shutdown lets
        them finish within its grace period)."""
        while self.firing:
            self._fire_done = anyio.Event()
            await self._fire_done.wait()

    async def _sleep_until(self, when: datetime) -> None:
        """Until `when` on the clock, or until an earlier deadline arrives."""
        async with anyio.create_task_group() as tg:

            async def sleep() -> None:
                await self.clock.sleep_until(when)
                tg.cancel_scope.cancel()

            async def woken() -> None:
                await self._wake.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(sleep)
            tg.start_soon(woken)

    def _driven_here(self, rs: RunState) -> bool:
        return self.driver.runs.get(rs.key) is rs and not rs.lost

    def _still_open(self, timer: _Timer) -> bool:
        """Whether the run is still driven here and the run (or task) has not finished."""
        rs = timer.rs
        if not self._driven_here(rs) or rs.finishing:
            return False
        if timer.task_id is None:
            return rs.unfinished > 0
        return not _task_finished(rs, timer.task_id)

    # -- firing ------------------------------------------------------------------------------
    async def _fire(
        self, fire: Callable[[_Timer], Any], timer: _Timer,
        key: tuple[str, str, str | None, int],
    ) -> None:
        try:
            await fire(timer)
        finally:
            self._sending.discard(key)
            self.firing -= 1
            self._fire_done.set()

    async def _record_and_alert(self, timer: _Timer) -> None:
        rs, alert = timer.rs, timer.alert
        miss = DeadlineMissRecord(
            dag_id=rs.run.dag_id, run_id=rs.run.run_id, task_id=timer.task_id,
            alert_index=timer.index, deadline_at=timer.when, missed_at=self.clock.now(),
            description=alert.describe(), owner=self.owner,
            alert_state="sending" if alert.callbacks else "none",
        )
        won = await durably(self.store.record_deadline_miss, miss)
        if not won:
            if alert.callbacks:
                await self._take_over(timer)
                return
            self.recorded_before += 1
            log.info("deadline %s of %s was recorded already", timer.index, _what(miss))
        else:
            self.missed += 1
            log.warning("%s missed its deadline (%s, at %s); the work goes on", _what(miss),
                        miss.description, miss.deadline_at.isoformat())
            if alert.callbacks:
                miss = await self._alert(rs, alert, miss)
        for listener in self.on_fired:
            listener(miss, won)

    async def _take_over(self, timer: _Timer) -> None:
        """A miss recorded already (by another process, or this one's former life): send
        its alert if its owner left it `sending` (it died, or lost the run, before
        recording how the alert ended) and this process, which holds the run's lease,
        takes the row over."""
        rs = timer.rs
        miss = await durably(self.store.claim_deadline_alert, rs.run.dag_id, rs.run.run_id,
                             timer.task_id, timer.index, self.owner)
        if miss is None:  # (an overdue entry of a task that ended in time, or never ran)
            return
        self.recorded_before += 1
        sends = miss.alert_state == "sending" and miss.owner == self.owner
        if sends:
            self.taken_over += 1
            log.warning("%s missed deadline %s (%s) and the process that recorded it did "
                        "not record its alert as sent; sending it from here", _what(miss),
                        timer.index, miss.description)
            miss = await self._alert(rs, timer.alert, miss)
        else:
            log.info("deadline %s of %s was recorded already (its alert: %s); no second "
                     "alert", timer.index, _what(miss), miss.alert_state)
        for listener in self.on_fired:
            listener(miss, sends)

    async def _alert(
        self, rs: RunState, alert: DeadlineAlert, miss: DeadlineMissRecord
    ) -> DeadlineMissRecord:
        errors = []
        token = services.set_store(self.store)  # a notifier looks its Connection up there
        try:
            for cb in alert.callbacks:
                try:
                    if isinstance(cb, BaseNotifier):  # its errors are raised, and recorded
                        await cb.send(self._context(rs, miss))
                    else:
                        await call_callback(cb, self._context(rs, miss), self.thread_limiter)
                except Exception as exc:  # noqa: BLE001 - an alert never changes the run
                    log.exception("deadline alert of %s failed", _what(miss))
                    errors.append(mask(f"{type(exc).__name__}: {exc}"))  # shown in the UI
        finally:
            services.reset_store(token)
        state, error = ("failed", "; ".join(errors)[:2000]) if errors else ("sent", None)
        mine = await durably(partial(self.store.set_deadline_alert_state, owner=self.owner),
                             miss.dag_id, miss.run_id, miss.task_id, miss.alert_index, state,
                             error)
        if not mine:  # this process was taken for gone (it lost the run) while sending
            log.warning("the alert of %s ended %s, but another process has taken it over "
                        "meanwhile; its end is not recorded from here", _what(miss), state)
        return replace(miss, alert_state=state, alert_error=error)

    def _context(self, rs: RunState, miss: DeadlineMissRecord) -> dict[str, Any]:
        context: dict[str, Any] = {
            "dag": rs.dag,
            "dag_run": rs.run,
            "run_id": rs.run.run_id,
            "logical_date": rs.run.logical_date,
            "reason": "deadline_missed",
            "deadline": miss,
            "task_id": miss.task_id,
        }
        if miss.task_id is not None:
            tis = rs.task_tis(miss.task_id) if miss.task_id in rs.tis else []
            if len(tis) == 1:
                context["ti"] = self.driver.record_of(tis[0])
        return context


def _key_of(timer: _Timer) -> tuple[str, str, str | None, int]:
    return (*timer.rs.key, timer.task_id, timer.index)


def _task_finished(rs: RunState, task_id: str) -> bool:
    """Every instance of the task (each map index) has ended."""
    return task_id in rs.tis and all(
        ti.state in FINISHED_TASK_STATES for ti in rs.task_tis(task_id))


def _what(miss: DeadlineMissRecord) -> str:
    task = f"task {miss.task_id} of " if miss.task_id else ""
    return f"{task}run {miss.run_id} of DAG {miss.dag_id}"
