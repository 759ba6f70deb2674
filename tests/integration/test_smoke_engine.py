from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from aflow import DAG, BashOperator, task
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
