"""The triggerer: parks deferred waits by the hundred thousand on one event loop.

It claims unfired trigger rows up to its capacity, rebuilds each trigger from
`(classpath, kwargs)`, runs it as a coroutine with shared resources (one timer queue,
one HTTP pool, one watcher per directory, one DB pool per DSN), and commits the first
event into the trigger row (group-committed, so thousands firing at once cost a few
transactions). The run driver then resumes the waiting task. A trigger that raises
fires an error event carrying its traceback; one past its timeout fires a timeout
event; either way its siblings are untouched. What a trigger logs goes to the log of
the deferred try.

Ownership is a lease per trigger row, renewed every `lease_s / 3`; a dead triggerer's
triggers are adopted by another once the lease expires.

It also runs the asset watchers recorded from the DAGs (see aflow.runtime.asset_watchers),
claimed under the same lease at each claim pass.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from aflow.clock import Clock
from aflow.exceptions import StoreError
from aflow.runtime import logs
from aflow.runtime.asset_watchers import AssetWatchers
from aflow.runtime.peers import LivePeers
from aflow.runtime.services import connection_uri
from aflow.store.base import Store
from aflow.store.records import ProcessRecord, TriggerRecord
from triggers.base import BaseTrigger, load_trigger
from triggers.shared import Resources, use_resources
from triggers.temporal import TimerQueue

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 100_000
PEERS_REREAD_S = 2.0  # how often a triggerer looks again for other live triggerers


class StoreWebhookInbox:
    """Webhook events by key, read from the store (an event delivered before the sensor
    started waiting is found at once). `notify(key)` wakes waiters in this process."""

    def __init__(self, store: Store, poll_s: float = 1.0) -> None:
        self.store = store
        self.poll_s = poll_s
        self._events: dict[str, anyio.Event] = {}

    def notify(self, key: str) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    async def wait_for(self, key: str) -> Any:
        return (await self.wait_after(key, 0))[1]

    async def wait_after(self, key: str, after_id: int) -> tuple[int, Any]:
        """(id, payload) of the first event for `key` numbered above `after_id`."""
        while True:
            event = self._events.setdefault(key, anyio.Event())
            found = await self.store.first_webhook(key, after_id)
            if found is not None:
                return found
            with anyio.move_on_after(self.poll_s):
                await event.wait()


class LoopWatchdog:
    """A thread that notices when the event loop stops ticking and names the trigger
    that holds it: it samples the loop thread's stack and finds the BaseTrigger whose
    code is running there. One bad trigger should be found and fixed, not guessed at."""

    def __init__(self, loop_thread_id: int, threshold_s: float = 0.25, period_s: float = 0.05) -> None:
        self.loop_thread_id = loop_thread_id
        self.threshold_s = threshold_s
        self.period_s = period_s
        self.last_tick = time.monotonic()
        self.blocks: list[dict[str, Any]] = []  # most recent last
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="aflow-loop-watchdog", daemon=True)

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def _watch(self) -> None:
        reported_for = 0.0
        while not self._stop.wait(self.period_s):
            tick = self.last_tick
            stalled = time.monotonic() - tick
            if stalled < self.threshold_s or tick == reported_for:
                continue
            frame = sys._current_frames().get(self.loop_thread_id)
            try:
                culprit = _trigger_in(frame)
            except Exception:  # noqa: BLE001 - the watchdog must outlive odd frames
                culprit = {}
            finally:
                del frame
            block = {"blocked_s": round(stalled, 3), **culprit}
            self.blocks = [*self.blocks[-99:], block]
            reported_for = tick
            if culprit:
                log.warning(
                    "the event loop is blocked (%.2fs so far) by trigger %s #%s waking %s",
                    stalled, culprit["classpath"], culprit["trigger_id"], culprit["task"],
                )
            else:
                log.warning("the event loop is blocked (%.2fs so far), not by a trigger", stalled)


def _trigger_in(frame: Any) -> dict[str, Any]:
    """The innermost BaseTrigger whose method is on this stack, described."""
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, BaseTrigger):
            # it may be half-built (sampled inside __init__): read attributes defensively
            record = getattr(candidate, "task_instance", None)
            task = (
                f"{record.dag_id}/{record.run_id}/{record.task_id}"
                if isinstance(record, TriggerRecord)
                else None
            )
            return {
                "classpath": f"{type(candidate).__module__}.{type(candidate).__qualname__}",
                "trigger_id": getattr(candidate, "trigger_id", None),
                "task": task,
                "where": f"{frame.f_code.co_filename}:{frame.f_lineno}",
            }
        frame = frame.f_back
    return {}


class Triggerer:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        owner: str,
        log_dir: Path,
        capacity: int = DEFAULT_CAPACITY,
        lease_s: float = 30.0,
        poll_s: float = 1.0,
        claim_batch: int = 1000,
    ) -> None:
        self.store = store
        self.clock = clock
        self.owner = owner
        self.log_dir = log_dir
        self._context: contextvars.Context | None = None
        self.capacity = capacity
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.claim_batch = claim_batch
        self.running: dict[int, TriggerRecord] = {}
        self.on_fired: list[Callable[[TriggerRecord], Any]] = []
        self.inbox = StoreWebhookInbox(store)
        self.fired = 0
        self.loop_lag_s = 0.0
        self.last_beat = time.monotonic()
        self._wake = anyio.Event()
        self._tg: TaskGroup | None = None
        self._parked: set[asyncio.Task[None]] = set()
        self._timers: TimerQueue | None = None  # the shared one, once running
        self.peers = LivePeers(  # other live triggerers: claims are shared with them
            store, clock, kind="triggerer", me=self.process_id, fresh_s=lease_s,
            reread_s=PEERS_REREAD_S,
        )
        self.watchdog: LoopWatchdog | None = None
        self.asset_watchers = AssetWatchers(store, clock, owner, self._lease_until)

    @property
    def capacity_left(self) -> int:
        return self.capacity - len(self.running)

    def wake(self) -> None:
        """Claim at once (a task just deferred in this process)."""
        self._wake.set()

    async def _resolve_connection(self, conn_id: str) -> str:
        """Connection ids for triggers: aflow's own store, else the secrets backends
        (AFLOW_CONN_<ID>, user backends, the store)."""
        return await connection_uri(conn_id, self.store)

    @property
    def process_id(self) -> str:
        return f"{self.owner}/triggerer"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        resources = Resources(resolve_connection=self._resolve_connection, webhook_inbox=self.inbox)
        self._context = None  # made afresh from this run's context by the first _park
        now = self.clock.now()
        await self.store.register_process(
            ProcessRecord(self.process_id, "triggerer", socket.gethostname(), os.getpid(), now, now)
        )
        self.watchdog = LoopWatchdog(threading.get_ident())
        self.watchdog.start()
        try:
            async with resources:
                with use_resources(resources):
                    self._timers = await TimerQueue.shared(resources)
                    # A task deferred by a scheduler in another process: claim at once.
                    unsubscribe = await self.store.listen(
                        Store.TRIGGERS_NEW_CHANNEL, lambda _payload: self.wake()
                    )
                    # DAGs recorded elsewhere (maybe new asset watchers): claim at once.
                    unsubscribe_watchers = await self.store.listen(
                        Store.WATCHERS_CHANNEL, lambda _payload: self.wake()
                    )
                    try:
                        async with anyio.create_task_group() as tg:
                            self._tg = tg
                            tg.start_soon(self._claim_loop)
                            tg.start_soon(self._lease_loop)
                            tg.start_soon(self._heartbeat_loop)
                            task_status.started()
                    finally:
                        unsubscribe()
                        unsubscribe_watchers()
                        await self._unpark_all()  # while the shared resources are still open
        finally:
            self.watchdog.stop()
            with anyio.CancelScope(shield=True):
                try:
                    await self.store.release_triggers(self.owner)
                    await self.store.unregister_process(self.process_id)
                except Exception:  # noqa: BLE001 - leases expire anyway
                    log.exception("could not release triggers at shutdown")

    async def _unpark_all(self, grace_s: float = 10.0) -> None:
        """Cancel every parked trigger and wait until their cleanups have run."""
        with anyio.CancelScope(shield=True):
            tasks = list(self._parked)
            for task in tasks:
                task.cancel()
            if tasks:
                with anyio.move_on_after(grace_s):
                    await asyncio.gather(*tasks, return_exceptions=True)

    # -- loops ------------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while True:
            # Alone, claim batch after batch until nothing is left. With live peers, claim
            # one share of a batch per wake-up: every triggerer claims at the same bounded
            # rate, so a burst of deferrals is split evenly instead of going to whichever
            # polled first (work already claimed is not moved: no stealing).
            peers = await self.peers.count()
            batch = self.claim_batch if peers == 0 else max(1, self.claim_batch // (peers + 1))
            room = min(self.capacity_left, batch)
            claimed: list[TriggerRecord] = []
            if room > 0:
                try:
                    claimed = await self.store.claim_triggers(
                        self.owner, self.clock.now(), self._lease_until(), room
                    )
                except StoreError:
                    log.exception("claiming triggers failed; retrying")
            for record in claimed:
                self._park(record)
            if claimed and len(claimed) == room and peers == 0:
                continue  # more may be waiting: claim again at once
            if self._tg is not None:
                try:
                    await self.asset_watchers.sync(self._tg)
                except StoreError:
                    log.exception("claiming asset watchers failed; retrying")
            with anyio.move_on_after(self.poll_s):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _lease_loop(self) -> None:
        while True:
            await anyio.sleep(self.lease_s / 3)
            try:
                await self.store.renew_trigger_leases(self.owner, self._lease_until())
            except StoreError:
                log.exception("could not renew trigger leases; retrying")

    async def _heartbeat_loop(self, period: float = 0.1, store_every: int = 50) -> None:
        """Proves the loop is alive (not just the process): records how late it wakes, and
        every `store_every` beats writes a heartbeat that `aflow triggers health` reads."""
        beats = 0
        while True:
            before = time.monotonic()
            await anyio.sleep(period)
            now = time.monotonic()
            self.loop_lag_s = max(0.0, now - before - period)
            self.last_beat = now
            if self.watchdog is not None:
                self.watchdog.tick()
            beats += 1
            if beats % store_every == 0:
                try:
                    await self.store.heartbeat(self.process_id, self.clock.now())
                except StoreError:
                    log.exception("could not write the triggerer's heartbeat")

    def _lease_until(self) -> Any:
        return self.clock.now() + timedelta(seconds=self.lease_s)

    # -- one trigger --------------------------------------------------------------------------
    def _park(self, record: TriggerRecord) -> None:
        """Start waiting on one claimed trigger.

        A parked trigger is one bare asyncio task (the triggerer runs on asyncio or uvloop)
        and, if it has a timeout, one entry in the shared timer queue. At 100,000 parked,
        anything more per trigger shows: anyio's per-task bookkeeping (a task handle with
        its own cancel scope and event), a cancel scope or loop timer per timeout, the
        kwargs once the trigger is built, a copy of the same run id per row. The triggerer
        keeps the structure itself: it cancels and awaits every parked task (their
        cleanups included) before it returns."""
        assert record.id is not None
        trigger: BaseTrigger | None = None
        problem = None
        try:
            trigger = load_trigger(record.classpath, record.kwargs)
        except (TypeError, ValueError) as exc:
            problem = f"cannot rebuild the trigger: {exc}"
        except Exception as exc:  # noqa: BLE001 - a broken trigger fails its task alone
            problem = _traceback_text(exc)
        record = dataclasses.replace(
            record,
            kwargs={},  # the trigger object holds them now
            classpath=sys.intern(record.classpath),
            dag_id=sys.intern(record.dag_id),
            run_id=sys.intern(record.run_id),
            task_id=sys.intern(record.task_id),
        )
        self.running[record.id] = record
        if trigger is not None:
            trigger.trigger_id = record.id
            trigger.task_instance = record
        if self._context is None:  # (what the claim loop's context holds, and the router)
            self._context = contextvars.copy_context()
            self._context.run(logs.set_task_log, _TriggerLogRouter(self.log_dir))
        task = _TriggerTask(
            self._run_one(record, trigger, problem), record,
            loop=asyncio.get_running_loop(), name=f"trigger {record.id}",
            context=self._context.copy(),
        )
        self._parked.add(task)
        task.add_done_callback(self._parked.discard)

    async def _run_one(
        self, record: TriggerRecord, trigger: BaseTrigger | None, problem: str | None
    ) -> None:
        assert record.id is not None
        task = asyncio.current_task()
        assert isinstance(task, _TriggerTask), "parked by _park"
        _TRIGGER_TASK.set(task)  # (no reset: this context ends with the task)
        deadline: _Deadline | None = None
        try:
            if trigger is None:
                event: dict[str, Any] = {"kind": "error", "error": problem}
            else:
                if record.timeout_at is not None:
                    timeout_s = max(0.0, (record.timeout_at - self.clock.now()).total_seconds())
                    assert self._timers is not None
                    deadline = _Deadline(self._timers, timeout_s)
                try:
                    try:
                        events = trigger.run()
                        try:
                            async for item in events:
                                payload = json.loads(json.dumps(item.payload, allow_nan=False))
                                event = {"kind": "event", "payload": payload}
                                break
                            else:
                                event = {"kind": "error",
                                         "error": f"{record.classpath}.run() ended without an event"}
                        finally:
                            await events.aclose()  # type: ignore[attr-defined]
                    except Exception as exc:  # noqa: BLE001 - one trigger's failure is its task's alone
                        event = {"kind": "error", "error": _traceback_text(exc)}
                    finally:
                        with anyio.CancelScope(shield=True):
                            try:
                                await trigger.cleanup()
                            except Exception:  # noqa: BLE001
                                log.exception("cleanup of trigger %s failed", record.id)
                except anyio.get_cancelled_exc_class():
                    # The deadline's cancellation (even one that lands in the trigger's
                    # cleanup, racing its event) is the timeout; any other is shutdown.
                    if deadline is None or not deadline.expired():
                        raise
                    logging.getLogger("aflow.task").error("the wait timed out")
                    event = {"kind": "timeout"}
        finally:
            if deadline is not None:
                deadline.cancel()
            task.end_log()
        try:
            await self._fire(record, event)
        finally:
            self.running.pop(record.id, None)

    async def _fire(self, record: TriggerRecord, event: dict[str, Any]) -> None:
        assert record.id is not None
        now = self.clock.now()
        delay = 0.1
        while True:
            try:
                await self.store.fire_trigger(record.id, event, now)
                break
            except StoreError as exc:
                log.warning("could not commit trigger %s's event (%s); retrying", record.id, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.fired += 1
        fired = TriggerRecord(
            **{**_fields(record), "event": event, "fired_at": now, "owner": None}
        )
        for listener in self.on_fired:
            listener(fired)


class _TriggerTask(asyncio.Task):  # type: ignore[type-arg]
    """A parked trigger's asyncio task. It carries the trigger's record and, while the
    trigger waits, the log of the deferred try (built when first written to: most
    triggers never write), which is where _TriggerLogRouter sends what the trigger logs.
    The one context variable it sets holds the task itself: a log object and a token
    per parked trigger would cost more."""

    __slots__ = ("log", "record", "waiting")

    def __init__(self, coro: Any, record: TriggerRecord, **kwargs: Any) -> None:
        super().__init__(coro, **kwargs)
        self.record = record
        self.log: _TriggerLog | None = None
        self.waiting = True

    def end_log(self) -> None:
        """The wait is over: what this task logs from now on is the triggerer's own."""
        self.waiting = False
        if self.log is not None:
            self.log.close()
            self.log = None


_TRIGGER_TASK: contextvars.ContextVar[_TriggerTask | None] = contextvars.ContextVar(
    "aflow_trigger_task", default=None
)
"""The parked trigger whose code runs in this context: set by the trigger's task, and
inherited by the tasks and worker threads its code starts."""


class _TriggerLogRouter(logs.TaskLogRouter):
    """The task log of the parked trigger whose code is running now (see _TriggerTask and
    _TRIGGER_TASK), in its own task, a task it started or a worker thread."""

    __slots__ = ("_lock", "_log_dir")

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._lock = threading.Lock()  # (a worker thread may write first)

    def active(self) -> logs.TaskLog | None:
        task = _TRIGGER_TASK.get()
        if task is None or not task.waiting:
            return None
        log = task.log
        if log is None:
            with self._lock:
                if task.log is None:
                    task.log = _TriggerLog(self._log_dir, task.record)
                log = task.log
        return log


class _TriggerLog(logs.TaskLog):
    """The log of the deferred try a trigger wakes, its path worked out only if the
    trigger writes to it (most never do; 100,000 path strings would be ~15 MiB)."""

    __slots__ = ("_log_dir", "_record")

    def __init__(self, log_dir: Path, record: TriggerRecord) -> None:
        self._file = None
        self._log_dir = log_dir
        self._record = record

    @property  # type: ignore[override]
    def path(self) -> str:
        r = self._record
        return logs.log_path(self._log_dir, r.dag_id, r.run_id, r.task_id, r.try_number, r.map_index)


class _Deadline:
    """A trigger's timeout: an entry in the shared timer queue that cancels the waiting
    task when it is due (a cancel scope, or even a loop timer handle, per parked trigger
    costs several times as much memory)."""

    __slots__ = ("_expired", "_queue", "_task", "_timer")

    def __init__(self, queue: TimerQueue, seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None, "a trigger waits in an asyncio task"
        self._task = task
        self._expired = False
        self._queue = queue
        self._timer = queue.add(time.time() + seconds, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def expired(self) -> bool:
        """True if the cancellation being handled is this deadline's; it is then spent
        (uncancelled), so the task goes on to commit its timeout event."""
        if not self._expired:
            return False
        self._task.uncancel()
        return True

    def cancel(self) -> None:
        self._queue.cancel(self._timer)


def _fields(record: TriggerRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def _traceback_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc)).rstrip()
    logging.getLogger("aflow.task").error("the trigger failed:\n%s", text)
    return text
