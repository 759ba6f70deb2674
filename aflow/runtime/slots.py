"""Execution slots: at most `parallelism` tries run at once in this process, at most
`max_active_tasks` per DAG; waiting tries start in priority_weight order (then FIFO).
A deferred or retry-waiting TI holds no slot.

The slots are `parallelism` long-lived worker coroutines in the owner's task group, so
starting a try costs a queue hand-off, not a new task.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

log = logging.getLogger(__name__)

Start = Callable[[], Awaitable[None]]
# A waiting try: (-priority_weight, sequence, dag_id, dag_limit, start). The unique
# sequence number breaks ties FIFO and keeps tuple comparison off the later fields.
_Waiting = tuple[int, int, str, int, Start]


class Slots:
    def __init__(self, parallelism: int, task_group: TaskGroup) -> None:
        if parallelism < 1:
            raise ValueError("parallelism must be >= 1")
        self.parallelism = parallelism
        self._heap: list[_Waiting] = []
        self._blocked: dict[str, list[_Waiting]] = defaultdict(list)
        self._per_dag: dict[str, int] = defaultdict(int)
        self._seq = itertools.count()
        self._idle: deque[asyncio.Future[_Waiting | None]] = deque()
        self.running = 0
        self.accepting = True
        self._drained = anyio.Event()
        for _ in range(parallelism):
            task_group.start_soon(self._worker)

    @property
    def waiting(self) -> int:
        return len(self._heap) + sum(len(v) for v in self._blocked.values())

    def submit(self, dag_id: str, priority_weight: int, dag_limit: int, start: Start) -> None:
        """Queue a try; `start()` runs in a slot, which is free again when it returns."""
        heapq.heappush(self._heap, (-priority_weight, next(self._seq), dag_id, dag_limit, start))
        self._dispatch()

    def stop_accepting(self) -> None:
        """Shutdown phase one: start nothing new."""
        self.accepting = False
        if self.running == 0:
            self._drained.set()

    async def wait_drained(self) -> None:
        """After stop_accepting: wait until no try is running."""
        await self._drained.wait()

    def _next_runnable(self) -> _Waiting | None:
        while self._heap:
            item = heapq.heappop(self._heap)
            dag_id, dag_limit = item[2], item[3]
            if self._per_dag[dag_id] >= dag_limit:
                self._blocked[dag_id].append(item)
                continue
            return item
        return None

    def _dispatch(self) -> None:
        while self.accepting and self._idle and self._heap:
            item = self._next_runnable()
            if item is None:
                return
            waiter = self._idle.popleft()
            if waiter.done():  # its worker was cancelled
                self._requeue(item)
                continue
            self._claim(item)
            waiter.set_result(item)

    def _claim(self, item: _Waiting) -> None:
        self.running += 1
        self._per_dag[item[2]] += 1

    def _requeue(self, item: _Waiting) -> None:
        heapq.heappush(self._heap, item)

    def _release(self, item: _Waiting) -> None:
        self.running -= 1
        dag_id = item[2]
        self._per_dag[dag_id] -= 1
        blocked = self._blocked.pop(dag_id, None)
        if blocked:
            for waiting in blocked:
                heapq.heappush(self._heap, waiting)
        if not self.accepting and self.running == 0:
            self._drained.set()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item: _Waiting | None = None
            if self.accepting and not self._idle:
                item = self._next_runnable()
                if item is not None:
                    self._claim(item)
            if item is None:
                waiter: asyncio.Future[_Waiting | None] = loop.create_future()
                self._idle.append(waiter)
                item = await waiter
                if item is None:
                    continue
            try:
                await item[4]()
            except Exception:  # noqa: BLE001 - a try's own errors are handled inside it
                log.exception("a try crashed its slot")
            finally:
                self._release(item)
            self._dispatch()
