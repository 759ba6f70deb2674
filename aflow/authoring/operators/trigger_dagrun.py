"""TriggerDagRunOperator: create a run of another DAG, and optionally wait for its end.

The run is created as the API creates one (`Orchestrator.trigger`: conf checked against
the DAG's params, committed before the task goes on, driven at once), so the DAG must be
loaded by the orchestrator that runs the task. `logical_date` defaults to now.

Run id and retries: without `trigger_run_id` the run id is derived from the try that
triggers it, `triggered__<dag_id>__<run_id>__<task_id>__try<try_number>` (`[<map_index>]`
after the task id for a mapped instance; an id over MAX_RUN_ID_LENGTH keeps its start
and its `__try<N>` end, with a digest between). Each try makes a run of its own, as in
Airflow: a retry after the run it waited for failed triggers a fresh run, and so does a
try after the task was cleared (try numbers go on counting across clears).

One exception keeps a retry from triggering a second run for nothing: a try can die
after its run was committed and before its own outcome was (a crash, a shutdown, an
error raised later in `execute`). So a try first looks up the runs its earlier tries
would have made, under their ids (only the last LOOKBACK_TRIES, 10, of them: one
lookup each), and follows the newest that is still queued or running and was triggered
by this same task instance (a manual run whose `triggered_by` names it): it pushes that
id and waits for that run instead of triggering another. An earlier run that has ended
is left alone, and the try triggers a new one. The trade-off: a try cannot tell "my run
failed" from "I died after triggering", so when a try dies and its run has ended by the
time the next try looks, the target DAG runs a second time. And a task cleared while
the run its last try triggered is still going (it did not wait for it) follows that
run rather than starting another.

A try whose own id is taken already follows that run if this task instance triggered
it (the same try running again; a try interrupted by a shutdown runs again under the
next try number, so this is a safeguard), and otherwise fails, or skips with
`skip_when_already_exists=True`. An explicit `trigger_run_id` keeps Airflow's rule: a
run id that exists already fails the task, or skips it with `skip_when_already_exists`.

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
from aflow.runtime.services import (
    STORE_CONNECTION_ID,
    RunCreator,
    current_run_creator,
    current_store,
)
from aflow.states import DagRunState, RunType
from aflow.store.records import DagRunRecord

log = logging.getLogger("aflow.task.trigger_dagrun")

XCOM_RUN_ID = "trigger_run_id"
XCOM_LOGICAL_DATE_ISO = "trigger_logical_date_iso"
FINISHED = tuple(s.value for s in DagRunState if s.finished)
MAX_RUN_ID_LENGTH = 250  # as the REST API accepts a run id
LOOKBACK_TRIES = 10  # how many of its earlier tries' runs a try looks for (the last ones)


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


def default_run_id(
    dag_id: str, run_id: str, task_id: str, map_index: int = -1, *, try_number: int
) -> str:
    """The run id a try of a task instance gives the run it triggers when it is given
    none: `triggered__<dag_id>__<run_id>__<task_id>[<map_index>]__try<try_number>`. One
    longer than MAX_RUN_ID_LENGTH keeps its beginning and its `__try<N>` end, with a
    digest of the task instance's part between (the same for each of its tries)."""
    if try_number < 1:
        raise ValueError(f"default_run_id: try_number must be 1 or more, not {try_number}")
    mapped = f"[{map_index}]" if map_index >= 0 else ""
    instance = f"triggered__{dag_id}__{run_id}__{task_id}{mapped}"
    end = f"__try{try_number}"
    if len(instance) + len(end) <= MAX_RUN_ID_LENGTH:
        return instance + end
    digest = hashlib.sha256(instance.encode()).hexdigest()[:16]
    keep = MAX_RUN_ID_LENGTH - len(digest) - 2 - len(end)
    return f"{instance[:keep]}__{digest}{end}"


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
        try_number = getattr(context.get("ti"), "try_number", 0) or 1
        triggered_by = f"{self.dag_id}.{self.task_id}"
        if map_index >= 0:
            triggered_by += f"[{map_index}]"
        run_id = self.trigger_run_id or None
        earlier = None
        if parent is not None:
            triggered_by += f" ({parent.run_id})"
            if run_id is None:
                run_id = default_run_id(self.dag_id, parent.run_id, self.task_id, map_index,
                                        try_number=try_number)
                earlier = await self._earlier_run(parent.run_id, map_index, try_number,
                                                  triggered_by)
        if earlier is not None:
            run = self._follow(earlier, "an earlier try of this task")
        else:
            run = await self._create(create, run_id, logical_date, triggered_by)
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

    async def _create(self, create: RunCreator, run_id: str | None, logical_date: datetime | None,
                      triggered_by: str) -> DagRunRecord:
        """Trigger the run, or follow the one of this try's own default id."""
        try:
            run = await create(
                self.trigger_dag_id,
                dict(self.conf or {}),
                run_id=run_id,
                logical_date=logical_date,
                triggered_by=triggered_by,
            )
        except RunAlreadyExists as exc:
            # This try's own default id, taken by this task instance (the same try running
            # again): follow that run. Any other run of the id (the user's trigger_run_id
            # is always one): Airflow's rule.
            problem = str(exc)
            existing = None
            if run_id is not None and not self.trigger_run_id:
                existing = await current_store().get_run(self.trigger_dag_id, run_id)
            if existing is not None and not self._made_by(existing, triggered_by):
                problem += (f", a {existing.run_type.value} run triggered by "
                            f"{existing.triggered_by!r}, not by this task instance")
                existing = None
            if existing is None:
                if self.skip_when_already_exists:
                    raise SkipTask(f"{problem} (skip_when_already_exists)") from None
                raise RunAlreadyExists(problem) from None
            return self._follow(existing, "this same try of this task")
        log.info("triggered run %s of DAG %s", run.run_id, run.dag_id)
        return run

    async def _earlier_run(self, parent_run_id: str, map_index: int, try_number: int,
                           triggered_by: str) -> DagRunRecord | None:
        """The newest run that one of the last LOOKBACK_TRIES earlier tries of this task
        instance triggered under its default id and that has not ended: that try died
        before its outcome was recorded, and this one goes on with its run. None when
        there is none (a run that ended is left alone: this try triggers a new one)."""
        store = current_store()
        for earlier in range(try_number - 1, max(0, try_number - 1 - LOOKBACK_TRIES), -1):
            run_id = default_run_id(self.dag_id, parent_run_id, self.task_id, map_index,
                                    try_number=earlier)
            run = await store.get_run(self.trigger_dag_id, run_id)
            if run is None or not self._made_by(run, triggered_by):
                continue
            if not run.state.finished:
                return run
            log.info("run %s of DAG %s, which try %d triggered, ended %s: triggering a new "
                     "one", run.run_id, run.dag_id, earlier, run.state.value)
        return None

    @staticmethod
    def _made_by(run: DagRunRecord, triggered_by: str) -> bool:
        """Whether `run` was triggered by the task instance that `triggered_by` names."""
        return run.run_type is RunType.MANUAL and run.triggered_by == triggered_by

    def _follow(self, run: DagRunRecord, by: str) -> DagRunRecord:
        """`run`, triggered `by` a try of this task instance that died before its end was
        recorded (or by this try, running again): this try goes on with it instead of
        triggering another."""
        log.info("run %s of DAG %s (%s) was triggered by %s: following it instead of "
                 "triggering another", run.run_id, run.dag_id, run.state.value, by)
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
