"""Time triggers: fire at a moment, all sharing one timer queue per process.

`DateTimeTrigger(moment)` fires at an aware wall-clock moment (at once if it has passed);
`TimeDeltaTrigger(delta)` is a DateTimeTrigger for now + delta, as in Airflow, and
serializes as a DateTimeTrigger with the absolute moment, so a restart does not push the
moment back.

Every waiting time trigger costs one entry in a heap and one small future, not a sleeping
task of its own: one `TimerQueue` per `Resources` keeps a heap of (deadline, seq, timer)
and ONE background task in the resources' task group that sleeps until the earliest
deadline and is re-armed when an earlier deadline is added. Deadlines are wall-clock
(`datetime.now(UTC)`); the sleep itself is an anyio sleep (cancellable) capped at
`MAX_SLEEP_S`, so a wall-clock jump is noticed within that time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from anyio.lowlevel import checkpoint

from triggers.base import BaseTrigger, TriggerEvent, classpath_of
from triggers.shared import Resources, current_resources

MAX_SLEEP_S = 60.0
"""Longest single sleep of the timer task; bounds how late a timer fires after the wall
clock jumps forward."""

_COMPACT_MIN = 64  # cancelled entries tolerated before the heap is rebuilt without them


class Wakeup:
    """A one-shot wake-up for one waiter: an asyncio future on asyncio (about 200 bytes,
    where an anyio Event costs about 900), an anyio Event on other backends.

    `set()` is idempotent; `wait()` returns once set. Shared by the trigger modules that
    park many waiters (timers, file waiters).
    """

    __slots__ = ("_event", "_future")

    def __init__(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): anyio's portable event
            self._future: asyncio.Future[None] | None = None
            self._event: anyio.Event | None = anyio.Event()
        else:
            self._future = loop.create_future()
            self._event = None

    def set(self) -> None:
        if self._future is not None:
            if not self._future.done():
                self._future.set_result(None)
        else:
            assert self._event is not None
            self._event.set()

    def is_set(self) -> bool:
        if self._future is not None:
            return self._future.done() and not self._future.cancelled()
        assert self._event is not None
        return self._event.is_set()

    async def wait(self) -> None:
        if self._future is not None:
            await self._future
        else:
            assert self._event is not None
            await self._event.wait()


_PENDING, _FIRED, _CANCELLED = 0, 1, 2


class Timer:
    """One registered deadline. `wait()` returns when the queue fires it; or, made with
    `on_fire`, the queue calls that (on the loop) instead, and there is nothing to wait on."""

    __slots__ = ("deadline", "state", "_on_fire", "_wakeup")

    def __init__(self, deadline: float, on_fire: Callable[[], None] | None = None) -> None:
        self.deadline = deadline
        self.state = _PENDING
        self._on_fire = on_fire
        self._wakeup = Wakeup() if on_fire is None else None

    def _fire(self) -> None:
        if self._on_fire is None:
            assert self._wakeup is not None
            self._wakeup.set()
            return
        try:
            self._on_fire()
        except Exception:  # the queue serves everyone: one bad callback is only logged
            logging.getLogger(__name__).exception("timer callback %r failed", self._on_fire)

    @property
    def fired(self) -> bool:
        return self.state == _FIRED

    async def wait(self) -> None:
        assert self._wakeup is not None, "a timer with on_fire is not waited on"
        await self._wakeup.wait()


class TimerQueue:
    """Many deadlines, one sleeping task. Get the shared one with `await TimerQueue.shared()`.

    Deadlines are POSIX timestamps (wall clock). Cancelled timers stay in the heap until
    they reach its top or until they are more than half of it (then it is rebuilt), so
    cancelling is O(1).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._live = 0
        self._cancelled = 0
        self._rearm = anyio.Event()
        self._armed = math.inf  # the deadline the sleeper is sleeping towards
        self.fired_total = 0

    @classmethod
    async def create(cls, resources: Resources) -> TimerQueue:
        """Factory for `Resources.get`: the queue and its one task in `resources.task_group`."""
        queue = cls()
        resources.task_group.start_soon(queue._sleeper, name="triggers.temporal.TimerQueue")
        return queue

    @classmethod
    async def shared(cls, resources: Resources | None = None) -> TimerQueue:
        """The one TimerQueue of `resources` (default: the current ones), made on first use."""
        resources = resources if resources is not None else current_resources()
        return await resources.get(TimerQueue, cls.create)

    # -- bookkeeping, for tests and health reports -------------------------------------

    def __len__(self) -> int:
        """Timers still waiting (cancelled and fired ones excluded)."""
        return self._live

    @property
    def heap_size(self) -> int:
        """Heap entries, including cancelled ones not yet dropped."""
        return len(self._heap)

    @property
    def armed_deadline(self) -> float:
        """The deadline the sleeping task will wake for (inf when the heap is empty)."""
        return self._armed

    # -- registering -----------------------------------------------------------------

    def add(self, deadline: float, on_fire: Callable[[], None] | None = None) -> Timer:
        """Register a wall-clock deadline; the returned timer fires at (or after) it (and
        then calls `on_fire`, if given)."""
        timer = Timer(deadline, on_fire)
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))
        self._live += 1
        if deadline < self._armed:
            self._armed = deadline
            self._rearm.set()
        return timer

    def cancel(self, timer: Timer) -> None:
        """Forget a pending timer (no-op if it fired or was cancelled); amortized O(1)."""
        if timer.state != _PENDING:
            return
        timer.state = _CANCELLED
        self._live -= 1
        self._cancelled += 1
        if self._live == 0:
            self._heap.clear()
            self._cancelled = 0
        elif self._cancelled > _COMPACT_MIN and self._cancelled * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2].state == _PENDING]
            heapq.heapify(self._heap)
            self._cancelled = 0

    async def sleep_until(self, deadline: float) -> None:
        """Wait until the wall-clock `deadline` (returns at once if it has passed)."""
        if deadline <= time.time():
            await checkpoint()
            return
        timer = self.add(deadline)
        try:
            await timer.wait()
        finally:
            self.cancel(timer)

    # -- the one sleeping task -------------------------------------------------------

    def _fire_due(self, now: float) -> None:
        heap = self._heap
        while heap and (heap[0][0] <= now or heap[0][2].state != _PENDING):
            _, _, timer = heapq.heappop(heap)
            if timer.state == _PENDING:
                timer.state = _FIRED
                self._live -= 1
                self.fired_total += 1
                timer._fire()
            else:
                self._cancelled -= 1

    async def _sleeper(self) -> None:
        while True:
            if self._rearm.is_set():
                self._rearm = anyio.Event()
            now = time.time()
            self._fire_due(now)
            if self._heap:
                self._armed = self._heap[0][0]
                delay = min(self._armed - now, MAX_SLEEP_S)
            else:
                self._armed = math.inf
                delay = math.inf
            with anyio.move_on_after(delay):
                await self._rearm.wait()


def _parse_moment(moment: datetime | str) -> datetime:
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            raise ValueError(f"DateTimeTrigger: moment {moment!r} is not ISO-8601 text") from None
    if not isinstance(moment, datetime):
        raise TypeError(
            f"DateTimeTrigger: moment must be a datetime or ISO text, not {type(moment).__name__}"
        )
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"DateTimeTrigger: moment {moment.isoformat()} is naive; pass an aware datetime "
            "(e.g. with tzinfo=datetime.UTC)"
        )
    return moment


class DateTimeTrigger(BaseTrigger):
    """Fire `TriggerEvent(moment.isoformat())` at `moment` (at once if it has passed).

    `moment` is an aware datetime (or its ISO text, which is how it is serialized).
    `end_from_trigger` is kept and serialized for the host to act on (Airflow's meaning:
    the task may end straight from the trigger without resuming on a worker).
    """

    def __init__(self, moment: datetime | str, *, end_from_trigger: bool = False) -> None:
        super().__init__()
        self.moment = _parse_moment(moment)
        self.end_from_trigger = bool(end_from_trigger)
        self._pending: tuple[TimerQueue, Timer] | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath_of(DateTimeTrigger), {
            "moment": self.moment.isoformat(),
            "end_from_trigger": self.end_from_trigger,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = self.moment.timestamp()
        if deadline > time.time():
            queue = await TimerQueue.shared()
            timer = queue.add(deadline)
            self._pending = (queue, timer)
            try:
                await timer.wait()
            finally:
                self._forget()
        yield TriggerEvent(self.moment.isoformat())

    def _forget(self) -> None:
        if self._pending is not None:
            queue, timer = self._pending
            self._pending = None
            queue.cancel(timer)

    async def cleanup(self) -> None:
        self._forget()


TimeTrigger = DateTimeTrigger
"""The issue's name for DateTimeTrigger."""


class TimeDeltaTrigger(DateTimeTrigger):
    """A DateTimeTrigger for now + `delta` (a timedelta or seconds), as Airflow's.

    It serializes as a DateTimeTrigger holding the absolute moment, so rebuilding it after
    a restart keeps the original moment.
    """

    def __init__(self, delta: timedelta | float, *, end_from_trigger: bool = False) -> None:
        if not isinstance(delta, timedelta):
            if isinstance(delta, bool) or not isinstance(delta, int | float):
                raise TypeError(
                    f"TimeDeltaTrigger: delta must be a timedelta or seconds, not "
                    f"{type(delta).__name__}"
                )
            delta = timedelta(seconds=delta)
        super().__init__(datetime.now(UTC) + delta, end_from_trigger=end_from_trigger)
