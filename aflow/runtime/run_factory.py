"""Building a new run's rows: conf validated against the DAG's params, one TI per task."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aflow.authoring.baseoperator import BaseOperator
from aflow.authoring.dag import DAG
from aflow.exceptions import InvalidConfError
from aflow.states import DagRunState, RunType, TaskState
from aflow.store.records import DagRunRecord, TaskInstanceRecord


def run_id_for(run_type: RunType, logical_date: datetime) -> str:
    return f"{run_type.value}__{logical_date.isoformat()}"


def new_run(
    dag: DAG,
    *,
    run_type: RunType,
    logical_date: datetime,
    now: datetime,
    data_interval: tuple[datetime, datetime] | None = None,
    conf: dict[str, Any] | None = None,
    run_id: str | None = None,
    triggered_by: str | None = None,
    owner: str | None = None,
    lease_until: datetime | None = None,
) -> tuple[DagRunRecord, list[TaskInstanceRecord]]:
    """The rows of a new queued run; raises InvalidConfError listing every conf problem."""
    if conf is not None and not isinstance(conf, dict):
        raise InvalidConfError(f"conf must be a JSON object, got {type(conf).__name__}")
    dag.params.resolve(conf)
    if logical_date.tzinfo is None:
        raise InvalidConfError(f"logical_date {logical_date} must be timezone-aware")
    start, end = data_interval or (logical_date, logical_date)
    run = DagRunRecord(
        dag_id=dag.dag_id,
        run_id=run_id or run_id_for(run_type, logical_date),
        run_type=run_type,
        state=DagRunState.QUEUED,
        logical_date=logical_date,
        data_interval_start=start,
        data_interval_end=end,
        conf=dict(conf or {}),
        created_at=now,
        triggered_by=triggered_by,
        owner=owner,
        lease_until=lease_until,
    )
    return run, [new_ti(task, run.run_id) for task in dag.tasks]


def new_ti(task: BaseOperator, run_id: str) -> TaskInstanceRecord:
    """The row of a task instance that has not run yet."""
    assert task.dag is not None
    return TaskInstanceRecord(
        dag_id=task.dag.dag_id,
        run_id=run_id,
        task_id=task.task_id,
        state=TaskState.NONE,
        max_tries=task.retries,
        operator=task.operator_name,
        priority_weight=task.dag.priority_weights()[task.task_id],
        pool=task.pool,
    )


def with_unstarted(
    dag_id: str, run_id: str, task_ids: list[str], rows: list[TaskInstanceRecord]
) -> list[TaskInstanceRecord]:
    """A run's TI rows plus a `none` record for each task that has no row yet (runs are
    created without TI rows; a TI's first row is written when it is first decided).
    An expanded mapped task shows as its instances: its map-index -1 row, `removed`
    when it expanded, is left out."""
    have = {r.task_id for r in rows}
    expanded = {r.task_id for r in rows if r.map_index >= 0}
    missing = [
        TaskInstanceRecord(dag_id=dag_id, run_id=run_id, task_id=t)
        for t in task_ids
        if t not in have
    ]
    return [r for r in rows if not (r.map_index < 0 and r.task_id in expanded
                                    and r.state is TaskState.REMOVED)] + missing


def manual_interval(dag: DAG, when: datetime) -> tuple[datetime, datetime]:
    from aflow.runtime.timetable import timetable_for

    timetable = timetable_for(dag)
    return timetable.infer_manual_interval(when) if timetable else (when, when)
