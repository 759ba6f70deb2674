"""The Store: the one async interface to everything durable. Backends implement it and
pass the shared contract suite (tests/integration/test_store_contract.py)."""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import anyio

from aflow.states import DagRunState
from aflow.store.records import (
    DagRecord,
    DagRunRecord,
    ImportErrorRecord,
    PoolRecord,
    ProcessRecord,
    TaskInstanceRecord,
    TaskInstanceRow,
    TriggerRecord,
    XComRecord,
)


class Store(abc.ABC):
    """Async, domain-speaking persistence. Open with `async with store:` (runs migrations).

    Writes that the engine makes at a high rate (`save_tis`, `finish_ti`, `save_run`)
    are group-committed: they return once their transaction has committed, and many
    concurrent calls share one transaction.
    """

    url: str

    # Channels of the wake-ups a store sends by itself, committed with the change they
    # announce (see `listen`). Payloads are informative only: a listener re-reads the store.
    RUNS_CHANNEL = "runs"  # a run without a live owner exists: claim it
    TRIGGERS_FIRED_CHANNEL = "triggers_fired"  # a trigger's event is committed: resume its TI
    TRIGGERS_NEW_CHANNEL = "triggers_new"  # a TI deferred: a trigger row waits to be claimed
    POOLS_CHANNEL = "pools"  # a pool was created, changed or deleted: re-read the pools

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations. Raises StoreUnavailable with the reason."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending writes and disconnect."""

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    # -- DAGs ---------------------------------------------------------------
    @abc.abstractmethod
    async def upsert_dags(self, dags: Sequence[DagRecord]) -> None:
        """Record DAG structures; keeps each DAG's paused flag unless it is new."""

    @abc.abstractmethod
    async def list_dags(self) -> list[DagRecord]: ...

    @abc.abstractmethod
    async def get_dag(self, dag_id: str) -> DagRecord | None: ...

    @abc.abstractmethod
    async def set_dag_paused(self, dag_id: str, paused: bool) -> None: ...

    @abc.abstractmethod
    async def deactivate_dags(self, keep: Iterable[str]) -> None:
        """Mark DAGs not in `keep` as inactive (their file is gone or no longer defines them)."""

    @abc.abstractmethod
    async def replace_import_errors(self, errors: Sequence[ImportErrorRecord]) -> None: ...

    @abc.abstractmethod
    async def list_import_errors(self) -> list[ImportErrorRecord]: ...

    # -- runs -----------------------------------------------------------------
    @abc.abstractmethod
    async def create_run(self, run: DagRunRecord, tis: Sequence[TaskInstanceRecord]) -> None:
        """Insert a run with its TIs in one transaction; RunAlreadyExists if the id is taken."""

    @abc.abstractmethod
    async def get_run(self, dag_id: str, run_id: str) -> DagRunRecord | None: ...

    @abc.abstractmethod
    async def list_runs(
        self,
        dag_id: str | None = None,
        states: Iterable[DagRunState] | None = None,
        limit: int = 100,
        offset: int = 0,
        logical_date: datetime | None = None,
    ) -> list[DagRunRecord]:
        """Newest logical date first; `logical_date` keeps the runs of that moment."""

    @abc.abstractmethod
    async def latest_run(self, dag_id: str, run_type: str | None = None) -> DagRunRecord | None:
        """The run with the latest logical date (of `run_type`, if given)."""

    @abc.abstractmethod
    async def save_run(self, run: DagRunRecord) -> None:
        """Group-committed full-row update of a run."""

    @abc.abstractmethod
    async def claim_runs(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        dag_ids: Iterable[str] | None = None,
    ) -> list[DagRunRecord]:
        """Take ownership of unfinished runs (of `dag_ids`, if given) that have no live
        owner (none, or lease expired). Runs this owner already holds are not returned."""

    @abc.abstractmethod
    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        """Extend every lease `owner` holds; returns how many runs it holds."""

    @abc.abstractmethod
    async def release_runs(self, owner: str, run_keys: Iterable[tuple[str, str]] | None = None) -> None:
        """Give up ownership (all runs, or the given (dag_id, run_id) pairs)."""

    @abc.abstractmethod
    async def expire_leases_of(self, owner: str) -> int:
        """Expire the leases of an owner known to be dead, so others adopt its runs at once."""

    # -- task instances -----------------------------------------------------
    @abc.abstractmethod
    async def get_tis(self, dag_id: str, run_id: str) -> list[TaskInstanceRecord]: ...

    @abc.abstractmethod
    async def save_tis(self, tis: Sequence[TaskInstanceRow]) -> None:
        """Group-committed upsert of full TI rows."""

    @abc.abstractmethod
    async def finish_ti(
        self,
        ti: TaskInstanceRow,
        xcoms: Sequence[XComRecord] = (),
        run: DagRunRecord | None = None,
        *,
        end_trigger: bool = False,
    ) -> None:
        """Group-committed: a TI's terminal row, its XComs (replacing older ones of the TI),
        optionally its run's row and, with `end_trigger`, the deletion of its trigger row
        (a resumed deferral is over), all in one transaction."""

    async def finish_tis(
        self,
        ends: Sequence[tuple[TaskInstanceRow, Sequence[XComRecord]]],
        *,
        end_trigger: bool = False,
    ) -> None:
        """Group-committed: several TIs' terminal rows with their XComs (each as
        `finish_ti` would write it), in one transaction where the backend can."""
        async with anyio.create_task_group() as tg:
            for ti, xcoms in ends:
                tg.start_soon(functools.partial(self.finish_ti, ti, xcoms, end_trigger=end_trigger))

    # -- XCom -------------------------------------------------------------------
    @abc.abstractmethod
    async def get_xcoms(
        self, dag_id: str, run_id: str, task_id: str | None = None
    ) -> list[XComRecord]: ...

    # -- triggers (deferred waits) --------------------------------------------------
    @abc.abstractmethod
    async def defer_ti(self, ti: TaskInstanceRow, trigger: TriggerRecord) -> None:
        """Group-committed: the deferred TI row and its trigger row (replacing an older
        trigger of that TI), in one transaction."""

    @abc.abstractmethod
    async def claim_triggers(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[TriggerRecord]:
        """Take unfired triggers that have no live owner, oldest first."""

    @abc.abstractmethod
    async def renew_trigger_leases(self, owner: str, lease_until: datetime) -> int: ...

    @abc.abstractmethod
    async def release_triggers(self, owner: str, trigger_ids: Iterable[int] | None = None) -> None:
        ...

    @abc.abstractmethod
    async def fire_trigger(self, trigger_id: int, event: dict[str, Any], now: datetime) -> None:
        """Group-committed: record the trigger's event (and give up its ownership). No
        effect when the row is gone or has fired already: the first event wins."""

    @abc.abstractmethod
    async def fired_triggers(self, run_keys: Iterable[tuple[str, str]]) -> list[TriggerRecord]:
        """Fired triggers of the given (dag_id, run_id) runs, for resuming their TIs."""

    @abc.abstractmethod
    async def get_trigger(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> TriggerRecord | None:
        ...

    @abc.abstractmethod
    async def delete_trigger(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> None:
        """Group-committed: the TI has resumed; its trigger row goes."""

    @abc.abstractmethod
    async def list_triggers(self) -> list[TriggerRecord]: ...

    # -- pools ---------------------------------------------------------------------------
    # TI states that occupy a pool (`pool_usage`, `delete_pool`).
    POOL_BUSY_STATES = ("queued", "running", "deferred")

    @abc.abstractmethod
    async def list_pools(self) -> list[PoolRecord]:
        """Every pool, by name; `default_pool` is always among them."""

    @abc.abstractmethod
    async def get_pool(self, name: str) -> PoolRecord | None: ...

    @abc.abstractmethod
    async def set_pool(self, pool: PoolRecord) -> None:
        """Create or replace a pool (committed on return; POOLS_CHANNEL is notified)."""

    @abc.abstractmethod
    async def delete_pool(self, name: str) -> None:
        """Delete a pool; PoolError for `default_pool` or a pool with task instances
        queued, running or deferred in it, PoolNotFound for an unknown one."""

    @abc.abstractmethod
    async def pool_usage(self) -> dict[str, dict[str, int]]:
        """Per pool, how many task instances are in each of POOL_BUSY_STATES (every
        process's, as the store has them; pools without any are left out)."""

    # -- webhook events ---------------------------------------------------------------
    @abc.abstractmethod
    async def deliver_webhook(self, key: str, payload: Any, now: datetime) -> int:
        """Store an event for `key` (committed on return); returns its id."""

    @abc.abstractmethod
    async def first_webhook(self, key: str) -> tuple[int, Any] | None:
        """The oldest event delivered for `key`, as (id, payload)."""

    # -- processes (heartbeats) ---------------------------------------------------
    @abc.abstractmethod
    async def register_process(self, process: ProcessRecord) -> None: ...

    @abc.abstractmethod
    async def heartbeat(self, process_id: str, now: datetime) -> None: ...

    @abc.abstractmethod
    async def unregister_process(self, process_id: str) -> None: ...

    @abc.abstractmethod
    async def list_processes(self, kind: str | None = None) -> list[ProcessRecord]: ...

    # -- wake-ups across processes (optional) ----------------------------------------
    # A backend that can tell other processes about a committed change (PostgreSQL's
    # LISTEN/NOTIFY) overrides these three. The defaults do nothing, which is right for a
    # store that only one process drives (SQLite): wake-ups within a process are direct
    # calls, and readers keep a periodic sweep as the safety net in any case.
    @property
    def notifications_live(self) -> bool:
        """True while notifications from other processes are being received (a listener
        connection is up). Readers poll slowly only while this holds."""
        return False

    async def notify(self, channel: str, payload: str = "") -> None:  # noqa: B027 - optional
        """Send a wake-up on `channel` to every process listening on this database (for
        this store's schema only). It is delivered once the sender's transaction commits;
        here it is its own transaction. No effect on a backend without notifications."""

    async def listen(self, channel: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call `callback(payload)` on the event loop for each notification on `channel`,
        from any process, until the returned function is called or the store closes. After
        a lost listener connection is re-established, every callback is called once with
        the payload "" (notifications sent meanwhile are lost). Callbacks must not block.
        On a backend without notifications this subscribes to nothing."""
        return _no_subscription


def _no_subscription() -> None:
    return None
