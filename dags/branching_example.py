"""Branching, short circuits, task groups and setup/teardown, written as in Airflow.

What it shows
-------------
* ``@setup`` / ``@teardown``: ``make_workspace`` creates a scratch folder and
  ``remove_workspace`` deletes it. The teardown runs once the work is done, even if
  the work failed, as long as its setup succeeded; its own outcome does not decide
  the run's state;
* ``@task.short_circuit``: ``has_orders`` stops everything after it when there is
  nothing to do (here there are orders, so the pipeline goes on);
* ``@task.branch``: ``choose_route`` follows either the ``express`` task group or the
  ``standard`` task; the other is skipped;
* ``TaskGroup``: ``express`` holds ``pack`` and ``ship`` (task ids ``express.pack``,
  ``express.ship``) and is linked as a whole: ``choose_route >> express >> notify``;
* ``trigger_rule="none_failed_min_one_success"`` on ``notify``: the join after a branch
  runs after whichever branch was followed;
* ``ShortCircuitOperator(ignore_downstream_trigger_rules=False)``: ``has_returns`` is
  False (no order came back), so it skips only ``process_returns`` right after it;
  ``archive`` (``all_done``) still runs.

It needs no network and no database; it writes only to a temporary folder that the
teardown removes. ``schedule=None``: trigger it by hand or with ``aflow dags test``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from aflow import DAG, EmptyOperator, ShortCircuitOperator, TaskGroup, setup, task, teardown

ORDERS = [
    {"id": 1, "item": "notebook", "qty": 3, "express": True},
    {"id": 2, "item": "ink-bottle", "qty": 1, "express": False},
]

with DAG(
    "branching_example",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    catchup=False,
    tags=["example", "branching"],
) as dag:

    @setup
    def make_workspace() -> str:
        return tempfile.mkdtemp(prefix="aflow_branching_")

    @teardown
    def remove_workspace(workspace: str) -> None:
        shutil.rmtree(workspace, ignore_errors=True)
        print(f"removed {workspace}")

    @task.short_circuit
    def has_orders() -> bool:
        return bool(ORDERS)

    @task.branch
    def choose_route() -> str:
        # a task id, a list of ids, or a TaskGroup id (its first tasks are followed)
        return "express" if any(o["express"] for o in ORDERS) else "standard"

    @task
    def pack(workspace: str) -> str:
        path = Path(workspace) / "parcels.json"
        path.write_text(json.dumps([o for o in ORDERS if o["express"]]))
        return str(path)

    @task
    def ship(parcels: str) -> int:
        return len(json.loads(Path(parcels).read_text()))

    @task
    def standard() -> int:
        return len(ORDERS)

    notify = EmptyOperator(task_id="notify", trigger_rule="none_failed_min_one_success")

    workspace = make_workspace()
    with TaskGroup("express") as express:
        ship(pack(workspace))

    route = choose_route()
    workspace >> has_orders() >> route
    route >> [express, standard()] >> notify
    notify >> remove_workspace(workspace)

    has_returns = ShortCircuitOperator(
        task_id="has_returns",
        python_callable=lambda: any(o.get("returned") for o in ORDERS),
        ignore_downstream_trigger_rules=False,
    )
    process_returns = EmptyOperator(task_id="process_returns")
    archive = EmptyOperator(task_id="archive", trigger_rule="all_done")
    notify >> has_returns >> process_returns >> archive
