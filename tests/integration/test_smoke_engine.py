from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aflow import DAG, BashOperator, PythonOperator, task
from tests.conftest import run_dag

pytestmark = pytest.mark.anyio


async def test_taskflow_values_flow_through_xcom(home: Path) -> None:
    with DAG("smoke", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:

        @task
        def one() -> int:
            print("hello from one")
            return 1

        @task
        async def two(v: int) -> int:
            return v + 1

        two(one()) >> BashOperator(task_id="b", bash_command="echo {{ ti.xcom_pull(task_ids='two') }}")

    result = await run_dag(dag, home)
    assert result.state == "success"
    assert result.states() == {"one": "success", "two": "success", "b": "success"}
    assert "hello from one" in result.log("one")
    assert "INFO - 2" in result.log("b")


async def test_an_internal_error_fails_the_task_instead_of_hanging_the_run(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in aflow's own try machinery (simulated: the try runner raises for one task)
    fails that task with the error; its downstream and the run end as the rules say."""
    from aflow.runtime import run_driver

    real_run_try = run_driver.run_try

    async def broken_for_b(job: Any) -> Any:
        if job.task.task_id == "b":
            raise RuntimeError("simulated bug")
        return await real_run_try(job)

    monkeypatch.setattr(run_driver, "run_try", broken_for_b)
    with DAG("internal_error", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        a = PythonOperator(task_id="a", python_callable=lambda: 1)
        b = PythonOperator(task_id="b", python_callable=lambda: 2)
        c_always = PythonOperator(task_id="c_always", python_callable=lambda: 4,
                                  trigger_rule="all_done")
        a >> b >> [PythonOperator(task_id="c", python_callable=lambda: 3), c_always]
    result = await run_dag(dag, home, timeout=30)
    assert result.states() == {
        "a": "success", "b": "failed", "c": "upstream_failed", "c_always": "success",
    }
    assert result.state == "failed"
    assert "aflow internal error: RuntimeError: simulated bug" in (result.tis["b"].error or "")
    assert "simulated bug" in result.log("b")
