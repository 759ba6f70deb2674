"""Summaries the CLI, the REST API and the UI all show: parked triggers by type, and the
task instances in each pool. One place, so the three cannot disagree."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from aflow.store.base import BY_HAND_CLASSPATH, Store
from aflow.store.records import TriggerRecord


@dataclass
class TriggerCount:
    classpath: str
    waiting: int = 0
    fired: int = 0  # fired, its task not resumed yet
    oldest_wait_s: float = 0.0


def trigger_counts(triggers: Iterable[TriggerRecord], now: datetime) -> list[TriggerCount]:
    """Parked triggers by type (by classpath). The rows a change by hand leaves for a run's
    driver are no wait and are left out."""
    by_type: dict[str, TriggerCount] = {}
    for t in triggers:
        if t.classpath == BY_HAND_CLASSPATH:
            continue
        row = by_type.setdefault(t.classpath, TriggerCount(t.classpath))
        if t.event is None:
            row.waiting += 1
            row.oldest_wait_s = max(row.oldest_wait_s, (now - t.created_at).total_seconds())
        else:
            row.fired += 1
    return sorted(by_type.values(), key=lambda r: r.classpath)


@dataclass
class PoolUse:
    name: str
    slots: int  # -1: no limit
    description: str
    include_deferred: bool
    running: int  # task instances queued or running in it, every process's
    deferred: int


async def pool_uses(store: Store) -> list[PoolUse]:
    usage = await store.pool_usage()
    out = []
    for p in await store.list_pools():
        counts = usage.get(p.name, {})
        out.append(PoolUse(p.name, p.slots, p.description, p.include_deferred,
                           counts.get("running", 0) + counts.get("queued", 0),
                           counts.get("deferred", 0)))
    return out
