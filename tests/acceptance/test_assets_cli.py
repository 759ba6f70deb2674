"""Event-driven scheduling through the real CLI: an `aflow scheduler` and an `aflow
triggerer` in their own processes on one store; a file landing in a real directory is
seen by the triggerer's AssetWatcher (no task polls for it) and the scheduler starts the
run of the DAG scheduled on that asset, whose task reads the file's path from its
triggering events. A second file starts another run; the first is not reported again."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.acceptance.conftest import CLI, wait_until, write_dag

DAG_SOURCE = '''
from aflow import DAG, Asset, AssetWatcher, PythonOperator
from triggers.file import FileTrigger

LANDING = Asset("file://acceptance/landing",
                watchers=[AssetWatcher("csv", FileTrigger({pattern!r}, poke_interval=1))])


def record(triggering_asset_events):
    paths = [e.extra["path"] for e in triggering_asset_events[LANDING.uri]]
    with open({results!r}, "a") as f:
        for path in paths:
            f.write(path + "\\n")
    return paths


with DAG("on_landing", schedule=[LANDING]):
    PythonOperator(task_id="record", python_callable=record)
'''


@pytest.mark.slow
def test_a_file_landing_starts_a_run_through_scheduler_and_triggerer(
    cli: CLI, tmp_path: Path
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    results = tmp_path / "results.log"
    folder = tmp_path / "dags"
    write_dag(folder, "on_landing.py", DAG_SOURCE.format(
        pattern=str(landing / "*.csv"), results=str(results)))
    args = ["--dags-folder", str(folder)]
    scheduler = cli.spawn("scheduler", *args, name="scheduler")
    triggerer = cli.spawn("triggerer", *args, name="triggerer")
    scheduler.wait_ready()
    triggerer.wait_ready()
    assert cli.runs("on_landing") == []

    def runs_done(n: int) -> list[dict] | None:
        for server in (scheduler, triggerer):
            if server.proc.poll() is not None:
                raise AssertionError("a process died\n" + server.describe())
        runs = [r for r in cli.runs("on_landing") if r["state"] in ("success", "failed")]
        return runs if len(runs) >= n else None

    (landing / "a.csv").write_text("x\n")
    [run] = wait_until(lambda: runs_done(1), what="a run started by a.csv")
    assert run["state"] == "success" and run["run_type"] == "event"
    assert results.read_text().splitlines() == [str(landing / "a.csv")]

    (landing / "b.csv").write_text("y\n")
    runs = wait_until(lambda: runs_done(2), what="a run started by b.csv")
    assert {r["state"] for r in runs} == {"success"}
    assert results.read_text().splitlines() == [str(landing / "a.csv"), str(landing / "b.csv")]
    # the wait was the triggerer's: no task deferred or poked for it
    assert cli.json("triggers", "list") == []
    for server in (scheduler, triggerer):
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0, server.describe()
