"""DeadlineAlert: where each reference puts the deadline, and how alerts are gathered
from a DAG and its tasks (also through default_args)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aflow import DAG, DeadlineAlert, DeadlineReference, EmptyOperator
from aflow.runtime.deadlines import alerts_of
from aflow.states import DagRunState, RunType
from aflow.store.records import DagRunRecord

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def run(**dates: datetime | None) -> DagRunRecord:
    return DagRunRecord(
        dag_id="d", run_id="r", run_type=RunType.MANUAL, state=DagRunState.RUNNING,
        logical_date=dates.get("logical_date", T0), data_interval_start=None,
        data_interval_end=None, created_at=dates.get("created_at"),
        start_date=dates.get("start_date"),
    )


def test_each_reference_puts_the_deadline_where_it_says() -> None:
    hour = timedelta(hours=1)
    r = run(logical_date=T0, created_at=T0 + timedelta(minutes=1),
            start_date=T0 + timedelta(minutes=2))
    assert DeadlineAlert(interval=hour).deadline_for(r) == T0 + timedelta(minutes=62)
    queued = DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=hour)
    assert queued.deadline_for(r) == T0 + timedelta(minutes=61)
    logical = DeadlineAlert(reference=DeadlineReference.DAGRUN_LOGICAL_DATE, interval=hour)
    assert logical.deadline_for(r) == T0 + hour
    fixed = DeadlineAlert(reference=DeadlineReference.FIXED_DATETIME(T0 + timedelta(days=1)))
    assert fixed.deadline_for(r) == T0 + timedelta(days=1)
    assert DeadlineAlert(reference=T0 + hour).deadline_for(r) == T0 + hour  # a datetime as is
    assert DeadlineAlert(interval=hour).deadline_for(run(start_date=None)) is None  # not started


def test_alerts_are_gathered_from_the_dag_and_its_tasks_including_default_args() -> None:
    soon = DeadlineAlert(interval=timedelta(minutes=5))
    later = DeadlineAlert(interval=timedelta(minutes=50))
    with DAG("d", deadline=[soon, later], default_args={"deadline": soon}) as dag:
        EmptyOperator(task_id="a")
        EmptyOperator(task_id="b", deadline=[later, soon])
    assert alerts_of(dag) == [(None, 0, soon), (None, 1, later), ("a", 0, soon),
                              ("b", 0, later), ("b", 1, soon)]
    assert alerts_of(DAG("plain")) == []
