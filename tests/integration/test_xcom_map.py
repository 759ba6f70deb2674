"""`XComArg.map(fn)` and `.zip(...)` in real runs: a real Orchestrator on a real SQLite
file (and a child process for `run_in="process"`). The mapped task expands over the
upstream's length; each element goes through `fn` as its instance is built, so an error
in `fn` fails that one instance, with its traceback in that instance's log."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from aflow import DAG, BashOperator, Orchestrator, PythonOperator, task
from aflow.exceptions import SkipTask
from tests.integration.test_mapping import START, instances, run_once

pytestmark = pytest.mark.anyio


async def test_map_and_zip_feed_mapped_tasks_and_a_reduce(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with DAG("map_zip", start_date=START) as dag:

        @task
        def cities() -> list[str]:
            return ["oslo", "lima", "pune"]

        @task
        def temps() -> dict[str, int]:
            return {"oslo": 4, "lima": 19}

        @task
        def describe(place: str, unit: str) -> str:
            return f"{place} in {unit}"

        @task
        def pair(both: list[Any]) -> str:
            city, (name, temp) = both
            return f"{city}/{name}={temp}"

        @task
        def total(described: list[str], paired: list[str], filled: list[Any]) -> dict[str, Any]:
            return {"described": described, "paired": paired, "filled": filled}

        @task
        def keep(x: Any) -> Any:
            return x

        c, t = cities(), temps()
        described = describe.expand(place=c.map(str.title).map(lambda s: s + "!"), unit=["C", "F"])
        paired = pair.expand(both=c.zip(t))  # the shortest: 2
        filled = keep.expand(x=c.zip(t.map(lambda kv: kv[1]), fillvalue=None))
        total(described, paired, filled)
        echo = BashOperator.partial(task_id="echo").expand(
            bash_command=c.map(lambda city: f"echo {city} > {out}/{city}.txt"))
        as_kwargs = describe.expand_kwargs(c.zip(["K", "R"]).map(lambda z: {"place": z[0], "unit": z[1]}))

    assert dag.task_dict["total"].upstream_task_ids == {"describe", "pair", "keep"}
    assert echo.upstream_task_ids == {"cities"}
    assert as_kwargs.operator.upstream_task_ids == {"cities"}
    final, rows, xcoms = await run_once(dag, home, "map_zip")
    assert final.state.value == "success"
    assert xcoms[("total", -1)] == {
        "described": ["Oslo! in C", "Oslo! in F", "Lima! in C", "Lima! in F", "Pune! in C",
                      "Pune! in F"],
        "paired": ["oslo/oslo=4", "lima/lima=19"],
        "filled": [["oslo", 4], ["lima", 19], ["pune", None]],
    }
    assert [len(instances(rows, t)) for t in ("describe", "pair", "keep", "echo", "describe__1")] == [
        6, 2, 3, 3, 2]
    assert sorted(p.name for p in out.iterdir()) == ["lima.txt", "oslo.txt", "pune.txt"]
    assert [xcoms[("describe__1", i)] for i in range(2)] == ["oslo in K", "lima in R"]


async def test_an_error_in_the_map_function_fails_only_its_instance(home: Path) -> None:
    def parse(text: str) -> int:
        if text == "x":
            raise ValueError(f"{text!r} is not a number")
        return int(text)

    with DAG("map_fails", start_date=START) as dag:

        @task
        def raw() -> list[str]:
            return ["1", "2", "x", "4"]

        @task
        def square(n: int) -> int:
            return n * n

        @task
        def total(values: list[int]) -> int:
            return sum(values)

        squares = square.expand(n=raw().map(parse))
        total(squares)
        done = PythonOperator(task_id="done", python_callable=lambda: None, trigger_rule="all_done")
        squares >> done

    final, rows, xcoms = await run_once(dag, home, "map_fails")
    assert final.state.value == "failed"
    by_index = {t.map_index: t for t in instances(rows, "square")}
    assert {i: t.state.value for i, t in by_index.items()} == {
        0: "success", 1: "success", 2: "failed", 3: "success"}
    assert [xcoms[("square", i)] for i in (0, 1, 3)] == [1, 4, 16]
    assert by_index[2].error == (
        "cannot build map index 2 of task 'square': ValueError: 'x' is not a number")
    assert by_index[2].try_number == 1
    states = {t.task_id: t.state.value for t in rows if t.map_index == -1}
    assert states["total"] == "upstream_failed" and states["done"] == "success"
    log = next((home / "logs" / "dag_id=map_fails").rglob("task_id=square/map_index=2/attempt=1.log"))
    text = log.read_text()
    assert "ERROR - cannot build map index 2 of task 'square'" in text
    assert "Traceback (most recent call last)" in text
    assert 'in parse\n    raise ValueError(f"{text!r} is not a number")' in text
    assert not list((home / "logs" / "dag_id=map_fails").rglob("task_id=square/map_index=1/*.log"))


async def test_skip_task_raised_in_the_map_function_skips_only_its_instance(home: Path) -> None:
    """As AirflowSkipException in Airflow's map callable: that instance is skipped, the run
    goes on, and a reduce over the list sees the others."""

    def keep_even(n: int) -> int:
        if n % 2:
            raise SkipTask(f"{n} is odd")
        return n

    with DAG("map_skips", start_date=START) as dag:

        @task
        def numbers() -> list[int]:
            return [2, 3, 4]

        @task
        def half(n: int) -> int:
            return n // 2

        @task(trigger_rule="none_failed")
        def total(values: list[Any]) -> int:
            return sum(v for v in values if v is not None)

        total(half.expand(n=numbers().map(keep_even)))

    final, rows, xcoms = await run_once(dag, home, "map_skips")
    assert final.state.value == "success"
    assert {t.map_index: t.state.value for t in instances(rows, "half")} == {
        0: "success", 1: "skipped", 2: "success"}
    skipped = next(t for t in instances(rows, "half") if t.map_index == 1)
    assert skipped.error is None
    assert xcoms[("total", -1)] == 3
    log = next((home / "logs" / "dag_id=map_skips").rglob("task_id=half/map_index=1/attempt=1.log"))
    assert "INFO - map index 1 of task 'half' skipped as it was built: 3 is odd" in log.read_text()


async def test_an_upstream_value_that_cannot_be_mapped_fails_the_task_naming_it(home: Path) -> None:
    with DAG("zip_bad", start_date=START) as dag:

        @task
        def names() -> list[str]:
            return ["a"]

        @task
        def count() -> int:
            return 3

        @task
        def each(x: Any) -> Any:
            return x

        each.expand(x=names().zip(count().map(str)))

    final, rows, _ = await run_once(dag, home, "zip_bad")
    assert final.state.value == "failed"
    row = next(t for t in rows if t.task_id == "each")
    assert row.map_index == -1 and row.state.value == "failed"
    assert row.error == (
        "task 'each' cannot map over argument 'x' (zip input 2): it is int, not a list or a dict")


async def test_a_map_function_in_a_dag_file_reaches_child_process_instances(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "proc_xmap.py").write_text(textwrap.dedent('''
        import os
        from datetime import UTC, datetime
        from aflow import DAG, task

        def scaled(x):
            return x * 100

        with DAG("proc_xmap", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
            @task
            def base() -> list[int]:
                return [1, 2, 3]

            @task
            def tags() -> list[str]:
                return ["a", "b", "c"]

            @task(run_in="process")
            def where(x: list) -> list:
                return [x[0], x[1], os.getpid()]

            @task
            def total(values: list) -> list:
                return values

            total(where.expand(x=base().map(scaled).zip(tags().map(str.upper))))
    '''))
    async with Orchestrator(folder, home=home, schedule=False) as o:
        run = await (await o.trigger("proc_xmap")).wait(timeout=60)
        xcoms = {(x.task_id, x.map_index): x.value
                 for x in await o.store.get_xcoms("proc_xmap", run.run_id)}
    assert run.state.value == "success"
    values = xcoms[("total", -1)]
    assert [v[:2] for v in values] == [[100, "A"], [200, "B"], [300, "C"]]
    import os

    assert os.getpid() not in {v[2] for v in values}
