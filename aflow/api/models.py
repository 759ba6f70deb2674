"""What the API reads and answers, as pydantic models (validation and OpenAPI schemas).

Names follow Airflow's REST API where one exists (`dag_run_id`, `total_entries`,
`task_instances`), so its users and scripts find their way."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from aflow.states import DagRunState, RunType, TaskState

MAX_LIMIT = 1000


class Input(BaseModel):
    """A request body or query: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Page(Input):
    limit: int = Field(100, ge=1, le=MAX_LIMIT, description="how many items at most")
    offset: int = Field(0, ge=0, description="how many items to skip")


# -- DAGs ---------------------------------------------------------------------------------
class DagQuery(Page):
    paused: bool | None = Field(None, description="only paused (true) or active (false) DAGs")
    only_active: bool = Field(True, description="leave out DAGs whose file is gone")
    tags: list[str] | None = Field(None, description="DAGs with any of these tags")
    dag_id_pattern: str | None = Field(None, description="DAG ids containing this text")


class Dag(BaseModel):
    dag_id: str
    description: str | None
    fileloc: str | None
    schedule: str | None
    tags: list[str]
    is_paused: bool
    is_active: bool
    max_active_runs: int | None
    max_active_tasks: int | None
    last_parsed: datetime | None


class DagCollection(BaseModel):
    dags: list[Dag]
    total_entries: int


class TaskNode(BaseModel):
    task_id: str
    operator: str
    trigger_rule: str
    retries: int
    max_active_tis_per_dag: int | None = Field(
        None, description="tries of this task running at once across the DAG's runs, in "
        "each scheduler process (null: no limit)")
    max_active_tis_per_dagrun: int | None = Field(
        None, description="tries of this task (a mapped task's instances) running at once "
        "within one run, in each scheduler process (null: no limit)")
    upstream: list[str]
    downstream: list[str]
    ui_color: str | None = None


class DagDetail(Dag):
    params: dict[str, Any]
    tasks: list[TaskNode]


class DagPatch(Input):
    is_paused: bool


# -- runs ---------------------------------------------------------------------------------
class RunQuery(Page):
    state: list[DagRunState] | None = Field(None, description="runs in any of these states")
    logical_date: AwareDatetime | None = Field(
        None, description="runs of exactly this logical date (with an offset or Z)")


class DagRun(BaseModel):
    dag_id: str
    dag_run_id: str
    run_type: RunType
    state: DagRunState
    logical_date: datetime
    data_interval_start: datetime | None
    data_interval_end: datetime | None
    conf: dict[str, Any]
    queued_at: datetime | None
    start_date: datetime | None
    end_date: datetime | None
    triggered_by: str | None
    note: str | None


class DagRunCollection(BaseModel):
    dag_runs: list[DagRun]
    total_entries: int


class DagRunCreate(Input):
    conf: dict[str, Any] = Field(default_factory=dict, description="validated by the DAG's params")
    dag_run_id: str | None = Field(None, min_length=1, max_length=250)
    logical_date: AwareDatetime | None = Field(None, description="with an offset or Z")


# -- task instances -------------------------------------------------------------------------
class TaskInstance(BaseModel):
    dag_id: str
    dag_run_id: str
    task_id: str
    map_index: int
    state: TaskState
    try_number: int
    max_tries: int
    start_date: datetime | None
    end_date: datetime | None
    duration: float | None
    hostname: str | None
    operator: str | None
    pool: str
    priority_weight: int
    error: str | None


class TaskInstanceCollection(BaseModel):
    task_instances: list[TaskInstance]
    total_entries: int


class InstanceQuery(Input):
    map_index: int = Field(-1, ge=-1, description="which instance of a mapped task (-1: the task's only one)")


class LogQuery(InstanceQuery):
    offset: int = Field(0, ge=0, description="byte offset to read from (tail with next_offset)")


class LogChunk(BaseModel):
    try_number: int
    content: str
    offset: int
    next_offset: int


class XComEntry(BaseModel):
    task_id: str
    map_index: int
    key: str
    value: Any


class XComCollection(BaseModel):
    xcom_entries: list[XComEntry]


# -- the rest --------------------------------------------------------------------------------
class ImportErrorEntry(BaseModel):
    filename: str
    stack_trace: str
    timestamp: datetime


class ImportErrorCollection(BaseModel):
    import_errors: list[ImportErrorEntry]


class TriggerCount(BaseModel):
    classpath: str
    waiting: int
    fired: int
    oldest_wait_s: float


class TriggerCollection(BaseModel):
    triggers: list[TriggerCount]
    total_waiting: int


class ComponentHealth(BaseModel):
    status: str  # "healthy" | "unhealthy" | "unknown"
    latest_heartbeat: datetime | None = None
    detail: str | None = None


class Health(BaseModel):
    status: str
    store: ComponentHealth
    scheduler: ComponentHealth
    triggerer: ComponentHealth


# -- webhooks -------------------------------------------------------------------------------
class WebhookResult(BaseModel):
    action: str  # "triggered" (a run) | "delivered" (an event for WebhookSensors)
    dag_id: str
    dag_run_id: str | None = None
    key: str | None = None
    event_id: int | None = None


# -- changes by hand ------------------------------------------------------------------------
class ClearRequest(Input):
    dag_run_id: str = Field(min_length=1)
    task_ids: list[str] | None = Field(None, description="these tasks (default: every task)")
    include_downstream: bool = False
    include_upstream: bool = False
    only_failed: bool = False
    dry_run: bool = Field(False, description="say what would be cleared; change nothing")


class ClearResult(BaseModel):
    task_ids: list[str]
    dry_run: bool


class RunStatePatch(Input):
    state: Literal["success", "failed"]


class TaskStatePatch(Input):
    new_state: Literal["success", "failed"]
    map_index: int = -1


class MarkResult(BaseModel):
    task_ids: list[str]  # the marked task, then the downstream ones cleared to re-decide


class TryEntry(BaseModel):
    try_number: int
    log_size: int


class TryCollection(BaseModel):
    tries: list[TryEntry]


# -- pools ----------------------------------------------------------------------------------
class Pool(BaseModel):
    name: str
    slots: int = Field(description="-1: no limit")
    description: str
    include_deferred: bool
    running: int = Field(description="task instances queued or running in it (every process)")
    deferred: int


class PoolCollection(BaseModel):
    pools: list[Pool]


class PoolPut(Input):
    slots: int = Field(ge=-1, description="-1: no limit")
    description: str = ""
    include_deferred: bool = False


# -- variables and connections ---------------------------------------------------------------
class VariableOut(BaseModel):
    key: str
    value: str = Field(description="`***` when the key looks secret (password, token, ...)")
    description: str


class VariableCollection(BaseModel):
    variables: list[VariableOut]


class VariablePut(Input):
    value: str
    description: str = ""


class ConnectionOut(BaseModel):
    """Never a secret: the password is `***` when one is set, the extra is left out."""

    conn_id: str
    conn_type: str
    host: str | None
    port: int | None
    login: str | None
    schema_: str | None = Field(alias="schema", serialization_alias="schema")
    password: str | None
    has_extra: bool
    description: str


class ConnectionCollection(BaseModel):
    connections: list[ConnectionOut]


class ConnectionPut(Input):
    conn_type: str = Field(min_length=1)
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    login: str | None = None
    password: str | None = None
    schema_: str | None = Field(None, alias="schema")
    extra: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
