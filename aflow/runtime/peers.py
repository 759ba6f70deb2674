"""How many other live processes of one kind share the store: schedulers and triggerers
claim less greedily while they have peers, so work spreads between them."""

from __future__ import annotations

import math
import time
from datetime import timedelta

from aflow.clock import Clock
from aflow.exceptions import StoreError
from aflow.store.base import Store


class LivePeers:
    """Other processes of `kind` whose heartbeat is younger than `fresh_s`, read from the
    store at most every `reread_s` (the claim loops ask on every pass)."""

    def __init__(
        self, store: Store, clock: Clock, *, kind: str, me: str, fresh_s: float, reread_s: float
    ) -> None:
        self.store = store
        self.clock = clock
        self.kind = kind
        self.me = me
        self.fresh_s = fresh_s
        self.reread_s = reread_s
        self._count = 0
        self._read_at = -math.inf

    async def count(self) -> int:
        now = time.monotonic()
        if now - self._read_at < self.reread_s:
            return self._count
        self._read_at = now
        try:
            processes = await self.store.list_processes(self.kind)
        except StoreError:
            return self._count  # keep the last answer; the claim that follows reports it
        fresh_after = self.clock.now() - timedelta(seconds=self.fresh_s)
        self._count = sum(
            1 for p in processes if p.process_id != self.me and p.heartbeat_at >= fresh_after
        )
        return self._count
