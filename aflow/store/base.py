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

from aflow.states import DagRunState, TaskState
from aflow.store.records import (
    ApiTokenRecord,
    AssetEventRecord,
    AssetWatcherRecord,
    ConnectionRecord,
    DagRecord,
    DagRunRecord,
    DeadlineMissRecord,
    ImportErrorRecord,
    PoolRecord,
    ProcessRecord,
    TaskInstanceRecord,
    TaskInstanceRow,
    TriggerRecord,
    UserRecord,
    VariableRecord,
    WebSessionRecord,
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
    ASSETS_CHANNEL = "assets"  # asset events were queued for DAGs: see if a run is due
    WATCHERS_CHANNEL = "asset_watchers"  # DAGs recorded (maybe new watchers): claim them
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
        """Record DAG structures; keeps each DAG's paused flag unless it is new. From each
        structure's `asset_condition` and `asset_watchers` (see DAG.structure) it also
        records which assets the DAG consumes and the watchers it defines (a watcher
        whose definition is unchanged keeps its position and owner)."""

    @abc.abstractmethod
    async def list_dags(self) -> list[DagRecord]: ...

    @abc.abstractmethod
    async def get_dag(self, dag_id: str) -> DagRecord | None: ...

    @abc.abstractmethod
    async def set_dag_paused(self, dag_id: str, paused: bool) -> None: ...

    @abc.abstractmethod
    async def deactivate_dag_ids(self, dag_ids: Iterable[str]) -> None:
        """Mark these DAGs as inactive (their file is gone or no longer defines them):
        they consume no more asset events and their asset watchers go. Other DAGs are
        untouched (one recorded meanwhile by another process stays as it is)."""

    @abc.abstractmethod
    async def replace_import_errors(
        self, errors: Sequence[ImportErrorRecord], *, under: str | None = None
    ) -> None:
        """Replace the recorded import errors by `errors`: all of them, or with `under` (a
        DAG folder, or one file) only those of files under it, so schedulers with different
        DAG folders on one store keep each other's."""

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
    async def count_runs(
        self,
        dag_id: str | None = None,
        states: Iterable[DagRunState] | None = None,
        logical_date: datetime | None = None,
    ) -> int:
        """How many runs `list_runs` with the same filters would give without a limit (one
        count, no rows read out: admitting a run counts a DAG's running runs)."""

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
        run_id: str | None = None,
    ) -> list[DagRunRecord]:
        """Take ownership of unfinished runs (of `dag_ids`, if given; only the one with
        `run_id`, if given) that have no live owner (none, or lease expired). Runs this
        owner already holds are not returned."""

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
        asset_events: Sequence[AssetEventRecord] = (),
    ) -> None:
        """Group-committed: a TI's terminal row, its XComs (replacing older ones of the TI),
        optionally its run's row, with `end_trigger` the deletion of its trigger row
        (a resumed deferral is over), and its outlets' `asset_events` (their `id` is
        ignored), each queued for the DAGs that consume its asset, all in one
        transaction."""

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

    @abc.abstractmethod
    async def flush(self) -> None:
        """Return once every group-committed write submitted before this call has
        committed (a write in a transaction of its own, such as `rewrite_run`, then
        commits after them)."""

    # -- runs and TIs changed by hand (clear, mark) ------------------------------------
    @abc.abstractmethod
    async def reset_tis(self, tis: Sequence[TaskInstanceRow]) -> None:
        """Group-committed, for the process that drives the TIs' run: the given TI rows as
        they are (cleared ones in state `none`), and the XComs of those written as `none`
        or `removed` (CLEARED_TI_STATES) and the trigger rows of all of them deleted, in
        one transaction."""

    @abc.abstractmethod
    async def rewrite_run(
        self,
        dag_id: str,
        run_id: str,
        tis: Sequence[TaskInstanceRow],
        *,
        owner: str,
        now: datetime,
        run_state: DagRunState | None = None,
    ) -> DagRunRecord:
        """One transaction, for a run this process does not drive: write the given TI rows
        as `reset_tis` does (XComs of `none` ones and trigger rows of all deleted), and set
        the run's state: `queued` (dates cleared, owner released, so a scheduler adopts it
        afresh; RUNS_CHANNEL is notified), `success`/`failed` (ended now, owner released),
        or None (the run's row unchanged). Refused with RunBusy, writing nothing, while
        the run is unfinished and another owner than `owner` holds a live lease on it
        (its driver would not see the change); RunNotFound if there is no such run.
        Returns the run's row as it is afterwards."""

    @abc.abstractmethod
    async def change_for_owner(
        self, dag_id: str, run_id: str, tis: Sequence[TaskInstanceRow], *, now: datetime
    ) -> DagRunRecord:
        """One transaction, for an unfinished run another live process drives: the given
        TIs, all ended now in the store, are written as `reset_tis` writes them (cleared
        ones in state `none`, marked ones in their new end state), and each gets a fired
        trigger row whose event is BY_HAND_EVENT. The run's driver picks those up as it
        picks up fired triggers (Scheduler.resume_fired; TRIGGERS_FIRED_CHANNEL is
        notified) and makes the same change in its memory. Refused with RunBusy, writing
        nothing, if any of the TIs has not ended in the store. Writes nothing either
        when the run has ended or no live lease holds it any more (the caller then
        changes it as any other run). RunNotFound if there is no such run. Returns the
        run's row."""

    @abc.abstractmethod
    async def end_run(self, run: DagRunRecord) -> DagRunRecord:
        """One transaction, for the process that drives `run` and has ended all of its
        TIs: the run's row as given (its end state and dates), unless fired by-hand rows
        of the run (BY_HAND_CLASSPATH, see `change_for_owner`) are there, left by a change
        that driver has not applied yet; then those rows are deleted and the run goes
        back to `queued` instead (dates cleared, owner released; RUNS_CHANNEL is
        notified), so a scheduler adopts it afresh with the TIs as changed in the store.
        Returns the run's row as it is afterwards (`queued` in the second case)."""

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
    async def delete_triggers(self, trigger_ids: Iterable[int]) -> None:
        """Group-committed: delete these trigger rows (by id; gone ones are no matter)."""

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
    async def first_webhook(self, key: str, after_id: int = 0) -> tuple[int, Any] | None:
        """The oldest event delivered for `key` (with an id above `after_id`), as
        (id, payload)."""

    # -- assets ---------------------------------------------------------------------
    @abc.abstractmethod
    async def record_asset_events(self, events: Sequence[AssetEventRecord]) -> list[int]:
        """Record asset events (not from a task: e.g. by hand), each queued for the DAGs
        that consume its asset, in one transaction; returns their ids."""

    @abc.abstractmethod
    async def list_asset_events(
        self, uri: str | None = None, limit: int = 100
    ) -> list[AssetEventRecord]:
        """Newest first."""

    @abc.abstractmethod
    async def queued_asset_events(
        self, dag_ids: Iterable[str] | None = None
    ) -> dict[str, list[AssetEventRecord]]:
        """Events queued for each DAG (of `dag_ids`, if given) and not yet consumed by a
        run, oldest first. DAGs without any are left out."""

    @abc.abstractmethod
    async def create_asset_run(self, run: DagRunRecord, event_ids: Sequence[int]) -> bool:
        """In one transaction: consume the queued events `event_ids` of the run's DAG and
        create the run. False, and nothing changes, when any of them is no longer queued
        (another scheduler consumed it first). RunAlreadyExists if the run id is taken."""

    @abc.abstractmethod
    async def asset_events_of_run(self, dag_id: str, run_id: str) -> list[AssetEventRecord]:
        """The events an asset-triggered run consumed, oldest first."""

    @abc.abstractmethod
    async def list_asset_watchers(self) -> list[AssetWatcherRecord]: ...

    @abc.abstractmethod
    async def claim_asset_watchers(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[AssetWatcherRecord]:
        """Take watchers that still wait for events and have no live owner (none, or one
        whose trigger lease expired); the owner's lease is its trigger lease
        (`renew_trigger_leases`, `release_triggers` cover both)."""

    @abc.abstractmethod
    async def owned_asset_watchers(self, owner: str) -> dict[int, int]:
        """{watcher id: version} of the watchers `owner` holds and that still wait."""

    @abc.abstractmethod
    async def fire_asset_watcher(
        self,
        watcher: AssetWatcherRecord,
        version: int,
        event: AssetEventRecord,
        next_kwargs: dict[str, Any] | None,
    ) -> bool:
        """In one transaction: record the watcher's event (queued for its consumers) and
        store the trigger kwargs of its next wait (None: it is done). Only while the row
        is still that `version`, owned by `watcher.owner`; else nothing and False."""

    # -- users, API tokens, UI sessions (the web server's) ---------------------------------
    @abc.abstractmethod
    async def create_user(self, user: UserRecord) -> None:
        """UserAlreadyExists if the name is taken."""

    @abc.abstractmethod
    async def get_user(self, username: str) -> UserRecord | None: ...

    @abc.abstractmethod
    async def list_users(self) -> list[UserRecord]: ...

    @abc.abstractmethod
    async def delete_user(self, username: str) -> bool:
        """Delete the user with its tokens and sessions; False if there was none."""

    @abc.abstractmethod
    async def create_api_token(self, token: ApiTokenRecord) -> None: ...

    @abc.abstractmethod
    async def get_api_token(self, token_hash: str) -> ApiTokenRecord | None: ...

    @abc.abstractmethod
    async def list_api_tokens(self, username: str | None = None) -> list[ApiTokenRecord]: ...

    @abc.abstractmethod
    async def revoke_api_token(self, token_id: str) -> bool:
        """Delete the token; False if there was none."""

    @abc.abstractmethod
    async def create_web_session(self, session: WebSessionRecord, now: datetime) -> None:
        """Record a session (and forget sessions expired at `now`)."""

    @abc.abstractmethod
    async def get_web_session(self, session_hash: str) -> WebSessionRecord | None: ...

    @abc.abstractmethod
    async def delete_web_session(self, session_hash: str) -> None: ...

    # -- Variables and Connections (see aflow.secrets for the user-facing API) -------
    @abc.abstractmethod
    async def get_variable(self, key: str) -> VariableRecord | None: ...

    @abc.abstractmethod
    async def list_variables(self) -> list[VariableRecord]:
        """Every variable, by key."""

    @abc.abstractmethod
    async def set_variables(self, variables: Sequence[VariableRecord]) -> None:
        """Create or replace these variables, all in one transaction."""

    @abc.abstractmethod
    async def delete_variable(self, key: str) -> bool:
        """False if there was none."""

    @abc.abstractmethod
    async def get_connection(self, conn_id: str) -> ConnectionRecord | None:
        """The stored row: its secrets are still encrypted (aflow.secrets decrypts)."""

    @abc.abstractmethod
    async def list_connections(self) -> list[ConnectionRecord]:
        """Every connection, by id (secrets still encrypted)."""

    @abc.abstractmethod
    async def set_connection(self, connection: ConnectionRecord) -> None:
        """Create or replace the connection."""

    @abc.abstractmethod
    async def delete_connection(self, conn_id: str) -> bool:
        """False if there was none."""

    # -- deadline misses (see aflow.runtime.deadlines) --------------------------------
    @abc.abstractmethod
    async def record_deadline_miss(self, miss: DeadlineMissRecord) -> bool:
        """Record a missed deadline (committed on return) unless one is recorded already
        for its (dag_id, run_id, task_id, alert_index); True when this call recorded it:
        only that caller sends the alert, so it goes out once across restarts and
        processes. Also True when the row found is this very record (same `owner`,
        `missed_at` and `alert_state` as given): a retry after a commit whose
        acknowledgement was lost recognises its own insert."""

    @abc.abstractmethod
    async def claim_deadline_alert(
        self, dag_id: str, run_id: str, task_id: str | None, alert_index: int, owner: str,
    ) -> DeadlineMissRecord | None:
        """Take over, for `owner`, the alert of a recorded miss that another owner left
        `sending` (it died, or lost the run, between recording the miss and recording how
        the alert ended). Only the run's current owner (the holder of its lease) can, and
        only from the owner and state it read (one conditional update): so of processes
        that each think they drive the run, one at most gets it. Returns the row as it is
        now (None when no miss is recorded under that key): `owner` sends the alert when
        the row is `sending` and its own, which includes a row it had claimed already."""

    @abc.abstractmethod
    async def set_deadline_alert_state(
        self, dag_id: str, run_id: str, task_id: str | None, alert_index: int,
        state: str, error: str | None = None, *, owner: str | None = None,
    ) -> bool:
        """Record how sending a miss's alert ended (`sent` or `failed` with `error`).
        With `owner`, only while the row is still that owner's; False when it is not
        (another process claimed it meanwhile) or there is no such row."""

    @abc.abstractmethod
    async def deadline_misses(
        self, dag_id: str, run_id: str | None = None
    ) -> list[DeadlineMissRecord]:
        """The misses of a run (or of every run of the DAG), oldest deadline first."""

    # -- processes (heartbeats) ---------------------------------------------------
    @abc.abstractmethod
    async def register_process(self, process: ProcessRecord) -> None: ...

    @abc.abstractmethod
    async def heartbeat(self, process_id: str, now: datetime) -> None: ...

    @abc.abstractmethod
    async def unregister_process(self, process_id: str) -> None: ...

    @abc.abstractmethod
    async def list_processes(self, kind: str | None = None) -> list[ProcessRecord]: ...

    # -- observing ------------------------------------------------------------------------------
    def observe_commits(self, callback: Callable[[float, int], None]) -> None:
        """Call `callback(seconds, ops)` after each group-committed transaction of this
        open store (for metrics). A backend without group commit calls nothing."""
        committer = getattr(self, "_committer", None)
        if committer is not None:
            committer.observers.append(callback)

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


# TI rows whose XComs a reset (reset_tis, rewrite_run) deletes: cleared ones, and the
# instances of a cleared mapped task, which are gone until it expands again.
CLEARED_TI_STATES = frozenset({TaskState.NONE, TaskState.REMOVED})

# The classpath and event of the fired trigger rows `change_for_owner` leaves: "this TI was
# cleared or marked by hand in the store; do the same in memory". No triggerer runs them.
BY_HAND_CLASSPATH = "aflow.by_hand"
BY_HAND_EVENT: dict[str, Any] = {"kind": "by_hand"}


def held_by_live_owner(run: DagRunRecord, now: datetime) -> bool:
    return (
        not run.state.finished
        and run.owner is not None
        and run.lease_until is not None
        and run.lease_until >= now
    )


def held_elsewhere(run: DagRunRecord, owner: str, now: datetime) -> bool:
    """True while `run` is unfinished and another owner than `owner` holds a live lease
    on it: its driver keeps its state in memory, so no one else may change the run."""
    return (
        not run.state.finished
        and run.owner is not None
        and run.owner != owner
        and run.lease_until is not None
        and run.lease_until >= now
    )


def busy_message(run: DagRunRecord) -> str:
    return (
        f"run {run.run_id!r} of DAG {run.dag_id!r} is {run.state.value} and driven by "
        f"another process ({run.owner}, lease until {run.lease_until:%Y-%m-%d %H:%M:%S%z}); "
        "change it through that process, or wait until the run ends or its lease expires"
    )
