"""Acceptance tests: the real `aflow` CLI, run as subprocesses against a fresh AFLOW_HOME."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from aflow.cli import build_parser
from aflow.runtime.dag_loader import load_folder
from tests.acceptance.conftest import CLI, parse_table, wait_until, write_dag
from tests.conftest import REPO, aflow_cmd

EXAMPLES = REPO / "dags"

GOOD_DAGS = '''
from datetime import datetime, timedelta, timezone

from aflow import DAG, Param, PythonOperator


def show(params):
    print(f"n={params['n']}")
    return params["n"]


def flaky(ti):
    print(f"flaky try={ti.try_number}")
    if ti.try_number < 2:
        raise ValueError("the first try fails on purpose")
    return "ok"


def boom():
    print("about to fail")
    raise RuntimeError("always fails")


START = datetime(2024, 1, 1, tzinfo=timezone.utc)

with DAG("with_params", schedule=None, start_date=START,
         params={"n": Param(3, type="integer", minimum=0, maximum=10)}):
    first = PythonOperator(task_id="show", python_callable=show)
    second = PythonOperator(task_id="flaky", python_callable=flaky, retries=1,
                            retry_delay=timedelta(milliseconds=50))
    third = PythonOperator(task_id="last", python_callable=lambda: "done")
    first >> second >> third

with DAG("failing", schedule=None, start_date=START, tags=["broken-on-purpose"]):
    PythonOperator(task_id="boom", python_callable=boom) >> PythonOperator(
        task_id="after", python_callable=lambda: 1)
'''

# name -> (source, the line the error points at or None, words the report must contain)
BROKEN: dict[str, tuple[str, int | None, list[str]]] = {
    "syntax_error.py": (
        "from aflow import DAG\n\nx = (\ndef oops\n", 3, ["SyntaxError"],
    ),
    "raises.py": (
        "from aflow import DAG\n\nvalue = 1\nraise RuntimeError('boom at import')\n",
        4, ["RuntimeError", "boom at import"],
    ),
    "cycle.py": (
        "from datetime import datetime, timezone\n"
        "from aflow import DAG, EmptyOperator\n"
        "with DAG('cyclic', start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):\n"
        "    a = EmptyOperator(task_id='ca')\n"
        "    b = EmptyOperator(task_id='cb')\n"
        "    a >> b\n"
        "    b >> a\n",
        None, ["cycle", "'cyclic'", "ca", "cb"],
    ),
    "duplicate.py": (
        "from datetime import datetime, timezone\n"
        "from aflow import DAG, EmptyOperator\n"
        "with DAG('dup', start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):\n"
        "    EmptyOperator(task_id='twice')\n"
        "    EmptyOperator(task_id='twice')\n",
        5, ["DuplicateTaskIdError", "'twice'"],
    ),
    "bad_rule.py": (
        "from datetime import datetime, timezone\n"
        "from aflow import DAG, EmptyOperator\n"
        "with DAG('rules', start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):\n"
        "    EmptyOperator(task_id='t', trigger_rule='sometimes')\n",
        4, ["trigger_rule", "'sometimes'"],
    ),
    "two_dags.py": (
        "from datetime import datetime, timezone\n"
        "from aflow import DAG, EmptyOperator\n"
        "START = datetime(2024, 1, 1, tzinfo=timezone.utc)\n"
        "d1 = DAG('one', start_date=START)\n"
        "d2 = DAG('two', start_date=START)\n"
        "t = EmptyOperator(task_id='shared', dag=d1)\n"
        "d2.add_task(t)\n",
        7, ["TaskAlreadyInDagError", "'shared'", "'one'", "'two'"],
    ),
}

OTHER_GOOD = '''
from datetime import datetime, timezone

from aflow import DAG, EmptyOperator

with DAG("another_good", schedule="@daily", start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
         tags=["x"]):
    EmptyOperator(task_id="only")
'''


@pytest.fixture
def good_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dags_good"
    write_dag(folder, "good.py", GOOD_DAGS)
    return folder


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dags_mixed"
    write_dag(folder, "good.py", GOOD_DAGS)
    write_dag(folder, "other_good.py", OTHER_GOOD)
    write_dag(folder, "_private_helper.py", "raise RuntimeError('never imported')\n")
    for name, (source, _, _) in BROKEN.items():
        (folder / name).write_text(source)
    return folder


def assert_clean_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """A failed command: non-zero exit, `error: ...` naming `words`, and no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    assert "error:" in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def only_run(cli: CLI, dag_id: str) -> dict[str, Any]:
    runs = cli.runs(dag_id)
    assert len(runs) == 1, runs
    return runs[0]


# -- help and the store ----------------------------------------------------------------------------
def command_paths() -> list[list[str]]:
    """Every command and subcommand of the parser, e.g. ["dags", "list"]."""
    out: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:  # noqa: SLF001 - argparse has no public walker
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, sub in action.choices.items():
                    out.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return out


def test_help_for_every_command(cli: CLI) -> None:
    paths = command_paths()
    names = {" ".join(p) for p in paths}
    expected = {
        "db", "db init", "dags", "dags list", "dags list-import-errors", "dags test",
        "dags trigger", "dags pause", "dags unpause", "tasks", "tasks list", "tasks test",
        "tasks logs", "tasks states-for-dag-run", "runs", "runs list", "scheduler", "standalone",
    }
    assert expected <= names, expected - names
    argvs = [[], *paths]
    procs = [
        (argv, subprocess.Popen(aflow_cmd(*argv, "--help"), env=cli.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for argv in argvs
    ]
    for argv, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (argv, err)
        assert out.startswith(f"usage: aflow {' '.join(argv)}".rstrip()), (argv, out)
        assert "Traceback" not in err, (argv, err)

    version = cli.ok("--version")
    assert version.stdout.startswith("aflow ")
    bare = cli.run()
    assert bare.returncode == 2
    assert "usage: aflow" in bare.stderr


def test_db_init_creates_and_is_idempotent(cli: CLI) -> None:
    first = cli.ok("db", "init")
    assert "schema version" in first.stdout
    assert (cli.home / "aflow.db").exists()
    second = cli.ok("db", "init")
    assert second.stdout == first.stdout


# -- loading DAG folders -----------------------------------------------------------------------------
def test_dags_list_reports_broken_files_and_lists_the_good(cli: CLI, mixed_folder: Path) -> None:
    table = cli.ok("dags", "list", "--dags-folder", str(mixed_folder))
    rows = parse_table(table.stdout)
    assert [r["dag_id"] for r in rows] == ["another_good", "failing", "with_params"]
    by_id = {r["dag_id"]: r for r in rows}
    assert by_id["with_params"]["tasks"] == "3"
    assert by_id["another_good"]["schedule"] == "@daily"
    assert_reports_every_broken_file(table.stderr, mixed_folder)
    assert "never imported" not in table.stderr + table.stdout  # _private files are skipped

    result = cli.run("dags", "list", "--dags-folder", str(mixed_folder), "--output", "json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert sorted(d["dag_id"] for d in listed) == ["another_good", "failing", "with_params"]
    assert {d["fileloc"] for d in listed} == {
        str(mixed_folder / "good.py"), str(mixed_folder / "other_good.py")
    }
    assert_reports_every_broken_file(result.stderr, mixed_folder)


def test_dags_list_shows_paused_flags_and_dags_whose_file_is_gone(
    cli: CLI, good_folder: Path
) -> None:
    write_dag(good_folder, "other_good.py", OTHER_GOOD)
    folder = ["--dags-folder", str(good_folder)]
    # `dags test` starts an Orchestrator on the folder, which records its DAGs in the store
    cli.run("dags", "test", "another_good", *folder)
    cli.ok("dags", "pause", "with_params")
    listed = {d["dag_id"]: d for d in cli.json("dags", "list", *folder)}
    assert listed["with_params"]["is_paused"] is True
    assert listed["another_good"]["is_paused"] is False
    assert all(d["is_active"] for d in listed.values())

    (good_folder / "other_good.py").unlink()
    cli.run("dags", "test", "with_params", *folder)  # the store learns the file is gone
    listed = {d["dag_id"]: d for d in cli.json("dags", "list", *folder)}
    gone = listed["another_good"]
    assert gone["is_active"] is False and gone["fileloc"] == str(good_folder / "other_good.py")
    assert gone["schedule"] == "@daily" and gone["tasks"] == 1
    assert listed["with_params"]["is_active"] is True
    table = {r["dag_id"]: r for r in parse_table(cli.ok("dags", "list", *folder).stdout)}
    assert table["another_good"]["is_active"] == "False"


def assert_reports_every_broken_file(text: str, folder: Path) -> None:
    for name, (_, line, words) in BROKEN.items():
        lines = [ln for ln in text.splitlines() if str(folder / name) in ln]
        assert lines, f"{name} is not reported in:\n{text}"
        report = "\n".join(lines)
        if line is not None:
            assert f"{folder / name}:{line}:" in report, (name, report)
        for word in words:
            assert word in report, (name, word, report)


def test_list_import_errors(cli: CLI, mixed_folder: Path, good_folder: Path) -> None:
    table = cli.ok("dags", "list-import-errors", "--dags-folder", str(mixed_folder))
    assert_reports_every_broken_file(table.stdout, mixed_folder)

    errors = cli.json("dags", "list-import-errors", "--dags-folder", str(mixed_folder))
    assert sorted(e["filename"] for e in errors) == sorted(str(mixed_folder / n) for n in BROKEN)
    for e in errors:
        _, line, words = BROKEN[Path(e["filename"]).name]
        head = e["error"].splitlines()[0]
        assert head.startswith(f"{e['filename']}:{line}:" if line else e["filename"]), head
        for word in words:
            assert word in e["error"], (word, e)

    clean = cli.ok("dags", "list-import-errors", "--dags-folder", str(good_folder))
    assert "no import errors" in clean.stdout
    assert cli.json("dags", "list-import-errors", "--dags-folder", str(good_folder)) == []


def test_missing_dags_folder_is_a_clear_error(cli: CLI, tmp_path: Path) -> None:
    result = cli.run("dags", "list", "--dags-folder", str(tmp_path / "nowhere"))
    assert_clean_error(result, "nowhere", "does not exist")


# -- dags test -----------------------------------------------------------------------------------
def test_dags_test_prints_each_task_and_exits_zero(cli: CLI, mixed_folder: Path) -> None:
    result = cli.ok("dags", "test", "with_params", "--dags-folder", str(mixed_folder))
    assert "with_params: success" in result.stdout
    rows = parse_table(result.stdout)
    assert [r["task_id"] for r in rows] == ["show", "flaky", "last"]
    assert {r["task_id"]: r["state"] for r in rows} == {
        "show": "success", "flaky": "success", "last": "success"
    }
    assert {r["task_id"]: r["tries"] for r in rows} == {"show": "1", "flaky": "2", "last": "1"}
    for r in rows:
        assert float(r["duration_s"]) >= 0
    assert str(cli.home / "logs") in result.stdout
    assert only_run(cli, "with_params")["state"] == "success"


def test_dags_test_failed_run_exits_non_zero(cli: CLI, good_folder: Path) -> None:
    result = cli.run("dags", "test", "failing", "--dags-folder", str(good_folder))
    assert result.returncode != 0
    assert "failing: failed" in result.stdout
    rows = {r["task_id"]: r for r in parse_table(result.stdout)}
    assert rows["boom"]["state"] == "failed"
    assert rows["boom"]["tries"] == "1"
    assert "RuntimeError: always fails" in rows["boom"]["error"]
    assert rows["after"]["state"] == "upstream_failed"
    assert rows["after"]["tries"] == "0"
    assert "Traceback" not in result.stderr

    as_json = cli.run("dags", "test", "failing", "--dags-folder", str(good_folder), "-o", "json")
    assert as_json.returncode != 0
    report = json.loads(as_json.stdout)
    assert report["state"] == "failed"
    assert {t["task_id"]: t["state"] for t in report["tasks"]} == {
        "boom": "failed", "after": "upstream_failed"
    }


def test_dags_test_unknown_dag(cli: CLI, good_folder: Path) -> None:
    result = cli.run("dags", "test", "no_such_dag", "--dags-folder", str(good_folder))
    assert_clean_error(result, "no_such_dag")
    assert cli.runs() == []


def test_conf_reaches_the_params(cli: CLI, good_folder: Path) -> None:
    cli.ok("dags", "test", "with_params", "--dags-folder", str(good_folder), "--conf", '{"n": 7}')
    run = only_run(cli, "with_params")
    log = cli.ok("tasks", "logs", "with_params", run["run_id"], "show")
    assert "n=7" in log.stdout


@pytest.mark.parametrize(
    ("conf", "words"),
    [
        ("{bad json", ["--conf", "not valid JSON"]),
        ("[1, 2]", ["--conf", "JSON object"]),
        ('{"n": 50}', ["'n'", "50", "maximum"]),
        ('{"n": "seven"}', ["'n'", "integer"]),
    ],
    ids=["invalid-json", "not-an-object", "above-maximum", "wrong-type"],
)
@pytest.mark.parametrize("command", ["test", "trigger"])
def test_bad_conf_is_a_clear_error_and_creates_nothing(
    cli: CLI, good_folder: Path, command: str, conf: str, words: list[str]
) -> None:
    result = cli.run("dags", command, "with_params", "--dags-folder", str(good_folder),
                     "--conf", conf)
    assert_clean_error(result, *words)
    assert cli.runs() == []


# -- tasks ---------------------------------------------------------------------------------------
def test_tasks_test_runs_one_task_and_records_nothing(cli: CLI, good_folder: Path) -> None:
    ok = cli.ok("tasks", "test", "with_params", "show", "--dags-folder", str(good_folder))
    assert "n=3" in ok.stdout  # the task's own output, with the param's default
    assert "task show: success" in ok.stdout

    conf = cli.ok("tasks", "test", "with_params", "show", "--dags-folder", str(good_folder),
                  "--conf", '{"n": 9}')
    assert "n=9" in conf.stdout

    failed = cli.run("tasks", "test", "failing", "boom", "--dags-folder", str(good_folder))
    assert failed.returncode != 0
    assert "about to fail" in failed.stdout
    assert "RuntimeError: always fails" in failed.stdout
    assert "task boom: failed" in failed.stdout
    assert cli.runs() == []

    missing = cli.run("tasks", "test", "failing", "nope", "--dags-folder", str(good_folder))
    assert_clean_error(missing, "'nope'")


def test_tasks_list(cli: CLI, good_folder: Path) -> None:
    rows = cli.json("tasks", "list", "with_params", "--dags-folder", str(good_folder))
    assert [r["task_id"] for r in rows] == ["show", "flaky", "last"]
    assert rows[1]["upstream"] == "show"


def test_tasks_logs_shows_the_right_try(cli: CLI, good_folder: Path) -> None:
    cli.ok("dags", "test", "with_params", "--dags-folder", str(good_folder))
    run_id = only_run(cli, "with_params")["run_id"]

    first = cli.ok("tasks", "logs", "with_params", run_id, "flaky", "--try", "1")
    assert "flaky try=1" in first.stdout
    assert "the first try fails on purpose" in first.stdout
    assert "flaky try=2" not in first.stdout
    assert "try 1 of 2" in first.stdout

    second = cli.ok("tasks", "logs", "with_params", run_id, "flaky", "--try", "2")
    assert "flaky try=2" in second.stdout
    assert "flaky try=1" not in second.stdout
    assert "the first try fails" not in second.stdout

    latest = cli.ok("tasks", "logs", "with_params", run_id, "flaky")
    assert "flaky try=2" in latest.stdout and "try 2 of 2" in latest.stdout

    assert_clean_error(cli.run("tasks", "logs", "with_params", run_id, "flaky", "--try", "3"),
                       "no try 3")
    assert_clean_error(cli.run("tasks", "logs", "with_params", "no-such-run", "flaky"),
                       "no-such-run")

    states = cli.ti_states("with_params", run_id)
    assert {k: (v["state"], v["try_number"]) for k, v in states.items()} == {
        "show": ("success", 1), "flaky": ("success", 2), "last": ("success", 1)
    }


def test_runs_list(cli: CLI, good_folder: Path) -> None:
    assert cli.runs() == []
    assert "(none)" in cli.ok("runs", "list").stdout
    cli.ok("dags", "test", "with_params", "--dags-folder", str(good_folder))
    cli.run("dags", "test", "failing", "--dags-folder", str(good_folder))

    runs = cli.runs()
    assert sorted((r["dag_id"], r["state"]) for r in runs) == [
        ("failing", "failed"), ("with_params", "success")
    ]
    for r in runs:
        assert r["run_type"] == "manual"
        assert r["run_id"] and r["logical_date"] and r["start_date"] and r["end_date"]
    assert [r["dag_id"] for r in cli.runs("failing")] == ["failing"]
    failed = cli.json("runs", "list", "--state", "failed")
    assert [r["dag_id"] for r in failed] == ["failing"]
    table = parse_table(cli.ok("runs", "list").stdout)
    assert {r["dag_id"] for r in table} == {"failing", "with_params"}


# -- the scheduler process -----------------------------------------------------------------------------
SLOW_DAGS = '''
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio

from aflow import DAG, EmptyOperator, PythonOperator

HERE = Path({here!r})
START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def note(text):
    with open(HERE / "events.log", "a") as f:
        f.write(text + "\\n")


async def hold(ti):
    note(f"started {{ti.task_id}} {{ti.try_number}}")
    deadline = time.monotonic() + 60
    while not (HERE / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        await anyio.sleep(0.05)
    note(f"finished {{ti.task_id}} {{ti.try_number}}")


with DAG("quick", schedule=None, start_date=START):
    a = PythonOperator(task_id="a", python_callable=lambda: note("ran quick.a"))
    b = PythonOperator(task_id="b", python_callable=lambda: note("ran quick.b"))
    a >> b

with DAG("holding", schedule=None, start_date=START):
    PythonOperator(task_id="hold", python_callable=hold)

with DAG("ticker", schedule=timedelta(seconds=1), start_date=START, catchup=False,
         is_paused_upon_creation=True):
    EmptyOperator(task_id="tick")

with DAG("ticker_control", schedule=timedelta(seconds=1), start_date=START, catchup=False):
    EmptyOperator(task_id="tick")
'''


@pytest.fixture
def slow_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dags_slow"
    write_dag(folder, "slow.py", SLOW_DAGS.format(here=str(tmp_path)))
    return folder


def events(tmp_path: Path) -> list[str]:
    path = tmp_path / "events.log"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_trigger_creates_a_queued_run_that_the_scheduler_executes(
    cli: CLI, slow_folder: Path, tmp_path: Path
) -> None:
    folder = ["--dags-folder", str(slow_folder)]
    created = cli.json("dags", "trigger", "quick", *folder, "--run-id", "by_hand_1")
    assert created == [{"dag_id": "quick", "run_id": "by_hand_1", "state": "queued",
                        "logical_date": created[0]["logical_date"]}]
    assert only_run(cli, "quick")["state"] == "queued"
    assert events(tmp_path) == []  # nothing runs a triggered run but a scheduler

    scheduler = cli.spawn("scheduler", *folder, name="scheduler")
    scheduler.wait_ready()
    cli.wait_run_state("quick", "by_hand_1", ("success",))
    # A run triggered while the scheduler is up is claimed too.
    second = cli.json("dags", "trigger", "quick", *folder)[0]
    assert second["state"] == "queued"
    cli.wait_run_state("quick", second["run_id"], ("success",))
    assert events(tmp_path).count("ran quick.a") == 2
    assert {t["state"] for t in cli.ti_states("quick", second["run_id"]).values()} == {"success"}

    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait_exit() == 0
    assert "stopped" in scheduler.stdout()


@pytest.mark.slow
def test_pause_and_unpause(cli: CLI, slow_folder: Path) -> None:
    folder = ["--dags-folder", str(slow_folder)]
    unknown = cli.run("dags", "pause", "ticker")
    assert_clean_error(unknown, "'ticker'")

    scheduler = cli.spawn("scheduler", *folder, name="scheduler")
    scheduler.wait_ready()

    def count(dag_id: str) -> int:
        return sum(1 for r in cli.runs(dag_id) if r["run_type"] == "scheduled")

    # ticker starts paused (is_paused_upon_creation): its twin keeps being scheduled, it does not.
    wait_until(lambda: count("ticker_control") >= 2, what="ticker_control's scheduled runs")
    assert count("ticker") == 0

    assert "DAG ticker unpaused" in cli.ok("dags", "unpause", "ticker").stdout
    wait_until(lambda: count("ticker") >= 1, what="a scheduled run of the unpaused DAG")

    assert "DAG ticker paused" in cli.ok("dags", "pause", "ticker").stdout
    at_pause = count("ticker")
    control_at_pause = count("ticker_control")
    wait_until(lambda: count("ticker_control") >= control_at_pause + 3,
               what="ticker_control to go on while ticker is paused")
    assert count("ticker") <= at_pause + 1  # at most one that was being created at that moment

    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait_exit() == 0


@pytest.mark.slow
@pytest.mark.parametrize("command", ["scheduler", "standalone"])
def test_server_prints_where_things_live_and_stops_on_sigterm(
    cli: CLI, slow_folder: Path, command: str
) -> None:
    server = cli.spawn(command, "--dags-folder", str(slow_folder), name=command)
    server.wait_ready()
    out = server.stdout()
    assert f"aflow {command}" in out
    assert f"home:        {cli.home}" in out
    assert str(cli.home / "aflow.db") in out
    assert f"task logs:   {cli.home / 'logs'}" in out
    assert str(slow_folder) in out and "4 DAGs" in out

    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0, server.describe()
    assert "received SIGTERM" in server.stdout()
    assert server.stdout().rstrip().endswith("stopped")
    assert "Traceback" not in server.stderr(), server.stderr()


@pytest.mark.slow
def test_sigterm_lets_a_running_task_finish(cli: CLI, slow_folder: Path, tmp_path: Path) -> None:
    folder = ["--dags-folder", str(slow_folder)]
    scheduler = cli.spawn("scheduler", *folder, "--grace", "60", name="scheduler")
    scheduler.wait_ready()
    run_id = cli.json("dags", "trigger", "holding", *folder)[0]["run_id"]
    wait_until(lambda: "started hold 1" in events(tmp_path), what="the task to start")

    scheduler.signal(signal.SIGTERM)
    scheduler.wait_for_output("received SIGTERM")
    assert scheduler.proc.poll() is None  # still waiting for the running task
    (tmp_path / "release").touch()
    assert scheduler.wait_exit() == 0, scheduler.describe()
    assert "stopped" in scheduler.stdout()

    assert "finished hold 1" in events(tmp_path)
    assert only_run(cli, "holding")["state"] == "success"
    hold = cli.ti_states("holding", run_id)["hold"]
    assert (hold["state"], hold["try_number"]) == ("success", 1)


def test_second_signal_cuts_the_grace_period_short(
    cli: CLI, slow_folder: Path, tmp_path: Path
) -> None:
    folder = ["--dags-folder", str(slow_folder)]
    scheduler = cli.spawn("scheduler", *folder, "--grace", "600", name="scheduler")
    scheduler.wait_ready()
    run_id = cli.json("dags", "trigger", "holding", *folder)[0]["run_id"]
    wait_until(lambda: "started hold 1" in events(tmp_path), what="the task to start")

    scheduler.signal(signal.SIGTERM)
    scheduler.wait_for_output("received SIGTERM")
    scheduler.signal(signal.SIGTERM)
    scheduler.wait_for_output("again: cancelling running tasks now")
    assert scheduler.wait_exit() == 0, scheduler.describe()

    assert "finished hold 1" not in events(tmp_path)
    hold = cli.ti_states("holding", run_id)["hold"]
    # interrupted by shutdown: recorded to run again, without using up a retry
    assert hold["state"] == "scheduled"
    assert hold["max_tries"] == hold["try_number"]


# -- the example DAGs ------------------------------------------------------------------------------
EXAMPLE_IDS = sorted(load_folder(EXAMPLES).dags)


def test_example_folder_loads_cleanly(cli: CLI) -> None:
    listed = cli.json("dags", "list", "--dags-folder", str(EXAMPLES))
    assert sorted(d["dag_id"] for d in listed) == EXAMPLE_IDS
    assert len(EXAMPLE_IDS) >= 4
    assert cli.json("dags", "list-import-errors", "--dags-folder", str(EXAMPLES)) == []


@pytest.mark.slow
@pytest.mark.parametrize("dag_id", EXAMPLE_IDS)
def test_example_dag_runs_offline(cli: CLI, dag_id: str) -> None:
    result = cli.run("dags", "test", dag_id, "--dags-folder", str(EXAMPLES), "-o", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["dag_id"] == dag_id
    assert report["state"] == "success"
    assert report["tasks"], report
    # (a branch or short circuit skips what it does not follow: skipped is a fine end)
    not_ok = {t["task_id"]: t["state"] for t in report["tasks"]
              if t["state"] not in ("success", "skipped")}
    assert not_ok == {}
    assert only_run(cli, dag_id)["state"] == "success"
