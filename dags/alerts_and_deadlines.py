"""Alerts and deadlines: notifiers as callbacks, and deadline alerts that fire once.

What it shows
-------------
* ``WebhookNotifier`` as an ``on_failure_callback`` of a task and of the DAG (callbacks
  may be lists): it POSTs JSON, here Slack's shape (``slack=True``), with a Jinja
  ``message``. It fires only when something fails, so a normal run sends nothing;
* ``DeadlineAlert`` on the DAG (the run must end within 30 minutes of its start) and
  on a task (``load`` must end within 10 minutes): if one is missed, its callback is
  called once and the miss is recorded (see the run page and
  ``GET /api/v1/dags/alerts_and_deadlines/runs/<run_id>/deadlines``); nothing is
  cancelled, the work goes on;
* the param ``fail`` (false by default): ``--conf '{"fail": true}'`` makes ``load``
  fail, to see the failure notifiers at work. A notifier that cannot reach its URL
  is logged and changes nothing.

The webhook URL comes from the environment variable ``ALERTS_WEBHOOK_URL`` (default: a
loopback port where nothing listens), so the DAG runs offline.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from aflow import DAG, DeadlineAlert, DeadlineReference, Param, PythonOperator, WebhookNotifier

WEBHOOK_URL = os.environ.get("ALERTS_WEBHOOK_URL", "http://127.0.0.1:9/alerts")

on_failure = WebhookNotifier(
    WEBHOOK_URL, slack=True,
    message=":red_circle: {{ dag.dag_id }} failed in run {{ run_id }} ({{ reason }})",
)


def extract() -> list[int]:
    return [3, 1, 4, 1, 5, 9, 2, 6]


def load(ti, params) -> int:  # noqa: ANN001 - context arguments, as Airflow passes them
    if params["fail"]:
        raise RuntimeError("load was asked to fail (conf fail=true)")
    rows = ti.xcom_pull(task_ids="extract")
    return sum(rows)


with DAG(
    "alerts_and_deadlines",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    params={"fail": Param(False, type="boolean")},
    tags=["example", "alerts"],
    on_failure_callback=[on_failure],
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_STARTED_AT,
        interval=timedelta(minutes=30),
        callback=WebhookNotifier(WEBHOOK_URL, slack=True),
    ),
) as dag:
    PythonOperator(task_id="extract", python_callable=extract) >> PythonOperator(
        task_id="load",
        python_callable=load,
        on_failure_callback=WebhookNotifier(WEBHOOK_URL),
        deadline=DeadlineAlert(interval=timedelta(minutes=10), callback=on_failure),
    )
