"""The operator examples (dags/sql_http_example.py, dags/trigger_dagrun_example.py) run
offline through `aflow dags test`, and leave what they say they do: rows in the examples'
SQLite database, and a successful run of the triggered DAG."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.acceptance.conftest import CLI
from tests.conftest import REPO

EXAMPLES = str(REPO / "dags")


def dags_test(cli: CLI, dag_id: str) -> dict[str, object]:
    result = cli.run("dags", "test", dag_id, "--dags-folder", EXAMPLES, "-o", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "success", report
    return report


@pytest.mark.slow
def test_sql_http_example_stores_the_fetched_readings(cli: CLI) -> None:
    report = dags_test(cli, "sql_http_example")
    with sqlite3.connect(cli.env["AFLOW_EXAMPLES_DB"]) as db:
        rows = db.execute("SELECT station, celsius FROM reading WHERE run_id = ? ORDER BY station",
                          (report["run_id"],)).fetchall()
    assert rows == [("east", 14.0), ("north", 11.5), ("south", 17.25)]
    conns = {c["conn_id"]: c for c in cli.json("connections", "list")}
    assert conns["example_sqlite"]["conn_type"] == "sqlite"
    assert conns["example_loopback_api"]["host"] == "127.0.0.1"


@pytest.mark.slow
def test_trigger_example_runs_the_target_dag(cli: CLI) -> None:
    report = dags_test(cli, "trigger_controller_example")
    runs = cli.runs("trigger_target_example")
    assert [r["run_id"] for r in runs] == [f"from_controller__{report['run_id']}"]
    assert runs[0]["state"] == "success"


@pytest.mark.slow
def test_email_example_delivers_to_its_local_sink(cli: CLI) -> None:
    report = dags_test(cli, "email_example")
    checked = [t for t in report["tasks"] if t["task_id"] == "check_delivery"]  # type: ignore[union-attr,index]
    assert checked and checked[0]["state"] == "success"
    outbox = Path(cli.env["AFLOW_EXAMPLES_DB"]).parent / "outbox"
    messages = list(outbox.rglob("*.eml"))
    assert len(messages) == 1
    text = messages[0].read_text()
    assert "X-Envelope-To: team@example.org, ops@example.org, lead@example.org, " \
           "archive@example.org" in text
    assert "Bcc" not in text and "report_" in text
