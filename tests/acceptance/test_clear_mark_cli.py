"""Acceptance: `aflow tasks clear`, `aflow tasks mark` and `aflow runs mark`, as real
subprocesses against a running `aflow scheduler` on one SQLite file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.acceptance.conftest import CLI, Server, parse_table, wait_until, write_dag
from tests.conftest import aflow_cmd

pytestmark = pytest.mark.slow

PIPELINE = '''
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from aflow import DAG, PythonOperator

STATE = Path(os.environ["CLEAR_TEST_DIR"])


def recorded(name):
    def call():
        with open(STATE / "record.txt", "a") as f:
            f.write(name + "\\n")
        if name == "transform" and (STATE / "broken").exists():
            raise ValueError("transform is broken")
        if name == "slow":
            deadline = time.monotonic() + 60
            while not (STATE / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return name
    return call


START = datetime(2024, 1, 1, tzinfo=timezone.utc)

with DAG("pipe", schedule=None, start_date=START):
    extract, transform, load, side = (
        PythonOperator(task_id=n, python_callable=recorded(n)) for n in
        ("extract", "transform", "load", "side"))
    extract >> transform >> load
    extract >> side

with DAG("waits", schedule=None, start_date=START):
    PythonOperator(task_id="quick", python_callable=recorded("quick")) >> PythonOperator(
        task_id="slow", python_callable=recorded("slow"))
'''


@pytest.fixture
def setup(cli: CLI, tmp_path: Path) -> tuple[CLI, Path, Path]:
    state = tmp_path / "state"
    state.mkdir()
    cli.env["CLEAR_TEST_DIR"] = str(state)
    folder = tmp_path / "dags"
    write_dag(folder, "pipe.py", PIPELINE)
    return cli, folder, state


def scheduler(cli: CLI, folder: Path) -> Server:
    server = cli.spawn("scheduler", "--dags-folder", str(folder), name="scheduler")
    server.wait_ready()
    return server


def record(state: Path) -> list[str]:
    path = state / "record.txt"
    return path.read_text().split() if path.exists() else []


def tries(cli: CLI, run_id: str, dag_id: str = "pipe") -> dict[str, tuple[str, int]]:
    return {t: (r["state"], r["try_number"]) for t, r in cli.ti_states(dag_id, run_id).items()}


def failed_run(cli: CLI, folder: Path, state: Path, run_id: str = "r1") -> None:
    (state / "broken").touch()
    cli.ok("dags", "trigger", "pipe", "--run-id", run_id, "--dags-folder", str(folder))
    cli.wait_run_state("pipe", run_id, ("failed",))
    assert tries(cli, run_id) == {"extract": ("success", 1), "transform": ("failed", 1),
                                  "load": ("upstream_failed", 0), "side": ("success", 1)}


def test_clear_against_a_running_scheduler_reruns_exactly_the_cleared_tasks(
    setup: tuple[CLI, Path, Path],
) -> None:
    cli, folder, state = setup
    scheduler(cli, folder)
    failed_run(cli, folder, state)
    assert sorted(record(state)) == ["extract", "side", "transform"]

    (state / "broken").unlink()  # fix transform
    (state / "record.txt").unlink()
    out = cli.ok("tasks", "clear", "pipe", "--run-id", "r1", "-t", "^trans", "-d", "-y",
                 "--dags-folder", str(folder)).stdout
    assert "cleared 2 task instance(s) in 1 run(s)" in out
    assert [(r["task_id"], r["state"]) for r in parse_table(out)] == [
        ("transform", "failed"), ("load", "upstream_failed")]
    cli.wait_run_state("pipe", "r1", ("success",))
    assert tries(cli, "r1") == {"extract": ("success", 1), "transform": ("success", 2),
                                "load": ("success", 1), "side": ("success", 1)}
    assert record(state) == ["transform", "load"]


def test_clear_asks_first_and_refuses_without_a_terminal(setup: tuple[CLI, Path, Path]) -> None:
    cli, folder, state = setup
    server = scheduler(cli, folder)
    failed_run(cli, folder, state)
    server.kill()  # nothing may run from here on
    result = cli.run("tasks", "clear", "pipe", "--run-id", "r1", "-f", "--dags-folder", str(folder))
    assert result.returncode == 1
    assert [(r["task_id"], r["state"]) for r in parse_table(result.stdout)] == [
        ("transform", "failed"), ("load", "upstream_failed")]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: not clearing without --yes: stdin is not a terminal to confirm on")
    assert tries(cli, "r1")["transform"] == ("failed", 1)
    assert cli.runs("pipe")[0]["state"] == "failed"

    # --yes with --output json: the cleared TIs as they were; the run is queued again
    rows = json.loads(cli.ok("tasks", "clear", "pipe", "--run-id", "r1", "-f", "-y",
                             "--output", "json", "--dags-folder", str(folder)).stdout)
    assert [(r["task_id"], r["state"], r["try_number"]) for r in rows] == [
        ("transform", "failed", 1), ("load", "upstream_failed", 0)]
    assert cli.runs("pipe")[0]["state"] == "queued"
    assert tries(cli, "r1")["transform"] == ("none", 1)


@pytest.mark.parametrize(("args", "message"), [
    (["nope", "--run-id", "r1"], "error: no DAG named 'nope'"),
    (["pipe", "--run-id", "nope"], "error: DAG 'pipe' has no run 'nope'"),
    (["pipe", "--run-id", "r1", "-t", "^zzz"], "error: no task of DAG 'pipe' matches --task-regex '^zzz'"),
    (["pipe", "--run-id", "r1", "-t", "("], "error: --task-regex '(' is not a valid regular expression"),
    (["pipe"], "error: say which runs to clear: --run-id RUN_ID, or --start/--end dates"),
    (["pipe", "--start", "2999-01-01"], "error: DAG 'pipe' has no run with a logical date in that range"),
    (["pipe", "--start", "yesterday"], "error: invalid date 'yesterday'"),
])
def test_clear_bad_input_is_one_line_and_changes_nothing(
    setup: tuple[CLI, Path, Path], args: list[str], message: str
) -> None:
    cli, folder, state = setup
    server = scheduler(cli, folder)
    failed_run(cli, folder, state)
    server.kill()
    result = cli.run("tasks", "clear", *args, "-y", "--dags-folder", str(folder))
    assert result.returncode == 1, result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert tries(cli, "r1")["transform"] == ("failed", 1)
    assert cli.runs("pipe")[0]["state"] == "failed"


def test_clear_by_date_range(setup: tuple[CLI, Path, Path]) -> None:
    cli, folder, state = setup
    scheduler(cli, folder)
    failed_run(cli, folder, state, "r1")
    failed_run(cli, folder, state, "r2")
    (state / "broken").unlink()
    out = cli.ok("tasks", "clear", "pipe", "--start", "2000-01-01", "-f", "-y",
                 "--dags-folder", str(folder)).stdout
    assert "cleared 4 task instance(s) in 2 run(s)" in out
    for run_id in ("r1", "r2"):
        cli.wait_run_state("pipe", run_id, ("success",))


def test_runs_mark_and_tasks_mark(setup: tuple[CLI, Path, Path]) -> None:
    cli, folder, state = setup
    scheduler(cli, folder)
    failed_run(cli, folder, state)
    out = cli.ok("tasks", "mark", "pipe", "r1", "transform", "success",
                 "--dags-folder", str(folder)).stdout
    assert "task transform of run r1 marked success" in out
    assert "cleared downstream to run again: load" in out
    cli.wait_run_state("pipe", "r1", ("success",))
    assert tries(cli, "r1") == {"extract": ("success", 1), "transform": ("success", 1),
                                "load": ("success", 1), "side": ("success", 1)}

    failed_run(cli, folder, state, "r2")
    result = json.loads(cli.ok("runs", "mark", "pipe", "r2", "success", "--output", "json",
                               "--dags-folder", str(folder)).stdout)
    assert result["state"] == "success"
    assert cli.runs("pipe")[0]["state"] == "success"
    assert tries(cli, "r2")["transform"] == ("failed", 1)  # ended TIs keep their state

    bad = cli.run("runs", "mark", "pipe", "r2", "running", "--dags-folder", str(folder))
    assert bad.returncode == 2 and "invalid choice: 'running'" in bad.stderr
    bad = cli.run("tasks", "mark", "pipe", "r2", "nope", "failed", "--dags-folder", str(folder))
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == "error: DAG 'pipe' has no task 'nope'"


def test_a_run_the_scheduler_is_driving_is_refused_then_marked_once_it_ended(
    setup: tuple[CLI, Path, Path],
) -> None:
    cli, folder, state = setup
    scheduler(cli, folder)
    cli.ok("dags", "trigger", "waits", "--run-id", "w1", "--dags-folder", str(folder))
    wait_until(lambda: "slow" in record(state), what="the slow task to start")
    for args in (["tasks", "clear", "waits", "--run-id", "w1", "-t", "quick", "-y"],
                 ["runs", "mark", "waits", "w1", "failed"],
                 ["tasks", "mark", "waits", "w1", "quick", "failed"]):
        result = cli.run(*args, "--dags-folder", str(folder))
        assert result.returncode == 1, result.stdout
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: run 'w1' of DAG 'waits' is running and driven by another "
                               "process"), last
    assert tries(cli, "w1", "waits") == {"quick": ("success", 1), "slow": ("running", 1)}
    (state / "go").touch()
    cli.wait_run_state("waits", "w1", ("success",))
    cli.ok("runs", "mark", "waits", "w1", "failed", "--dags-folder", str(folder))
    assert cli.runs("waits")[0]["state"] == "failed"


def test_help_names_the_flags() -> None:
    out = subprocess.run(aflow_cmd("tasks", "clear", "--help"), capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--run-id", "--task-regex", "--downstream", "--upstream", "--only-failed",
                 "--yes", "--start", "--end"):
        assert flag in out
