"""TriggerDagRunOperator: create a run of another DAG, and optionally wait for its end.

The run is created as the API creates one (`Orchestrator.trigger`: conf checked against
the DAG's params, committed before the task goes on, driven at once), so the DAG must be
loaded by the orchestrator that runs the task. `logical_date` defaults to now.

Run id and retries: without `trigger_run_id` the run id is derived from the task
instance that triggers it, `triggered__<dag_id>__<run_id>__<task_id>` (`[<map_index>]`
added for a mapped one), so every try of one task instance asks for the same run. A try
can die after the run was committed and before its own outcome was (a crash, a
shutdown, an error raised later in `execute`); the next try then finds the run, sees
from its record (a manual run, `triggered_by` this task instance) that an earlier try
made it, and follows it instead of triggering a second one (so does a try after the task
was cleared). A run of that id made by anyone else fails the task. An explicit
`trigger_run_id` keeps Airflow's rule: a run id that exists already fails the task, or
skips it with `skip_when_already_exists=True` (as does a default id taken by another).

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

import hashlib
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio

from aflow.authoring.baseoperator import BaseOperator
from aflow.exceptions import AflowError, DagDefinitionError, RunAlreadyExists, SkipTask
from aflow.runtime.services import STORE_CONNECTION_ID, current_run_creator, current_store
from aflow.states import DagRunState, RunType
from aflow.store.records import DagRunRecord

log = logging.getLogger("aflow.task.trigger_dagrun")

XCOM_RUN_ID = "trigger_run_id"
XCOM_LOGICAL_DATE_ISO = "trigger_logical_date_iso"
FINISHED = tuple(s.value for s in DagRunState if s.finished)
MAX_RUN_ID_LENGTH = 250  # as the REST API accepts a run id


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


def default_run_id(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The run id a task instance gives the run it triggers when it is given none:
    `triggered__<dag_id>__<run_id>__<task_id>[<map_index>]`, the same for every try. One
    longer than MAX_RUN_ID_LENGTH keeps its beginning and ends in a digest of the whole."""
    mapped = f"[{map_index}]" if map_index >= 0 else ""
    readable = f"triggered__{dag_id}__{run_id}__{task_id}{mapped}"
    if len(readable) <= MAX_RUN_ID_LENGTH:
        return readable
    digest = hashlib.sha256(readable.encode()).hexdigest()[:16]
    return f"{readable[: MAX_RUN_ID_LENGTH - len(digest) - 2]}__{digest}"


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
        map_index = context.get("map_index", -1)
        triggered_by = f"{self.dag_id}.{self.task_id}"
        if map_index >= 0:
            triggered_by += f"[{map_index}]"
        run_id = self.trigger_run_id or None
        if parent is not None:
            triggered_by += f" ({parent.run_id})"
            if run_id is None:
                run_id = default_run_id(self.dag_id, parent.run_id, self.task_id, map_index)
        try:
            run = await create(
                self.trigger_dag_id,
                dict(self.conf or {}),
                run_id=run_id,
                logical_date=logical_date,
                triggered_by=triggered_by,
            )
        except RunAlreadyExists as exc:
            # Our own default id, taken by an earlier try of this task instance: follow
            # that run. Any other run of the id (the user's trigger_run_id is always one):
            # Airflow's rule.
            problem = str(exc)
            existing = None
            if run_id is not None and not self.trigger_run_id:
                existing = await current_store().get_run(self.trigger_dag_id, run_id)
            if existing is not None and (existing.run_type is not RunType.MANUAL
                                         or existing.triggered_by != triggered_by):
                problem += (f", a {existing.run_type.value} run triggered by "
                            f"{existing.triggered_by!r}, not by this task instance")
                existing = None
            if existing is None:
                if self.skip_when_already_exists:
                    raise SkipTask(f"{problem} (skip_when_already_exists)") from None
                raise RunAlreadyExists(problem) from None
            run = self._follow(existing)
        else:
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

    def _follow(self, run: DagRunRecord) -> DagRunRecord:
        """`run`, triggered by an earlier try of this task instance that died before its
        end was recorded: this try goes on with it instead of triggering another."""
        log.info("run %s of DAG %s was triggered by an earlier try of this task: following "
                 "it instead of triggering another", run.run_id, run.dag_id)
        if run.conf != dict(self.conf or {}):
            log.warning("it keeps the conf that try gave it: %s", run.conf)
        return run

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
