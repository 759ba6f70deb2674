"""`aflow backfill` as a real subprocess: a range of daily intervals with progress and a
summary, a failed run and --reset-failed, Ctrl-C/SIGTERM then a second invocation that
resumes, and bad input. The DAGs' tasks append "<ds> <task_id>" to an events file, so the
tests see what ran, and how often."""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.acceptance.conftest import CLI, parse_table, wait_until, write_dag

DAGS = '''
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from aflow import DAG, PythonOperator

EVENTS = Path(os.environ.get("BACKFILL_EVENTS", "events.txt"))
FAIL = EVENTS.with_name("fail")  # while it exists, flaky's b fails on 2024-01-02


def record(ti, ds):
    with EVENTS.open("a") as f:
        f.write(f"{ti.dag_id} {ds} {ti.task_id}\\n")


def held(ti, ds):
    """Runs until the file release-<task_id> exists; held-<task_id>-<ds> says it runs."""
    EVENTS.with_name(f"held-{ti.task_id}-{ds}").touch()
    release = EVENTS.with_name(f"release-{ti.task_id}")
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    record(ti, ds)


def fails_on_the_2nd(ti, ds):
    if ds == "2024-01-02" and FAIL.exists():
        raise RuntimeError("fails on purpose")
    record(ti, ds)


START = datetime(2024, 1, 1, tzinfo=timezone.utc)

with DAG("daily", schedule="@daily", start_date=START, max_active_runs=2):
    (PythonOperator(task_id="a", python_callable=record)
     >> PythonOperator(task_id="b", python_callable=held)
     >> PythonOperator(task_id="c", python_callable=held))

with DAG("flaky", schedule="@daily", start_date=START):
    (PythonOperator(task_id="a", python_callable=record)
     >> PythonOperator(task_id="b", python_callable=fails_on_the_2nd)
     >> PythonOperator(task_id="c", python_callable=record))

with DAG("unscheduled", schedule=None, start_date=START):
    PythonOperator(task_id="a", python_callable=record)
'''

PROGRESS = re.compile(r"backfill (\w+): (\d+)/(\d+) runs done")


@pytest.fixture
def dags(cli: CLI, tmp_path: Path) -> list[str]:
    """The DAG folder's option; the events file's folder is tmp_path."""
    write_dag(tmp_path / "dags", "backfill_dags.py", DAGS)
    cli.env["BACKFILL_EVENTS"] = str(tmp_path / "events.txt")
    return ["--dags-folder", str(tmp_path / "dags")]


def events(tmp_path: Path) -> list[str]:
    """What the tasks of 2024's runs recorded (not a scheduler's runs of today)."""
    path = tmp_path / "events.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if " 2024-" in line]


def release(tmp_path: Path, *task_ids: str) -> None:
    for task_id in task_ids:
        (tmp_path / f"release-{task_id}").touch()


def held(tmp_path: Path, task_id: str, *days: int) -> bool:
    return all((tmp_path / f"held-{task_id}-2024-01-0{d}").exists() for d in days)


def backfill_runs(cli: CLI, dag_id: str) -> list[dict[str, str]]:
    return sorted(cli.runs(dag_id), key=lambda r: r["logical_date"])


@pytest.mark.slow
def test_backfill_of_daily_intervals(cli: CLI, dags: list[str], tmp_path: Path) -> None:
    release(tmp_path, "b", "c")
    result = cli.ok("backfill", "daily", "--start", "2024-01-01", "--end", "2024-01-04", *dags)
    rows = parse_table(result.stdout)
    assert [r["logical_date"] for r in rows] == [f"2024-01-0{d}T00:00:00+00:00" for d in range(1, 5)]
    assert {(r["state"], r["action"]) for r in rows} == {("success", "created")}
    assert "4 runs: 4 succeeded, 0 failed, 0 unfinished, 0 not created; wall time" in result.stdout
    # progress: plain lines on a non-terminal, ending with all done
    progress = [PROGRESS.search(line) for line in result.stderr.splitlines()]
    counts = [(int(m[2]), int(m[3])) for m in progress if m]
    assert counts and counts[-1] == (4, 4)
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    runs = backfill_runs(cli, "daily")
    assert [(r["run_id"], r["run_type"], r["state"]) for r in runs] == [
        (f"backfill__2024-01-0{d}T00:00:00+00:00", "backfill", "success") for d in range(1, 5)
    ]
    assert sorted(events(tmp_path)) == sorted(
        f"daily 2024-01-0{d} {t}" for d in range(1, 5) for t in "abc"
    )
    # the same range again: nothing runs, every interval is reported as it was
    again = cli.ok("backfill", "daily", "--start", "2024-01-01", "--end", "2024-01-04", *dags,
                   "--output", "json")
    summary = json.loads(again.stdout)
    assert [r["action"] for r in summary["runs"]] == ["existing"] * 4
    assert summary["succeeded"] == 4 and not summary["interrupted"]
    assert len(events(tmp_path)) == 12


@pytest.mark.slow
def test_failed_run_then_reset_failed(cli: CLI, dags: list[str], tmp_path: Path) -> None:
    (tmp_path / "fail").touch()
    args = ("backfill", "flaky", "--start", "2024-01-01", "--end", "2024-01-03", *dags)
    first = cli.run(*args)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "3 runs: 2 succeeded, 1 failed" in first.stdout
    assert "failed: backfill__2024-01-02T00:00:00+00:00 (2024-01-02T00:00:00+00:00)" in first.stdout
    before = Counter(events(tmp_path))
    assert before["flaky 2024-01-02 a"] == 1 and not before["flaky 2024-01-02 b"]

    # without --reset-failed the failed run is reported, not run again
    again = cli.run(*args)
    assert again.returncode == 1 and Counter(events(tmp_path)) == before

    (tmp_path / "fail").unlink()
    fixed = cli.run(*args, "--reset-failed")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    rows = parse_table(fixed.stdout)
    assert [(r["state"], r["action"]) for r in rows] == [
        ("success", "existing"), ("success", "reset"), ("success", "existing")]
    after = Counter(events(tmp_path))
    # only the failed task and what it held back ran again; nothing ran twice
    assert after - before == Counter({"flaky 2024-01-02 b": 1, "flaky 2024-01-02 c": 1})
    assert max(after.values()) == 1
    assert [r["state"] for r in backfill_runs(cli, "flaky")] == ["success"] * 3


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_then_resume(cli: CLI, dags: list[str], tmp_path: Path, signum: int,
                          code: int) -> None:
    args = ("backfill", "daily", "--start", "2024-01-01", "--end", "2024-01-06", "--grace", "30",
            *dags)
    first = cli.spawn(*args, name="backfill")
    # runs 1 and 2 (max_active_runs=2) start; their b tasks wait for the release file
    wait_until(lambda: held(tmp_path, "b", 1, 2), what="both b tasks running")
    first.signal(signum)
    # stop is taken: the runs in flight get their grace; now let their b tasks end
    wait_until(lambda: "unfinished runs' running tasks" in first.stderr(),
               what="the backfill to stop")
    release(tmp_path, "b", "c")
    assert first.wait_exit() == code, first.describe()
    out = first.stdout()
    assert f"interrupted by {signal.Signals(signum).name}" in out
    assert ("to resume, run the same command again: aflow backfill daily --start 2024-01-01 "
            "--end 2024-01-06") in out
    rows = parse_table(out)
    assert [r["state"] for r in rows] == ["running"] * 2 + ["not created"] * 4
    assert "6 runs: 0 succeeded, 0 failed, 2 unfinished, 4 not created" in out
    assert sorted(events(tmp_path)) == sorted(
        f"daily 2024-01-0{d} {t}" for d in (1, 2) for t in "ab")  # c never started

    second = cli.run(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    rows = parse_table(second.stdout)
    assert [(r["state"], r["action"]) for r in rows] == (
        [("success", "resumed")] * 2 + [("success", "created")] * 4)
    runs = backfill_runs(cli, "daily")
    assert [(r["logical_date"][:10], r["run_type"], r["state"]) for r in runs] == [
        (f"2024-01-0{d}", "backfill", "success") for d in range(1, 7)]
    seen = Counter(events(tmp_path))
    assert seen == Counter(f"daily 2024-01-0{d} {t}" for d in range(1, 7) for t in "abc")


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), [
    (("nope", "--start", "2024-01-01", "--end", "2024-01-02"), "no DAG named 'nope'"),
    (("daily", "--start", "2024-13-01", "--end", "2024-01-02"), "invalid --start '2024-13-01'"),
    (("daily", "--start", "2024-01-01", "--end", "tomorrow"), "invalid --end 'tomorrow'"),
    (("daily", "--start", "2024-01-05", "--end", "2024-01-02"),
     "start 2024-01-05T00:00:00+00:00 is after end 2024-01-02T00:00:00+00:00"),
    (("unscheduled", "--start", "2024-01-01", "--end", "2024-01-02"),
     "DAG 'unscheduled' has no schedule"),
    (("daily", "--start", "2023-01-01", "--end", "2023-02-01"), "no interval of the schedule"),
    (("daily", "--start", "2024-01-01", "--end", "2024-01-02", "--max-active-runs", "0"),
     "--max-active-runs must be at least 1, got 0"),
])
def test_bad_input_is_one_clear_error(cli: CLI, dags: list[str], tmp_path: Path,
                                      args: tuple[str, ...], message: str) -> None:
    release(tmp_path, "b", "c")
    result = cli.run("backfill", *args, *dags)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert events(tmp_path) == []
    if (cli.home / "aflow.db").exists():
        assert cli.runs() == []


@pytest.mark.slow
def test_a_scheduler_drives_the_runs_a_stopped_backfill_left(
    cli: CLI, dags: list[str], tmp_path: Path
) -> None:
    """A backfill is stopped with runs 1 and 2 unfinished; an `aflow scheduler` on the
    same store adopts them; a second backfill follows those through the store (without
    driving them) and creates the others itself."""
    scheduler = cli.spawn("scheduler", *dags, name="scheduler")
    scheduler.wait_ready()
    args = ("backfill", "daily", "--start", "2024-01-01", "--end", "2024-01-06", *dags)
    first = cli.spawn(*args, name="backfill")
    wait_until(lambda: held(tmp_path, "b", 1, 2), what="both b tasks running")
    first.signal(signal.SIGINT)
    wait_until(lambda: "unfinished runs' running tasks" in first.stderr(),
               what="the backfill to stop")
    release(tmp_path, "b")
    assert first.wait_exit() == 130, first.describe()
    # the scheduler adopts the two released runs: their c tasks start there and wait
    wait_until(lambda: held(tmp_path, "c", 1, 2), what="the scheduler to drive runs 1 and 2")

    second = cli.spawn(*args, name="backfill")
    # it has found runs 1 and 2 unfinished (and, at max_active_runs=2, waits for them)
    wait_until(lambda: PROGRESS.search(second.stderr()), what="the second backfill's plan")
    release(tmp_path, "c")
    assert second.wait_exit() == 0, second.describe()
    rows = parse_table(second.stdout())
    assert [(r["state"], r["action"]) for r in rows] == (
        [("success", "resumed")] * 2 + [("success", "created")] * 4)
    assert [r["state"] for r in backfill_runs(cli, "daily") if r["run_type"] == "backfill"] == [
        "success"] * 6
    assert Counter(events(tmp_path)) == Counter(
        f"daily 2024-01-0{d} {t}" for d in range(1, 7) for t in "abc")


@pytest.mark.slow
def test_progress_is_redrawn_in_place_on_a_terminal(cli: CLI, dags: list[str],
                                                     tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import threading

    from tests.conftest import aflow_cmd

    release(tmp_path, "b", "c")
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the other end closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            aflow_cmd("backfill", "daily", "--start", "2024-01-01", "--end", "2024-01-03", *dags),
            env=cli.env, cwd=cli.workdir, stdout=subprocess.PIPE, stderr=slave, timeout=120,
        )
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, terminal
    assert "\r\x1b[2K[" in terminal and "3/3 runs done" in terminal
    assert "3 runs: 3 succeeded" in proc.stdout.decode()
