"""Execution slots: at most `parallelism` tries run at once in this process, at most
`max_active_tasks` per DAG, at most a task's `max_active_tis_per_dag` of its tries
across the DAG's runs and its `max_active_tis_per_dagrun` within one run, and the tries
of a pool together take at most its slots (`pool_slots` each); waiting tries start in
priority_weight order (then FIFO). A deferred or retry-waiting TI holds no execution
slot (and so counts towards none of these limits); a deferred TI keeps its pool slots
only when its pool has `include_deferred` (the run driver decides, see `PoolHold`).

The slots are `parallelism` long-lived worker coroutines in the owner's task group, so
starting a try costs a queue hand-off, not a new task.

Waiting tries are in one heap (the candidates). A candidate that meets a full DAG, a
full task limit (its key: `(dag_id, task_id)` or `(dag_id, run_id, task_id)`, see
`task_limits`) or a full pool is parked in that DAG's, key's or pool's own heap, and
comes back to the candidates only when there is room for it again: never all of them
at once, so 10,000 tries waiting for a pool of 4, or the 10,000 instances of a mapped
task limited to 3 per run, cost a few heap operations per try, not a scan each. A try
whose pool does not exist or is smaller than its `pool_slots` is parked apart
(`on_unrunnable` says why) until the pools change. A try without task limits costs one
`None` check for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup

from aflow.store.records import DEFAULT_POOL, DEFAULT_POOL_SLOTS, UNLIMITED_SLOTS, PoolRecord

log = logging.getLogger(__name__)

# A try's start: returns True when the pool slots it took stay held after the slot is
# free (the TI deferred into an include_deferred pool); the holder gives them back.
Start = Callable[[], Awaitable[bool | None]]


class PoolHold:
    """Slots of one pool held by one TI (the `pool_hold` of its holder)."""

    __slots__ = ("pool", "slots")

    def __init__(self, pool: str, slots: int) -> None:
        self.pool = pool
        self.slots = slots


# A task's limits on its own tries: ((key, limit), ...), one pair per limit it sets. The
# keys of the two kinds differ in length, so they share one count per key.
TaskKey = tuple[str, ...]
TaskLimits = tuple[tuple[TaskKey, int], ...]


def task_limits(
    dag_id: str, run_id: str, task_id: str, per_dag: int | None, per_dagrun: int | None
) -> TaskLimits | None:
    """The limits of one try of a task with `max_active_tis_per_dag=per_dag` and
    `max_active_tis_per_dagrun=per_dagrun` (None: no limit), or None when it has none."""
    if per_dag is None:
        return None if per_dagrun is None else (((dag_id, run_id, task_id), per_dagrun),)
    if per_dagrun is None:
        return (((dag_id, task_id), per_dag),)
    return (((dag_id, task_id), per_dag), ((dag_id, run_id, task_id), per_dagrun))


class Entry:
    """A waiting try."""

    __slots__ = ("counted", "dag_id", "dag_limit", "hold", "holder", "limits", "pool",
                 "pool_slots", "queued_at", "start")

    def __init__(
        self, dag_id: str, dag_limit: int, pool: str, pool_slots: int, holder: Any, start: Start,
        limits: TaskLimits | None = None,
    ) -> None:
        self.dag_id = dag_id
        self.dag_limit = dag_limit
        self.limits = limits
        self.pool = pool
        self.pool_slots = pool_slots
        self.holder = holder  # has a `pool_hold: PoolHold | None` attribute
        self.start = start
        self.counted = False  # its pool slots are in the candidates' count
        self.hold: PoolHold | None = None  # what it held when it was claimed
        self.queued_at = time.monotonic()


# (-priority_weight, sequence, entry): the unique sequence breaks ties FIFO and keeps
# tuple comparison off the entry.
_Item = tuple[int, int, Entry]


class _Holder:
    __slots__ = ("pool_hold",)

    def __init__(self) -> None:
        self.pool_hold: PoolHold | None = None


class Slots:
    def __init__(
        self,
        parallelism: int,
        task_group: TaskGroup,
        pools: Mapping[str, PoolRecord] | None = None,
    ) -> None:
        if parallelism < 1:
            raise ValueError("parallelism must be >= 1")
        self.parallelism = parallelism
        self._heap: list[_Item] = []
        self._dag_wait: dict[str, list[_Item]] = {}  # parked: the DAG is at max_active_tasks
        self._pool_wait: dict[str, list[_Item]] = {}  # parked: the pool has too few free slots
        self._key_wait: dict[TaskKey, list[_Item]] = {}  # parked: a task limit of it is full
        self._unrunnable: list[_Item] = []  # parked: no such pool, or it is too small
        self._per_dag: dict[str, int] = defaultdict(int)  # running tries per DAG
        self._heap_per_dag: dict[str, int] = defaultdict(int)  # candidates per DAG
        # running tries per task-limit key (a key at 0 is removed: there is one per run of
        # a limited task)
        self._per_key: dict[TaskKey, int] = {}
        self._held_at_key: dict[TaskKey, int] = {}  # parked at a key, holding pool slots
        self.pool_used: dict[str, int] = defaultdict(int)  # slots held per pool
        self._heap_pool_slots: dict[str, int] = defaultdict(int)  # slots candidates need
        self.pools: dict[str, PoolRecord] = {}
        self._seq = itertools.count()
        self._idle: deque[asyncio.Future[Entry | None]] = deque()
        self.running = 0
        self.accepting = True
        # called with how long a try waited from submit to its slot (e.g. a histogram)
        self.on_start: Callable[[float], None] | None = None
        # Called with (entry, reason) when a try is parked because of its pool's definition.
        self.on_unrunnable: Callable[[Entry, str], None] | None = None
        self._drained = anyio.Event()
        self._batching = 0  # inside batch(): submit() does not dispatch
        self.set_pools(pools or {})
        for _ in range(parallelism):
            task_group.start_soon(self._worker)

    @property
    def waiting(self) -> int:
        return (
            len(self._heap)
            + sum(len(v) for v in self._dag_wait.values())
            + sum(len(v) for v in self._pool_wait.values())
            + sum(len(v) for v in self._key_wait.values())
            + len(self._unrunnable)
        )

    # -- pools ------------------------------------------------------------------------
    def set_pools(self, pools: Mapping[str, PoolRecord]) -> bool:
        """Replace the pool definitions (from the store). Tries parked because of a pool
        are considered again if anything changed. Returns whether anything did."""
        new = dict(pools)
        if DEFAULT_POOL not in new:
            new[DEFAULT_POOL] = PoolRecord(DEFAULT_POOL, DEFAULT_POOL_SLOTS)
        if new == self.pools:
            return False
        self.pools = new
        parked = self._unrunnable
        self._unrunnable = []
        for items in self._pool_wait.values():
            parked.extend(items)
        self._pool_wait = {}
        for item in parked:
            self._push(item)
        if parked:
            self._dispatch()
        return True

    def include_deferred(self, pool: str) -> bool:
        record = self.pools.get(pool)
        return record is not None and record.include_deferred

    def take_hold(self, holder: Any, pool: str, slots: int) -> None:
        """`holder` holds `slots` of `pool` from now on, whatever is free (a deferred TI
        found at adoption)."""
        if holder.pool_hold is None:
            holder.pool_hold = PoolHold(pool, slots)
            self.pool_used[pool] += slots

    def release_hold(self, holder: Any, *, dispatch: bool = True) -> None:
        """`holder` gives its pool slots back (no effect if it holds none)."""
        hold: PoolHold | None = holder.pool_hold
        if hold is None:
            return
        holder.pool_hold = None
        self.pool_used[hold.pool] -= hold.slots
        self._refill_pool(hold.pool, freed=True)
        if dispatch:
            self._dispatch()

    # -- queueing ---------------------------------------------------------------------
    def submit(
        self,
        dag_id: str,
        priority_weight: int,
        dag_limit: int,
        start: Start,
        *,
        pool: str = DEFAULT_POOL,
        pool_slots: int = 1,
        holder: Any = None,
        limits: TaskLimits | None = None,
    ) -> None:
        """Queue a try; `start()` runs in a slot, which is free again when it returns.
        A `holder` that already holds its pool slots (`pool_hold`) skips the pool.
        `limits` are its task's (see `task_limits`)."""
        entry = Entry(dag_id, dag_limit, pool, pool_slots, holder or _Holder(), start, limits)
        self._push((-priority_weight, next(self._seq), entry))
        if not self._batching:
            self._dispatch()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Tries submitted inside are handed to idle slots together when it ends, so that
        they start in priority order among themselves rather than as submitted."""
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
            if not self._batching:
                self._dispatch()

    def stop_accepting(self) -> None:
        """Shutdown phase one: start nothing new."""
        self.accepting = False
        if self.running == 0:
            self._drained.set()

    async def wait_drained(self) -> None:
        """After stop_accepting: wait until no try is running."""
        await self._drained.wait()

    def _push(self, item: _Item) -> None:
        entry = item[2]
        self._heap_per_dag[entry.dag_id] += 1
        entry.counted = entry.holder.pool_hold is None
        if entry.counted:
            self._heap_pool_slots[entry.pool] += entry.pool_slots
        heapq.heappush(self._heap, item)

    def _pop(self) -> _Item:
        item = heapq.heappop(self._heap)
        entry = item[2]
        self._heap_per_dag[entry.dag_id] -= 1
        if entry.counted:
            self._heap_pool_slots[entry.pool] -= entry.pool_slots
        return item

    def _pool_limit(self, pool: str) -> int | None:
        record = self.pools.get(pool)
        return None if record is None else record.slots

    def _next_runnable(self) -> _Item | None:
        while self._heap:
            item = self._pop()
            entry = item[2]
            dag_id = entry.dag_id
            # Parked, it leaves the candidates: tries kept parked by a limit it was counted
            # in may come back in its place, unless they too are sure to meet the limit
            # it met (see _park_at_key and _refill_held).
            limits = entry.limits
            if self._per_dag[dag_id] >= entry.dag_limit:
                heapq.heappush(self._dag_wait.setdefault(dag_id, []), item)
                self._refill_pool(entry.pool)
                continue
            if limits is not None and self._park_at_key(item, limits):
                continue
            if entry.holder.pool_hold is None:
                pool = entry.pool
                limit = self._pool_limit(pool)
                if limit is None or (limit != UNLIMITED_SLOTS and entry.pool_slots > limit):
                    self._unrunnable.append(item)
                    self._refill_dag(dag_id, entry.dag_limit)
                    self._refill_pool(pool)
                    if limits is not None and self._held_at_key:
                        self._refill_held(limits)
                    if self.on_unrunnable is not None:
                        self.on_unrunnable(entry, self._why_unrunnable(entry, limit))
                    continue
                if limit != UNLIMITED_SLOTS and self.pool_used[pool] + entry.pool_slots > limit:
                    heapq.heappush(self._pool_wait.setdefault(pool, []), item)
                    # It no longer counts against the pool's room: tries parked behind it
                    # that fit may come back (it stays ahead of lighter ones).
                    self._refill_pool(pool)
                    self._refill_dag(dag_id, entry.dag_limit)
                    if limits is not None and self._held_at_key:
                        self._refill_held(limits)
                    continue
            return item
        return None

    @staticmethod
    def _why_unrunnable(entry: Entry, limit: int | None) -> str:
        if limit is None:
            return (f"waiting for pool {entry.pool!r}, which does not exist "
                    f"(create it with `aflow pools set {entry.pool} SLOTS`)")
        return (f"waiting: it needs {entry.pool_slots} slots of pool {entry.pool!r}, which "
                f"has {limit} (grow it with `aflow pools set {entry.pool} SLOTS`)")

    def _refill_dag(self, dag_id: str, dag_limit: int, *, freed: bool = False) -> None:
        """Bring parked tries of `dag_id` back while the DAG has room for them. Its tries
        among the candidates count against that room, except when one of its tries has
        just ended (`freed`): then as many come back as it has room for, so that a parked
        try is not passed by a lighter one that came after it (those that do not start
        are parked again)."""
        parked = self._dag_wait.get(dag_id)
        if not parked:
            return
        room = dag_limit - self._per_dag[dag_id]
        if not freed:
            room -= self._heap_per_dag[dag_id]
        while parked and room > 0:
            self._push(heapq.heappop(parked))
            room -= 1
        if not parked:
            del self._dag_wait[dag_id]

    # -- task limits ------------------------------------------------------------------
    # Every try of a key is of one task, so of one DAG and one pool, and every try of a
    # run's key is also one of its task's DAG-wide key. So when a try meets a full DAG,
    # or its task's full DAG-wide limit, the tries parked at its keys stay parked: they
    # would meet it too (bringing them back would only move them all from one wait to
    # the other, and back when the other limit frees). When it meets its run's full
    # limit, tries of the task's other runs parked at the DAG-wide key may take the room
    # it leaves. A full pool stops every try of a key too, except one that already holds
    # its pool slots (a resumed deferred TI, see PoolHold): while one is parked at a key
    # (`_held_at_key`), the tries ahead of it come back past the full pool.
    def _park_at_key(self, item: _Item, limits: TaskLimits) -> bool:
        """Park a candidate at the first of its task-limit keys that is full (True), or
        leave it (False)."""
        running = self._per_key
        full = next((key for key, limit in limits if running.get(key, 0) >= limit), None)
        if full is None:
            return False
        entry = item[2]
        heapq.heappush(self._key_wait.setdefault(full, []), item)
        if not entry.counted:  # (it held its pool slots when it was queued)
            self._held_at_key[full] = self._held_at_key.get(full, 0) + 1
        self._refill_dag(entry.dag_id, entry.dag_limit)
        self._refill_pool(entry.pool)
        if full is not limits[0][0]:  # its run's limit is full, not its task's DAG-wide
            self._refill_key(*limits[0])  # one: tries of the task's other runs may go on
        return True

    def _refill_key(self, key: TaskKey, limit: int) -> None:
        """Bring back as many of the tries parked at `key` as it has room for, in their
        order. Candidates of the key in the heap are not counted against the room: a try
        queued later, never parked, would otherwise start before earlier ones parked
        (the heap orders them all, and one that finds the key full again is parked
        again)."""
        parked = self._key_wait.get(key)
        if parked is None:
            return
        for _ in range(limit - self._per_key.get(key, 0)):
            item = heapq.heappop(parked)
            if not item[2].counted:
                self._unheld(key)
            self._push(item)
            if not parked:
                del self._key_wait[key]
                return

    def _refill_held(self, limits: TaskLimits) -> None:
        """A try of these keys met a full pool: bring tries parked at its keys back while
        one that holds its pool slots is parked there."""
        for key, limit in limits:
            while self._held_at_key.get(key) and self._per_key.get(key, 0) < limit:
                item = heapq.heappop(self._key_wait[key])
                if not item[2].counted:
                    self._unheld(key)
                self._push(item)
                if not self._key_wait[key]:
                    del self._key_wait[key]

    def _unheld(self, key: TaskKey) -> None:
        left = self._held_at_key[key] - 1
        if left:
            self._held_at_key[key] = left
        else:
            del self._held_at_key[key]

    def _refill_pool(self, pool: str, *, freed: bool = False) -> None:
        """Bring parked tries of `pool` back while the pool has room for them (in priority
        order: one that does not fit yet keeps those behind it parked). The slots the
        candidates need count against that room, except when slots have just been given
        back (`freed`): as for a DAG's, see _refill_dag."""
        parked = self._pool_wait.get(pool)
        if not parked:
            return
        limit = self._pool_limit(pool)
        if limit is None:
            return
        room = limit - self.pool_used[pool]
        if not freed:
            room -= self._heap_pool_slots[pool]
        while parked and (limit == UNLIMITED_SLOTS or parked[0][2].pool_slots <= room):
            room -= parked[0][2].pool_slots
            self._push(heapq.heappop(parked))
        if not parked:
            del self._pool_wait[pool]

    def _dispatch(self) -> None:
        while self.accepting and self._idle and self._heap:
            item = self._next_runnable()
            if item is None:
                return
            waiter = self._idle.popleft()
            if waiter.done():  # its worker was cancelled
                self._push(item)
                continue
            self._claim(item[2])
            waiter.set_result(item[2])

    def _claim(self, entry: Entry) -> None:
        if self.on_start is not None:
            self.on_start(time.monotonic() - entry.queued_at)
        self.running += 1
        self._per_dag[entry.dag_id] += 1
        if entry.limits is not None:
            running = self._per_key
            for key, _ in entry.limits:
                running[key] = running.get(key, 0) + 1
        holder = entry.holder
        if holder.pool_hold is None:
            holder.pool_hold = PoolHold(entry.pool, entry.pool_slots)
            self.pool_used[entry.pool] += entry.pool_slots
        entry.hold = holder.pool_hold

    def _release(self, entry: Entry, keep: bool) -> None:
        self.running -= 1
        dag_id = entry.dag_id
        self._per_dag[dag_id] -= 1
        self._refill_dag(dag_id, entry.dag_limit, freed=True)
        if entry.limits is not None:
            running = self._per_key
            for key, _ in entry.limits:
                left = running[key] - 1
                if left:
                    running[key] = left
                else:
                    del running[key]
            for key, limit in entry.limits:
                self._refill_key(key, limit)
        holder = entry.holder
        if not keep and entry.hold is not None and holder.pool_hold is entry.hold:
            self.release_hold(holder, dispatch=False)  # the worker takes the next try itself
        if not self.accepting and self.running == 0:
            self._drained.set()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            entry: Entry | None = None
            if self.accepting:
                # This worker is free: it takes the next runnable try itself (no hand-off
                # to an idle worker), then hands out what else its release made runnable.
                item = self._next_runnable()
                if item is not None:
                    entry = item[2]
                    self._claim(entry)
                    if self._idle:
                        self._dispatch()
            if entry is None:
                waiter: asyncio.Future[Entry | None] = loop.create_future()
                self._idle.append(waiter)
                entry = await waiter
                if entry is None:
                    continue
            keep = False
            try:
                keep = bool(await entry.start())
            except Exception:  # noqa: BLE001 - a try's own errors are handled inside it
                log.exception("a try crashed its slot")
            finally:
                self._release(entry, keep)
