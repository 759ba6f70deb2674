"""The alerts example DAG through the real CLI (`aflow dags test`), offline: a normal run
misses no deadline and sends nothing; a failing run calls its failure notifiers, whose
unreachable URL is logged without changing the run's outcome."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from aflow.store.sqlite import SqliteStore
from tests.acceptance.conftest import CLI
from tests.conftest import REPO

EXAMPLES = REPO / "dags"
DAG_ID = "alerts_and_deadlines"


def misses(home: Path) -> list[object]:
    async def read() -> list[object]:
        async with SqliteStore(f"sqlite:///{home / 'aflow.db'}") as store:
            return list(await store.deadline_misses(DAG_ID))

    return anyio.run(read)


@pytest.mark.slow
def test_the_alerts_example_passes_dags_test_and_alerts_only_on_failure(
    cli: CLI, home: Path
) -> None:
    result = cli.run("dags", "test", DAG_ID, "--dags-folder", str(EXAMPLES), "-o", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "success"
    assert {t["task_id"]: t["state"] for t in report["tasks"]} == {
        "extract": "success", "load": "success"}
    assert "WebhookNotifier" not in result.stderr  # nothing failed: nothing was sent
    assert misses(home) == []  # both deadlines were met

    failing = cli.run("dags", "test", DAG_ID, "--dags-folder", str(EXAMPLES), "-o", "json",
                      "--conf", '{"fail": true}')
    report = json.loads(failing.stdout)
    assert report["state"] == "failed"
    (load,) = [t for t in report["tasks"] if t["task_id"] == "load"]
    assert load["state"] == "failed" and "asked to fail" in load["error"]
    logs = list((home / "logs").glob(f"dag_id={DAG_ID}/run_id=*/task_id=load/attempt=1.log"))
    task_log = "".join(p.read_text() for p in logs)
    # the task's failure notifier ran and its unreachable URL was only logged
    assert "WebhookNotifier failed" in task_log and "the run is not affected" in task_log
