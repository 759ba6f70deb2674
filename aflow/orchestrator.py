"""The Orchestrator: the root that composes the parts, for the CLI and for embedding.

    async with Orchestrator(dags="dags/", store="sqlite:///aflow.db") as o:
        run = await o.trigger("weather_dashboard", conf={"city": "Oslo"})
        final = await run.wait()

Start order (left in reverse): DAG processor (parses a DAG folder in parser processes)
→ store (migrations) → log routing → task group → configured pools written, slots (with
the store's pools, kept current by PoolSync) and run driver → scheduler
(claims runs, creates scheduled ones) → triggerer → the DAG folder watcher. Leaving is
graceful: start nothing new, let running tries finish for `shutdown_grace_s`, then
cancel them (they are recorded to run again), release leases, flush the store.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from aflow.authoring.dag import DAG
from aflow.clock import Clock, SystemClock
from aflow.exceptions import AflowError, RunNotFound, StoreError
from aflow.runtime import logs
from aflow.runtime.dag_loader import DagBag, bag_from_dags
from aflow.runtime.dag_processor import (
    DEFAULT_PARSE_PROCESSES,
    DEFAULT_PARSE_TIMEOUT_S,
    BagChange,
    DagProcessor,
)
from aflow.runtime.pools import PoolSpec, PoolSync, parse_pools
from aflow.runtime.run_driver import RunDriver
from aflow.runtime.run_factory import with_unstarted
from aflow.runtime.scheduler import (
    DEFAULT_LEASE_S,
    DEFAULT_ORPHAN_GRACE_S,
    DEFAULT_POLL_S,
    DEFAULT_SWEEP_S,
    Scheduler,
    dag_records,
)
from aflow.runtime.slots import Slots
from aflow.runtime.triggerer import DEFAULT_CAPACITY as DEFAULT_TRIGGERER_CAPACITY
from aflow.runtime.triggerer import Triggerer
from aflow.states import DagRunState, RunType
from aflow.store.base import Store
from aflow.store.factory import open_store_url
from aflow.store.records import (
    DagRunRecord,
    ImportErrorRecord,
    ProcessRecord,
    TaskInstanceRecord,
)

log = logging.getLogger(__name__)

DEFAULT_HOME = Path("~/aflow").expanduser()
DEFAULT_PARALLELISM = 32
DEFAULT_SHUTDOWN_GRACE_S = 30.0

DagsArg = str | os.PathLike[str] | DAG | Iterable[DAG] | None


class RunHandle:
    """A run, as returned by `Orchestrator.trigger`."""

    def __init__(self, orchestrator: Orchestrator, record: DagRunRecord) -> None:
        self._o = orchestrator
        self.record = record
        self.dag_id = record.dag_id
        self.run_id = record.run_id

    async def wait(self, timeout: float | None = None) -> DagRunRecord:  # noqa: ASYNC109
        """Wait until the run ends; returns its final record."""
        with anyio.fail_after(timeout):
            return await self._o.wait_for_run(self.dag_id, self.run_id)

    async def task_instances(self) -> list[TaskInstanceRecord]:
        """Every task's instance in this run; tasks not yet decided are in state `none`."""
        rows = await self._o.store.get_tis(self.dag_id, self.run_id)
        dag = self._o.dagbag.dags.get(self.dag_id)
        if dag is None:
            return rows
        return with_unstarted(self.dag_id, self.run_id, dag.task_ids, rows)

    def __repr__(self) -> str:
        return f"<RunHandle {self.dag_id} {self.run_id}>"


class Orchestrator:
    def __init__(
        self,
        dags: DagsArg = None,
        *,
        store: str | Store | None = None,
        home: str | os.PathLike[str] | None = None,
        parallelism: int = DEFAULT_PARALLELISM,
        clock: Clock | None = None,
        schedule: bool = True,
        claim: bool = True,
        triggerer: bool = True,
        triggerer_capacity: int = DEFAULT_TRIGGERER_CAPACITY,
        lease_s: float = DEFAULT_LEASE_S,
        poll_s: float = DEFAULT_POLL_S,
        sweep_s: float = DEFAULT_SWEEP_S,
        orphan_grace_s: float = DEFAULT_ORPHAN_GRACE_S,
        shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S,
        sqlite_synchronous: str = "NORMAL",
        hostname: str | None = None,
        watch_dags: bool = True,
        parse_processes: int = DEFAULT_PARSE_PROCESSES,
        parse_timeout_s: float = DEFAULT_PARSE_TIMEOUT_S,
        pools: Mapping[str, PoolSpec] | None = None,
    ) -> None:
        """`lease_s`: how long a run stays owned by a process that stopped renewing it
        (renewed every third of it), so how soon other schedulers adopt a dead one's
        runs. `poll_s`/`sweep_s`: the claim sweep without / with the store's cross-process
        notifications. `orphan_grace_s`: how long a run may wait for a DAG no scheduler
        loads before it fails. `hostname` names this host in process records and TIs
        (default: the system's); dead processes of the same host are detected by pid.
        A DAG folder is parsed by `parse_processes` parser processes, `parse_timeout_s` per
        file, and with `watch_dags` followed live (see aflow.runtime.dag_processor).
        `pools` (`{"etl": 4, "api": {"slots": 2, "include_deferred": True}}`) are written
        to the store at start; pools are re-read from the store while running (see
        aflow.runtime.pools), so a change made elsewhere (`aflow pools set`) applies live."""
        self.home = Path(home).expanduser() if home is not None else DEFAULT_HOME
        self._dags_arg = dags
        self._store_arg = store
        self.parallelism = parallelism
        self.clock: Clock = clock or SystemClock()
        self.schedule = schedule
        self.claim = claim
        self.run_triggerer = triggerer
        self.triggerer_capacity = triggerer_capacity
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.sweep_s = sweep_s
        self.orphan_grace_s = orphan_grace_s
        self.shutdown_grace_s = shutdown_grace_s
        self.sqlite_synchronous = sqlite_synchronous
        self.hostname = hostname or socket.gethostname()
        self.watch_dags = watch_dags
        self.parse_processes = parse_processes
        self.parse_timeout_s = parse_timeout_s
        self.pools = parse_pools(pools or {})  # checked now: a bad pool fails the constructor
        self.pool_sync: PoolSync | None = None
        self.dag_processor: DagProcessor | None = None
        # Called after each change of a watched DAG folder (tests and tools wait on it).
        self.on_dags_changed: list[Callable[[BagChange], None]] = []
        self.process_id = f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.dagbag = DagBag()
        self._store: Store | None = None
        self._stack: AsyncExitStack | None = None
        self._slots: Slots | None = None
        self.driver: RunDriver | None = None
        self.scheduler: Scheduler | None = None
        self.triggerer: Triggerer | None = None
        self._stop_now = anyio.Event()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise AflowError("the orchestrator is not started (use `async with`)")
        return self._store

    @property
    def slots_in_use(self) -> int:
        """Tries holding an execution slot now (a deferred or waiting TI holds none)."""
        return self._slots.running if self._slots is not None else 0

    def pool_slots_in_use(self) -> dict[str, int]:
        """Slots of each pool held in this process now (by running tries, and by deferred
        ones in pools with include_deferred); pools with none held are left out."""
        if self._slots is None:
            return {}
        return {name: n for name, n in self._slots.pool_used.items() if n}

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Orchestrator:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self._start(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def _start(self, stack: AsyncExitStack) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.dagbag = await self._load_dags(stack)
        if isinstance(self._store_arg, Store):
            store = self._store_arg
            await stack.enter_async_context(store)
        else:
            url = self._store_arg or f"sqlite:///{self.home / 'aflow.db'}"
            store = await stack.enter_async_context(
                open_store_url(url, sqlite_synchronous=self.sqlite_synchronous)
            )
        self._store = store
        await self._record_dags()
        now = self.clock.now()
        await store.register_process(
            # "scheduler" only for processes that claim runs: peers count them when
            # spreading runs; "orchestrator" for the others (`dags test`, a triggerer)
            ProcessRecord(
                self.process_id,
                "scheduler" if self.claim else "orchestrator",
                self.hostname,
                os.getpid(),
                now,
                now,
            )
        )
        stack.push_async_callback(self._unregister)
        logs.install_log_routing()
        stack.callback(logs.uninstall_log_routing)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.push_async_callback(self._drain, tg)
        for pool in self.pools:
            await store.set_pool(pool)
        self._slots = Slots(
            self.parallelism, tg, pools={p.name: p for p in await store.list_pools()}
        )
        self.pool_sync = PoolSync(store, self._slots, poll_s=self.poll_s, sweep_s=self.sweep_s)
        await tg.start(self.pool_sync.run)
        self.driver = RunDriver(
            store=store,
            clock=self.clock,
            slots=self._slots,
            task_group=tg,
            hostname=self.hostname,
            log_dir=self.log_dir,
            thread_limiter=anyio.CapacityLimiter(self.parallelism),
        )
        self.scheduler = Scheduler(
            store=store,
            clock=self.clock,
            driver=self.driver,
            dagbag=lambda: self.dagbag,
            owner=self.process_id,
            hostname=self.hostname,
            lease_s=self.lease_s,
            poll_s=self.poll_s,
            sweep_s=self.sweep_s,
            orphan_grace_s=self.orphan_grace_s,
            create_scheduled_runs=self.schedule,
            claim_runs=self.claim,
        )
        await tg.start(self.scheduler.run)
        if self.run_triggerer:
            self.triggerer = Triggerer(
                store=store,
                clock=self.clock,
                owner=self.process_id,
                log_dir=self.log_dir,
                capacity=self.triggerer_capacity,
                lease_s=self.lease_s,
                poll_s=self.poll_s,
            )
            self.driver.on_deferred.append(self.triggerer.wake)
            self.triggerer.on_fired.append(self.driver.resume)
            await tg.start(self.triggerer.run)
        if self.dag_processor is not None and self.watch_dags:
            await tg.start(self.dag_processor.watch, self.dagbag, self._dags_changed)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The task group wraps an error raised in the `async with` body (e.g. an invalid
            # conf given to trigger()): let the caller's own exception propagate unwrapped.
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                return False
            raise

    async def _drain(self, tg: Any) -> None:
        """Shutdown: start nothing new, give running tries the grace period, then cancel."""
        assert self._slots is not None
        self._slots.stop_accepting()
        with anyio.move_on_after(self.shutdown_grace_s) as scope:
            async with anyio.create_task_group() as waiters:

                async def until(event_wait: Any) -> None:
                    await event_wait()
                    scope.cancel()

                waiters.start_soon(until, self._slots.wait_drained)
                waiters.start_soon(until, self._stop_now.wait)
        if self._slots.running:
            log.warning("cancelling %d running tries after the grace period", self._slots.running)
        tg.cancel_scope.cancel()

    def cut_grace_short(self) -> None:
        """During shutdown: stop waiting for running tries and cancel them now."""
        self._stop_now.set()

    async def _unregister(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.store.release_runs(self.process_id)
                await self.store.unregister_process(self.process_id)
            except Exception:  # noqa: BLE001 - leases expire anyway
                log.exception("could not release leases at shutdown")

    async def _load_dags(self, stack: AsyncExitStack) -> DagBag:
        arg = self._dags_arg
        if arg is None:
            return DagBag()
        if isinstance(arg, DAG):
            return bag_from_dags([arg])
        if isinstance(arg, str | os.PathLike):
            folder = Path(arg)
            if not await anyio.Path(folder).exists():
                raise AflowError(f"DAG folder {folder} does not exist")
            processor = DagProcessor(
                folder, processes=self.parse_processes, timeout_s=self.parse_timeout_s
            )
            await stack.enter_async_context(processor)
            bag = DagBag()
            await processor.load(bag)
            self.dag_processor = processor
            return bag
        return bag_from_dags(list(arg))

    async def _record_dags(self) -> None:
        now = self.clock.now()
        records = dag_records(self.dagbag.dags.values(), now)
        if records:
            await self.store.upsert_dags(records)
        if self.dag_processor is not None:
            # DAGs recorded from this folder before whose file is gone now
            folder = str(self.dag_processor.folder)
            gone = {
                d.dag_id
                for d in await self.store.list_dags()
                if d.is_active
                and d.dag_id not in self.dagbag.dags
                and d.fileloc is not None
                and (d.fileloc == folder or d.fileloc.startswith(folder + os.sep))
            }
            await self._deactivate(gone)
        await self._record_import_errors()

    async def _record_import_errors(self) -> None:
        now = self.clock.now()
        await self.store.replace_import_errors(
            [ImportErrorRecord(f, m, now) for f, m in sorted(self.dagbag.import_errors.items())]
        )

    async def _deactivate(self, dag_ids: set[str]) -> None:
        if dag_ids:
            keep = [d.dag_id for d in await self.store.list_dags() if d.is_active]
            await self.store.deactivate_dags([k for k in keep if k not in dag_ids])
            log.info("DAGs no longer defined, now inactive: %s", ", ".join(sorted(dag_ids)))

    async def _dags_changed(self, change: BagChange) -> None:
        """The DAG folder changed (the DagBag is already updated): record it in the store
        and let the scheduler follow (timetables, claims of the new DAGs' runs)."""
        try:
            bag = self.dagbag
            dags = [bag.dags[d] for d in sorted(change.loaded) if d in bag.dags]
            # off the loop: describing a thousand re-parsed DAGs takes a while
            records = await anyio.to_thread.run_sync(dag_records, dags, self.clock.now())
            if records:
                await self.store.upsert_dags(records)
            await self._deactivate(change.removed)
            await self._record_import_errors()
        except StoreError:
            log.exception("could not record the DAG folder's change; the next one will")
        if self.scheduler is not None:
            self.scheduler.sync_timetables()
            self.scheduler.wake()
        for listener in list(self.on_dags_changed):
            listener(change)

    # -- API ---------------------------------------------------------------------------------------
    async def trigger(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        *,
        run_id: str | None = None,
        logical_date: datetime | None = None,
        run_type: RunType = RunType.MANUAL,
        triggered_by: str | None = "api",
    ) -> RunHandle:
        """Create a run (committed before this returns) and start driving it."""
        assert self.scheduler is not None, "the orchestrator is not started"
        dag = self.dagbag.get_dag(dag_id)
        record = await self.scheduler.create_run(
            dag,
            run_type=run_type,
            logical_date=logical_date,
            conf=conf,
            run_id=run_id,
            triggered_by=triggered_by,
        )
        return RunHandle(self, record)

    async def wait_for_run(self, dag_id: str, run_id: str) -> DagRunRecord:
        assert self.driver is not None
        delay = 0.01
        while True:
            rs = self.driver.runs.get((dag_id, run_id))
            if rs is not None:
                await rs.done.wait()
                if not rs.lost:
                    return rs.run
                continue  # taken over by another process: follow it in the store
            record = await self.store.get_run(dag_id, run_id)
            if record is None:
                raise RunNotFound(f"DAG {dag_id!r} has no run {run_id!r}")
            if record.state in (DagRunState.SUCCESS, DagRunState.FAILED):
                return record
            await anyio.sleep(delay)  # driven by another process: poll with backoff
            delay = min(delay * 2, 0.5)

    async def deliver_webhook(self, key: str, payload: Any) -> int:
        """Deliver an event for WebhookSensors waiting on `key` (committed on return;
        one delivered before any sensor waits is kept for it). Returns the event's id."""
        event_id = await self.store.deliver_webhook(key, payload, self.clock.now())
        if self.triggerer is not None:
            self.triggerer.inbox.notify(key)
        return event_id

    async def get_run(self, dag_id: str, run_id: str) -> RunHandle:
        record = await self.store.get_run(dag_id, run_id)
        if record is None:
            raise RunNotFound(f"DAG {dag_id!r} has no run {run_id!r}")
        return RunHandle(self, record)
