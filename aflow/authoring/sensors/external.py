"""Sensors on aflow's own state: another DAG's task or run reaching a state, and webhook
events delivered to aflow. Deferrable by default."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from aflow.authoring.baseoperator import loop_safe
from aflow.authoring.sensors.base import BaseSensorOperator, PokeReturnValue
from aflow.exceptions import AflowError, DagDefinitionError
from aflow.runtime.services import STORE_CONNECTION_ID, current_store
from aflow.states import TaskState, mapped_task_state


class ExternalTaskSensor(BaseSensorOperator):
    """Wait until a task of another DAG (or, with `external_task_id=None`, its whole run)
    reaches one of `allowed_states`; fail at once if it reaches one of `failed_states`.

    The external run is the one whose logical date equals this run's logical date minus
    `execution_delta` (or `execution_date_fn(logical_date)`), as in Airflow.
    """

    template_fields: Sequence[str] = ("external_dag_id", "external_task_id")
    ui_color = "#4db7db"

    def __init__(
        self,
        *,
        external_dag_id: str,
        external_task_id: str | None = None,
        allowed_states: Iterable[str] = ("success",),
        failed_states: Iterable[str] | None = None,
        execution_delta: timedelta | None = None,
        execution_date_fn: Callable[[datetime], datetime] | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        if execution_delta is not None and execution_date_fn is not None:
            raise DagDefinitionError(
                f"task {kwargs.get('task_id')!r}: give execution_delta or execution_date_fn, not both"
            )
        self.external_dag_id = external_dag_id
        self.external_task_id = external_task_id
        self.allowed_states = list(allowed_states)
        default_failed = ["failed", "upstream_failed"] if external_task_id else ["failed"]
        self.failed_states = list(failed_states if failed_states is not None else default_failed)
        self.execution_delta = execution_delta
        self.execution_date_fn = execution_date_fn
        kwargs.setdefault("poke_interval", 10.0)
        super().__init__(deferrable=deferrable, **kwargs)

    def external_logical_date(self, context: dict[str, Any]) -> datetime:
        logical_date: datetime = context["logical_date"]
        if self.execution_date_fn is not None:
            return self.execution_date_fn(logical_date)
        return logical_date - (self.execution_delta or timedelta(0))

    def _check(self, state: str | None) -> bool:
        if state in self.failed_states:
            what = self.external_task_id or "run"
            raise AflowError(
                f"{self.external_dag_id}.{what} ended {state!r} (one of failed_states)"
            )
        return state in self.allowed_states

    async def poke(self, context: dict[str, Any]) -> PokeReturnValue:
        store = current_store()
        runs = await store.list_runs(
            self.external_dag_id, logical_date=self.external_logical_date(context), limit=1
        )
        if not runs:
            return PokeReturnValue(False)
        run = runs[0]
        if self.external_task_id is None:
            state: str | None = run.state.value
        else:
            tis = [t for t in await store.get_tis(run.dag_id, run.run_id)
                   if t.task_id == self.external_task_id]
            instances = [t for t in tis if t.map_index >= 0 and t.state is not TaskState.REMOVED]
            if instances:  # a mapped task: the state of all of its instances
                state = mapped_task_state(t.state for t in instances).value
            else:
                state = tis[0].state.value if tis else None
        return PokeReturnValue(self._check(state), {"run_id": run.run_id, "state": state})

    @loop_safe
    def trigger_for(self, context: dict[str, Any]) -> Any:
        from aflow.store.codec import dt_out
        from aflow.store.factory import is_postgres_url
        from triggers.sql import SqlTrigger

        states = self.allowed_states + self.failed_states
        params: dict[str, Any] = {f"s{i}": s for i, s in enumerate(states)}
        marks = ", ".join(f":s{i}" for i in range(len(states)))
        params["dag_id"] = self.external_dag_id
        params["logical_date"] = dt_out(self.external_logical_date(context))
        # Named parameters bind on both stores; PostgreSQL keeps logical_date as
        # timestamptz, so the JSON-safe text is cast there (SQLite stores the same text).
        on_postgres = is_postgres_url(current_store().url)
        logical_date = (
            "CAST(CAST(:logical_date AS text) AS timestamptz)" if on_postgres else ":logical_date"
        )
        if self.external_task_id is None:
            sql = (f"SELECT state FROM dag_run WHERE dag_id = :dag_id "
                   f"AND logical_date = {logical_date} AND state IN ({marks})")
        else:
            # (a mapped task: once none of its instances is in another state but
            # `removed`, the first one in a failed state, if any, decides)
            failed = ", ".join(f":s{i}" for i in range(len(self.allowed_states), len(states)))
            sql = (
                "SELECT ti.state FROM task_instance ti JOIN dag_run r "
                "ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id "
                f"WHERE r.dag_id = :dag_id AND r.logical_date = {logical_date} "
                f"AND ti.task_id = :task_id AND ti.state IN ({marks}) "
                "AND NOT EXISTS (SELECT 1 FROM task_instance o WHERE o.dag_id = ti.dag_id "
                "AND o.run_id = ti.run_id AND o.task_id = ti.task_id "
                f"AND o.state <> 'removed' AND o.state NOT IN ({marks}))"
                + (f" ORDER BY CASE WHEN ti.state IN ({failed}) THEN 0 ELSE 1 END" if failed else "")
            )
            params["task_id"] = self.external_task_id
        return SqlTrigger(sql, conn_id=STORE_CONNECTION_ID, parameters=params,
                          poke_interval=self.poke_interval)

    @loop_safe
    def execute_complete(self, context: dict[str, Any], event: Any = None) -> Any:
        state = (event or {}).get("value")
        self._check(state)
        return {"state": state}


class WebhookSensor(BaseSensorOperator):
    """Wait for a webhook event delivered to aflow under `key` (templated); its payload
    becomes the XCom. An event delivered before the sensor started waiting counts."""

    template_fields: Sequence[str] = ("key",)
    ui_color = "#c3e6cb"

    def __init__(self, *, key: str, deferrable: bool = True, **kwargs: Any) -> None:
        self.key = key
        kwargs.setdefault("poke_interval", 5.0)
        super().__init__(deferrable=deferrable, **kwargs)

    async def poke(self, context: dict[str, Any]) -> PokeReturnValue:
        found = await current_store().first_webhook(self.key)
        return PokeReturnValue(found is not None, found[1] if found else None)

    @loop_safe
    def trigger_for(self, context: dict[str, Any]) -> Any:
        from triggers.webhook import WebhookTrigger

        return WebhookTrigger(key=self.key)

    @loop_safe
    def execute_complete(self, context: dict[str, Any], event: Any = None) -> Any:
        return (event or {}).get("payload")
