"""Group commit: many concurrent writes share one transaction.

Callers `await submit(ops)`; one writer task takes everything queued, applies it in a
single transaction through the backend's `apply` callable, and wakes each caller once
its ops have committed (or with the exception that made its own op fail). While a batch
commits, new ops queue up, so batches grow by themselves under load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

log = logging.getLogger(__name__)

# One op: an ordered list of (sql, [params, ...]) to execute atomically with the rest.
Op = list[tuple[str, Sequence[Sequence[Any]]]]
ApplyBatch = Callable[[list[Op]], Awaitable[list[BaseException | None]]]


class GroupCommitter:
    def __init__(self, apply: ApplyBatch, max_batch_ops: int = 20_000) -> None:
        self._apply = apply
        self._max_batch_ops = max_batch_ops
        self._queue: list[tuple[Op, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.batches = 0
        self.ops = 0
        # called with (seconds, ops) after each batch's transaction (e.g. a histogram)
        self.observers: list[Callable[[float, int], None]] = []

    def _observe(self, started: float, ops: int) -> None:
        if self.observers:
            took = time.perf_counter() - started
            for observe in self.observers:
                observe(took, ops)

    async def submit(self, op: Op) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        self._wake.set()
        # Once queued, the op commits even if this caller is cancelled while waiting.
        await fut

    async def run(self) -> None:
        """The writer loop; returns after `close()` once everything queued is committed."""
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._queue[: self._max_batch_ops]
            del self._queue[: len(batch)]
            started = time.perf_counter()
            with anyio.CancelScope(shield=True):
                try:
                    results = await self._apply([op for op, _ in batch])
                except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                    results = [exc] * len(batch)
            self._observe(started, len(batch))
            self.batches += 1
            self.ops += len(batch)
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():  # its caller was cancelled; the op committed anyway
                    continue
                if result is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(result)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
