"""TriggerDagRunOperator: one DAG starts a run of another and waits for it, deferred.

What it shows
-------------
* ``trigger_controller_example`` triggers ``trigger_target_example`` with a ``conf``
  built from templates, under a run id of its own choosing;
* ``wait_for_completion=True`` with ``deferrable=True`` (the default): while the target
  runs, the waiting task is parked in the triggerer and holds no slot; it fails if the
  target run fails;
* the triggered run's id is the controller task's XCom (also under ``trigger_run_id``),
  which the last task reads.

Run either DAG alone: ``trigger_target_example`` takes its defaults when nobody passes
``conf``. Offline, no files or connections needed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from aflow import DAG, Param, TriggerDagRunOperator, task

START = datetime(2024, 1, 1, tzinfo=timezone.utc)  # noqa: UP017

with DAG(
    "trigger_target_example",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"greeting": Param("hello", type="string"), "repeat": Param(1, type="integer",
                                                                       minimum=1, maximum=5)},
    tags=["example", "trigger"],
):

    @task
    def greet(params: dict[str, Any] | None = None, dag_run: Any = None) -> str:
        assert params is not None and dag_run is not None  # filled from the context
        text = " ".join([params["greeting"]] * params["repeat"])
        print(f"{text} (run {dag_run.run_id}, triggered by {dag_run.triggered_by})")
        return text

    greet()


with DAG(
    "trigger_controller_example",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["example", "trigger"],
):
    trigger = TriggerDagRunOperator(
        task_id="trigger_target",
        trigger_dag_id="trigger_target_example",
        trigger_run_id="from_controller__{{ run_id }}",
        conf={"greeting": "hi from {{ dag.dag_id }}", "repeat": 2},
        wait_for_completion=True,
        poke_interval=0.5,
    )

    @task
    def report(triggered_run_id: str) -> str:
        print(f"the target run {triggered_run_id} finished successfully")
        return triggered_run_id

    report(trigger.output)
