"""TaskGroups and setup/teardown tasks run through a real Orchestrator on real SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from aflow import (
    DAG,
    EmptyOperator,
    PythonOperator,
    TaskGroup,
    setup,
    task,
    task_group,
    teardown,
)
from tests.conftest import run_dag

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


def _fail() -> None:
    raise RuntimeError("work broke")


async def test_groups_run_in_dependency_order_with_prefixed_ids(home: Path) -> None:
    order: list[str] = []

    def step(name: str) -> PythonOperator:
        return PythonOperator(task_id=name, python_callable=lambda: order.append(name))

    with DAG("groups", start_date=START, default_args={"retries": 0}) as dag:
        start = step("start")
        with TaskGroup("extract", default_args={"retries": 2}) as extract:
            a = step("a")
            step("b")
            with TaskGroup("inner") as inner:
                step("c")
            a >> inner
        end = step("end")
        start >> extract >> end

    assert extract.leaves and {t.task_id for t in extract.roots} == {"extract.a", "extract.b"}
    assert dag.task_dict["extract.inner.c"].retries == 2
    assert dag.task_dict["end"].retries == 0
    result = await run_dag(dag, home)
    assert result.state == "success"
    assert set(result.states()) == {"start", "extract.a", "extract.b", "extract.inner.c", "end"}
    assert order[0] == "start" and order[-1] == "end"
    assert order.index("a") < order.index("c")
    assert "extract.inner.c" in result.tis and result.log("extract.inner.c") is not None


async def test_task_group_decorator_called_twice(home: Path) -> None:
    with DAG("tg_deco", start_date=START) as dag:

        @task
        def load(x: int) -> int:
            return x * 2

        @task_group
        def process(x: int):  # noqa: ANN202 - returns the XComArg of its last task
            return load(load(x))

        @task
        def total(a: int, b: int) -> None:
            print(f"total={a + b}")

        total(process(1), process(10))
    result = await run_dag(dag, home)
    assert result.states() == {
        "process.load": "success", "process.load__1": "success",
        "process__1.load": "success", "process__1.load__1": "success", "total": "success",
    }
    assert "total=44" in result.log("total")  # (1*2*2) + (10*2*2)


async def test_teardown_runs_when_the_work_fails_and_the_run_fails_on_the_work(home: Path) -> None:
    with DAG("st_fail", start_date=START) as dag:
        create = PythonOperator(task_id="create", python_callable=lambda: "cluster").as_setup()
        work = PythonOperator(task_id="work", python_callable=_fail)
        after = EmptyOperator(task_id="after_work")
        delete = PythonOperator(task_id="delete", python_callable=lambda: None).as_teardown(
            setups=create)
        create >> work >> after >> delete
    result = await run_dag(dag, home)
    assert result.states() == {
        "create": "success", "work": "failed", "after_work": "upstream_failed",
        "delete": "success",
    }
    assert result.state == "failed"  # after_work (upstream_failed) decides, not the teardown


async def test_a_failing_teardown_does_not_fail_the_run_unless_asked(home: Path, tmp_path: Path) -> None:
    def dag_of(fail_run: bool) -> DAG:
        with DAG(f"st_td_{fail_run}", start_date=START) as dag:

            @setup
            def create() -> str:
                return "cluster"

            @teardown(on_failure_fail_dagrun=fail_run)
            def delete(name: str) -> None:
                raise RuntimeError(f"cannot delete {name}")

            @task
            def work() -> int:
                return 1

            made = create()
            made >> work() >> delete(made)
        return dag

    quiet = await run_dag(dag_of(False), home)
    assert quiet.states() == {"create": "success", "work": "success", "delete": "failed"}
    assert quiet.state == "success"
    other = tmp_path / "loud"
    other.mkdir()
    loud = await run_dag(dag_of(True), other)
    assert loud.ti_state("delete") == "failed"
    assert loud.state == "failed"


async def test_s_work_t_chain_teardown_depends_on_its_setup(home: Path, tmp_path: Path) -> None:
    """`s >> work >> t` with no direct link: the teardown runs after a failed work if its
    setup succeeded, and does not run (upstream_failed) when its setup failed."""

    def dag_of(setup_ok: bool) -> DAG:
        with DAG(f"chain_{setup_ok}", start_date=START) as dag:
            s = PythonOperator(task_id="s", python_callable=(lambda: 1) if setup_ok else _fail)
            s.as_setup()
            work = PythonOperator(task_id="work", python_callable=_fail)
            t = EmptyOperator(task_id="t").as_teardown()
            s >> work >> t
        return dag

    ok = await run_dag(dag_of(True), home)
    assert ok.states() == {"s": "success", "work": "failed", "t": "success"}
    assert ok.state == "failed"
    other = tmp_path / "broken_setup"
    other.mkdir()
    broken = await run_dag(dag_of(False), other)
    assert broken.states() == {"s": "failed", "work": "upstream_failed", "t": "upstream_failed"}
    assert broken.state == "failed"


async def test_setup_teardown_inside_a_group(home: Path) -> None:
    with DAG("st_group", start_date=START) as dag:
        with TaskGroup("cluster") as cluster:
            up = EmptyOperator(task_id="up").as_setup()
            job = PythonOperator(task_id="job", python_callable=_fail)
            down = EmptyOperator(task_id="down").as_teardown(setups=up)
            up >> job >> down
        cluster >> EmptyOperator(task_id="report", trigger_rule="all_done")
    result = await run_dag(dag, home)
    assert result.states() == {
        "cluster.up": "success", "cluster.job": "failed", "cluster.down": "success",
        "report": "success",
    }
    assert result.state == "success"  # report (all_done) is the only leaf that counts


async def test_a_short_circuit_or_branch_never_skips_a_teardown(home: Path) -> None:
    from aflow import BranchPythonOperator, ShortCircuitOperator

    with DAG("st_skips", start_date=START) as dag:
        s = EmptyOperator(task_id="s").as_setup()
        stop = ShortCircuitOperator(task_id="stop", python_callable=lambda: False)
        work = EmptyOperator(task_id="work")
        t = EmptyOperator(task_id="t").as_teardown(setups=s)
        s >> stop >> work >> t
        pick = BranchPythonOperator(task_id="pick", python_callable=lambda: None)
        s >> pick >> [EmptyOperator(task_id="left"), t]
    result = await run_dag(dag, home)
    assert result.states() == {
        "s": "success", "stop": "success", "work": "skipped", "pick": "success",
        "left": "skipped", "t": "success",
    }
    assert result.state == "success"
