"""Deadline alerts (Airflow 3's DeadlineAlert, kept small): a DAG run or a task that has
not finished by a point in time calls its callback once, and the miss is recorded.
Nothing is cancelled: the work goes on.

    DAG("etl", deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_STARTED_AT,
        interval=timedelta(minutes=30),
        callback=WebhookNotifier("https://hooks.example.com/x")))

The point in time is `reference + interval`: the reference is when the run was queued,
started (the default), its logical date, or a fixed datetime (`FIXED_DATETIME(when)`,
or a timezone-aware datetime as is). A task's deadline counts from its run's reference
too; a task has met it when every instance of it (each map index) has ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from aflow.exceptions import DagDefinitionError
from aflow.store.records import DagRunRecord

Callback = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class FixedDatetime:
    """A reference that is one moment, whatever the run."""

    when: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.when, datetime) or self.when.utcoffset() is None:
            raise DagDefinitionError(
                f"a fixed deadline reference must be a timezone-aware datetime, got {self.when!r}")


class DeadlineReference(StrEnum):
    """What a deadline's interval counts from."""

    DAGRUN_QUEUED_AT = "dagrun_queued_at"  # the run was created
    DAGRUN_STARTED_AT = "dagrun_started_at"  # a scheduler started driving it
    DAGRUN_LOGICAL_DATE = "dagrun_logical_date"

    @staticmethod
    def FIXED_DATETIME(when: datetime) -> FixedDatetime:  # noqa: N802 - Airflow's name
        return FixedDatetime(when)


Reference = DeadlineReference | FixedDatetime


@dataclass(frozen=True, slots=True)
class DeadlineAlert:
    """`reference + interval` is the deadline; `callback` (a function or notifier, or a
    list of them) is called once with a context (dag, dag_run, run_id, reason
    "deadline_missed", deadline, task_id) when the run or task has not finished by then."""

    reference: Reference | datetime = DeadlineReference.DAGRUN_STARTED_AT
    interval: timedelta = timedelta(0)
    callback: Callback | list[Callback] | tuple[Callback, ...] | None = None
    callbacks: tuple[Callback, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ref = self.reference
        if isinstance(ref, datetime):
            ref = FixedDatetime(ref)
        elif isinstance(ref, str) and not isinstance(ref, DeadlineReference):
            try:
                ref = DeadlineReference(ref)
            except ValueError:
                raise DagDefinitionError(
                    f"DeadlineAlert: unknown reference {ref!r}; use one of "
                    f"{', '.join(r.value for r in DeadlineReference)} or FIXED_DATETIME(when)"
                ) from None
        if not isinstance(ref, DeadlineReference | FixedDatetime):
            raise DagDefinitionError(f"DeadlineAlert: reference {ref!r} is not a DeadlineReference")
        object.__setattr__(self, "reference", ref)
        interval = self.interval
        if isinstance(interval, int | float) and not isinstance(interval, bool):
            interval = timedelta(seconds=interval)
        if not isinstance(interval, timedelta):
            raise DagDefinitionError(
                f"DeadlineAlert: interval must be a timedelta, got {self.interval!r}")
        object.__setattr__(self, "interval", interval)
        cbs = self.callback
        cbs = () if cbs is None else tuple(cbs) if isinstance(cbs, list | tuple) else (cbs,)
        for cb in cbs:
            if not callable(cb):
                raise DagDefinitionError(f"DeadlineAlert: callback {cb!r} is not callable")
        object.__setattr__(self, "callbacks", cbs)

    def deadline_for(self, run: DagRunRecord) -> datetime | None:
        """The deadline of this alert for `run` (None while its reference is unknown)."""
        ref = self.reference
        if isinstance(ref, FixedDatetime):
            base: datetime | None = ref.when
        elif ref is DeadlineReference.DAGRUN_QUEUED_AT:
            base = run.created_at or run.start_date
        elif ref is DeadlineReference.DAGRUN_LOGICAL_DATE:
            base = run.logical_date
        else:
            base = run.start_date
        return None if base is None else base + self.interval

    def describe(self) -> str:
        """In words, e.g. "0:30:00 after dagrun_started_at"."""
        ref = self.reference
        if isinstance(ref, FixedDatetime):
            at = ref.when + self.interval
            return f"by {at.isoformat()}"
        return f"{self.interval} after {ref.value}"


def as_deadlines(where: str, value: Any) -> tuple[DeadlineAlert, ...]:
    """A `deadline=` argument (None, one DeadlineAlert or a list) as a tuple; `where`
    names the DAG or task in the error."""
    if value is None:
        return ()
    items = list(value) if isinstance(value, list | tuple) else [value]
    for item in items:
        if not isinstance(item, DeadlineAlert):
            raise DagDefinitionError(
                f"{where}: deadline must be a DeadlineAlert (or a list of them), got {item!r}")
    return tuple(items)
