"""Time sensors: wait until a moment. Deferrable by default (the triggerer's shared
timer queue holds the wait; no slot, no polling)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aflow.authoring.baseoperator import loop_safe
from aflow.authoring.sensors.base import BaseSensorOperator
from aflow.exceptions import DagDefinitionError


class DateTimeSensor(BaseSensorOperator):
    """Wait until `target_time` (an aware datetime, or templated ISO-8601 text)."""

    template_fields: Sequence[str] = ("target_time",)

    def __init__(self, *, target_time: datetime | str, deferrable: bool = True, **kwargs: Any) -> None:
        if isinstance(target_time, datetime) and target_time.tzinfo is None:
            raise DagDefinitionError(f"task {kwargs.get('task_id')!r}: target_time must be timezone-aware")
        self.target_time = target_time
        kwargs.setdefault("poke_interval", 1.0)
        super().__init__(deferrable=deferrable, **kwargs)

    def target(self, context: dict[str, Any]) -> datetime:
        value = self.target_time
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def poke(self, context: dict[str, Any]) -> bool:
        return datetime.now(UTC) >= self.target(context)

    @loop_safe
    def trigger_for(self, context: dict[str, Any]) -> Any:
        from triggers.temporal import DateTimeTrigger

        return DateTimeTrigger(moment=self.target(context))

    @loop_safe
    def execute_complete(self, context: dict[str, Any], event: Any = None) -> None:
        return None


class TimeDeltaSensor(DateTimeSensor):
    """Wait until `delta` after the run's data interval end (Airflow's meaning)."""

    template_fields: Sequence[str] = ()

    def __init__(self, *, delta: timedelta, **kwargs: Any) -> None:
        self.delta = delta
        super().__init__(target_time="", **kwargs)

    def target(self, context: dict[str, Any]) -> datetime:
        end = context.get("data_interval_end") or context["logical_date"]
        return end + self.delta  # type: ignore[no-any-return]
