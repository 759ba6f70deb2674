"""Dynamic task mapping end to end: real Orchestrator, real SQLite files (and PostgreSQL),
real bash subprocesses and child processes.

A mapped task becomes one instance per element when its run decides it; each instance is
retried on its own; the task after it gets the list of their values; a clear expands it
afresh; a restart goes on with the instances that have not ended.
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, AflowError, BashOperator, Orchestrator, PythonOperator, task
from aflow.exceptions import DagDefinitionError
from aflow.store.records import TaskInstanceRecord

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


def instances(tis: list[TaskInstanceRecord], task_id: str) -> list[TaskInstanceRecord]:
    return sorted((t for t in tis if t.task_id == task_id and t.map_index >= 0),
                  key=lambda t: t.map_index)


async def run_once(dags: Any, home: Path, dag_id: str, **kwargs: Any) -> tuple[Any, list[TaskInstanceRecord], dict[str, Any]]:
    """Trigger one run; (final run, its TI rows, XCom return values by (task, map index))."""
    dags = dags if isinstance(dags, list) else [dags]
    async with Orchestrator(dags, home=home, schedule=False, **kwargs) as o:
        handle = await o.trigger(dag_id)
        final = await handle.wait(timeout=120)
        rows = await o.store.get_tis(dag_id, final.run_id)
        xcoms = {(x.task_id, x.map_index): x.value for x in await o.store.get_xcoms(dag_id, final.run_id)
                 if x.key == "return_value"}
    return final, rows, xcoms


# -- TaskFlow over an upstream XCom, 10,000 elements, then a reduce ------------------------------
async def test_ten_thousand_instances_and_a_reduce(home: Path) -> None:
    with DAG("map10k", start_date=START) as dag:

        @task
        def numbers() -> list[int]:
            return list(range(10_000))

        @task
        async def add(x: int, y: int) -> int:
            return x + y

        @task
        def total(values: list[int]) -> dict[str, int]:
            return {"n": len(values), "sum": sum(values), "first": values[0], "last": values[-1]}

        total(add.partial(y=1000).expand(x=numbers()))

    final, rows, xcoms = await run_once(dag, home, "map10k")
    assert final.state.value == "success"
    mapped = instances(rows, "add")
    assert [t.map_index for t in mapped] == list(range(10_000))
    assert {t.state.value for t in mapped} == {"success"}
    assert {t.try_number for t in mapped} == {1}
    # the instances stand for the task: its -1 row says so
    assert [t.state.value for t in rows if t.task_id == "add" and t.map_index == -1] == ["removed"]
    assert {t.operator for t in mapped} == {"_PythonDecoratedOperator"}
    assert xcoms[("add", 1234)] == 2234
    assert xcoms[("total", -1)] == {
        "n": 10_000, "sum": sum(range(10_000)) + 10_000 * 1000, "first": 1000, "last": 10_999,
    }


# -- literal lists: classic operators, a cross product, expand_kwargs ------------------------------
async def test_literal_lists_cross_product_and_expand_kwargs(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    seen: list[Any] = []
    with DAG("literal", start_date=START) as dag:
        echo = BashOperator.partial(task_id="echo", retries=0).expand(
            bash_command=[f"echo {i} > {out}/{i}.txt; echo {i}" for i in range(3)]
        )

        @task
        def mul(x: int, y: int) -> int:
            return x * y

        grid = mul.expand(x=[1, 2], y=[10, 20, 30])

        @task
        def pairs() -> list[dict[str, int]]:
            return [{"x": 3, "y": 4}, {"x": 5, "y": 6}]

        from_xcom = mul.expand_kwargs(pairs())
        from_list = PythonOperator.partial(task_id="greet", python_callable=lambda who: f"hi {who}").expand_kwargs(
            [{"op_kwargs": {"who": "ann"}}, {"op_kwargs": {"who": "bob"}}]
        )

        @task
        def collect(a: list[int], b: list[int], c: list[str], d: list[str]) -> None:
            seen.extend([a, b, c, d])

        collect(grid, from_xcom, from_list.output, echo.output)

    final, rows, _ = await run_once(dag, home, "literal")
    assert final.state.value == "success"
    assert sorted(p.name for p in out.iterdir()) == ["0.txt", "1.txt", "2.txt"]
    # the last expanded argument varies fastest, as in Airflow
    assert seen == [[10, 20, 30, 20, 40, 60], [12, 30], ["hi ann", "hi bob"], ["0", "1", "2"]]
    assert len(instances(rows, "mul")) == 6 and len(instances(rows, "echo")) == 3
    assert {t.operator for t in instances(rows, "echo")} == {"BashOperator"}


# -- each instance retries on its own ---------------------------------------------------------------
async def test_each_instance_is_retried_independently(home: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    def flaky(x: int) -> int:
        mark = marks / f"{x}.tried"
        if x == 3 and not mark.exists():
            mark.write_text("once")
            raise RuntimeError(f"instance {x} fails its first try")
        return x

    with DAG("retry_each", start_date=START) as dag:
        m = PythonOperator.partial(task_id="m", python_callable=flaky, retries=1, retry_delay=0).expand(
            op_args=[[i] for i in range(6)]
        )

        @task
        def total(values: list[int]) -> int:
            return sum(values)

        total(m.output)

    final, rows, xcoms = await run_once(dag, home, "retry_each")
    assert final.state.value == "success"
    tries = {t.map_index: t.try_number for t in instances(rows, "m")}
    assert tries == {0: 1, 1: 1, 2: 1, 3: 2, 4: 1, 5: 1}
    assert xcoms[("total", -1)] == 15
    log = home / "logs" / "dag_id=retry_each"
    first_try = next(log.rglob("task_id=m/map_index=3/attempt=1.log")).read_text()
    assert "instance 3 fails its first try" in first_try


async def test_a_failed_instance_fails_the_reduce_but_not_its_siblings(home: Path) -> None:
    def maybe(x: int) -> int:
        if x == 2:
            raise ValueError("two is bad")
        return x

    with DAG("one_fails", start_date=START) as dag:
        m = PythonOperator.partial(task_id="m", python_callable=maybe).expand(op_args=[[0], [1], [2], [3]])
        reduce = PythonOperator(task_id="reduce", python_callable=lambda: None)
        always = PythonOperator(task_id="always", python_callable=lambda: None, trigger_rule="all_done")
        m >> [reduce, always]

    final, rows, _ = await run_once(dag, home, "one_fails")
    assert final.state.value == "failed"
    assert {t.map_index: t.state.value for t in instances(rows, "m")} == {
        0: "success", 1: "success", 2: "failed", 3: "success"}
    states = {t.task_id: t.state.value for t in rows if t.map_index == -1}
    assert states["reduce"] == "upstream_failed" and states["always"] == "success"


# -- nothing to map over; something that cannot be mapped over ------------------------------------
async def test_an_empty_input_skips_the_task_and_what_needs_it(home: Path) -> None:
    with DAG("empty_map", start_date=START) as dag:

        @task
        def nothing() -> list[int]:
            return []

        @task
        def each(x: int) -> int:
            return x

        @task
        def total(values: list[int]) -> int:
            return sum(values)

        total(each.expand(x=nothing()))

    final, rows, _ = await run_once(dag, home, "empty_map")
    assert final.state.value == "success"
    states = {(t.task_id, t.map_index): t.state.value for t in rows}
    assert states[("each", -1)] == "skipped" and states[("total", -1)] == "skipped"
    assert not instances(rows, "each")


async def test_an_input_that_is_not_a_list_fails_the_task_naming_it(home: Path) -> None:
    with DAG("bad_map", start_date=START) as dag:

        @task
        def scalar() -> int:
            return 42

        @task
        def each(x: int) -> int:
            return x

        each.expand(x=scalar())

    final, rows, _ = await run_once(dag, home, "bad_map")
    assert final.state.value == "failed"
    row = next(t for t in rows if t.task_id == "each")
    assert row.state.value == "failed" and row.map_index == -1
    assert row.error == "task 'each' cannot map over argument 'x': it is int, not a list or a dict"


async def test_an_instance_whose_arguments_the_operator_refuses_fails_alone(home: Path) -> None:
    with DAG("bad_arg", start_date=START) as dag:
        PythonOperator.partial(task_id="m", python_callable=lambda: 1).expand(
            execution_timeout=[30, "soon"]  # the second instance's constructor refuses it
        )

    final, rows, _ = await run_once(dag, home, "bad_arg")
    by_index = {t.map_index: t for t in instances(rows, "m")}
    assert by_index[0].state.value == "success"
    assert by_index[1].state.value == "failed"
    assert "cannot build map index 1 of task 'm'" in (by_index[1].error or "")
    assert "could not convert string to float: 'soon'" in (by_index[1].error or "")
    assert final.state.value == "failed"


# -- XComs of a mapped task as other tasks see them ---------------------------------------------
async def test_xcom_pull_of_a_mapped_task_gives_the_list_or_one_instance(home: Path) -> None:
    pulled: dict[str, Any] = {}
    with DAG("pulls", start_date=START) as dag:

        @task
        def sq(x: int) -> int | None:
            return None if x == 1 else x * x  # instance 1 pushes nothing

        mapped = sq.expand(x=[0, 1, 2, 3])

        @task
        def look(ti: Any = None) -> None:
            pulled["all"] = ti.xcom_pull(task_ids="sq")
            pulled["one"] = ti.xcom_pull(task_ids="sq", map_indexes=2)
            pulled["listed"] = ti.xcom_pull(task_ids=["sq"])

        mapped >> look()

    final, _, _ = await run_once(dag, home, "pulls")
    assert final.state.value == "success"
    assert pulled == {"all": [0, 4, 9], "one": 4, "listed": [[0, 4, 9]]}


# -- clears and restarts -----------------------------------------------------------------------------
def _sized_dag(size_file: Path, runs: Path) -> DAG:
    with DAG("sized", start_date=START) as dag:

        @task
        def sizes() -> list[int]:
            return list(range(int(size_file.read_text())))

        @task
        def each(x: int) -> int:
            with (runs / f"{x}").open("a") as f:
                f.write("ran\n")
            return x

        @task
        def total(values: list[int]) -> int:
            return len(values)

        total(each.expand(x=sizes()))
    return dag


async def test_clearing_a_mapped_task_expands_it_afresh(home: Path, tmp_path: Path) -> None:
    size_file, runs = tmp_path / "size", tmp_path / "runs"
    runs.mkdir()
    size_file.write_text("5")
    dag = _sized_dag(size_file, runs)
    async with Orchestrator([dag], home=home, schedule=False) as o:
        handle = await o.trigger("sized")
        first = await handle.wait(timeout=60)
        assert first.state.value == "success"
        size_file.write_text("3")
        cleared = await o.clear_tasks("sized", first.run_id, ["sizes"], downstream=True)
        assert cleared == ["sizes", "each", "total"]
        again = await handle.wait(timeout=60)
        rows = await o.store.get_tis("sized", first.run_id)
        xcoms = {(x.task_id, x.map_index): x.value for x in await o.store.get_xcoms("sized", first.run_id)}
    assert again.state.value == "success"
    states = {t.map_index: t.state.value for t in rows if t.task_id == "each"}
    assert states == {-1: "removed", 0: "success", 1: "success", 2: "success", 3: "removed", 4: "removed"}
    assert xcoms[("total", -1)] == 3
    assert not [k for k in xcoms if k[0] == "each" and k[1] >= 3]  # the old instances' XComs went
    assert [(runs / str(i)).read_text().count("ran") for i in range(5)] == [2, 2, 2, 1, 1]


async def test_marking_a_mapped_task_is_refused_clearly(home: Path, tmp_path: Path) -> None:
    size_file, runs = tmp_path / "size", tmp_path / "runs"
    runs.mkdir()
    size_file.write_text("2")
    async with Orchestrator([_sized_dag(size_file, runs)], home=home, schedule=False) as o:
        run = await (await o.trigger("sized")).wait(timeout=60)
        with pytest.raises(AflowError, match="'each' of DAG 'sized' is mapped"):
            await o.mark_task("sized", run.run_id, "each", "failed")
        rows = await o.store.get_tis("sized", run.run_id)
        assert {t.state.value for t in rows if t.map_index >= 0} == {"success"}


async def test_a_restart_goes_on_with_the_instances_that_have_not_ended(home: Path, tmp_path: Path) -> None:
    """Shutdown interrupts instances mid-try; a new Orchestrator adopts the run and runs
    only those that had not ended, and the reduce sees every value."""
    gate, ran = tmp_path / "gate", tmp_path / "ran"
    ran.mkdir()

    def build() -> DAG:
        with DAG("restart_map", start_date=START, max_active_tasks=4) as dag:

            @task
            async def each(x: int) -> int:
                (ran / f"{x}.{len(list(ran.glob(f'{x}.*')))}").write_text("")
                if x >= 4 and not gate.exists():
                    await anyio.sleep_forever()  # until the shutdown interrupts the try
                return x

            @task
            def total(values: list[int]) -> list[int]:
                return values

            total(each.expand(x=list(range(8))))
        return dag

    async with Orchestrator([build()], home=home, schedule=False, shutdown_grace_s=0.2) as o:
        handle = await o.trigger("restart_map")
        with anyio.fail_after(30):
            while len(list(ran.iterdir())) < 8:  # noqa: ASYNC110 - 0-3 done, 4-7 started and waiting
                await anyio.sleep(0.02)
        run_id = handle.run_id
    gate.write_text("open")
    async with Orchestrator([build()], home=home, schedule=False) as o:
        with anyio.fail_after(60):
            final = await o.wait_for_run("restart_map", run_id)
        xcoms = {(x.task_id, x.map_index): x.value for x in await o.store.get_xcoms("restart_map", run_id)}
    assert final.state.value == "success"
    assert xcoms[("total", -1)] == list(range(8))
    started = sorted(p.name for p in ran.iterdir())
    assert [s for s in started if s.endswith(".1")] == ["4.1", "5.1", "6.1", "7.1"]  # only those again
    assert len(started) == 12


# -- mapped instances in a child process (run_in="process") ---------------------------------------
async def test_instances_run_in_child_processes(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "proc_map.py").write_text(textwrap.dedent('''
        import os
        from datetime import UTC, datetime
        from aflow import DAG, task

        with DAG("proc_map", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
            @task
            def base() -> list[int]:
                return [1, 2, 3]

            @task(run_in="process")
            def where(x: int, scale: int) -> list[int]:
                return [x * scale, os.getpid()]

            @task
            def total(values: list) -> list:
                return values

            total(where.partial(scale=10).expand(x=base()))
    '''))
    async with Orchestrator(folder, home=home, schedule=False) as o:
        run = await (await o.trigger("proc_map")).wait(timeout=60)
        xcoms = {(x.task_id, x.map_index): x.value for x in await o.store.get_xcoms("proc_map", run.run_id)}
    assert run.state.value == "success"
    values = xcoms[("total", -1)]
    assert [v[0] for v in values] == [10, 20, 30]
    import os

    assert os.getpid() not in {v[1] for v in values}


# -- PostgreSQL ------------------------------------------------------------------------------------
@pytest.mark.postgres
async def test_mapping_on_postgres(home: Path, pg_schema_url: str) -> None:
    with DAG("pg_map", start_date=START) as dag:

        @task
        def numbers() -> list[int]:
            return list(range(2_000))

        @task
        async def double(x: int) -> int:
            return 2 * x

        @task
        def total(values: list[int]) -> int:
            return sum(values)

        total(double.expand(x=numbers()))

    final, rows, xcoms = await run_once(dag, home, "pg_map", store=pg_schema_url)
    assert final.state.value == "success"
    assert len(instances(rows, "double")) == 2_000
    assert xcoms[("total", -1)] == 2 * sum(range(2_000))


# -- definition errors -----------------------------------------------------------------------------
def test_definition_errors_name_the_task_and_the_argument() -> None:
    with DAG("defs", start_date=START):

        @task
        def f(x: int) -> int:
            return x

        with pytest.raises(DagDefinitionError, match="task 'f': expand\\(x=...\\) needs a list"):
            f.expand(x=5)
        with pytest.raises(DagDefinitionError, match="task 'f': bad arguments"):
            f.expand(nope=[1])
        with pytest.raises(DagDefinitionError, match="'x' is given both to partial\\(\\) and to expand"):
            f.partial(x=1).expand(x=[2])
        with pytest.raises(DagDefinitionError, match="needs a task_id"):
            BashOperator.partial().expand(bash_command=["echo"])
        with pytest.raises(DagDefinitionError, match="BashOperator has no argument 'command'"):
            BashOperator.partial(task_id="b").expand(command=["echo"])
        with pytest.raises(DagDefinitionError, match="task_id cannot be mapped"):
            BashOperator.partial(task_id="c", bash_command="echo").expand(task_id=["x"])
        with pytest.raises(DagDefinitionError, match="expand_kwargs element 1 is int"):
            BashOperator.partial(task_id="d").expand_kwargs([{"bash_command": "echo"}, 3])


async def test_partial_arguments_from_xcom_and_templates_reach_every_instance(home: Path) -> None:
    with DAG("partial_refs", start_date=START) as dag:

        @task
        def src() -> list[int]:
            return [1, 2, 3]

        @task
        def offset() -> int:
            return 100

        @task
        def each(x: int, y: int, label: str) -> str:
            return f"{label}:{x + y}"

        @task
        def collect(values: list[str]) -> list[str]:
            return values

        collect(each.partial(y=offset(), label="{{ dag.dag_id }}").expand(x=src()))

    final, _, xcoms = await run_once(dag, home, "partial_refs")
    assert final.state.value == "success"
    assert xcoms[("collect", -1)] == ["partial_refs:101", "partial_refs:102", "partial_refs:103"]


def test_the_dag_structure_shows_the_mapped_task_once() -> None:
    with DAG("shape", start_date=START) as dag:

        @task
        def src() -> list[int]:
            return [1]

        @task
        def each(x: int, y: int) -> int:
            return x

        @task
        def extra() -> int:
            return 2

        each.partial(y=extra()).expand(x=src())
    assert dag.task_dict["each"].upstream_task_ids == {"src", "extra"}
    assert dag.task_dict["each"].is_mapped and not dag.task_dict["src"].is_mapped
    assert json.dumps(sorted(dag.task_ids)) == '["each", "extra", "src"]'
    shown = {t["task_id"]: t for t in dag.structure()["tasks"]}
    assert shown["each"]["operator"] == "_PythonDecoratedOperator" and shown["each"]["mapped"]
    assert "mapped" not in shown["src"]


# -- what a mapped task keeps of its own: pool, weight, defaults; what cannot be mapped ----------
async def test_a_cleared_mapped_task_keeps_its_pool_and_weight(home: Path, tmp_path: Path) -> None:
    size_file, runs = tmp_path / "size", tmp_path / "runs"
    runs.mkdir()
    size_file.write_text("3")
    with DAG("pooled", start_date=START) as dag:

        @task
        def sizes() -> list[int]:
            return list(range(int(size_file.read_text())))

        @task(pool="small", priority_weight=7)
        def each(x: int) -> int:
            return x

        each.expand(x=sizes())
    async with Orchestrator([dag], home=home, schedule=False, pools={"small": 2}) as o:
        handle = await o.trigger("pooled")
        first = await handle.wait(timeout=60)
        await o.clear_tasks("pooled", first.run_id, ["each"])  # the run ended: the store path
        again = await handle.wait(timeout=60)
        rows = instances(await o.store.get_tis("pooled", first.run_id), "each")
    assert again.state.value == "success"
    assert {(r.pool, r.priority_weight, r.operator, r.try_number) for r in rows} == {
        ("small", 7, "_PythonDecoratedOperator", 2)}  # the second try of each instance


async def test_default_args_of_partial_and_of_a_task_group_reach_the_instances(home: Path) -> None:
    from aflow import TaskGroup

    seen: dict[int, Any] = {}

    def record(x: int, ti: Any = None) -> int:
        seen[x] = ti.max_tries
        return x

    with DAG("defaults", start_date=START, default_args={"retries": 0}) as dag:
        with TaskGroup("g", default_args={"execution_timeout": 5}):
            grouped = PythonOperator.partial(task_id="m", python_callable=record).expand(
                op_args=[[1], [2]])
        partial_defaults = PythonOperator.partial(
            task_id="p", python_callable=record, default_args={"retries": 3},
        ).expand(op_args=[[3]])
    assert grouped.task_id == "g.m"
    built = grouped.unmap(0, grouped.resolve_input(__import__("aflow.runtime.xcom").runtime.xcom.XComView()))
    assert built.execution_timeout is not None and built.execution_timeout.total_seconds() == 5
    final, rows, _ = await run_once(dag, home, "defaults")
    assert final.state.value == "success"
    assert {r.max_tries for r in instances(rows, "p")} == {3}
    assert partial_defaults.retries == 3


def test_branches_short_circuits_and_engine_arguments_cannot_be_mapped() -> None:
    from aflow import BranchPythonOperator, ShortCircuitOperator

    with DAG("refused", start_date=START):

        @task.branch
        def pick(x: int) -> str:
            return "a"

        with pytest.raises(DagDefinitionError, match="branch or short-circuit task .* cannot be mapped"):
            pick.expand(x=[1, 2])
        with pytest.raises(DagDefinitionError, match="cannot be mapped"):
            BranchPythonOperator.partial(task_id="b", python_callable=lambda: "a").expand(
                op_args=[[1]])
        with pytest.raises(DagDefinitionError, match="cannot be mapped"):
            ShortCircuitOperator.partial(task_id="s", python_callable=lambda: True).expand(
                op_args=[[1]])
        with pytest.raises(DagDefinitionError, match="pool cannot be mapped"):
            BashOperator.partial(task_id="c", bash_command="echo").expand(pool=["a", "b"])
        with pytest.raises(DagDefinitionError, match="retries cannot be mapped"):
            BashOperator.partial(task_id="d", bash_command="echo").expand(retries=[1, 2])


def test_an_index_beyond_the_input_is_refused() -> None:
    from aflow.authoring.mapped import ExpandError, ResolvedInput

    resolved = ResolvedInput(("x", "y"), ([1, 2], ["a", "b", "c"]), 6)
    assert [resolved.at(i) for i in (0, 2, 3, 5)] == [
        {"x": 1, "y": "a"}, {"x": 1, "y": "c"}, {"x": 2, "y": "a"}, {"x": 2, "y": "c"}]
    with pytest.raises(ExpandError, match="map index 6 is out of range: the input has 6"):
        resolved.at(6)


# -- setups and sensors around mapped tasks --------------------------------------------------------
async def test_a_teardown_runs_if_one_instance_of_its_mapped_setup_succeeded(home: Path) -> None:
    from aflow import setup, teardown

    with DAG("mapped_setup", start_date=START) as dag:

        @setup
        def make(x: int) -> int:
            if x == 1:
                raise ValueError("this one could not be made")
            return x

        @task
        def work() -> None:
            raise RuntimeError("the work fails")

        @teardown
        def cleanup() -> None:
            return None

        made = make.expand(x=[0, 1, 2])
        made >> work() >> cleanup()
        made >> dag.task_dict["cleanup"]

    final, rows, _ = await run_once(dag, home, "mapped_setup")
    states = {(t.task_id, t.map_index): t.state.value for t in rows}
    assert states[("make", 1)] == "failed" and states[("make", 0)] == "success"
    assert states[("cleanup", -1)] == "success"
    assert final.state.value == "failed"


@pytest.mark.parametrize("deferrable", [False, True])
async def test_an_external_task_sensor_waits_for_every_instance(home: Path, deferrable: bool) -> None:
    from aflow import ExternalTaskSensor

    gate = anyio.Event()
    with DAG("upstream_dag", start_date=START, schedule="@daily") as upstream:

        @task
        async def each(x: int) -> int:
            if x == 2:
                await gate.wait()
            return x

        each.expand(x=[0, 1, 2])
    with DAG("downstream_dag", start_date=START, schedule="@daily") as downstream:
        ExternalTaskSensor(task_id="wait", external_dag_id="upstream_dag", external_task_id="each",
                           deferrable=deferrable, poke_interval=0.05, mode="poke", timeout=60)
    logical = datetime(2024, 3, 1, tzinfo=UTC)
    async with Orchestrator([upstream, downstream], home=home, schedule=False) as o:
        up = await o.trigger("upstream_dag", logical_date=logical)
        down = await o.trigger("downstream_dag", logical_date=logical)
        with anyio.fail_after(30):
            while True:  # two instances end, the third waits on the gate
                rows = instances(await o.store.get_tis("upstream_dag", up.run_id), "each")
                if sum(r.state.value == "success" for r in rows) == 2:
                    break
                await anyio.sleep(0.05)
        await anyio.sleep(0.5)  # (the sensor has poked, or its trigger polled, meanwhile)
        sensor = [t for t in await o.store.get_tis("downstream_dag", down.run_id) if t.task_id == "wait"]
        assert not sensor or sensor[0].state.value != "success"
        gate.set()
        assert (await down.wait(timeout=60)).state.value == "success"
        assert (await up.wait(timeout=60)).state.value == "success"
