"""Branching and short circuits through a real Orchestrator on a real SQLite file (one
scenario on PostgreSQL too), including a run adopted after its branch task ended."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aflow import (
    DAG,
    BranchPythonOperator,
    EmptyOperator,
    Orchestrator,
    PythonOperator,
    ShortCircuitOperator,
    TaskGroup,
    task,
)
from aflow.states import DagRunState, RunType, TaskState
from aflow.store.records import DagRunRecord, TaskInstanceRecord, XComRecord
from aflow.store.sqlite import SqliteStore
from tests.conftest import run_dag

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


def classic(choice: Any, dag_id: str = "classic") -> DAG:
    """branch >> [a, b] >> join (none_failed_min_one_success) and join_all (all_success)."""
    with DAG(dag_id, start_date=START) as dag:
        branch = BranchPythonOperator(task_id="branch", python_callable=lambda: choice)
        a = EmptyOperator(task_id="a")
        b = EmptyOperator(task_id="b")
        join = EmptyOperator(task_id="join", trigger_rule="none_failed_min_one_success")
        join_all = EmptyOperator(task_id="join_all")
        branch >> [a, b] >> join
        [a, b] >> join_all
        join >> EmptyOperator(task_id="after_join")
    return dag


async def test_the_followed_branch_runs_the_other_is_skipped_and_the_join_runs(home: Path) -> None:
    result = await run_dag(classic("a"), home)
    assert result.states() == {
        "branch": "success", "a": "success", "b": "skipped", "join": "success",
        "join_all": "skipped", "after_join": "success",
    }
    assert result.state == "success"
    assert "Following branch ['a']" in result.log("branch")


async def test_a_list_follows_several_and_none_follows_nothing(home: Path, tmp_path: Path) -> None:
    both = await run_dag(classic(["a", "b"]), home)
    assert both.states() == {
        "branch": "success", "a": "success", "b": "success", "join": "success",
        "join_all": "success", "after_join": "success",
    }
    other_home = tmp_path / "none"
    other_home.mkdir()
    nothing = await run_dag(classic(None), other_home)
    assert nothing.states() == {
        "branch": "success", "a": "skipped", "b": "skipped", "join": "skipped",
        "join_all": "skipped", "after_join": "skipped",
    }
    assert nothing.state == "success"


async def test_an_id_that_is_not_directly_downstream_fails_the_branch(home: Path) -> None:
    result = await run_dag(classic("after_join"), home)
    assert result.ti_state("branch") == "failed"
    assert result.ti_state("a") == "upstream_failed"
    assert result.state == "failed"
    error = result.tis["branch"].error or ""
    assert "'after_join', which is not a task (or task group) directly downstream" in error
    assert "its direct downstream tasks: a, b" in error


async def test_a_join_right_after_the_branch_and_after_the_followed_task_is_not_skipped(
    home: Path,
) -> None:
    """Airflow's rule: `branch >> [a, join]`, `a >> join`; following a keeps join."""
    with DAG("empty_branch", start_date=START) as dag:
        branch = BranchPythonOperator(task_id="branch", python_callable=lambda: "a")
        a = EmptyOperator(task_id="a")
        join = EmptyOperator(task_id="join")
        other = EmptyOperator(task_id="other")
        branch >> [a, join, other]
        a >> join
    result = await run_dag(dag, home)
    assert result.states() == {
        "branch": "success", "a": "success", "join": "success", "other": "skipped",
    }


async def test_taskflow_branch_async_and_to_a_task_group(home: Path) -> None:
    calls: list[str] = []
    with DAG("tf_branch", start_date=START) as dag:

        @task.branch
        async def pick(n: int) -> str:
            return "heavy" if n > 10 else "light"

        @task
        def size() -> int:
            return 42

        with TaskGroup("heavy") as heavy:
            first = PythonOperator(task_id="first", python_callable=lambda: calls.append("first"))
            second = PythonOperator(task_id="second", python_callable=lambda: calls.append("second"))
            first >> second
        light = PythonOperator(task_id="light", python_callable=lambda: calls.append("light"))
        pick(size()) >> [heavy, light]
    result = await run_dag(dag, home)
    assert result.states() == {
        "size": "success", "pick": "success", "heavy.first": "success",
        "heavy.second": "success", "light": "skipped",
    }
    assert calls == ["first", "second"]


def short_circuit(condition: Any, ignore: bool, dag_id: str = "sc") -> DAG:
    with DAG(dag_id, start_date=START) as dag:
        check = ShortCircuitOperator(task_id="check", python_callable=lambda: condition,
                                     ignore_downstream_trigger_rules=ignore)
        a = EmptyOperator(task_id="a")
        b_all_done = EmptyOperator(task_id="b_all_done", trigger_rule="all_done")
        c = EmptyOperator(task_id="c")
        check >> a >> b_all_done >> c
        EmptyOperator(task_id="free") >> b_all_done
    return dag


@pytest.mark.parametrize(
    ("condition", "ignore", "expected"),
    [
        (True, True, {"a": "success", "b_all_done": "success", "c": "success"}),
        ([], True, {"a": "skipped", "b_all_done": "skipped", "c": "skipped"}),
        (0, False, {"a": "skipped", "b_all_done": "success", "c": "success"}),
    ],
    ids=["truthy", "falsy-skips-everything-downstream", "falsy-respects-trigger-rules"],
)
async def test_short_circuit(home: Path, condition: Any, ignore: bool, expected: dict[str, str]) -> None:
    result = await run_dag(short_circuit(condition, ignore), home)
    assert result.states() == {"check": "success", "free": "success", **expected}
    assert result.state == "success"


async def test_taskflow_short_circuit(home: Path) -> None:
    with DAG("tf_sc", start_date=START) as dag:

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def is_weekday() -> bool:
            return False

        @task
        def report() -> None:
            raise AssertionError("must not run")

        is_weekday() >> report() >> EmptyOperator(task_id="always_end", trigger_rule="none_failed")
    result = await run_dag(dag, home)
    assert result.states() == {"is_weekday": "success", "report": "skipped", "always_end": "success"}


async def test_a_run_adopted_after_its_branch_ended_follows_the_committed_choice(
    home: Path,
) -> None:
    """The owner died right after committing the branch's end (with its choice XCom) and
    before deciding anything downstream: the process that adopts the run reads the choice
    from the store and skips exactly what the branch chose to skip. Its callable would
    choose otherwise now, and is not called again."""
    calls: list[str] = []

    def choose() -> str:
        calls.append("branch")
        return "b"

    with DAG("adopted", start_date=START) as dag:
        branch = BranchPythonOperator(task_id="branch", python_callable=choose)
        a = EmptyOperator(task_id="a")
        b = EmptyOperator(task_id="b")
        join = EmptyOperator(task_id="join", trigger_rule="none_failed_min_one_success")
        branch >> [a, b] >> join
    now = datetime.now(UTC)
    async with SqliteStore(f"sqlite:///{home / 'aflow.db'}") as dead:
        await dead.create_run(DagRunRecord(
            dag_id="adopted", run_id="orphan", run_type=RunType.MANUAL,
            state=DagRunState.RUNNING, logical_date=now, data_interval_start=now,
            data_interval_end=now, created_at=now, start_date=now,
            owner="host:1:dead", lease_until=now.replace(year=now.year - 1)), [])
        await dead.finish_ti(
            TaskInstanceRecord(dag_id="adopted", run_id="orphan", task_id="branch",
                               try_number=1, max_tries=1, state=TaskState.SUCCESS,
                               start_date=now, end_date=now),
            [XComRecord("adopted", "orphan", "branch", "skipmixin_key", {"followed": ["a"]}),
             XComRecord("adopted", "orphan", "branch", "return_value", "a")],
        )
    async with Orchestrator([dag], home=home) as o:
        final = await (await o.get_run("adopted", "orphan")).wait(timeout=60)
        tis = {t.task_id: t.state.value for t in await o.store.get_tis("adopted", "orphan")}
    assert final.state is DagRunState.SUCCESS
    assert tis == {"branch": "success", "a": "success", "b": "skipped", "join": "success"}
    assert calls == []


async def test_branching_on_postgres(home: Path, pg_schema_url: str) -> None:
    result = await run_dag(classic("b", dag_id="pg_classic"), home, store=pg_schema_url)
    assert result.states() == {
        "branch": "success", "a": "skipped", "b": "success", "join": "success",
        "join_all": "skipped", "after_join": "success",
    }
    sc = await run_dag(short_circuit(None, True, dag_id="pg_sc"), home, store=pg_schema_url)
    assert sc.states() == {
        "check": "success", "free": "success", "a": "skipped", "b_all_done": "skipped",
        "c": "skipped",
    }


async def test_clearing_re_reads_the_choice_and_a_cleared_branch_chooses_again(
    orchestrator_factory: Any,
) -> None:
    """Clearing a skipped task alone: the branch's committed choice skips it again.
    Clearing the branch with its downstream: it runs again and its new choice stands."""
    choice = ["a"]
    with DAG("cleared", start_date=START) as dag:
        branch = BranchPythonOperator(task_id="branch", python_callable=lambda: choice[0])
        a, b = EmptyOperator(task_id="a"), EmptyOperator(task_id="b")
        join = EmptyOperator(task_id="join", trigger_rule="none_failed_min_one_success")
        branch >> [a, b] >> join
    o = await orchestrator_factory([dag])

    async def states(run_id: str) -> dict[str, str]:
        return {t.task_id: t.state.value for t in await o.store.get_tis("cleared", run_id)}

    run = await o.trigger("cleared")
    await run.wait(timeout=60)
    assert (await states(run.run_id))["b"] == "skipped"
    assert await o.clear_tasks("cleared", run.run_id, ["b"]) == ["b"]
    final = await (await o.get_run("cleared", run.run_id)).wait(timeout=60)
    assert final.state is DagRunState.SUCCESS
    assert await states(run.run_id) == {
        "branch": "success", "a": "success", "b": "skipped", "join": "success"}
    choice[0] = "b"
    await o.clear_tasks("cleared", run.run_id, ["branch"], downstream=True)
    final = await (await o.get_run("cleared", run.run_id)).wait(timeout=60)
    assert final.state is DagRunState.SUCCESS
    assert await states(run.run_id) == {
        "branch": "success", "a": "skipped", "b": "success", "join": "success"}


async def test_a_branch_in_a_child_process_to_a_group(home: Path, tmp_path: Path) -> None:
    """run_in="process": the child re-imports the DAG file (groups and all) and its
    choice comes back as the XCom that the driver decides on."""
    import textwrap

    from aflow.runtime.dag_loader import load_file

    path = tmp_path / "proc_branch.py"
    path.write_text(textwrap.dedent("""
        from datetime import UTC, datetime
        from aflow import DAG, BranchPythonOperator, EmptyOperator, TaskGroup

        with DAG("proc_branch", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
            pick = BranchPythonOperator(task_id="pick", python_callable=lambda: "grp",
                                        run_in="process")
            with TaskGroup("grp") as grp:
                EmptyOperator(task_id="x") >> EmptyOperator(task_id="y")
            pick >> [grp, EmptyOperator(task_id="other")]
    """))
    (dag,) = load_file(path)
    result = await run_dag(dag, home)
    assert result.states() == {
        "pick": "success", "grp.x": "success", "grp.y": "success", "other": "skipped",
    }
