"""Group commit on several connections at once, for PostgresStore.

One writer (aflow.store.group_commit) alternates with the event loop: while its batch
commits, the callers that wait on it cannot go on, and while they run, the database is
idle. Here up to `workers` batches are in flight at once, each on its own connection, so
the database works on one part of the queue while the loop goes on with callers of
another part that has already committed.

Order is kept where it matters: two ops that touch the same row are never in flight at
once, and are applied in the order they were submitted. Each op names the rows it touches
(`keys_of(op)`: a set of hashable keys, or None for "unknown: any row"); a batch is a
prefix of the queue whose ops share no key with any batch in flight, and an op with
unknown keys only starts when nothing else is in flight (and then nothing starts beside
it). A batch takes at most its share of the queue (the queue split among idle workers),
so a burst of ops is committed by several connections at once. Callers are answered in
the order their batches were taken: when a write returns, every write submitted before
it has committed (as with one writer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

import anyio

from aflow.store.group_commit import ApplyBatch, GroupCommitter, Op

log = logging.getLogger(__name__)

KeysOf = Callable[[Op], "frozenset[Hashable] | None"]

# A batch smaller than this is not split further (a commit costs a WAL flush).
MIN_SPLIT = 32


class _Pending:
    __slots__ = ("op", "keys", "fut")

    def __init__(self, op: Op, keys: frozenset[Hashable] | None, fut: asyncio.Future[None]) -> None:
        self.op = op
        self.keys = keys
        self.fut = fut


class PipelinedCommitter(GroupCommitter):
    """A GroupCommitter (same `submit`, `run`, `close`, `batches`, `ops`) with several
    writers."""

    def __init__(
        self,
        apply: ApplyBatch,
        keys_of: KeysOf,
        *,
        workers: int = 2,
        max_batch_ops: int = 20_000,
    ) -> None:
        super().__init__(apply, max_batch_ops)
        self._keys_of = keys_of
        self._workers = max(1, workers)
        self._pending: list[_Pending] = []
        self._in_flight: set[Hashable] = set()
        self._batches_in_flight = 0
        self._barrier = False  # a batch with an op of unknown keys is in flight
        self._idle = 0
        # Callers are answered in the order their batches were taken, so that a write
        # that returns implies every write submitted before it has committed.
        self._taken = 0
        self._answered = 0
        self._done: dict[int, tuple[list[_Pending], list[Any]]] = {}

    async def submit(self, op: Op) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(op, self._keys_of(op), fut))
        self._wake.set()
        # Once queued, the op commits even if this caller is cancelled while waiting.
        await fut

    async def run(self) -> None:
        """The writers; returns after `close()` once everything queued is committed."""
        async with anyio.create_task_group() as tg:
            for _ in range(self._workers):
                tg.start_soon(self._worker)

    def _take(self) -> tuple[list[_Pending], set[Hashable]]:
        """The next batch that may start now (empty if none), and the keys it touches."""
        if not self._pending or self._barrier:
            return [], set()
        share = max(MIN_SPLIT, -(-len(self._pending) // (self._idle + 1)))
        limit = min(self._max_batch_ops, share)
        batch: list[_Pending] = []
        keys: set[Hashable] = set()
        for pending in self._pending:
            if len(batch) >= limit:
                break
            if pending.keys is None:
                if self._batches_in_flight or batch:
                    break
                batch.append(pending)
                self._barrier = True
                break
            if not pending.keys.isdisjoint(self._in_flight):
                break  # (ops of one batch may share keys: they apply in order)
            batch.append(pending)
            keys |= pending.keys
        if batch:
            del self._pending[: len(batch)]
            self._in_flight |= keys
            self._batches_in_flight += 1
        return batch, keys

    async def _worker(self) -> None:
        while True:
            batch, keys = self._take()
            if not batch:
                if self._closed and not self._pending and not self._batches_in_flight:
                    self._wake.set()  # let the other workers see it too
                    return
                self._idle += 1
                self._wake.clear()
                try:
                    await self._wake.wait()
                finally:
                    self._idle -= 1
                continue
            seq = self._taken
            self._taken += 1
            if self._pending:
                self._wake.set()  # another worker may take the rest
            started = time.perf_counter()
            with anyio.CancelScope(shield=True):
                try:
                    results: list[Any] = await self._apply([p.op for p in batch])
                except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                    results = [exc] * len(batch)
            self._observe(started, len(batch))
            self._in_flight -= keys
            self._batches_in_flight -= 1
            if any(p.keys is None for p in batch):
                self._barrier = False
            self.batches += 1
            self.ops += len(batch)
            self._wake.set()
            self._done[seq] = (batch, results)
            while self._answered in self._done:
                answered, results = self._done.pop(self._answered)
                self._answered += 1
                for pending, result in zip(answered, results, strict=True):
                    if pending.fut.done():  # its caller was cancelled; it committed anyway
                        continue
                    if result is None:
                        pending.fut.set_result(None)
                    else:
                        pending.fut.set_exception(result)
