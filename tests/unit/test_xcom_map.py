"""`XComArg.map(fn)` and `XComArg.zip(...)` for dynamic task mapping: how a mapped task's
input resolves from them (lengths, fill values, dicts, cross products, laziness), the
dependencies they make, and the DAG-definition errors for using them anywhere else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from aflow import DAG, BashOperator, PythonOperator, task
from aflow.authoring.mapped import ExpandError, MappedOperator, ResolvedInput
from aflow.exceptions import DagDefinitionError
from aflow.runtime.xcom import XComView

START = datetime(2024, 1, 1, tzinfo=UTC)


def xcoms(**returns: Any) -> XComView:
    """A run's XComs: each task's return value."""
    view = XComView()
    for task_id, value in returns.items():
        view.set_one(task_id, -1, "return_value", value)
    return view


def elements(resolved: ResolvedInput) -> list[dict[str, Any]]:
    return [resolved.at(i) for i in range(resolved.length)]


def mapped(dag: DAG, task_id: str) -> MappedOperator:
    op = dag.task_dict[task_id]
    assert isinstance(op, MappedOperator)
    return op


@task
def nums() -> list[int]:
    return [1, 2, 3]


@task
def words() -> list[str]:
    return ["a", "b"]


@task
def each(x: Any, y: Any = None) -> Any:
    return x


def test_map_transforms_each_element_and_keeps_the_upstream_length() -> None:
    with DAG("m", start_date=START) as dag:
        each.expand(x=nums().map(lambda v: v * 10))
    resolved = mapped(dag, "each").resolve_input(xcoms(nums=[1, 2, 3]))
    assert resolved.length == 3
    assert elements(resolved) == [{"x": 10}, {"x": 20}, {"x": 30}]


def test_chained_maps_apply_in_order() -> None:
    with DAG("chain", start_date=START) as dag:
        each.expand(x=nums().map(lambda v: v + 1).map(str).map(lambda s: s * 2))
    resolved = mapped(dag, "each").resolve_input(xcoms(nums=[1, 9]))
    assert elements(resolved) == [{"x": "22"}, {"x": "1010"}]


def test_map_over_a_dict_gets_its_key_value_pairs() -> None:
    with DAG("d", start_date=START) as dag:

        @task
        def prices() -> dict[str, float]:
            return {}

        each.expand(x=prices().map(lambda kv: f"{kv[0]}={kv[1]}"))
    resolved = mapped(dag, "each").resolve_input(xcoms(prices={"tea": 2.5, "jam": 4}))
    assert elements(resolved) == [{"x": "tea=2.5"}, {"x": "jam=4"}]


def test_a_mapped_argument_and_a_literal_one_make_their_cross_product() -> None:
    with DAG("cross", start_date=START) as dag:
        each.expand(x=nums().map(lambda v: -v), y=["p", "q"])
    resolved = mapped(dag, "each").resolve_input(xcoms(nums=[1, 2, 3]))
    assert resolved.length == 6
    assert elements(resolved) == [
        {"x": -1, "y": "p"}, {"x": -1, "y": "q"}, {"x": -2, "y": "p"},
        {"x": -2, "y": "q"}, {"x": -3, "y": "p"}, {"x": -3, "y": "q"},
    ]


def test_the_function_runs_only_when_an_instance_is_built() -> None:
    calls: list[int] = []

    def record(v: int) -> int:
        calls.append(v)
        return v

    with DAG("lazy", start_date=START) as dag:
        each.expand(x=nums().map(record), y=[0, 1])
    resolved = mapped(dag, "each").resolve_input(xcoms(nums=[5, 6, 7]))
    assert resolved.length == 6 and calls == []  # the length needs no call
    assert resolved.at(3) == {"x": 6, "y": 1}
    assert calls == [6]


def test_an_error_in_the_function_is_raised_for_its_element_only() -> None:
    def inverse(v: int) -> float:
        return 1 / v

    with DAG("err", start_date=START) as dag:
        each.expand(x=nums().map(inverse))
    resolved = mapped(dag, "each").resolve_input(xcoms(nums=[1, 0, 4]))
    assert resolved.length == 3
    assert resolved.at(0) == {"x": 1.0} and resolved.at(2) == {"x": 0.25}
    with pytest.raises(ZeroDivisionError):
        resolved.at(1)


def test_zip_stops_at_the_shortest_input() -> None:
    with DAG("zip", start_date=START) as dag:
        each.expand(x=nums().zip(words()))
    resolved = mapped(dag, "each").resolve_input(xcoms(nums=[1, 2, 3], words=["a", "b"]))
    assert resolved.length == 2
    assert elements(resolved) == [{"x": (1, "a")}, {"x": (2, "b")}]


def test_zip_with_a_fillvalue_goes_to_the_longest() -> None:
    with DAG("zipfill", start_date=START) as dag:
        each.expand(x=nums().zip(words(), ["only"], fillvalue=None))
    resolved = mapped(dag, "each").resolve_input(xcoms(nums=[1, 2, 3], words=["a", "b"]))
    assert resolved.length == 3
    assert elements(resolved) == [
        {"x": (1, "a", "only")}, {"x": (2, "b", None)}, {"x": (3, None, None)}]


def test_zip_of_an_empty_input_is_empty_unless_filled() -> None:
    with DAG("zipempty", start_date=START) as dag:
        each.expand(x=nums().zip(words()))
        each.expand(x=nums().zip(words(), fillvalue=0))
    view = xcoms(nums=[1, 2], words=[], nums__1=[1, 2], words__1=[])
    assert mapped(dag, "each").resolve_input(view).length == 0
    assert elements(mapped(dag, "each__1").resolve_input(view)) == [{"x": (1, 0)}, {"x": (2, 0)}]


def test_zip_takes_dicts_as_pairs_and_map_over_a_zip() -> None:
    with DAG("zipdict", start_date=START) as dag:

        @task
        def rates() -> dict[str, float]:
            return {}

        each.expand(x=words().zip(rates(), {"k": "v"}).map(lambda t: f"{t[0]}:{t[1][0]}:{t[2][1]}"))
    resolved = mapped(dag, "each").resolve_input(
        xcoms(words=["a", "b", "c"], rates={"eur": 1.0, "usd": 1.1}))
    assert elements(resolved) == [{"x": "a:eur:v"}]


def test_zip_of_maps_and_a_map_as_a_zip_input() -> None:
    with DAG("zipmap", start_date=START) as dag:
        each.expand(x=nums().map(lambda v: v * 2).zip(words().map(str.upper)))
    resolved = mapped(dag, "each").resolve_input(xcoms(nums=[1, 2, 3], words=["a", "b"]))
    assert elements(resolved) == [{"x": (2, "A")}, {"x": (4, "B")}]


def test_expand_kwargs_over_a_map() -> None:
    with DAG("kw", start_date=START) as dag:
        each.expand_kwargs(nums().zip(words()).map(lambda t: {"x": t[0], "y": t[1]}))
        each.expand_kwargs(nums().map(lambda v: v))  # its elements are not dicts
    view = xcoms(nums=[1, 2, 3], words=["a", "b"], nums__1=[7, 8])
    assert elements(mapped(dag, "each").resolve_input(view)) == [
        {"x": 1, "y": "a"}, {"x": 2, "y": "b"}]
    bad = mapped(dag, "each__1").resolve_input(view)
    assert bad.length == 2  # each element is checked as its instance is built
    with pytest.raises(ExpandError, match="expand_kwargs element 1 is int, not a dict"):
        bad.at(1)


def test_classic_operators_expand_over_a_map() -> None:
    with DAG("classic", start_date=START) as dag:
        BashOperator.partial(task_id="echo").expand(bash_command=nums().map(lambda v: f"echo {v}"))
    op = mapped(dag, "echo")
    resolved = op.resolve_input(xcoms(nums=[4, 5]))
    assert [op.unmap(i, resolved).bash_command for i in range(2)] == ["echo 4", "echo 5"]


def test_an_upstream_value_that_is_not_a_list_names_the_argument() -> None:
    with DAG("bad", start_date=START) as dag:
        each.expand(x=nums().map(str))
        each.expand(x=nums().zip(words()))
    view = xcoms(nums=42, nums__1=[1], words="ab")
    with pytest.raises(ExpandError, match="task 'each' cannot map over argument 'x': it is int"):
        mapped(dag, "each").resolve_input(view)
    with pytest.raises(ExpandError, match=r"argument 'x' \(zip input 2\): it is str, not a list"):
        mapped(dag, "each__1").resolve_input(view)


def test_every_output_read_is_upstream_of_the_mapped_task() -> None:
    with DAG("deps", start_date=START) as dag:

        @task
        def third() -> list[int]:
            return []

        n, w, t = nums(), words(), third()
        each.expand(x=n.map(str))
        each.expand(x=n.zip(w, [1]).map(str).zip(t))
        each.expand_kwargs(w.map(lambda v: {"x": v}))
    assert dag.task_dict["each"].upstream_task_ids == {"nums"}
    assert dag.task_dict["each__1"].upstream_task_ids == {"nums", "words", "third"}
    assert dag.task_dict["each__2"].upstream_task_ids == {"words"}
    assert dag.task_dict["nums"].downstream_task_ids == {"each", "each__1"}


def test_a_view_links_its_tasks_with_shift_operators() -> None:
    with DAG("shift", start_date=START) as dag:
        n, w = nums(), words()
        after = PythonOperator(task_id="after", python_callable=lambda: None)
        n.zip(w) >> after
    assert dag.task_dict["after"].upstream_task_ids == {"nums", "words"}


# -- a .map()/.zip() result anywhere but expand() is a definition error -------------------------
def test_using_a_view_outside_expand_is_refused_and_adds_nothing() -> None:
    with DAG("refused", start_date=START) as dag:
        view = nums().map(str)
        refused = [
            ("argument 'x' is", lambda: each(x=view)),
            ("argument 1 is", lambda: each(view)),
            ("argument 'x' holds", lambda: each(x=[1, view])),
            (r"partial\(y=...\) is", lambda: each.partial(y=view).expand(x=[1])),
            (r"an element of expand\(x=...\) holds", lambda: each.expand(x=[view])),
            (r"an element of expand_kwargs\(\) holds", lambda: each.expand_kwargs([{"x": view}])),
            ("task 'b': argument 'bash_command' is",
             lambda: BashOperator(task_id="b", bash_command=view)),
            (r"task 'b2': partial\(env=...\) is",
             lambda: BashOperator.partial(task_id="b2", env=view).expand(bash_command=["x"])),
            ("task 'p': argument 'op_kwargs' holds",
             lambda: PythonOperator(task_id="p", python_callable=print, op_kwargs={"a": view})),
        ]
        for where, use in refused:
            with pytest.raises(DagDefinitionError, match=f"{where} .*map\\(str\\): the result of "
                               r"\.map\(\) or \.zip\(\) can only be given to expand\(\)"):
                use()
    assert sorted(dag.task_ids) == ["nums"]


def test_map_takes_a_plain_function() -> None:
    async def later(v: int) -> int:
        return v

    with DAG("fns", start_date=START) as dag:
        out = nums()
        with pytest.raises(DagDefinitionError, match=r"\.map\(\): 'each' is a @task; map\(\) takes "
                                                     "a plain function"):
            out.map(each)
        with pytest.raises(DagDefinitionError, match="'later' is async"):
            out.map(str).map(later)
        with pytest.raises(DagDefinitionError, match="3 is int, not a function"):
            out.map(3)  # type: ignore[arg-type]
    assert sorted(dag.task_ids) == ["nums"]


def test_zip_inputs_are_outputs_or_literal_lists() -> None:
    with DAG("zips", start_date=START):
        out = nums()
        with pytest.raises(DagDefinitionError, match=r"\.zip\(\): input 2 is int; zip\(\) takes"):
            out.zip(3)
        with pytest.raises(DagDefinitionError, match="input 3 holds .* inside a literal"):
            out.zip(words(), [out.map(str)])
        with pytest.raises(TypeError, match="cannot be iterated here"):
            list(out.zip(words()))
