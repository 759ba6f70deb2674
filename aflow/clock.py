"""The one clock seam: every wait on wall time (retries, schedules, leases) goes through it.

`SystemClock` is real time; `ManualClock` lets tests move time forward by hand so that
schedules, retry delays and lease expiry are tested without sleeping.
"""

from __future__ import annotations

import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Return once `now() >= when`; cancellable."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        delay = (when - self.now()).total_seconds()
        if delay > 0:
            await anyio.sleep(delay)


class ManualClock:
    """A clock that only moves when `advance` or `set` is called."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2024, 1, 1, tzinfo=UTC)
        self._sleepers: list[tuple[datetime, int, anyio.Event]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        if when <= self._now:
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (when, next(self._seq), event))
        await event.wait()

    @property
    def pending(self) -> int:
        """How many sleepers wait for a future time."""
        return len(self._sleepers)

    def next_wakeup(self) -> datetime | None:
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, delta: timedelta | float) -> None:
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        self.set(self._now + delta)

    def set(self, when: datetime) -> None:
        if when < self._now:
            raise ValueError("ManualClock cannot go backwards")
        self._now = when
        while self._sleepers and self._sleepers[0][0] <= when:
            heapq.heappop(self._sleepers)[2].set()
