"""A deferrable FileSensor parked in a real `aflow standalone`: listed by `aflow triggers
list`, the triggerer reported healthy, and the run finishes when the file lands."""

from __future__ import annotations

from pathlib import Path

from tests.acceptance.conftest import CLI, wait_until, write_dag


def test_parked_file_sensor_is_listed_and_wakes_on_the_file(cli: CLI, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    folder = tmp_path / "dags"
    write_dag(folder, "landing.py", f"""
        from datetime import datetime, timezone
        from aflow import DAG, FileSensor, PythonOperator

        with DAG("landing", start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):
            FileSensor(task_id="wait", filepath="{landing}/*.csv", poke_interval=60) >> PythonOperator(
                task_id="process", python_callable=lambda ti: ti.xcom_pull(task_ids="wait"))
    """)
    args = ["--dags-folder", str(folder)]
    server = cli.spawn("standalone", *args, name="standalone")
    server.wait_ready()
    run_id = cli.json("dags", "trigger", "landing", *args)[0]["run_id"]

    def parked() -> list[dict[str, object]]:
        return [r for r in cli.json("triggers", "list") if r["waiting"] == 1]

    (row,) = wait_until(parked, what="the sensor's trigger to be parked")
    assert row["classpath"] == "triggers.file.FileTrigger"
    health = cli.run("triggers", "health", "-o", "json")
    assert health.returncode == 0, health.stdout + health.stderr
    assert cli.ti_states("landing", run_id)["wait"]["state"] == "deferred"

    (landing / "orders.csv").write_text("id\n1\n")
    run = cli.wait_run_state("landing", run_id)
    assert run["state"] == "success"
    assert cli.json("triggers", "list") == []  # the row went once the sensor resumed


def test_scheduler_and_triggerer_as_separate_processes(cli: CLI, tmp_path: Path) -> None:
    flag = tmp_path / "flag.txt"
    folder = tmp_path / "dags"
    write_dag(folder, "split.py", f"""
        from datetime import datetime, timezone
        from aflow import DAG, FileSensor, PythonOperator

        with DAG("split", start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):
            FileSensor(task_id="wait", filepath="{flag}") >> PythonOperator(
                task_id="after", python_callable=lambda: "ok")
    """)
    args = ["--dags-folder", str(folder)]
    scheduler = cli.spawn("scheduler", *args, name="scheduler")
    scheduler.wait_ready()
    run_id = cli.json("dags", "trigger", "split", *args)[0]["run_id"]
    wait_until(lambda: cli.ti_states("split", run_id)["wait"]["state"] == "deferred",
               what="the sensor to defer")
    # nothing parks the trigger yet: it waits in the store until a triggerer claims it
    assert [r["waiting"] for r in cli.json("triggers", "list")] == [1]
    assert cli.run("triggers", "health").returncode != 0
    triggerer = cli.spawn("triggerer", *args, name="triggerer")
    triggerer.wait_ready()
    flag.write_text("here")
    run = cli.wait_run_state("split", run_id)
    assert run["state"] == "success"
    assert cli.ti_states("split", run_id)["wait"]["try_number"] == 1
