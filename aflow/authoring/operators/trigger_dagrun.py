"""TriggerDagRunOperator: create a run of another DAG, and optionally wait for its end.

The run is created as the API creates one (`Orchestrator.trigger`: conf checked against
the DAG's params, committed before the task goes on, driven at once), so the DAG must be
loaded by the orchestrator that runs the task. `logical_date` defaults to now and
`trigger_run_id` to `manual__<logical_date>`, as in Airflow; a run id that exists
already fails the task (or skips it with `skip_when_already_exists=True`).

With `wait_for_completion=True` the task waits for the run to finish: with
`deferrable=True` (the default) the wait is a SqlTrigger in the triggerer that reads the
run's state from aflow's own store every `poke_interval` seconds, so no slot is held;
with `deferrable=False` the task polls the store itself and keeps its slot. A run that
ends in one of `failed_states` fails the task, one that ends in `allowed_states`
succeeds it, and any other end state fails it too.

XCom: the run id is the return value and is also pushed under `trigger_run_id` (Airflow's
key), with the logical date under `trigger_logical_date_iso`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio

from aflow.authoring.baseoperator import BaseOperator
from aflow.exceptions import AflowError, DagDefinitionError, RunAlreadyExists, SkipTask
from aflow.runtime.services import STORE_CONNECTION_ID, current_run_creator, current_store
from aflow.states import DagRunState

log = logging.getLogger("aflow.task.trigger_dagrun")

XCOM_RUN_ID = "trigger_run_id"
XCOM_LOGICAL_DATE_ISO = "trigger_logical_date_iso"
FINISHED = tuple(s.value for s in DagRunState if s.finished)


class TriggeredRunFailed(AflowError):
    """The triggered run ended in a state the task does not accept."""


def as_logical_date(value: Any, task_id: str) -> datetime | None:
    """A datetime, or ISO text as a template renders it (naive text is read as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise AflowError(
                f"task {task_id!r}: logical_date {value!r} is not an ISO-8601 date and time"
            ) from None
    else:
        raise AflowError(f"task {task_id!r}: logical_date must be a datetime or ISO text")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class TriggerDagRunOperator(BaseOperator):
    """Trigger a run of `trigger_dag_id` (see the module's docstring)."""

    template_fields: Sequence[str] = ("trigger_dag_id", "trigger_run_id", "logical_date", "conf")
    ui_color = "#ffefeb"

    def __init__(
        self,
        *,
        trigger_dag_id: str,
        conf: dict[str, Any] | None = None,
        logical_date: datetime | str | None = None,
        trigger_run_id: str | None = None,
        wait_for_completion: bool = False,
        poke_interval: float = 60.0,
        allowed_states: Iterable[str] = ("success",),
        failed_states: Iterable[str] | None = ("failed",),
        skip_when_already_exists: bool = False,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        task_id = kwargs.get("task_id")
        if not isinstance(trigger_dag_id, str) or not trigger_dag_id:
            raise DagDefinitionError(f"task {task_id!r}: trigger_dag_id must name a DAG")
        if conf is not None and not isinstance(conf, dict):
            raise DagDefinitionError(f"task {task_id!r}: conf must be a dict")
        if poke_interval <= 0:
            raise DagDefinitionError(f"task {task_id!r}: poke_interval must be > 0")
        allowed = [str(s) for s in allowed_states]
        failed = [str(s) for s in (failed_states or ())]
        for state in allowed + failed:
            if state not in [s.value for s in DagRunState]:
                raise DagDefinitionError(
                    f"task {task_id!r}: {state!r} is not a run state "
                    f"({', '.join(s.value for s in DagRunState)})"
                )
        if set(allowed) & set(failed):
            raise DagDefinitionError(
                f"task {task_id!r}: allowed_states and failed_states share "
                f"{sorted(set(allowed) & set(failed))}"
            )
        self.trigger_dag_id = trigger_dag_id
        self.conf = conf
        self.logical_date = logical_date
        self.trigger_run_id = trigger_run_id
        self.wait_for_completion = wait_for_completion
        self.poke_interval = float(poke_interval)
        self.allowed_states = allowed
        self.failed_states = failed
        self.skip_when_already_exists = skip_when_already_exists
        self.deferrable = deferrable
        super().__init__(**kwargs)

    async def execute(self, context: dict[str, Any]) -> Any:
        create = current_run_creator()
        logical_date = as_logical_date(self.logical_date, self.task_id)
        parent = context.get("dag_run")
        triggered_by = f"{self.dag_id}.{self.task_id}"
        if parent is not None:
            triggered_by += f" ({parent.run_id})"
        try:
            run = await create(
                self.trigger_dag_id,
                dict(self.conf or {}),
                run_id=self.trigger_run_id or None,
                logical_date=logical_date,
                triggered_by=triggered_by,
            )
        except RunAlreadyExists as exc:
            if self.skip_when_already_exists:
                raise SkipTask(f"{exc} (skip_when_already_exists)") from None
            raise
        log.info("triggered run %s of DAG %s", run.run_id, run.dag_id)
        self._push(context, run.run_id, run.logical_date.isoformat())
        if not self.wait_for_completion:
            return run.run_id if self.do_xcom_push else None
        if self.deferrable:
            self.defer(trigger=self._trigger(run.run_id), method_name="execute_complete",
                       kwargs={"run_id": run.run_id,
                               "logical_date": run.logical_date.isoformat()})
        store = current_store()
        while True:
            await anyio.sleep(self.poke_interval)
            record = await store.get_run(self.trigger_dag_id, run.run_id)
            state = record.state.value if record is not None else None
            log.info("run %s of DAG %s is %s", run.run_id, self.trigger_dag_id, state)
            if state in FINISHED or record is None:
                return self._finish(state, run.run_id)

    def _trigger(self, run_id: str) -> Any:
        from triggers.sql import SqlTrigger

        marks = ", ".join(f":s{i}" for i in range(len(FINISHED)))
        params: dict[str, Any] = {f"s{i}": s for i, s in enumerate(FINISHED)}
        params.update(dag_id=self.trigger_dag_id, run_id=run_id)
        sql = (f"SELECT state FROM dag_run WHERE dag_id = :dag_id AND run_id = :run_id "
               f"AND state IN ({marks})")
        return SqlTrigger(sql, conn_id=STORE_CONNECTION_ID, parameters=params,
                          poke_interval=self.poke_interval, max_interval=self.poke_interval)

    def _push(self, context: dict[str, Any], run_id: str, logical_date_iso: str) -> None:
        ti = context.get("ti")
        if ti is not None and self.do_xcom_push:
            ti.xcom_push(XCOM_RUN_ID, run_id)
            ti.xcom_push(XCOM_LOGICAL_DATE_ISO, logical_date_iso)

    def _finish(self, state: str | None, run_id: str) -> Any:
        where = f"run {run_id!r} of DAG {self.trigger_dag_id!r}"
        if state is None:
            raise TriggeredRunFailed(f"{where} no longer exists (deleted while waiting?)")
        if state in self.failed_states:
            raise TriggeredRunFailed(f"{where} ended {state!r} (one of failed_states)")
        if state not in self.allowed_states:
            raise TriggeredRunFailed(
                f"{where} ended {state!r}, which is not one of allowed_states "
                f"{self.allowed_states}"
            )
        log.info("%s ended %s", where, state)
        return run_id if self.do_xcom_push else None

    async def execute_complete(
        self, context: dict[str, Any], event: Any = None, run_id: str = "",
        logical_date: str = "",
    ) -> Any:
        self._push(context, run_id, logical_date)
        return self._finish((event or {}).get("value"), run_id)
