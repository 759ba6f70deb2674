"""Asset watchers in the triggerer: the trigger of each AssetWatcher runs here, with no
task instance, no task polling and no worker slot; each event it yields is recorded as
an event of its asset (the trigger's payload as `extra`), and the watcher goes on with
the trigger that waits for the next event (`BaseTrigger.next_watch`).

Watchers are rows recorded from the DAGs (Store.upsert_dags). A triggerer claims those
without a live owner under its trigger lease, so with several triggerers exactly one
runs each watcher; a dead triggerer's watchers are taken over when its lease expires.
The event and the trigger kwargs of the next wait commit in one transaction, and only
while this triggerer still owns that version of the watcher: a watcher the DAG file
changed or removed, or that another triggerer took over, records nothing more here and
stops (checked at every claim pass, and at every event).

A trigger that fails is logged and started again after a backoff (1 s doubling to 60 s);
a one-shot trigger (`next_watch` returns None, e.g. a DateTimeTrigger) is done after its
first event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
from anyio.abc import TaskGroup

from aflow.clock import Clock
from aflow.exceptions import StoreError
from aflow.store.base import Store
from aflow.store.records import AssetEventRecord, AssetWatcherRecord
from triggers.base import BaseTrigger, check_kwargs, load_trigger

log = logging.getLogger(__name__)

RETRY_START_S = 1.0
RETRY_MAX_S = 60.0
CLAIM_LIMIT = 1000


class AssetWatchers:
    """The watchers one triggerer runs."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        owner: str,
        lease_until: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.clock = clock
        self.owner = owner
        self.lease_until = lease_until
        self.running: dict[int, tuple[int, anyio.CancelScope]] = {}  # id -> (version, scope)
        self.on_event: list[Callable[[], Any]] = []  # e.g. the scheduler's asset wake-up
        self.events = 0

    async def sync(self, tg: TaskGroup) -> None:
        """Stop watchers this triggerer no longer owns (or whose definition changed), and
        start those it can claim."""
        if self.running:
            owned = await self.store.owned_asset_watchers(self.owner)
            for watcher_id, (version, scope) in list(self.running.items()):
                if owned.get(watcher_id) != version:
                    log.info("asset watcher #%d changed or moved away: stopping it here", watcher_id)
                    scope.cancel()
                    del self.running[watcher_id]
        claimed = await self.store.claim_asset_watchers(
            self.owner, self.clock.now(), self.lease_until(), CLAIM_LIMIT
        )
        for record in claimed:
            assert record.id is not None
            old = self.running.pop(record.id, None)
            if old is not None:
                old[1].cancel()
            scope = anyio.CancelScope()
            self.running[record.id] = (record.version, scope)
            tg.start_soon(self._watch, record, scope)

    async def _watch(self, record: AssetWatcherRecord, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await self._watch_loop(record)
            finally:
                current = self.running.get(record.id or 0)
                if current is not None and current[1] is scope:
                    del self.running[record.id or 0]

    async def _watch_loop(self, record: AssetWatcherRecord) -> None:
        kwargs = record.kwargs
        delay = RETRY_START_S
        where = f"asset watcher {record.name!r} of {record.uri} ({record.classpath})"
        log.info("running %s", where)
        while kwargs is not None:
            try:
                trigger = load_trigger(record.classpath, kwargs)
                payload = await _next_payload(trigger)
                following = trigger.next_watch(payload)
                next_kwargs = None
                if following is not None:
                    classpath, next_kwargs = following.serialize()
                    check_kwargs(classpath, next_kwargs)
            except Exception:  # noqa: BLE001 - a failing trigger is retried, the rest go on
                log.exception("%s failed; starting it again in %gs", where, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_START_S
            event = AssetEventRecord(
                id=0,
                uri=record.uri,
                timestamp=self.clock.now(),
                extra=payload if isinstance(payload, dict) else {"payload": payload},
                source_watcher=record.name,
            )
            if not await self._record(record, event, next_kwargs):
                log.info("%s changed or moved away; stopping it here", where)
                return
            self.events += 1
            for listener in self.on_event:
                listener()
            kwargs = next_kwargs
        log.info("%s has reported its one event and is done", where)

    async def _record(
        self, record: AssetWatcherRecord, event: AssetEventRecord, next_kwargs: dict[str, Any] | None
    ) -> bool:
        delay = 0.1
        while True:
            try:
                return await self.store.fire_asset_watcher(record, record.version, event, next_kwargs)
            except StoreError as exc:
                log.warning("could not record an event of %s (%s); retrying", record.uri, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)


async def _next_payload(trigger: BaseTrigger) -> Any:
    """The payload of the trigger's first event (JSON-checked), its cleanup run."""
    events = trigger.run()
    try:
        async for event in events:
            return json.loads(json.dumps(event.payload, allow_nan=False))
        raise RuntimeError("the trigger's run() ended without an event")
    finally:
        with anyio.CancelScope(shield=True):
            await events.aclose()  # type: ignore[attr-defined]
            try:
                await trigger.cleanup()
            except Exception:  # noqa: BLE001
                log.exception("cleanup of an asset watcher's trigger failed")
