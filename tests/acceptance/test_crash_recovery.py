"""Crash recovery through the real CLI: SIGKILL `aflow scheduler` in the middle of a run and
start it again. The run continues where it stopped: tasks that had succeeded do not run again,
tasks that were running are retried (or failed) by their retry policy.

Every task appends "<task_id> <try_number>" to executions.log when it starts, so the test can
count executions across processes. `b` and `lone` block until the test creates a file.
"""

from __future__ import annotations

import signal
from collections import defaultdict
from pathlib import Path

import pytest

from tests.acceptance.conftest import CLI, Server, wait_until, write_dag

CRASHY = '''
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio

from aflow import DAG, PythonOperator

HERE = Path({here!r})


def record(ti):
    with open(HERE / "executions.log", "a") as f:
        f.write(f"{{ti.task_id}} {{ti.try_number}}\\n")


def block_until(name):
    deadline = time.monotonic() + 120
    while not (HERE / name).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{{name}} never appeared")
        time.sleep(0.05)


def blocking(ti):
    record(ti)
    block_until("release_" + ti.task_id)
    return ti.task_id


def quick(ti):
    record(ti)
    return ti.task_id


async def async_blocking(ti):
    record(ti)
    while not (HERE / ("release_" + ti.task_id)).exists():
        await anyio.sleep(0.05)


with DAG("crashy", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):
    a = PythonOperator(task_id="a", python_callable=quick)
    b = PythonOperator(task_id="b", python_callable=blocking, retries={b_retries},
                       retry_delay=timedelta(milliseconds=100))
    c = PythonOperator(task_id="c", python_callable=quick)
    a >> b >> c
    # another branch: running at the first kill, with no retries left to use
    lone = PythonOperator(task_id="lone", python_callable=blocking, retries=0)
    lone_after = PythonOperator(task_id="lone_after", python_callable=quick)
    lone_done = PythonOperator(task_id="lone_done", python_callable=quick,
                               trigger_rule="all_done")
    lone >> [lone_after, lone_done]

with DAG("interrupted", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):
    PythonOperator(task_id="sync_hold", python_callable=blocking, retries=0)
    PythonOperator(task_id="async_hold", python_callable=async_blocking, retries=0)
'''


def executions(tmp_path: Path) -> dict[str, list[int]]:
    path = tmp_path / "executions.log"
    out: dict[str, list[int]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            task_id, try_number = line.split()
            out[task_id].append(int(try_number))
    return dict(out)


def started(tmp_path: Path, task_id: str, try_number: int) -> bool:
    return try_number in executions(tmp_path).get(task_id, [])


@pytest.fixture
def crash_folder(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    b_retries = getattr(request, "param", 1)
    folder = tmp_path / "dags"
    write_dag(folder, "crashy.py", CRASHY.format(here=str(tmp_path), b_retries=b_retries))
    return folder


def start_scheduler(cli: CLI, folder: Path) -> Server:
    server = cli.spawn("scheduler", "--dags-folder", str(folder), name="scheduler")
    server.wait_ready()
    return server


@pytest.mark.slow
@pytest.mark.parametrize(("crash_folder", "kills"), [(1, 1), (2, 2)], indirect=["crash_folder"],
                         ids=["one-kill", "two-kills"])
def test_sigkill_mid_run_then_restart_continues_the_run(
    cli: CLI, crash_folder: Path, tmp_path: Path, kills: int
) -> None:
    """`b` has `kills` retries: each kill loses one of its tries, the last try succeeds."""
    folder = ["--dags-folder", str(crash_folder)]
    scheduler = start_scheduler(cli, crash_folder)
    run_id = cli.json("dags", "trigger", "crashy", *folder)[0]["run_id"]

    wait_until(lambda: started(tmp_path, "b", 1) and started(tmp_path, "lone", 1),
               what="b and lone to be running")
    for kill in range(1, kills + 1):
        dead_pid = scheduler.pid
        scheduler.kill()  # SIGKILL: no chance to record anything
        states = cli.ti_states("crashy", run_id)
        assert states["b"]["state"] == "running"
        assert [r["state"] for r in cli.runs("crashy")] == ["running"]

        scheduler = start_scheduler(cli, crash_folder)
        # The new process sees that the dead pid is gone on this host and adopts the run
        # at once, without waiting for the dead process's lease to expire.
        wait_until(lambda: f"(pid {dead_pid}) is gone" in scheduler.stderr(),  # noqa: B023
                   what="the adoption of the dead scheduler's run")
        wait_until(lambda: started(tmp_path, "b", kill + 1),  # noqa: B023
                   what=f"b's try {kill + 1}")
        if kill == 1:
            # The try of `lone` was lost and it has no retries: failed, and so decided
            # downstream (these states are committed before b's new try ends).
            def lone_decided() -> dict[str, str] | None:
                s = {k: v["state"] for k, v in cli.ti_states("crashy", run_id).items()}
                done = s["lone_after"] == "upstream_failed" and s["lone_done"] == "success"
                return s if done else None

            wait_until(lone_decided, what="lone failed and its downstream decided")

    (tmp_path / "release_b").touch()
    run = cli.wait_run_state("crashy", run_id)
    assert run["state"] == "failed"  # a leaf (lone_after) is upstream_failed

    assert executions(tmp_path) == {
        "a": [1],  # succeeded before the first kill: never runs again
        "b": list(range(1, kills + 2)),  # each kill lost one try; the last one succeeded
        "c": [1],
        "lone": [1],  # retries=0: its lost try was its last
        "lone_done": [1],  # all_done, ran once after lone failed (and survived a later kill)
    }
    states = cli.ti_states("crashy", run_id)
    assert {k: (v["state"], v["try_number"]) for k, v in states.items()} == {
        "a": ("success", 1),
        "b": ("success", kills + 1),
        "c": ("success", 1),
        "lone": ("failed", 1),
        "lone_after": ("upstream_failed", 0),
        "lone_done": ("success", 1),
    }
    assert "stopped" in states["lone"]["error"]
    lost = cli.ok("tasks", "logs", "crashy", run_id, "b", "--try", "1").stdout
    assert "try is lost" in lost
    last = cli.ok("tasks", "logs", "crashy", run_id, "b").stdout
    assert f"try {kills + 1} of {kills + 1}" in last and "try is lost" not in last

    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait_exit() == 0, scheduler.describe()
    assert "stopped" in scheduler.stdout()


@pytest.mark.slow
def test_sigkill_before_the_run_is_claimed_then_restart(cli: CLI, crash_folder: Path,
                                                        tmp_path: Path) -> None:
    """A queued run (no owner yet) survives a scheduler that dies right after starting."""
    folder = ["--dags-folder", str(crash_folder)]
    run_id = cli.json("dags", "trigger", "crashy", *folder)[0]["run_id"]
    (tmp_path / "release_b").touch()
    (tmp_path / "release_lone").touch()
    scheduler = start_scheduler(cli, crash_folder)
    # (lone, a root too, has no retries: killed mid-try it would fail the run, so the kill
    # waits for its end as well as for a's start)
    wait_until(lambda: started(tmp_path, "a", 1)
               and cli.ti_states("crashy", run_id).get("lone", {}).get("state") == "success",
               what="a to run and lone to end")
    scheduler.kill()
    scheduler = start_scheduler(cli, crash_folder)
    run = cli.wait_run_state("crashy", run_id)
    assert run["state"] == "success"
    counts = executions(tmp_path)
    assert counts["a"] == [1]
    assert counts["c"] == [1]
    assert {v["state"] for k, v in cli.ti_states("crashy", run_id).items()} == {"success"}
    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait_exit() == 0, scheduler.describe()


@pytest.mark.slow
def test_grace_period_over_then_restart_runs_the_interrupted_tries_again(
    cli: CLI, crash_folder: Path, tmp_path: Path
) -> None:
    """SIGTERM with a short grace: running tries are cancelled and recorded to run again,
    without using up a retry (both tasks have retries=0), and a restart runs them."""
    folder = ["--dags-folder", str(crash_folder)]
    scheduler = cli.spawn("scheduler", *folder, "--grace", "0.5", name="scheduler")
    scheduler.wait_ready()
    run_id = cli.json("dags", "trigger", "interrupted", *folder)[0]["run_id"]
    wait_until(lambda: started(tmp_path, "sync_hold", 1) and started(tmp_path, "async_hold", 1),
               what="both tasks to be running")
    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait_exit() == 0, scheduler.describe()
    assert "stopped" in scheduler.stdout()
    states = cli.ti_states("interrupted", run_id)
    assert {k: v["state"] for k, v in states.items()} == {
        "sync_hold": "scheduled", "async_hold": "scheduled"
    }

    (tmp_path / "release_sync_hold").touch()
    (tmp_path / "release_async_hold").touch()
    scheduler = start_scheduler(cli, crash_folder)
    assert cli.wait_run_state("interrupted", run_id)["state"] == "success"
    assert executions(tmp_path) == {"sync_hold": [1, 2], "async_hold": [1, 2]}
    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait_exit() == 0, scheduler.describe()
