"""BaseSensorOperator: `poke(context)` until it is true, in one of three modes.

* ``mode="poke"`` holds its slot and sleeps between pokes (cheap for short waits);
* ``mode="reschedule"`` gives the slot back between pokes: the TI goes to
  `up_for_reschedule` and is started again after `poke_interval`, in the same try;
* ``deferrable=True`` hands the wait to the triggerer as the trigger `trigger_for(context)`
  returns; no slot is held, and waking is push-based where the trigger can be.

The same sensor gives the same result in every mode. `timeout` counts from the first poke
of the try; past it the sensor fails with SensorTimeout, or is skipped with `soft_fail`.
`poke` may return a PokeReturnValue to push an XCom value when it is done.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio

from aflow.authoring.baseoperator import BaseOperator, is_loop_safe, loop_safe
from aflow.exceptions import DagDefinitionError, SensorTimeout, SkipTask, TaskReschedule

DEFAULT_POKE_INTERVAL = 60.0
DEFAULT_TIMEOUT = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class PokeReturnValue:
    """What `poke` may return: whether the condition holds, and an XCom value for then."""

    is_done: bool
    xcom_value: Any = None

    def __bool__(self) -> bool:
        return self.is_done


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class BaseSensorOperator(BaseOperator):
    ui_color = "#e6f1f2"

    def __init__(
        self,
        *,
        poke_interval: timedelta | float = DEFAULT_POKE_INTERVAL,
        timeout: timedelta | float = DEFAULT_TIMEOUT,
        mode: Literal["poke", "reschedule"] = "poke",
        soft_fail: bool = False,
        exponential_backoff: bool = False,
        max_wait: timedelta | float | None = None,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("poke", "reschedule"):
            raise DagDefinitionError(
                f"sensor {self.task_id!r}: mode must be 'poke' or 'reschedule', got {mode!r}"
            )
        self.poke_interval = _seconds(poke_interval)
        self.timeout = _seconds(timeout)
        if self.poke_interval < 0 or self.timeout < 0:
            raise DagDefinitionError(f"sensor {self.task_id!r}: poke_interval and timeout must be >= 0")
        self.mode = mode
        self.soft_fail = soft_fail
        self.exponential_backoff = exponential_backoff
        self.max_wait = _seconds(max_wait) if max_wait is not None else None
        self.deferrable = deferrable

    # -- what subclasses write ----------------------------------------------------------
    def poke(self, context: dict[str, Any]) -> bool | PokeReturnValue:
        """Whether the condition holds now (sync or `async def`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement poke(context)")

    def trigger_for(self, context: dict[str, Any]) -> Any:
        """The trigger (a triggers.BaseTrigger) that waits for the same condition, for
        deferrable=True; None if this sensor cannot defer."""
        return None

    @loop_safe
    def execute_complete(self, context: dict[str, Any], event: Any = None) -> Any:
        """Called when the trigger fired; returns the sensor's XCom value."""
        return event

    # -- the three modes ------------------------------------------------------------------
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.poke)

    def execute_on_loop(self) -> bool:
        # Deferrable with a quick trigger_for: execute only builds the trigger and defers.
        return self.is_async() or (self.deferrable and is_loop_safe(self.trigger_for))

    def execute(self, context: dict[str, Any]) -> Any:
        if self.is_async():
            return self._execute_async(context)
        self._defer_if_asked(context)
        started = self._first_poke_at(context)
        n = 0
        while True:
            result = self.poke(context)
            if inspect.isawaitable(result):
                raise DagDefinitionError(f"sensor {self.task_id!r}: poke returned an awaitable")
            if result:
                return self._value_of(result)
            delay = self._next_wait(context, started, n)
            n += 1
            time.sleep(delay)

    async def _execute_async(self, context: dict[str, Any]) -> Any:
        self._defer_if_asked(context)
        started = self._first_poke_at(context)
        n = 0
        while True:
            result = await self.poke(context)  # type: ignore[misc]
            if result:
                return self._value_of(result)
            delay = self._next_wait(context, started, n)
            n += 1
            await anyio.sleep(delay)

    def _defer_if_asked(self, context: dict[str, Any]) -> None:
        if not self.deferrable:
            return
        trigger = self.trigger_for(context)
        if trigger is None:
            raise DagDefinitionError(
                f"sensor {self.task_id!r} ({type(self).__name__}) cannot run deferrable: "
                "it has no trigger_for()"
            )
        remaining = self.timeout - self._elapsed(context, self._first_poke_at(context))
        self.defer(
            trigger=trigger,
            method_name="execute_complete",
            timeout=timedelta(seconds=max(0.0, remaining)),
        )

    def _first_poke_at(self, context: dict[str, Any]) -> datetime:
        ti = context["ti"]
        return ti.start_date or _now(context)

    def _elapsed(self, context: dict[str, Any], started: datetime) -> float:
        return (_now(context) - started).total_seconds()

    def _next_wait(self, context: dict[str, Any], started: datetime, n: int) -> float:
        """Seconds until the next poke, after checking the timeout; in reschedule mode
        this raises TaskReschedule instead of returning."""
        elapsed = self._elapsed(context, started)
        if elapsed >= self.timeout:
            message = f"sensor {self.task_id!r} timed out after {self.timeout:g}s"
            if self.soft_fail:
                raise SkipTask(message)
            raise SensorTimeout(message)
        delay = self.poke_interval
        if self.exponential_backoff:
            delay = min(self.poke_interval * math.pow(2, min(n, 30)), self.max_wait or math.inf)
        delay = min(delay, self.timeout - elapsed)
        if self.mode == "reschedule":
            raise TaskReschedule(_now(context) + timedelta(seconds=delay))
        return delay

    def _value_of(self, result: bool | PokeReturnValue) -> Any:
        if isinstance(result, PokeReturnValue):
            return result.xcom_value
        return None


def _now(context: dict[str, Any]) -> datetime:
    return datetime.now(UTC)
