"""Execution slots: at most `parallelism` tries run at once in this process, at most
`max_active_tasks` per DAG; waiting tries start in priority_weight order (then FIFO).
A deferred or retry-waiting TI holds no slot."""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from anyio.abc import TaskGroup


@dataclass(order=True)
class _Waiting:
    sort_key: tuple[int, int]
    dag_id: str = field(compare=False)
    dag_limit: int = field(compare=False)
    start: Callable[[Slot], Awaitable[None]] = field(compare=False)


class Slot:
    """Held by one running try; `release()` frees it (idempotent)."""

    __slots__ = ("_pool", "dag_id", "_released")

    def __init__(self, pool: Slots, dag_id: str) -> None:
        self._pool = pool
        self.dag_id = dag_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._on_release(self)


class Slots:
    def __init__(self, parallelism: int, task_group: TaskGroup) -> None:
        if parallelism < 1:
            raise ValueError("parallelism must be >= 1")
        self.parallelism = parallelism
        self._tg = task_group
        self._heap: list[_Waiting] = []
        self._blocked: dict[str, list[_Waiting]] = defaultdict(list)
        self._per_dag: dict[str, int] = defaultdict(int)
        self._seq = itertools.count()
        self.running = 0
        self.accepting = True

    @property
    def waiting(self) -> int:
        return len(self._heap) + sum(len(v) for v in self._blocked.values())

    def submit(
        self,
        dag_id: str,
        priority_weight: int,
        dag_limit: int,
        start: Callable[[Slot], Awaitable[None]],
    ) -> None:
        """Queue a try; `start(slot)` is spawned in the task group when a slot is free and
        must call `slot.release()` when the try's execution ends."""
        item = _Waiting((-priority_weight, next(self._seq)), dag_id, dag_limit, start)
        heapq.heappush(self._heap, item)
        self._pump()

    def stop_accepting(self) -> None:
        """Shutdown phase one: start nothing new."""
        self.accepting = False

    def _pump(self) -> None:
        while self.accepting and self.running < self.parallelism and self._heap:
            item = heapq.heappop(self._heap)
            if self._per_dag[item.dag_id] >= item.dag_limit:
                self._blocked[item.dag_id].append(item)
                continue
            self.running += 1
            self._per_dag[item.dag_id] += 1
            self._tg.start_soon(item.start, Slot(self, item.dag_id))

    def _on_release(self, slot: Slot) -> None:
        self.running -= 1
        self._per_dag[slot.dag_id] -= 1
        blocked = self._blocked.pop(slot.dag_id, None)
        if blocked:
            for item in blocked:
                heapq.heappush(self._heap, item)
        self._pump()
