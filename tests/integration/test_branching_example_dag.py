"""dags/branching_example.py passes `aflow dags test` offline, with the states its
branch, short circuits and teardown must give."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import REPO, aflow_cmd


def test_branching_example_passes_dags_test(cli_env: dict[str, str]) -> None:
    result = subprocess.run(
        aflow_cmd("dags", "test", "branching_example", "--dags-folder", str(REPO / "dags"),
                  "-o", "json"),
        env=cli_env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "success"
    assert {t["task_id"]: t["state"] for t in report["tasks"]} == {
        "make_workspace": "success",
        "has_orders": "success",
        "choose_route": "success",
        "express.pack": "success",
        "express.ship": "success",
        "standard": "skipped",
        "notify": "success",
        "remove_workspace": "success",
        "has_returns": "success",
        "process_returns": "skipped",
        "archive": "success",
    }
