"""Plain records the Store reads and writes: frozen dataclasses, aware datetimes, JSON data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from aflow.states import DagRunState, RunType, TaskState


@dataclass(frozen=True, slots=True)
class DagRecord:
    dag_id: str
    fileloc: str | None
    structure: dict[str, Any]
    is_paused: bool = False
    is_active: bool = True
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ImportErrorRecord:
    filename: str
    message: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DagRunRecord:
    dag_id: str
    run_id: str
    run_type: RunType
    state: DagRunState
    logical_date: datetime
    data_interval_start: datetime | None
    data_interval_end: datetime | None
    conf: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    triggered_by: str | None = None
    owner: str | None = None
    lease_until: datetime | None = None
    note: str | None = None
    # An asset-triggered (`event`) run: the events it consumed, oldest first. Not a column:
    # the run driver reads them from the asset queue when it adopts the run.
    triggering_asset_events: tuple[AssetEventRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskInstanceRecord:
    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    state: TaskState = TaskState.NONE
    try_number: int = 0
    max_tries: int = 0
    start_date: datetime | None = None
    end_date: datetime | None = None
    hostname: str | None = None
    operator: str | None = None
    priority_weight: int = 1
    pool: str = "default_pool"
    next_retry_at: datetime | None = None
    next_method: str | None = None
    next_kwargs: dict[str, Any] | None = None
    error: str | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.dag_id, self.run_id, self.task_id, self.map_index)

    @property
    def duration_s(self) -> float | None:
        if self.start_date and self.end_date:
            return (self.end_date - self.start_date).total_seconds()
        return None


class TaskInstanceRow(Protocol):
    """What a store reads to write a TI row: a TaskInstanceRecord, or the run driver's
    mutable in-memory TI (same attribute names), so the hot path converts nothing."""

    @property
    def dag_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def map_index(self) -> int: ...
    @property
    def state(self) -> TaskState: ...
    @property
    def try_number(self) -> int: ...
    @property
    def max_tries(self) -> int: ...
    @property
    def start_date(self) -> datetime | None: ...
    @property
    def end_date(self) -> datetime | None: ...
    @property
    def hostname(self) -> str | None: ...
    @property
    def operator(self) -> str | None: ...
    @property
    def priority_weight(self) -> int: ...
    @property
    def pool(self) -> str: ...
    @property
    def next_retry_at(self) -> datetime | None: ...
    @property
    def next_method(self) -> str | None: ...
    @property
    def next_kwargs(self) -> dict[str, Any] | None: ...
    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class XComRecord:
    dag_id: str
    run_id: str
    task_id: str
    key: str
    value: Any
    map_index: int = -1


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    process_id: str
    kind: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class TriggerRecord:
    """A parked trigger and the TI try it wakes. `event` is set once it has fired:
    {"kind": "event" | "error" | "timeout", "payload": …, "error": …}."""

    classpath: str
    kwargs: dict[str, Any]
    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    created_at: datetime
    map_index: int = -1
    timeout_at: datetime | None = None
    id: int | None = None
    owner: str | None = None
    lease_until: datetime | None = None
    event: dict[str, Any] | None = None
    fired_at: datetime | None = None

    @property
    def ti_key(self) -> tuple[str, str, str, int]:
        return (self.dag_id, self.run_id, self.task_id, self.map_index)


@dataclass(frozen=True, slots=True)
class AssetEventRecord:
    """One update of an asset. A task's event names its source task (`source_*`); an
    AssetWatcher's names the watcher (`source_watcher`) and carries the trigger's
    payload in `extra`."""

    id: int
    uri: str
    timestamp: datetime
    extra: dict[str, Any] = field(default_factory=dict)
    source_dag_id: str | None = None
    source_run_id: str | None = None
    source_task_id: str | None = None
    source_map_index: int = -1
    source_watcher: str | None = None


@dataclass(frozen=True, slots=True)
class AssetWatcherRecord:
    """An AssetWatcher as recorded from its DAG: the trigger to run for the asset. `kwargs`
    are the trigger's kwargs for its NEXT wait (they move on with each event, see
    triggers.base.BaseTrigger.next_watch); `initial_kwargs` are the DAG file's."""

    uri: str
    name: str
    dag_id: str
    classpath: str
    initial_kwargs: dict[str, Any]
    kwargs: dict[str, Any] | None  # None: a one-shot trigger that has fired (done)
    owner: str | None = None
    id: int | None = None
    version: int = 1


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A web server user. `password_hash` is scrypt's (see aflow.api.auth)."""

    username: str
    password_hash: str
    role: str  # "viewer" | "admin"
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiTokenRecord:
    """A bearer token of a user; only its SHA-256 is stored."""

    token_id: str
    token_hash: str
    username: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class WebSessionRecord:
    """A logged-in UI session; only the SHA-256 of its cookie value is stored."""

    session_hash: str
    username: str
    created_at: datetime
    expires_at: datetime


DEFAULT_POOL = "default_pool"
DEFAULT_POOL_SLOTS = 128  # Airflow's default_pool size
UNLIMITED_SLOTS = -1


@dataclass(frozen=True, slots=True)
class PoolRecord:
    """A named pool: its tasks together take at most `slots` slots at once in one
    scheduler process (-1: no limit). With `include_deferred`, a deferred task keeps
    counting against it until it ends."""

    name: str
    slots: int
    description: str = ""
    include_deferred: bool = False


@dataclass(frozen=True, slots=True)
class VariableRecord:
    """A Variable: a key and its text value (JSON values are stored as their text)."""

    key: str
    value: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """A Connection as stored. The store never sees a secret in clear: `password_enc` and
    `extra_enc` are Fernet tokens (or None), made and read by aflow.secrets."""

    conn_id: str
    conn_type: str
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password_enc: str | None = None
    schema: str | None = None
    extra_enc: str | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class DeadlineMissRecord:
    """A deadline that a run (task_id None) or a task of it missed: recorded once per
    (dag_id, run_id, task_id, alert_index), before its alert is sent. `alert_state`:
    `none` (no callback), `sending`, `sent` or `failed` (with `alert_error`)."""

    dag_id: str
    run_id: str
    task_id: str | None
    alert_index: int
    deadline_at: datetime
    missed_at: datetime
    description: str = ""
    owner: str | None = None
    alert_state: str = "sending"
    alert_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id, "run_id": self.run_id, "task_id": self.task_id,
            "alert_index": self.alert_index, "deadline_at": self.deadline_at.isoformat(),
            "missed_at": self.missed_at.isoformat(), "description": self.description,
            "alert_state": self.alert_state, "alert_error": self.alert_error,
        }
