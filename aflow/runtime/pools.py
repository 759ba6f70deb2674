"""Pools: their definitions (checked in one place for the config file, the CLI and the
Orchestrator) and `PoolSync`, which keeps this process's Slots on the store's pools.

A pool's limit is enforced where tries run (Slots, in each scheduler process): with
several schedulers on one PostgreSQL, each lets up to `slots` of a pool's slots be taken
by its own tries.

`PoolSync` re-reads the pools every `poll_s` (1 s) and at once when the store announces
a change (PostgreSQL NOTIFY on POOLS_CHANNEL; then the periodic read is only a safety
sweep, every `sweep_s`). Tries parked because their pool was missing or too small start
as soon as a change makes them fit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskStatus

from aflow.authoring.dag import validate_id
from aflow.exceptions import AflowError, StoreError
from aflow.runtime.slots import Slots
from aflow.store.base import Store
from aflow.store.records import UNLIMITED_SLOTS, PoolRecord

log = logging.getLogger(__name__)

PoolSpec = int | Mapping[str, Any] | PoolRecord
_SPEC_KEYS = ("slots", "description", "include_deferred")


def check_pool(
    name: Any,
    slots: Any,
    description: Any = "",
    include_deferred: Any = False,
    *,
    where: str = "",
    error: type[AflowError] = AflowError,
) -> PoolRecord:
    """A valid PoolRecord, or `error` naming `where` and what is wrong."""
    prefix = f"{where}: " if where else ""
    try:
        validate_id("pool name", name)
    except AflowError as exc:
        raise error(f"{prefix}{exc}") from None
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < UNLIMITED_SLOTS:
        raise error(
            f"{prefix}pool {name!r}: slots must be an integer >= 0 (or -1 for no limit), "
            f"got {slots!r}"
        )
    if not isinstance(description, str):
        raise error(f"{prefix}pool {name!r}: description must be a string, got {description!r}")
    if not isinstance(include_deferred, bool):
        raise error(
            f"{prefix}pool {name!r}: include_deferred must be true or false, got {include_deferred!r}"
        )
    return PoolRecord(name, slots, description, include_deferred)


def parse_pools(
    specs: Mapping[str, PoolSpec], where: str = "pools", error: type[AflowError] = AflowError
) -> list[PoolRecord]:
    """Pools from `{name: slots}` or `{name: {"slots": N, "include_deferred": true,
    "description": "..."}}` (the `[pools]` table of aflow.toml, `Orchestrator(pools=)`)."""
    out = []
    for name, spec in specs.items():
        at = f"{where} {name}" if where else str(name)
        if isinstance(spec, PoolRecord):
            out.append(check_pool(spec.name, spec.slots, spec.description,
                                  spec.include_deferred, where=at, error=error))
        elif isinstance(spec, Mapping):
            unknown = sorted(set(spec) - set(_SPEC_KEYS))
            if unknown:
                raise error(
                    f"{at}: unknown key(s) {', '.join(map(repr, unknown))} "
                    f"(known: {', '.join(_SPEC_KEYS)})"
                )
            if "slots" not in spec:
                raise error(f"{at}: slots is missing (e.g. {name} = {{ slots = 4 }})")
            out.append(check_pool(name, spec["slots"], spec.get("description", ""),
                                  spec.get("include_deferred", False), where=at, error=error))
        else:
            out.append(check_pool(name, spec, where=at, error=error))
    return out


class PoolSync:
    """Keeps `slots.pools` on the store's pools (see the module doc)."""

    def __init__(self, store: Store, slots: Slots, *, poll_s: float, sweep_s: float) -> None:
        self.store = store
        self.slots = slots
        self.poll_s = poll_s
        self.sweep_s = sweep_s
        self.reads = 0  # how many times the pools were read (for tests)
        self._changed = anyio.Event()

    async def apply(self, pools: Iterable[PoolRecord]) -> None:
        """Write `pools` to the store (configured pools, at start)."""
        for pool in pools:
            await self.store.set_pool(pool)

    async def refresh(self) -> bool:
        """Read the pools now; True if they changed."""
        pools = await self.store.list_pools()
        self.reads += 1
        changed = self.slots.set_pools({p.name: p for p in pools})
        if changed:
            log.info("pools: %s", ", ".join(f"{p.name}={p.slots}" for p in pools))
        return changed

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        unsubscribe = await self.store.listen(Store.POOLS_CHANNEL, self._notified)
        try:
            await self.refresh()
            task_status.started()
            while True:
                wait = self.sweep_s if self.store.notifications_live else self.poll_s
                with anyio.move_on_after(wait):
                    await self._changed.wait()
                self._changed = anyio.Event()
                try:
                    await self.refresh()
                except StoreError:
                    log.exception("reading the pools failed; retrying")
        finally:
            unsubscribe()

    def _notified(self, payload: str) -> None:
        self._changed.set()
