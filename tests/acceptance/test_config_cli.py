"""Acceptance: the real `aflow` CLI reads $AFLOW_HOME/aflow.toml and AFLOW__SECTION__KEY,
shows where each value came from, and refuses bad settings with one line."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from tests.acceptance.conftest import CLI, write_dag

OVERLAP_DAG = '''
import os, time
from datetime import datetime, timezone
import signal
from pathlib import Path

from aflow import DAG, PythonOperator

MARKS = Path(os.environ["OVERLAP_DIR"])


def probe(me):
    """Say whether another probe was running at the same time as this one."""
    mine = MARKS / f"running_{me}"
    mine.touch()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            if any(p != mine for p in MARKS.glob("running_*")):
                (MARKS / "overlap").touch()
                return
            time.sleep(0.02)
    finally:
        mine.unlink()


with DAG("two_probes", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):
    for name in ("a", "b"):
        PythonOperator(task_id=name, python_callable=probe, op_kwargs={"me": name})
'''


def settings(cli: CLI, *args: str) -> dict[str, dict[str, Any]]:
    return {r["setting"]: r for r in cli.json("config", "list", *args)}


def write_config(cli: CLI, text: str) -> Path:
    path = cli.home / "aflow.toml"
    path.write_text(text)
    return path


def test_config_list_shows_each_source(cli: CLI, tmp_path: Path) -> None:
    file = write_config(cli, "[core]\nparallelism = 7\n[triggerer]\ncapacity = 9\n"
                             "[scheduler]\nlease_seconds = 11\n")
    cli.env["AFLOW__TRIGGERER__CAPACITY"] = "99"
    cli.env["AFLOW_LEASE_SECONDS"] = "12"
    rows = settings(cli, "--store", f"sqlite:///{tmp_path / 'flag.db'}")
    assert rows["home"] == {"setting": "home", "value": str(cli.home), "source": "env AFLOW_HOME",
                            "env": "AFLOW_HOME"}
    assert (rows["core.parallelism"]["value"], rows["core.parallelism"]["source"]) == (7, str(file))
    assert rows["triggerer.capacity"]["value"] == 99
    assert rows["triggerer.capacity"]["source"] == "env AFLOW__TRIGGERER__CAPACITY"
    assert (rows["scheduler.lease_seconds"]["value"], rows["scheduler.lease_seconds"]["source"]) == (
        12.0, "env AFLOW_LEASE_SECONDS")
    assert rows["core.store"]["source"] == "flag --store"
    assert rows["scheduler.sweep_seconds"]["source"] == "default"

    table = cli.ok("config", "list").stdout
    assert f"config file: {file}" in table
    assert "core.parallelism" in table and str(file) in table
    assert cli.ok("config", "get", "core.parallelism").stdout == "7\n"
    assert cli.ok("config", "get", "home").stdout == f"{cli.home}\n"


def test_config_get_unknown_name(cli: CLI) -> None:
    result = cli.run("config", "get", "core.paralelism")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: no setting 'core.paralelism'; known in [core]: core.dags_folder, core.store, "
        "core.parallelism, core.shutdown_grace_seconds, core.sqlite_synchronous, core.fernet_key")


def test_bad_settings_exit_with_one_line_and_change_nothing(cli: CLI) -> None:
    db = cli.home / "aflow.db"
    cases: list[tuple[str | None, dict[str, str], str]] = [
        (None, {"AFLOW__CORE__PARALLELISM": "abc"}, "AFLOW__CORE__PARALLELISM=abc: not an integer"),
        (None, {"AFLOW_PARALLELISM": "lots"}, "AFLOW_PARALLELISM=lots: not an integer"),
        ("[core]\nparalelism = 4\n", {}, "unknown key 'paralelism' in [core]"),
        ("[core]\nparallelism = 4\nstore = nope\n", {}, "is not valid TOML"),
        ("[scheduler]\nlease_seconds = -1\n", {}, "must be at least"),
    ]
    for text, env, message in cases:
        file = cli.home / "aflow.toml"
        file.unlink(missing_ok=True)
        if text is not None:
            file.write_text(text)
        saved = dict(cli.env)
        cli.env.update(env)
        try:
            result = cli.run("db", "init")
        finally:
            cli.env.clear()
            cli.env.update(saved)
        assert result.returncode == 1, (message, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
        if text is not None:
            assert str(file) in lines[0]
        if "TOML" in message:
            assert "line 3" in lines[0]
        assert not db.exists(), "a refused command must not create the store"


def test_file_store_and_dags_folder_reach_commands(cli: CLI, tmp_path: Path) -> None:
    store = tmp_path / "from_file.db"
    folder = tmp_path / "file_dags"
    folder.mkdir()
    write_dag(folder, "probes.py", OVERLAP_DAG)
    cli.env["OVERLAP_DIR"] = str(tmp_path)
    write_config(cli, f'[core]\nstore = "sqlite:///{store}"\ndags_folder = "{folder}"\n')
    listed = cli.json("dags", "list")
    assert [d["dag_id"] for d in listed] == ["two_probes"]
    cli.ok("dags", "trigger", "two_probes", "--run-id", "from_file")
    assert store.exists()
    assert not (cli.home / "aflow.db").exists()
    assert [r["run_id"] for r in cli.runs("two_probes")] == ["from_file"]


def test_file_parallelism_reaches_a_running_command(cli: CLI, tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    write_dag(folder, "probes.py", OVERLAP_DAG)
    marks = tmp_path / "marks"
    marks.mkdir()
    cli.env["OVERLAP_DIR"] = str(marks)
    write_config(cli, f'[core]\nparallelism = 1\ndags_folder = "{folder}"\n')
    cli.ok("dags", "test", "two_probes")
    assert not (marks / "overlap").exists(), "parallelism = 1 from the file let two tries overlap"
    # the flag beats the file, and the probe does see overlap when it is allowed
    cli.ok("dags", "test", "two_probes", "--parallelism", "2")
    assert (marks / "overlap").exists()


def test_file_parse_timeout_reaches_a_running_scheduler(cli: CLI, tmp_path: Path) -> None:
    """[dag_processor] parse_timeout_seconds = 1 turns a hanging file into an import error
    in about a second (the default would wait 30 s)."""
    folder = tmp_path / "dags"
    write_dag(folder, "hang.py", "import time\ntime.sleep(120)\n")
    write_dag(folder, "good.py", GOOD_DAG)
    file = write_config(cli, f'[core]\ndags_folder = "{folder}"\n'
                             "[dag_processor]\nparse_timeout_seconds = 1\nwatch = false\n")
    server = cli.spawn("scheduler", name="scheduler")
    server.wait_for_output("task logs:", timeout=15)
    out = server.stdout()
    assert f"config:      {file}\n" in out
    assert "(1 DAGs, 1 import errors)" in out, out
    assert "hang.py" in out
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0


GOOD_DAG = '''
from datetime import datetime, timezone

from aflow import DAG, EmptyOperator

with DAG("good", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):
    EmptyOperator(task_id="only")
'''
