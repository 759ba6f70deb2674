"""The Orchestrator: the root that composes the parts, for the CLI and for embedding.

    async with Orchestrator(dags="dags/", store="sqlite:///aflow.db") as o:
        run = await o.trigger("weather_dashboard", conf={"city": "Oslo"})
        final = await run.wait()

Start order (left in reverse): DAG processor (parses a DAG folder in parser processes)
→ store (migrations) → log routing → task group → configured pools written, slots (with
the store's pools, kept current by PoolSync), run driver and deadline watcher → scheduler
(claims runs, creates scheduled ones) → triggerer → the DAG folder watcher. Leaving is
graceful: start nothing new, let running tries finish for `shutdown_grace_s`, then
cancel them (they are recorded to run again), release leases, flush the store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio

from aflow.authoring.dag import DAG
from aflow.clock import Clock, SystemClock
from aflow.exceptions import AflowError, RunBusy, RunNotFound, StoreError, TaskNotFound
from aflow.runtime import by_hand, logs
from aflow.runtime.backfill import BackfillProgress, BackfillResult, run_backfill
from aflow.runtime.dag_loader import DagBag, bag_from_dags
from aflow.runtime.dag_processor import (
    DEFAULT_PARSE_PROCESSES,
    DEFAULT_PARSE_TIMEOUT_S,
    BagChange,
    DagProcessor,
)
from aflow.runtime.deadlines import DeadlineWatcher
from aflow.runtime.pools import PoolSpec, PoolSync, parse_pools
from aflow.runtime.run_driver import RunDriver, RunState
from aflow.runtime.run_factory import new_ti, with_unstarted
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
from aflow.states import DagRunState, RunType, TaskState, mapped_task_state
from aflow.store.base import Store, busy_message, held_by_live_owner, held_elsewhere
from aflow.store.factory import open_store_url
from aflow.store.records import (
    AssetEventRecord,
    DagRunRecord,
    ImportErrorRecord,
    ProcessRecord,
    TaskInstanceRecord,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
_NOBODY = ""  # as the owner in Store.rewrite_run: every live lease counts, this process's too


class _ClaimedHere(Exception):  # noqa: N818 - a signal between two methods, never raised out
    """The run changed hands while it was being changed by hand (this process's
    scheduler claimed it, or it ended), or a TI to change is ending right now (its end
    not yet decided on): look again."""

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
        drive_runs: bool = True,
        claim_dags: Iterable[str] | None = None,
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
        `claim_dags` limits claiming to the runs of these DAGs (as `aflow backfill` does);
        such a process is no scheduler peer and fails no other DAG's orphaned runs.
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
        self.drive_runs = drive_runs
        self.claim_dags = frozenset(claim_dags) if claim_dags is not None else None
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
        self.deadlines: DeadlineWatcher | None = None
        self._stop_now = anyio.Event()
        self.started_at: datetime | None = None  # when __aenter__ began (clock time)

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
        self.started_at = self.clock.now()
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
            # "scheduler" only for processes that claim any DAG's runs: peers count them
            # when spreading runs; "orchestrator" for the others (`dags test`, a triggerer,
            # a backfill)
            ProcessRecord(
                self.process_id,
                "scheduler" if self.claim and self.claim_dags is None else "orchestrator",
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
        self.deadlines = DeadlineWatcher(  # before any run is adopted: it hears of each
            store=store, clock=self.clock, driver=self.driver, owner=self.process_id,
            thread_limiter=self.driver.thread_limiter,
        )
        await tg.start(self.deadlines.run)
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
            drive_created_runs=self.drive_runs,
            claim_dag_ids=self.claim_dags,
        )
        self.driver.create_run = self._create_run_from_task
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
            self.triggerer.asset_watchers.on_event.append(self.scheduler.assets.wake)
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
        """Shutdown: start nothing new, give running tries (and DAG callbacks, deadline
        alerts) the grace period, then cancel."""
        assert self._slots is not None
        self._slots.stop_accepting()
        with anyio.move_on_after(self.shutdown_grace_s) as scope:
            async with anyio.create_task_group() as waiters:

                async def until(event_wait: Any) -> None:
                    await event_wait()
                    scope.cancel()

                waiters.start_soon(until, self._settled)
                waiters.start_soon(until, self._stop_now.wait)
        if self._slots.running:
            log.warning("cancelling %d running tries after the grace period", self._slots.running)
        tg.cancel_scope.cancel()

    async def _settled(self) -> None:
        """No try runs, and no DAG callback or deadline alert is being sent."""
        assert self._slots is not None
        await self._slots.wait_drained()
        if self.driver is not None:
            await self.driver.wait_callbacks()
        if self.deadlines is not None:
            await self.deadlines.wait_idle()

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
        # only this folder's: other schedulers may load other folders into the same store
        folder = str(self.dag_processor.folder) if self.dag_processor is not None else None
        await self.store.replace_import_errors(
            [ImportErrorRecord(f, m, now) for f, m in sorted(self.dagbag.import_errors.items())],
            under=folder,
        )

    async def _deactivate(self, dag_ids: set[str]) -> None:
        if dag_ids:
            await self.store.deactivate_dag_ids(sorted(dag_ids))
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
        if self.triggerer is not None:
            self.triggerer.wake()  # new or changed asset watchers
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

    async def _create_run_from_task(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        *,
        run_id: str | None = None,
        logical_date: datetime | None = None,
        triggered_by: str | None = None,
    ) -> DagRunRecord:
        """A task's way to create a run (TriggerDagRunOperator): as `trigger`."""
        handle = await self.trigger(dag_id, conf, run_id=run_id, logical_date=logical_date,
                                    triggered_by=triggered_by)
        return handle.record

    async def backfill(
        self,
        dag_id: str,
        start: datetime,
        end: datetime,
        *,
        reset_failed: bool = False,
        max_active_runs: int | None = None,
        on_progress: Callable[[BackfillProgress], None] | None = None,
        stop: anyio.Event | None = None,
    ) -> BackfillResult:
        """Run every interval of the DAG's schedule whose logical date is in
        ``[start, end]`` (naive datetimes are read in the DAG's time zone) as a run of type
        `backfill`; returns when all have finished. A logical date that has a run already
        is not run again, unless it failed and `reset_failed` is given: then its failed
        task instances are cleared and it runs again. At most `max_active_runs` (default:
        the DAG's) runs of the range are unfinished at once. `on_progress` is called at
        least every half second; once `stop` is set nothing new starts and the call
        returns with `interrupted` set (calling it again resumes). Raises DagNotFound or
        BackfillError, having created nothing, for a DAG that cannot be backfilled over
        that range. See aflow.runtime.backfill."""
        return await run_backfill(
            self,
            dag_id,
            start,
            end,
            reset_failed=reset_failed,
            max_active_runs=max_active_runs,
            on_progress=on_progress,
            stop=stop,
        )

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
        """Deliver an event for WebhookSensors and asset watchers waiting on `key`
        (committed on return; one delivered before any sensor waits is kept for it).
        Returns the event's id."""
        event_id = await self.store.deliver_webhook(key, payload, self.clock.now())
        if self.triggerer is not None:
            self.triggerer.inbox.notify(key)
        return event_id

    async def record_asset_event(self, uri: str, extra: dict[str, Any] | None = None) -> int:
        """Record an update of the asset `uri` made outside aflow (committed on return):
        it is queued for the DAGs scheduled on that asset, as a task's outlet event would
        be. Returns the event's id."""
        from aflow.authoring.assets import validate_uri
        from aflow.exceptions import DagDefinitionError

        try:
            validate_uri(uri)
        except DagDefinitionError as exc:
            raise AflowError(str(exc)) from None
        if extra is not None and not isinstance(extra, dict):
            raise AflowError(f"extra must be a JSON object, not {type(extra).__name__}")
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise AflowError(f"extra is not JSON: {exc}") from None
        event = AssetEventRecord(id=0, uri=uri, timestamp=self.clock.now(), extra=dict(extra or {}))
        [event_id] = await self.store.record_asset_events([event])
        if self.scheduler is not None:
            self.scheduler.assets.wake()
        return event_id

    async def get_run(self, dag_id: str, run_id: str) -> RunHandle:
        record = await self.store.get_run(dag_id, run_id)
        if record is None:
            raise RunNotFound(f"DAG {dag_id!r} has no run {run_id!r}")
        return RunHandle(self, record)

    # -- clearing and marking by hand --------------------------------------------------------
    async def _driven_here(self, dag_id: str, run_id: str) -> RunState | None:
        """The run's in-memory state if this process drives it (after letting a run that
        is ending finish ending), else None."""
        assert self.driver is not None, "the orchestrator is not started"
        while True:
            rs = self.driver.runs.get((dag_id, run_id))
            if rs is None or rs.lost:
                return None
            if not rs.finishing:
                return rs
            with anyio.fail_after(60):
                await rs.done.wait()

    async def _stored_run(
        self, dag_id: str, run_id: str, *, held_ok: bool = False
    ) -> tuple[DagRunRecord, dict[str, TaskInstanceRecord], dict[str, list[TaskInstanceRecord]]]:
        """A run not driven here, with a record per task of its DAG (`none` for tasks with
        no row; an expanded mapped task's in the state of its instances, see
        `states.mapped_task_state`) and the instances of expanded mapped tasks. RunBusy
        if another live process drives it, unless `held_ok`."""
        run = await self.store.get_run(dag_id, run_id)
        if run is None:
            raise RunNotFound(f"DAG {dag_id!r} has no run {run_id!r}")
        if held_elsewhere(run, _NOBODY, self.clock.now()):
            if run.owner == self.process_id:
                raise _ClaimedHere
            if not held_ok:
                raise RunBusy(busy_message(run))
        dag = self.dagbag.get_dag(dag_id)
        stored = await self.store.get_tis(dag_id, run_id)
        rows = with_unstarted(dag_id, run_id, dag.task_ids, stored)
        tis = {r.task_id: r for r in rows if r.map_index == -1}
        own_rows = {r.task_id: r for r in stored if r.map_index == -1}
        instances: dict[str, list[TaskInstanceRecord]] = {}
        for r in rows:
            if r.map_index >= 0 and r.state is not TaskState.REMOVED:
                instances.setdefault(r.task_id, []).append(r)
        for task_id, group in instances.items():
            base = own_rows.get(task_id) or (new_ti(dag.task_dict[task_id], run_id)
                                             if task_id in dag.task_dict else group[0])
            tis[task_id] = dataclasses.replace(
                base, state=mapped_task_state(r.state for r in group))
        return run, tis, instances

    async def _rewrite(
        self, dag_id: str, run_id: str, rows: Sequence[TaskInstanceRecord],
        run_state: DagRunState | None,
    ) -> DagRunRecord:
        """The store path: one transaction, refused while any process (this one too)
        holds a live lease on the unfinished run; this one's scheduler may have claimed
        it since `_driven_here` said no, and must then be changed through its driver."""
        try:
            return await self.store.rewrite_run(
                dag_id, run_id, rows, owner=_NOBODY, now=self.clock.now(), run_state=run_state
            )
        except RunBusy:
            run = await self.store.get_run(dag_id, run_id)
            if run is not None and run.owner == self.process_id:
                raise _ClaimedHere from None
            raise

    async def _by_hand(self, change: Callable[[], Awaitable[T]]) -> T:
        """Run `change()` (driver path or store path), again if the run was claimed here
        meanwhile (the next attempt finds it driven here)."""
        for _ in range(100):
            try:
                return await change()
            except _ClaimedHere:
                await anyio.sleep(0.05)  # the claim is being admitted: the driver has it soon
        raise RunBusy("the run is changing hands or its task instances are ending right now; "
                      "try again")

    def _woken(self) -> None:
        if self.scheduler is not None:
            self.scheduler.wake()

    async def clear_tasks(
        self,
        dag_id: str,
        run_id: str,
        task_ids: Iterable[str] | None = None,
        *,
        downstream: bool = False,
        upstream: bool = False,
        only_failed: bool = False,
    ) -> list[str]:
        """Make task instances of a run run again, as Airflow's clear does; returns the
        cleared task ids in topological order (an empty list changes nothing).

        The TIs of `task_ids` (every task with None), with all their downstream and/or
        upstream tasks if asked, and with `only_failed` only the failed and
        upstream_failed ones among those, go back to state `none` with a fresh set of
        retries (max_tries = try_number + retries; the next try number follows the last
        one). Their XComs go; every other TI keeps its state and XComs, so a cleared task
        still reads what its upstream pushed. An ended run goes back to `queued` and a
        scheduler (this one, or any other process's) drives it again: only the cleared
        TIs run. A run this process drives is changed in place through its driver.

        A running run another live process drives is cleared in the store with an
        event for that process (Store.change_for_owner), whose driver then clears the
        TIs in its memory too and runs them; this is refused while a task right after a
        cleared one has not ended (that driver could decide it on the old state first).

        Refused with RunBusy, changing nothing: clearing a TI that is running or waiting
        (scheduled, queued, deferred, up for retry or reschedule), and the case above.
        Unknown DAG, run or task: DagNotFound, RunNotFound, TaskNotFound.
        """
        dag = self.dagbag.get_dag(dag_id)
        selected = by_hand.select_tasks(dag, task_ids, downstream=downstream, upstream=upstream)

        async def change() -> list[str]:
            rs = await self._driven_here(dag_id, run_id)
            if rs is not None:
                states = {t: rs.task_state(t) for t in selected}
                chosen = by_hand.to_clear(states, selected, only_failed=only_failed)
                by_hand.refuse_busy(dag_id, run_id, states, chosen, "clear")
                assert self.driver is not None
                if self.driver.settling(rs, chosen):
                    raise _ClaimedHere  # their ends are being committed: in a moment
                await self.driver.clear(rs, chosen)
                if chosen:
                    log.info("cleared %s in run %s of %s", ", ".join(chosen), run_id, dag_id)
                return chosen
            run, tis, instances = await self._stored_run(dag_id, run_id, held_ok=True)
            states = {t: tis[t].state for t in selected}
            chosen = by_hand.to_clear(states, selected, only_failed=only_failed)
            if not chosen:
                return []
            rows = by_hand.cleared_rows(dag, tis, instances, chosen)
            now = self.clock.now()
            if held_elsewhere(run, _NOBODY, now):
                # driven by another live process: cleared in the store, and that process's
                # driver is told to clear them in its memory too (Store.change_for_owner)
                by_hand.refuse_busy(dag_id, run_id, states, chosen, "clear")
                by_hand.refuse_open_downstream(dag, {t: r.state for t, r in tis.items()}, chosen)
                after = await self.store.change_for_owner(dag_id, run_id, rows, now=now)
                if not held_by_live_owner(after, now):
                    raise _ClaimedHere  # it ended or was released meanwhile: again
                log.info("cleared %s in run %s of %s, driven by %s", ", ".join(chosen),
                         run_id, dag_id, after.owner)
                return chosen
            await self._rewrite(
                dag_id, run_id, rows, DagRunState.QUEUED if run.state.finished else None
            )
            self._woken()
            log.info("cleared %s in run %s of %s", ", ".join(chosen), run_id, dag_id)
            return chosen

        return await self._by_hand(change)

    async def tasks_to_clear(
        self,
        dag_id: str,
        run_id: str,
        task_ids: Iterable[str] | None = None,
        *,
        downstream: bool = False,
        upstream: bool = False,
        only_failed: bool = False,
    ) -> list[TaskInstanceRecord]:
        """What `clear_tasks` with the same arguments would clear now, as the TIs' current
        records in topological order; changes nothing. Raises as `clear_tasks` would."""
        dag = self.dagbag.get_dag(dag_id)
        selected = by_hand.select_tasks(dag, task_ids, downstream=downstream, upstream=upstream)

        async def look() -> list[TaskInstanceRecord]:
            rs = await self._driven_here(dag_id, run_id)
            if rs is not None:
                states = {t: rs.task_state(t) for t in selected}
                chosen = by_hand.to_clear(states, selected, only_failed=only_failed)
                by_hand.refuse_busy(dag_id, run_id, states, chosen, "clear")
                assert self.driver is not None
                return [dataclasses.replace(self.driver.record_of(rs.tis[t]), state=states[t])
                        for t in chosen]
            run, tis, _ = await self._stored_run(dag_id, run_id, held_ok=True)
            states = {t: tis[t].state for t in selected}
            chosen = by_hand.to_clear(states, selected, only_failed=only_failed)
            if chosen and held_elsewhere(run, _NOBODY, self.clock.now()):
                by_hand.refuse_busy(dag_id, run_id, states, chosen, "clear")
                by_hand.refuse_open_downstream(dag, {t: r.state for t, r in tis.items()}, chosen)
            return [tis[t] for t in chosen]

        return await self._by_hand(look)

    async def mark_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        state: str | TaskState,
        *,
        map_index: int = -1,
    ) -> list[str]:
        """End a task instance as `success` or `failed` by hand, as Airflow's "mark"
        does: its end is committed before anything is decided on it, then its downstream
        TIs that are failed or upstream_failed are cleared (see `clear_tasks`) so they
        are decided again on the new state. An ended run goes back to `queued` so that a
        scheduler decides what follows and ends it again. Returns the marked task id
        followed by the cleared ones.

        In a running run another live process drives, an ended TI is marked as a clear
        is made there (see `clear_tasks`). Refused with RunBusy: a TI that is running or
        waiting right now, a TI that has not ended in a run driven elsewhere, and the
        case `clear_tasks` refuses there."""
        new = by_hand.mark_state(state)
        dag = self.dagbag.get_dag(dag_id)
        if dag.get_task(task_id).is_mapped:
            raise AflowError(
                f"task {task_id!r} of DAG {dag_id!r} is mapped: marking a mapped task (or one "
                "of its instances) is not supported; clear it to run it again, or mark its run"
            )
        if map_index != -1:
            raise TaskNotFound(f"task {task_id!r} of DAG {dag_id!r} has no mapped instance {map_index}")
        below = [t for t in by_hand.select_tasks(dag, [task_id], downstream=True) if t != task_id]

        async def change() -> list[str]:
            rs = await self._driven_here(dag_id, run_id)
            if rs is not None:
                states = {t: rs.task_state(t) for t in [task_id, *below]}
                by_hand.refuse_busy(dag_id, run_id, states, [task_id], "mark")
                then_clear = by_hand.to_clear(states, below, only_failed=True)
                assert self.driver is not None
                if self.driver.settling(rs, [task_id, *then_clear]):
                    raise _ClaimedHere  # their ends are being committed: in a moment
                await self.driver.mark(rs, task_id, new, then_clear)
                return [task_id, *then_clear]
            run, tis, instances = await self._stored_run(dag_id, run_id, held_ok=True)
            states = {t: tis[t].state for t in [task_id, *below]}
            then_clear = by_hand.to_clear(states, below, only_failed=True)
            now = self.clock.now()
            rows = [by_hand.marked(tis[task_id], new, now)]
            rows += by_hand.cleared_rows(dag, tis, instances, then_clear)
            if held_elsewhere(run, _NOBODY, now):
                # driven by another live process: as a clear there (see clear_tasks); only
                # a TI that has ended can be marked so
                if not tis[task_id].state.finished:
                    raise RunBusy(
                        f"cannot mark {task_id} ({tis[task_id].state.value}) in run {run_id!r} "
                        f"of DAG {dag_id!r} now: the run is driven by another process and "
                        "the task has not ended yet"
                    )
                by_hand.refuse_open_downstream(
                    dag, {t: r.state for t, r in tis.items()}, [task_id, *then_clear])
                after = await self.store.change_for_owner(dag_id, run_id, rows, now=now)
                if not held_by_live_owner(after, now):
                    raise _ClaimedHere  # it ended or was released meanwhile: again
                return [task_id, *then_clear]
            await self._rewrite(
                dag_id, run_id, rows, DagRunState.QUEUED if run.state.finished else None
            )
            self._woken()
            return [task_id, *then_clear]

        changed = await self._by_hand(change)
        log.info("marked %s %s in run %s of %s", task_id, new.value, run_id, dag_id)
        return changed

    async def mark_run(self, dag_id: str, run_id: str, state: str | DagRunState) -> DagRunRecord:
        """End a run as `success` or `failed` by hand, as Airflow does: with success its
        unfinished TIs succeed; with failed those running (or deferred, or waiting to
        poke again) fail and the other unfinished ones are skipped. Ended TIs keep their
        state. One transaction; returns the run's record. If this process drives the run,
        it stops driving it: tries running now run on, but their outcome is not
        recorded. RunBusy if another live process drives the run."""
        new = DagRunState(by_hand.mark_state(str(state)).value)
        self.dagbag.get_dag(dag_id)

        async def change() -> DagRunRecord:
            rs = await self._driven_here(dag_id, run_id)
            if rs is not None:
                assert self.driver is not None
                return await self.driver.mark_run(rs, new, owner=self.process_id)
            _, tis, instances = await self._stored_run(dag_id, run_id)
            now = self.clock.now()
            ti_state = TaskState(new.value)
            every = [ti for t, ti in tis.items() if t not in instances]
            every += [ti for group in instances.values() for ti in group]
            rows: Sequence[TaskInstanceRecord] = [
                by_hand.marked(ti, s, now)
                for ti in every
                if (s := by_hand.run_mark_state(ti.state, ti_state)) is not None
            ]
            record = await self._rewrite(dag_id, run_id, rows, new)
            self._woken()
            return record

        record = await self._by_hand(change)
        log.info("marked run %s of %s %s", run_id, dag_id, new.value)
        return record
