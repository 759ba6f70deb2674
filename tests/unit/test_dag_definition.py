"""DAG definition as an Airflow user writes it: context manager, dependencies, chain,
default_args, validation errors and the stored structure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aflow.authoring.baseoperator import BaseOperator, chain
from aflow.authoring.dag import DAG, current_dag
from aflow.authoring.operators.bash import BashOperator
from aflow.authoring.operators.empty import EmptyOperator
from aflow.authoring.operators.python import PythonOperator
from aflow.authoring.params import Param
from aflow.exceptions import (
    AflowError,
    CycleError,
    DagDefinitionError,
    DuplicateTaskIdError,
    TaskAlreadyInDagError,
    TaskNotFound,
)
from aflow.states import TriggerRule

START = datetime(2024, 1, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def ids(tasks: list[BaseOperator]) -> list[str]:
    return [t.task_id for t in tasks]


def edges(dag: DAG) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def assert_topological(dag: DAG, order: list[str]) -> None:
    assert sorted(order) == sorted(dag.task_ids)
    pos = {tid: i for i, tid in enumerate(order)}
    for up, down in edges(dag):
        assert pos[up] < pos[down], f"{up} should come before {down} in {order}"


# -- the DAG context manager ------------------------------------------------------


def test_tasks_created_inside_with_block_join_the_dag():
    with DAG("ctx", start_date=START) as dag:
        a = EmptyOperator(task_id="a")
        b = EmptyOperator(task_id="b")
    assert dag.task_ids == ["a", "b"]
    assert a.dag is dag and b.dag is dag
    assert a.dag_id == "ctx"
    assert dag.get_task("a") is a
    assert dag.has_task("b") and not dag.has_task("c")


def test_context_is_cleared_after_the_with_block():
    with DAG("ctx"):
        assert current_dag() is not None
    assert current_dag() is None
    loose = EmptyOperator(task_id="loose")
    assert loose.dag is None


def test_nested_dag_contexts_restore_the_outer_dag():
    with DAG("outer") as outer:
        EmptyOperator(task_id="o1")
        with DAG("inner") as inner:
            EmptyOperator(task_id="i1")
        EmptyOperator(task_id="o2")
    assert outer.task_ids == ["o1", "o2"]
    assert inner.task_ids == ["i1"]


def test_context_is_restored_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with DAG("boom"):
            raise RuntimeError("x")
    assert current_dag() is None


def test_explicit_dag_argument_wins_over_the_context():
    other = DAG("other")
    with DAG("ctx") as dag:
        t = EmptyOperator(task_id="t", dag=other)
    assert t.dag is other
    assert other.task_ids == ["t"]
    assert dag.task_ids == []


def test_get_task_of_unknown_id_raises_task_not_found():
    dag = DAG("d")
    with pytest.raises(TaskNotFound, match="nope"):
        dag.get_task("nope")


def test_dag_arguments_are_kept():
    dag = DAG(
        "args",
        schedule="@daily",
        start_date=START,
        catchup=True,
        tags=["b", "a", "b"],
        max_active_runs=2,
        max_active_tasks=3,
        description="desc",
    )
    assert dag.schedule == "@daily"
    assert dag.start_date == START
    assert dag.catchup is True
    assert dag.tags == ["a", "b"]
    assert (dag.max_active_runs, dag.max_active_tasks) == (2, 3)
    assert dag.fileloc == __file__


# -- dependencies ----------------------------------------------------------------------


@pytest.fixture
def abcd():
    with DAG("deps") as dag:
        tasks = [EmptyOperator(task_id=n) for n in "abcde"]
    return dag, tasks


def test_rshift_sets_both_sides_and_returns_the_right_operand(abcd):
    dag, (a, b, c, _, _) = abcd
    result = a >> b
    assert result is b
    assert a.downstream_task_ids == {"b"}
    assert b.upstream_task_ids == {"a"}
    a >> b >> c
    assert edges(dag) == {("a", "b"), ("b", "c")}


def test_lshift_points_the_other_way(abcd):
    dag, (a, b, c, _, _) = abcd
    result = c << b
    assert result is b
    c << b << a
    assert edges(dag) == {("b", "c"), ("a", "b")}


def test_list_on_the_left_of_rshift(abcd):
    dag, (a, b, c, d, _) = abcd
    result = [a, b] >> c
    assert result is c
    result >> d
    assert edges(dag) == {("a", "c"), ("b", "c"), ("c", "d")}


def test_list_on_the_right_of_rshift(abcd):
    dag, (a, b, c, d, _) = abcd
    result = a >> [b, c]
    assert result == [b, c]
    result >> d
    assert edges(dag) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}


def test_list_on_either_side_of_lshift(abcd):
    dag, (a, b, c, d, e) = abcd
    assert ([a, b] << c) is c  # c runs first
    e << [a, d]  # a and d run before e
    assert edges(dag) == {("c", "a"), ("c", "b"), ("a", "e"), ("d", "e")}


def test_set_upstream_and_set_downstream_with_tasks_and_lists(abcd):
    dag, (a, b, c, d, e) = abcd
    a.set_downstream(b)
    b.set_downstream([c, d])
    e.set_upstream([c, d])
    a.set_upstream([])  # nothing happens
    assert edges(dag) == {("a", "b"), ("b", "c"), ("b", "d"), ("c", "e"), ("d", "e")}
    assert ids(b.downstream_list) == ["c", "d"]
    assert ids(e.upstream_list) == ["c", "d"]
    assert ids(dag.roots) == ["a"]
    assert ids(dag.leaves) == ["e"]


def test_chain_with_a_list_in_the_middle(abcd):
    dag, (a, b, c, d, e) = abcd
    chain(a, b, [c, d], e)
    assert edges(dag) == {("a", "b"), ("b", "c"), ("b", "d"), ("c", "e"), ("d", "e")}


def test_chain_of_two_equal_length_lists_pairs_them_up(abcd):
    dag, (a, b, c, d, _) = abcd
    chain([a, b], [c, d])
    assert edges(dag) == {("a", "c"), ("b", "d")}


def test_chain_of_lists_of_different_length_is_an_error(abcd):
    _, (a, b, c, _, _) = abcd
    with pytest.raises(DagDefinitionError, match="same length"):
        chain([a, b], [c])


def test_chain_of_one_or_no_item_does_nothing(abcd):
    dag, (a, *_) = abcd
    chain()
    chain(a)
    assert edges(dag) == set()


def test_a_task_cannot_depend_on_itself(abcd):
    _, (a, *_) = abcd
    with pytest.raises(DagDefinitionError, match="itself"):
        a >> a


def test_dependency_on_something_that_is_not_a_task(abcd):
    _, (a, *_) = abcd
    with pytest.raises(DagDefinitionError, match="not a task"):
        a >> "b"
    with pytest.raises(DagDefinitionError, match="not a task"):
        a.set_upstream([42])


def test_tasks_of_different_dags_cannot_be_linked():
    with DAG("one"):
        a = EmptyOperator(task_id="a")
    with DAG("two"):
        b = EmptyOperator(task_id="b")
    with pytest.raises(DagDefinitionError, match="different DAGs"):
        a >> b
    assert a.downstream_task_ids == set() and b.upstream_task_ids == set()


def test_linking_a_loose_task_adds_it_to_the_dag():
    with DAG("d") as dag:
        a = EmptyOperator(task_id="a")
    loose = EmptyOperator(task_id="loose")
    a >> loose
    assert loose.dag is dag
    assert dag.task_ids == ["a", "loose"]


def test_linking_two_loose_tasks_is_an_error():
    x = EmptyOperator(task_id="x")
    y = EmptyOperator(task_id="y")
    with pytest.raises(DagDefinitionError, match="neither is in a DAG"):
        x >> y


def test_output_of_an_operator_in_a_templated_field_makes_a_dependency():
    with DAG("d") as dag:
        up = PythonOperator(task_id="up", python_callable=lambda: 1)
        down = PythonOperator(
            task_id="down", python_callable=print, op_kwargs={"v": {"nested": [up.output]}}
        )
    assert down.upstream_task_ids == {"up"}
    assert edges(dag) == {("up", "down")}


def test_xcom_arg_set_after_super_init_in_a_subclass_still_makes_a_dependency():
    class Consumer(BaseOperator):
        template_fields = ("value",)

        def __init__(self, *, value, **kwargs):
            super().__init__(**kwargs)
            self.value = value

    with DAG("d"):
        up = EmptyOperator(task_id="up")
        down = Consumer(task_id="down", value=up.output)
    assert down.upstream_task_ids == {"up"}


# -- validation errors -----------------------------------------------------------------


def _cycle_path(message: str) -> list[str]:
    return message.split("cycle: ", 1)[1].split(" >> ")


@pytest.mark.parametrize("check", ["validate", "topological_order", "structure"])
def test_cycle_is_reported_with_its_path(check):
    with DAG("cyclic") as dag:
        start, a, b, c, after = (
            EmptyOperator(task_id=n) for n in ("start", "a", "b", "c", "after")
        )
        start >> a >> b >> c >> a
        c >> after
    with pytest.raises(CycleError) as info:
        getattr(dag, check)()
    message = str(info.value)
    assert "cyclic" in message
    path = _cycle_path(message)
    assert path[0] == path[-1]
    assert set(path) == {"a", "b", "c"}
    for up, down in zip(path, path[1:], strict=False):
        assert (up, down) in edges(dag)


def test_two_task_cycle_is_found():
    with DAG("two") as dag:
        x = EmptyOperator(task_id="x")
        y = EmptyOperator(task_id="y")
        x >> y >> x
    with pytest.raises(CycleError) as info:
        dag.validate()
    path = _cycle_path(str(info.value))
    assert path[0] == path[-1] and set(path) == {"x", "y"} and len(path) == 3


def test_cycle_error_is_a_dag_definition_error():
    assert issubclass(CycleError, DagDefinitionError)
    assert issubclass(DagDefinitionError, AflowError)
    assert issubclass(DuplicateTaskIdError, DagDefinitionError)
    assert issubclass(TaskAlreadyInDagError, DagDefinitionError)


def test_validate_passes_on_a_valid_dag():
    with DAG("ok") as dag:
        chain(*(EmptyOperator(task_id=f"t{i}") for i in range(5)))
    dag.validate()


def test_validate_rejects_a_dependency_outside_the_dag():
    with DAG("d") as dag:
        a = EmptyOperator(task_id="a")
    a.downstream_task_ids.add("ghost")
    with pytest.raises(DagDefinitionError, match="ghost"):
        dag.validate()


def test_duplicate_task_id_in_one_dag():
    with DAG("dup") as dag:
        first = EmptyOperator(task_id="same")
        with pytest.raises(DuplicateTaskIdError, match="'same'"):
            EmptyOperator(task_id="same")
    assert dag.task_dict == {"same": first}
    dag.add_task(first)  # the same object again is fine


def test_task_added_to_a_second_dag():
    with DAG("first") as first:
        t = EmptyOperator(task_id="t")
    second = DAG("second")
    with pytest.raises(TaskAlreadyInDagError) as info:
        second.add_task(t)
    assert "'first'" in str(info.value) and "'second'" in str(info.value)
    assert t.dag is first
    assert second.task_ids == []


def test_add_task_sets_the_task_dag():
    dag = DAG("d")
    t = EmptyOperator(task_id="t")
    dag.add_task(t)
    assert t.dag is dag


def test_unknown_trigger_rule_lists_the_valid_ones():
    with DAG("d"), pytest.raises(DagDefinitionError) as info:
        EmptyOperator(task_id="t", trigger_rule="all_sucess")
    message = str(info.value)
    assert "all_sucess" in message
    for rule in TriggerRule:
        assert rule.value in message


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_every_trigger_rule_is_accepted(rule):
    with DAG("d") as dag:
        by_enum = EmptyOperator(task_id="by_enum", trigger_rule=rule)
        by_str = EmptyOperator(task_id="by_str", trigger_rule=rule.value)
    assert by_enum.trigger_rule is rule
    assert by_str.trigger_rule is rule
    assert {t["trigger_rule"] for t in dag.structure()["tasks"]} == {rule.value}


def test_invalid_argument_names_are_listed():
    with pytest.raises(DagDefinitionError) as info:
        EmptyOperator(task_id="t", retires=3, trigger=1)
    message = str(info.value)
    assert "retires" in message and "trigger" in message
    assert "EmptyOperator" in message and "'t'" in message


def test_invalid_argument_names_through_a_subclass_init():
    class MyOp(BaseOperator):
        def __init__(self, *, greeting="hi", **kwargs):
            super().__init__(**kwargs)
            self.greeting = greeting

    with pytest.raises(DagDefinitionError, match="colour"):
        MyOp(task_id="t", colour="red")


def test_naive_start_date_is_rejected():
    with pytest.raises(DagDefinitionError, match="timezone"):
        DAG("naive", start_date=datetime(2024, 1, 1))
    assert DAG("aware", start_date=START).start_date == START


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "ünï", "x" * 251, "semi;colon", 42, None])
def test_invalid_dag_id(bad):
    with pytest.raises(DagDefinitionError, match="invalid dag_id"):
        DAG(bad)


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "x" * 251, 7])
def test_invalid_task_id(bad):
    with DAG("d"), pytest.raises(DagDefinitionError, match="invalid task_id"):
        EmptyOperator(task_id=bad)


@pytest.mark.parametrize("good", ["a", "A.b-c_9", "x" * 250])
def test_valid_ids(good):
    with DAG(good) as dag:
        EmptyOperator(task_id=good)
    assert dag.task_ids == [good]


def test_negative_retries_and_bad_run_in_are_rejected():
    with pytest.raises(DagDefinitionError, match="retries"):
        EmptyOperator(task_id="t", retries=-1)
    with pytest.raises(DagDefinitionError, match="run_in"):
        EmptyOperator(task_id="t", run_in="gpu")


def test_python_callable_must_be_callable():
    with pytest.raises(DagDefinitionError, match="callable"):
        PythonOperator(task_id="t", python_callable="not a function")


def test_numbers_become_timedeltas_and_callbacks_become_lists():
    def cb(context):
        return None

    t = EmptyOperator(
        task_id="t",
        retry_delay=30,
        max_retry_delay=120.5,
        execution_timeout=10,
        on_failure_callback=cb,
        on_success_callback=[cb, cb],
        retries=None,
    )
    assert t.retry_delay == timedelta(seconds=30)
    assert t.max_retry_delay == timedelta(seconds=120.5)
    assert t.execution_timeout == timedelta(seconds=10)
    assert t.on_failure_callback == [cb]
    assert t.on_success_callback == [cb, cb]
    assert t.on_retry_callback == []
    assert t.retries == 0


def test_base_operator_execute_must_be_implemented():
    class NoExecute(BaseOperator):
        pass

    with pytest.raises(NotImplementedError, match="NoExecute"):
        NoExecute(task_id="t").execute({})


def test_is_async_follows_execute():
    class SyncOp(BaseOperator):
        def execute(self, context):
            return 1

    assert EmptyOperator(task_id="e").is_async() is True
    assert SyncOp(task_id="s").is_async() is False


# -- default_args -------------------------------------------------------------------------


def _on_failure(context):
    return None


FULL_DEFAULTS = {
    "owner": "data-team",
    "retries": 3,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
    "execution_timeout": timedelta(minutes=5),
    "trigger_rule": "all_done",
    "pool": "etl",
    "priority_weight": 7,
    "on_failure_callback": _on_failure,
    "depends_on_past": True,
}


def _assert_has_full_defaults(t: BaseOperator) -> None:
    assert t.owner == "data-team"
    assert t.retries == 3
    assert t.retry_delay == timedelta(minutes=2)
    assert t.retry_exponential_backoff is True
    assert t.max_retry_delay == timedelta(minutes=30)
    assert t.execution_timeout == timedelta(minutes=5)
    assert t.trigger_rule is TriggerRule.ALL_DONE
    assert t.pool == "etl"
    assert t.priority_weight == 7
    assert t.on_failure_callback == [_on_failure]
    assert t.depends_on_past is True


def test_default_args_fill_missing_arguments():
    with DAG("d", default_args=FULL_DEFAULTS):
        t = EmptyOperator(task_id="t")
        p = PythonOperator(task_id="p", python_callable=print)
        b = BashOperator(task_id="b", bash_command="true")
    for task_ in (t, p, b):
        _assert_has_full_defaults(task_)


def test_default_args_apply_with_an_explicit_dag_argument():
    dag = DAG("d", default_args={"retries": 4})
    t = EmptyOperator(task_id="t", dag=dag)
    assert t.retries == 4


def test_default_args_never_override_explicit_arguments_even_falsy_ones():
    with DAG("d", default_args=FULL_DEFAULTS):
        t = EmptyOperator(
            task_id="t",
            owner="me",
            retries=0,
            retry_delay=timedelta(seconds=1),
            retry_exponential_backoff=False,
            max_retry_delay=None,
            execution_timeout=None,
            trigger_rule=TriggerRule.ONE_SUCCESS,
            pool="default_pool",
            priority_weight=1,
            on_failure_callback=None,
            depends_on_past=False,
        )
    assert t.owner == "me"
    assert t.retries == 0
    assert t.retry_delay == timedelta(seconds=1)
    assert t.retry_exponential_backoff is False
    assert t.max_retry_delay is None
    assert t.execution_timeout is None
    assert t.trigger_rule is TriggerRule.ONE_SUCCESS
    assert t.pool == "default_pool"
    assert t.priority_weight == 1
    assert t.on_failure_callback == []
    assert t.depends_on_past is False


def test_default_args_keys_an_operator_does_not_take_are_ignored():
    airflow_style = {
        "start_date": START,
        "email_on_failure": False,
        "email_on_retry": False,
        "bash_command": "echo from defaults",
        "retries": 1,
    }
    with DAG("d", default_args=airflow_style):
        t = EmptyOperator(task_id="t")
        b = BashOperator(task_id="b", bash_command="echo explicit")
        b2 = BashOperator(task_id="b2")
    assert t.retries == 1
    assert b.bash_command == "echo explicit"
    assert b2.bash_command == "echo from defaults"
    assert not hasattr(t, "email_on_failure")


def test_invalid_value_in_default_args_is_reported():
    with DAG("d", default_args={"trigger_rule": "sometimes"}):
        with pytest.raises(DagDefinitionError, match="sometimes"):
            EmptyOperator(task_id="t")


def test_operator_default_args_merge_over_the_dags():
    with DAG("d", default_args={"retries": 2, "pool": "dagpool"}):
        t = EmptyOperator(task_id="t", default_args={"retries": 5})
    assert t.retries == 5
    assert t.pool == "dagpool"


def test_default_args_without_a_dag():
    t = EmptyOperator(task_id="t", default_args={"retries": 6})
    assert t.retries == 6 and t.dag is None


def test_default_args_reach_a_subclass_without_its_own_init():
    class Mine(BaseOperator):
        def execute(self, context):
            return None

    with DAG("d", default_args=FULL_DEFAULTS):
        t = Mine(task_id="t")
        explicit = Mine(task_id="explicit", retries=0, trigger_rule="always")
    _assert_has_full_defaults(t)
    assert explicit.retries == 0
    assert explicit.trigger_rule is TriggerRule.ALWAYS


class Greeter(BaseOperator):
    def __init__(self, *, greeting: str = "hello", **kwargs):
        super().__init__(**kwargs)
        self.greeting = greeting

    def execute(self, context):
        return self.greeting


def test_default_args_reach_a_subclass_with_its_own_init():
    with DAG("d", default_args={**FULL_DEFAULTS, "greeting": "hi from defaults"}):
        t = Greeter(task_id="t")
        explicit = Greeter(task_id="explicit", greeting="yo", retries=1)
    _assert_has_full_defaults(t)
    assert t.greeting == "hi from defaults"
    assert explicit.greeting == "yo"
    assert explicit.retries == 1
    assert explicit.pool == "etl"


def test_default_args_reach_a_subclass_of_a_subclass():
    class LoudGreeter(Greeter):
        def __init__(self, *, volume: int = 1, **kwargs):
            super().__init__(**kwargs)
            self.volume = volume

    with DAG("d", default_args={"greeting": "hey", "volume": 11, "retries": 2}):
        t = LoudGreeter(task_id="t")
        explicit = LoudGreeter(task_id="e", volume=0, greeting="psst", retries=0)
    assert (t.greeting, t.volume, t.retries) == ("hey", 11, 2)
    assert (explicit.greeting, explicit.volume, explicit.retries) == ("psst", 0, 0)


def test_a_subclass_that_passes_a_base_argument_itself_is_not_overridden():
    class NeverRetry(BaseOperator):
        def __init__(self, **kwargs):
            super().__init__(retries=0, trigger_rule="all_done", **kwargs)

    with DAG("d", default_args={"retries": 3, "trigger_rule": "one_success", "pool": "p"}):
        t = NeverRetry(task_id="t")
    assert t.retries == 0
    assert t.trigger_rule is TriggerRule.ALL_DONE
    assert t.pool == "p"


def test_a_bash_subclass_gets_bash_defaults():
    class EchoOperator(BashOperator):
        def __init__(self, *, word: str, **kwargs):
            super().__init__(bash_command=f"echo {word}", **kwargs)

    with DAG("d", default_args={"env": {"A": "1"}, "retries": 2, "bash_command": "ignored"}):
        t = EchoOperator(task_id="t", word="hi")
    assert t.bash_command == "echo hi"
    assert t.env == {"A": "1"}
    assert t.retries == 2


# -- structure() ---------------------------------------------------------------------------


def _diamond() -> DAG:
    with DAG(
        "diamond",
        schedule=timedelta(hours=1),
        start_date=START,
        params={"n": Param(3, type="integer"), "name": "x"},
        tags=["t"],
        description="a diamond",
    ) as dag:
        end = EmptyOperator(task_id="end", trigger_rule="none_failed")
        left = BashOperator(task_id="left", bash_command="true", retries=2)
        right = PythonOperator(task_id="right", python_callable=print)
        start = EmptyOperator(task_id="start")
        start >> [left, right] >> end
    return dag


def test_structure_is_json_and_lists_tasks_in_topological_order():
    dag = _diamond()
    structure = json.loads(json.dumps(dag.structure()))
    assert structure["dag_id"] == "diamond"
    assert structure["description"] == "a diamond"
    assert structure["tags"] == ["t"]
    assert structure["params"]["n"] == {"required": False, "default": 3, "type": ["integer"]}
    assert structure["params"]["name"]["default"] == "x"
    assert isinstance(structure["schedule"], str)
    order = [t["task_id"] for t in structure["tasks"]]
    assert order[0] == "start" and order[-1] == "end"
    assert_topological(dag, order)
    by_id = {t["task_id"]: t for t in structure["tasks"]}
    assert by_id["start"]["downstream"] == ["left", "right"]
    assert by_id["end"]["upstream"] == ["left", "right"]
    assert by_id["end"]["trigger_rule"] == "none_failed"
    assert by_id["left"]["operator"] == "BashOperator"
    assert by_id["left"]["retries"] == 2
    assert by_id["right"]["operator"] == "PythonOperator"


def test_topological_order_of_a_longer_graph():
    with DAG("g") as dag:
        t = {n: EmptyOperator(task_id=n) for n in "zyxwvuts"}
        t["z"] >> t["y"] >> [t["x"], t["w"]]
        t["s"] >> t["x"]
        t["w"] >> t["v"] >> t["u"]
        chain(t["x"], t["t"], t["u"])
    assert_topological(dag, ids(dag.topological_order()))


def test_structure_order_is_the_same_in_every_process():
    """The structure is stored for other hosts: it must not depend on str hashing."""
    script = textwrap.dedent(
        """
        import json
        from aflow.authoring.dag import DAG
        from aflow.authoring.operators.empty import EmptyOperator
        with DAG("fan") as dag:
            root = EmptyOperator(task_id="root")
            leaves = [EmptyOperator(task_id=f"leaf{i}") for i in range(12)]
            root >> leaves >> EmptyOperator(task_id="join")
        print(json.dumps(dag.structure()))
        """
    )
    outputs = set()
    for seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.add(proc.stdout)
    assert len(outputs) == 1
