"""Acceptance: `aflow pools list|set|delete` in real subprocesses, pools from the config
file's [pools] table applied when a scheduler starts, a running scheduler following a
pool change live, and bad input refused with one line and nothing changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.acceptance.conftest import CLI, wait_until, write_dag

WAITING_DAG = '''
import os, time
from datetime import datetime, timezone
from pathlib import Path

from aflow import DAG, PythonOperator

GATE = Path(os.environ["POOLS_GATE"])


def hold():
    deadline = time.monotonic() + 60
    while not GATE.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


with DAG("pooled", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):
    PythonOperator(task_id="in_etl", python_callable=hold, pool="etl")
    PythonOperator(task_id="in_later", python_callable=lambda: "ran", pool="later", pool_slots=2)
'''


def pools(cli: CLI) -> dict[str, dict[str, Any]]:
    return {r["pool"]: r for r in cli.json("pools", "list")}


def test_pools_set_list_delete_and_bad_input(cli: CLI) -> None:
    assert pools(cli) == {
        "default_pool": {"pool": "default_pool", "slots": 128, "include_deferred": False,
                         "running": 0, "deferred": 0, "description": "Default pool"},
    }
    out = cli.ok("pools", "set", "etl", "4", "--description", "nightly loads",
                 "--include-deferred").stdout
    assert "pool etl created: 4 slots, include_deferred=true" in out
    cli.ok("pools", "set", "etl", "6")  # what is not given stays as it was
    assert pools(cli)["etl"] == {"pool": "etl", "slots": 6, "include_deferred": True,
                                 "running": 0, "deferred": 0, "description": "nightly loads"}
    cli.ok("pools", "set", "etl", "6", "--no-include-deferred")
    assert pools(cli)["etl"]["include_deferred"] is False
    cli.ok("pools", "set", "open", "-1")
    table = cli.ok("pools", "list").stdout
    assert "unlimited" in table and "nightly loads" in table

    before = pools(cli)
    for args, message in [
        (("pools", "delete", "default_pool"), "error: default_pool cannot be deleted"),
        (("pools", "delete", "nope"), "error: no pool 'nope'"),
        (("pools", "set", "bad name", "3"), "error: invalid pool name 'bad name'"),
        (("pools", "set", "etl", "-2"), "error: pool 'etl': slots must be an integer >= 0"),
        (("pools", "set", "etl", "four"), "argument SLOTS: invalid int value: 'four'"),
    ]:
        result = cli.run(*args)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert result.stdout == ""
    assert pools(cli) == before  # nothing changed

    assert "pool open deleted" in cli.ok("pools", "delete", "open").stdout
    assert "open" not in pools(cli)


def test_bad_pools_in_the_config_file_stop_every_command(cli: CLI) -> None:
    config = cli.home / "aflow.toml"
    for text, message in [
        ('[pools]\netl = "four"\n', "[pools] etl: pool 'etl': slots must be an integer >= 0"),
        ("[pools]\netl = { slots = 2, colour = 1 }\n", "[pools] etl: unknown key(s) 'colour'"),
        ("[pools]\netl = { include_deferred = true }\n", "[pools] etl: slots is missing"),
        ('[pools]\netl = { slots = 2, include_deferred = "yes" }\n',
         "include_deferred must be true or false"),
        ('[pools]\n"bad name" = 2\n', "invalid pool name 'bad name'"),
    ]:
        config.write_text(text)
        result = cli.run("pools", "list")
        assert result.returncode == 1
        assert result.stderr.startswith(f"error: config file {config}: "), result.stderr
        assert message in result.stderr, result.stderr


def test_config_pools_apply_at_start_and_a_running_scheduler_follows_changes(
    cli: CLI, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    cli.env["POOLS_GATE"] = str(gate)
    dags = cli.home / "dags"
    write_dag(dags, "pooled.py", WAITING_DAG)
    (cli.home / "aflow.toml").write_text(
        '[pools]\netl = { slots = 1, description = "from the file" }\nlater = 1\n'
    )
    server = cli.spawn("scheduler", "--dags-folder", str(dags))
    server.wait_ready()
    listed = pools(cli)
    assert listed["etl"]["slots"] == 1 and listed["etl"]["description"] == "from the file"
    assert listed["later"]["slots"] == 1

    run_id = cli.json("dags", "trigger", "pooled", "--dags-folder", str(dags))[0]["run_id"]

    def waiting_for_pool() -> dict[str, Any] | None:
        tis = cli.ti_states("pooled", run_id)
        later = tis.get("in_later", {})
        return tis if later.get("state") == "scheduled" and later.get("error") else None

    tis = wait_until(waiting_for_pool, what="in_later to show why it waits")
    assert "needs 2 slots of pool 'later', which has 1" in tis["in_later"]["error"]
    wait_until(lambda: pools(cli)["etl"]["running"] == 1, what="in_etl running in its pool")
    refused = cli.run("pools", "delete", "etl")
    assert refused.returncode == 1
    assert "pool 'etl' has 1 task instance(s) queued, running or deferred" in refused.stderr

    cli.ok("pools", "set", "later", "2")  # the running scheduler picks this up
    wait_until(lambda: cli.ti_states("pooled", run_id)["in_later"]["state"] == "success",
               what="in_later to run once its pool fits it")
    gate.touch()
    assert cli.wait_run_state("pooled", run_id)["state"] == "success", server.describe()
    assert "pool etl deleted" in cli.ok("pools", "delete", "etl").stdout
