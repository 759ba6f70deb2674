"""TaskFlow: @task, @task.bash, .override, multiple_outputs and @dag."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aflow.authoring.baseoperator import BaseOperator, chain
from aflow.authoring.dag import DAG, dag
from aflow.authoring.operators.bash import BashOperator
from aflow.authoring.operators.python import PythonOperator
from aflow.authoring.params import Param
from aflow.authoring.taskflow import task
from aflow.authoring.templating import date_context, render_template_fields
from aflow.authoring.xcom_arg import ParamRef, XComArg
from aflow.exceptions import DagDefinitionError, DuplicateTaskIdError, XComValueError
from aflow.states import TriggerRule

START = datetime(2024, 1, 1, tzinfo=UTC)


class FakeTI:
    """Stand-in for the runtime's task instance: an in-memory XCom table."""

    def __init__(self, xcoms: dict[tuple[str, str], Any] | None = None) -> None:
        self.xcoms = dict(xcoms or {})
        self.pushed: dict[str, Any] = {}

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms[(task_ids, key)]

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def op_of(arg: XComArg) -> BaseOperator:
    assert isinstance(arg, XComArg)
    return arg.operator


def edges(d: DAG) -> set[tuple[str, str]]:
    return {(t.task_id, down) for t in d.tasks for down in t.downstream_task_ids}


# -- @task -----------------------------------------------------------------------------


def test_task_decorator_on_a_sync_function():
    @task
    def extract(n):
        """Pull the numbers."""
        return list(range(n))

    with DAG("d") as the_dag:
        out = extract(3)
    op = op_of(out)
    assert out.key == "return_value"
    assert isinstance(op, PythonOperator)
    assert op.task_id == "extract"
    assert op.dag is the_dag
    assert op.doc_md == "Pull the numbers."
    assert op.is_async() is False
    assert op.execute({}) == [0, 1, 2]
    assert extract.__name__ == "extract"


def test_task_decorator_on_an_async_function():
    @task
    async def fetch(x):
        await asyncio.sleep(0)
        return x * 2

    with DAG("d"):
        op = op_of(fetch(21))
    assert op.is_async() is True
    result = op.execute({})
    assert inspect.isawaitable(result)
    assert asyncio.run(result) == 42


def test_task_gets_context_values_it_asks_for_by_name():
    @task
    def report(x, ds=None, params=None):
        return f"{x} {ds} {params['p']}"

    with DAG("d"):
        op = op_of(report("v"))
    context = {**date_context(START), "params": {"p": 1}}
    assert op.execute(context) == "v 2024-01-01 1"


def test_task_with_arguments():
    @task(task_id="custom", retries=2, retry_delay=5, trigger_rule="all_done", pool="p")
    def work():
        return 1

    with DAG("d") as the_dag:
        op = op_of(work())
    assert the_dag.task_ids == ["custom"]
    assert op.retries == 2
    assert op.retry_delay == timedelta(seconds=5)
    assert op.trigger_rule is TriggerRule.ALL_DONE
    assert op.pool == "p"


def test_task_python_is_the_same_as_task():
    @task.python(retries=1)
    def work():
        return 1

    with DAG("d"):
        op = op_of(work())
    assert isinstance(op, PythonOperator) and op.retries == 1


def test_task_decorator_arguments_win_over_default_args():
    @task(retries=0)
    def work():
        return 1

    with DAG("d", default_args={"retries": 4, "pool": "etl"}):
        op = op_of(work())
    assert op.retries == 0
    assert op.pool == "etl"


def test_task_with_invalid_operator_argument():
    @task(not_an_arg=1)
    def work():
        return 1

    with DAG("d"), pytest.raises(DagDefinitionError, match="not_an_arg"):
        work()


def test_calling_a_task_with_wrong_arguments_is_a_definition_error():
    @task
    def work(a, b):
        return a + b

    with DAG("d"), pytest.raises(DagDefinitionError, match="'work'"):
        work(1)


def test_calling_the_same_task_several_times_gives_unique_ids():
    @task
    def step():
        return 1

    with DAG("d") as the_dag:
        first, second, third = step(), step(), step()
    assert the_dag.task_ids == ["step", "step__1", "step__2"]
    assert [op_of(x).task_id for x in (first, second, third)] == the_dag.task_ids


def test_same_task_in_two_dags_keeps_its_name_in_each():
    @task
    def step():
        return 1

    with DAG("one") as one:
        step()
    with DAG("two") as two:
        step()
    assert one.task_ids == ["step"] and two.task_ids == ["step"]


def test_override_changes_task_id_and_arguments():
    @task(retries=1)
    def load():
        return 1

    with DAG("d") as the_dag:
        a = load.override(task_id="load_a")()
        b = load.override(task_id="load_b", retries=5)()
        c = load()
    assert the_dag.task_ids == ["load_a", "load_b", "load"]
    assert op_of(a).retries == 1
    assert op_of(b).retries == 5
    assert op_of(c).retries == 1


def test_override_with_an_existing_task_id_is_a_duplicate():
    @task
    def load():
        return 1

    with DAG("d"):
        load()
        with pytest.raises(DuplicateTaskIdError):
            load.override(task_id="load")()


# -- dependencies through outputs ------------------------------------------------------------


def test_passing_an_output_creates_the_dependency():
    @task
    def extract():
        return [1, 2]

    @task
    def transform(values):
        return sum(values)

    @task
    def load(total, label="x"):
        return None

    with DAG("d") as the_dag:
        load(transform(extract()), label="y")
    assert edges(the_dag) == {("extract", "transform"), ("transform", "load")}
    assert the_dag.roots[0].task_id == "extract"


def test_outputs_nested_in_lists_and_dicts_create_dependencies():
    @task
    def source():
        return 1

    @task
    def sink(items, mapping):
        return None

    with DAG("d") as the_dag:
        a, b, c = source(), source(), source()
        sink([a, (b,)], mapping={"k": {"deep": c}})
    assert op_of(a).task_id == "source"
    sink_op = the_dag.get_task("sink")
    assert sink_op.upstream_task_ids == {"source", "source__1", "source__2"}


def test_outputs_combine_with_shift_operators_and_chain():
    @task
    def step():
        return 1

    with DAG("d") as the_dag:
        a, b, c, d, e = (step() for _ in range(5))
        a >> b
        [b, c] >> d
        e << d
    assert edges(the_dag) == {
        ("step", "step__1"),
        ("step__1", "step__3"),
        ("step__2", "step__3"),
        ("step__3", "step__4"),
    }

    with DAG("d2") as d2:
        x, y, z = step(), step(), step()
        chain(x, [y], z)
    assert edges(d2) == {("step", "step__1"), ("step__1", "step__2")}


def test_outputs_link_with_classic_operators():
    @task
    def produce():
        return "cmd"

    with DAG("d"):
        out = produce()
        bash = BashOperator(task_id="bash", bash_command="echo hi")
        out >> bash
        consumer = PythonOperator(task_id="consumer", python_callable=print, op_args=[out])
    assert bash.upstream_task_ids == {"produce"}
    assert consumer.upstream_task_ids == {"produce"}


def test_an_xcom_arg_cannot_be_iterated_at_definition_time():
    @task
    def produce():
        return [1]

    with DAG("d"):
        out = produce()
    with pytest.raises(TypeError, match="cannot be iterated"):
        list(out)


def test_output_is_resolved_from_the_upstream_xcom_at_run_time():
    @task
    def produce():
        return 1

    @task
    def consume(value, extra):
        return (value, extra)

    with DAG("d") as the_dag:
        consume(produce(), extra={"v": produce()})
    consumer = the_dag.get_task("consume")
    ti = FakeTI({("produce", "return_value"): 10, ("produce__1", "return_value"): 20})
    run_copy = consumer.prepare_for_run()
    render_template_fields(run_copy, {"ti": ti})
    assert run_copy.execute({"ti": ti}) == (10, {"v": 20})
    assert isinstance(consumer.op_args[0], XComArg)  # the DAG's task is untouched


# -- multiple_outputs -------------------------------------------------------------------------


def test_multiple_outputs_items_are_keyed_xcom_args():
    @task(multiple_outputs=True)
    def split():
        return {"head": 1, "tail": [2, 3]}

    @task
    def use(x):
        return x

    with DAG("d") as the_dag:
        parts = split()
        head = parts["head"]
        use(head)
    assert isinstance(head, XComArg)
    assert head.key == "head"
    assert head.operator is parts.operator
    assert op_of(parts).multiple_outputs is True
    assert edges(the_dag) == {("split", "use")}

    consumer = the_dag.get_task("use").prepare_for_run()
    ti = FakeTI({("split", "head"): 1})
    render_template_fields(consumer, {"ti": ti})
    assert consumer.op_args == [1]


def test_multiple_outputs_pushes_each_key():
    @task(multiple_outputs=True)
    def split():
        return {"head": 1, "tail": [2, 3]}

    with DAG("d"):
        op = op_of(split())
    ti = FakeTI()
    assert op.execute({"ti": ti}) == {"head": 1, "tail": [2, 3]}
    assert ti.pushed == {"head": 1, "tail": [2, 3]}


def test_multiple_outputs_on_an_async_task_pushes_each_key():
    @task(multiple_outputs=True)
    async def split():
        return {"a": 1}

    with DAG("d"):
        op = op_of(split())
    ti = FakeTI()
    assert asyncio.run(op.execute({"ti": ti})) == {"a": 1}
    assert ti.pushed == {"a": 1}


def test_multiple_outputs_needs_a_dict():
    @task(multiple_outputs=True)
    def split():
        return [1, 2]

    with DAG("d"):
        op = op_of(split())
    with pytest.raises(XComValueError, match="not a dict"):
        op.execute({"ti": FakeTI()})


def test_without_multiple_outputs_nothing_extra_is_pushed():
    @task
    def whole():
        return {"a": 1}

    with DAG("d"):
        op = op_of(whole())
    ti = FakeTI()
    assert op.execute({"ti": ti}) == {"a": 1}
    assert ti.pushed == {}


# -- @task.bash -------------------------------------------------------------------------------


def test_task_bash_builds_a_bash_operator_and_runs_the_returned_command():
    @task.bash(retries=1)
    def greet(name):
        return "echo hello {{ params.greeting }} " + name + " && echo done-{{ ds }}"

    with DAG("d") as the_dag:
        out = greet("world")
    op = op_of(out)
    assert isinstance(op, BashOperator)
    assert op.task_id == "greet"
    assert op.retries == 1
    assert the_dag.task_ids == ["greet"]

    run_copy = op.prepare_for_run()
    context = {**date_context(START), "params": {"greeting": "dear"}}
    render_template_fields(run_copy, context)
    assert asyncio.run(run_copy.execute(context)) == "done-2024-01-01"
    assert run_copy.bash_command == "echo hello dear world && echo done-2024-01-01"


def test_task_bash_output_dependency():
    @task
    def name():
        return "x"

    @task.bash
    def say(who):
        return f"echo {who}"

    with DAG("d") as the_dag:
        say(name())
    assert edges(the_dag) == {("name", "say")}


@pytest.mark.parametrize("returned", ["", "   ", None, 3])
def test_task_bash_must_return_a_command(returned):
    @task.bash
    def nothing():
        return returned

    with DAG("d"):
        op = op_of(nothing())
    with pytest.raises(DagDefinitionError, match="command string"):
        asyncio.run(op.execute({}))


# -- @dag -------------------------------------------------------------------------------------


def test_dag_decorator_builds_a_dag_named_after_the_function():
    @task
    def work(n):
        return n

    @dag(schedule="@daily", start_date=START, tags=["tf"])
    def my_pipeline():
        """My pipeline's docs."""
        work(1)

    built = my_pipeline()
    assert isinstance(built, DAG)
    assert built.dag_id == "my_pipeline"
    assert built.schedule == "@daily"
    assert built.start_date == START
    assert built.tags == ["tf"]
    assert built.task_ids == ["work"]
    assert built.doc_md == "My pipeline's docs."
    assert built.fileloc == __file__


def test_bare_dag_decorator_and_explicit_dag_id():
    @dag
    def bare():
        pass

    @dag("explicit_id")
    def named():
        pass

    assert bare().dag_id == "bare"
    assert named().dag_id == "explicit_id"


LIMIT = Param(10, type="integer", maximum=20)


def test_dag_function_kwargs_become_params_and_tasks_get_param_refs():
    @task
    def show(n, label):
        return f"{label}:{n}"

    @dag(params={"label": Param("from-params", type="string"), "extra": 1})
    def with_params(n=5, label="from-signature", limit=LIMIT):
        show(n, label=label)

    built = with_params()
    assert dict(built.params) == {"label": "from-params", "extra": 1, "n": 5, "limit": 10}
    assert built.params.param("limit").maximum == 20
    op = built.get_task("show")
    assert isinstance(op.op_args[0], ParamRef) and op.op_args[0].name == "n"
    assert isinstance(op.op_kwargs["label"], ParamRef)
    assert op.op_kwargs["label"].name == "label"

    params = built.params.resolve({"n": 7})
    run_copy = op.prepare_for_run()
    render_template_fields(run_copy, {"params": params})
    assert run_copy.op_args == [7]
    assert run_copy.op_kwargs == {"label": "from-params"}
    assert run_copy.execute({"params": params}) == "from-params:7"


def test_dag_function_called_with_explicit_values_passes_them_as_is():
    @task
    def show(n):
        return n

    @dag
    def pipeline(n=5):
        show(n)

    built = pipeline(n=9)
    assert built.get_task("show").op_args == [9]
    assert dict(built.params) == {"n": 5}


def test_dag_factory_can_be_called_twice():
    @task
    def work():
        return 1

    @dag(params={"x": 1}, default_args={"retries": 2})
    def twice(y=2):
        work()

    first, second = twice(), twice()
    assert first is not second
    assert dict(first.params) == dict(second.params) == {"x": 1, "y": 2}
    assert first.get_task("work") is not second.get_task("work")
    assert second.get_task("work").retries == 2
    assert second.get_task("work").dag is second
