"""`max_active_tis_per_dag` and `max_active_tis_per_dagrun` when a DAG is defined: where
they may be set (the task, default_args, a task group, @task, partial()), what is
refused (a bad value, mapping over them), and that the DAG's structure shows them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from aflow import DAG, BashOperator, EmptyOperator, TaskGroup, task
from aflow.authoring.mapped import ExpandError, ResolvedInput
from aflow.exceptions import DagDefinitionError

START = datetime(2024, 1, 1, tzinfo=UTC)
LIMITS = ("max_active_tis_per_dag", "max_active_tis_per_dagrun")


def limits_of(t: Any) -> tuple[int | None, int | None]:
    return t.max_active_tis_per_dag, t.max_active_tis_per_dagrun


def test_no_limit_by_default_and_a_task_s_own_values() -> None:
    with DAG("d", start_date=START):
        plain = EmptyOperator(task_id="plain")
        limited = EmptyOperator(task_id="limited", max_active_tis_per_dag=4,
                                max_active_tis_per_dagrun=1)
    assert limits_of(plain) == (None, None)
    assert limits_of(limited) == (4, 1)


@pytest.mark.parametrize("name", LIMITS)
@pytest.mark.parametrize("value", [0, -2, True, 2.5, "3"])
def test_a_limit_that_is_not_a_positive_integer_is_refused_naming_task_and_argument(
    name: str, value: Any
) -> None:
    with DAG("d", start_date=START) as dag:
        with pytest.raises(DagDefinitionError) as caught:
            EmptyOperator(task_id="bad", **{name: value})
    message = str(caught.value)
    assert message.startswith(f"task 'bad': {name} must be a positive integer or None")
    assert repr(value) in message
    assert dag.task_ids == []  # the task did not join its DAG


@pytest.mark.parametrize("name", LIMITS)
def test_a_bad_limit_in_default_args_is_refused_too(name: str) -> None:
    with DAG("d", start_date=START, default_args={name: 0}):
        with pytest.raises(DagDefinitionError, match=f"task 't': {name} must be a positive"):
            EmptyOperator(task_id="t")


def test_default_args_of_the_dag_and_a_task_group_set_them_and_the_task_wins() -> None:
    with DAG("d", start_date=START, default_args={"max_active_tis_per_dag": 2}):
        from_dag = EmptyOperator(task_id="from_dag")
        own = EmptyOperator(task_id="own", max_active_tis_per_dag=5)
        with TaskGroup("g", default_args={"max_active_tis_per_dagrun": 1}):
            grouped = BashOperator(task_id="b", bash_command="true")
    assert limits_of(from_dag) == (2, None)
    assert limits_of(own) == (5, None)
    assert limits_of(grouped) == (2, 1)


def test_taskflow_decorator_and_override_set_them() -> None:
    with DAG("d", start_date=START) as dag:

        @task(max_active_tis_per_dagrun=3)
        def each(x: int) -> int:
            return x

        each.expand(x=[1, 2])
        each.override(task_id="other", max_active_tis_per_dag=2).expand(x=[3])
        each(1)
    assert limits_of(dag.task_dict["each"]) == (None, 3)
    assert dag.task_dict["each"].is_mapped
    assert limits_of(dag.task_dict["other"]) == (2, 3)
    assert limits_of(dag.task_dict["each__1"]) == (None, 3)


def test_partial_sets_them_on_the_mapped_task_and_checks_them() -> None:
    with DAG("d", start_date=START):
        mapped = BashOperator.partial(
            task_id="m", max_active_tis_per_dag=6, max_active_tis_per_dagrun=2,
        ).expand(bash_command=["echo 1", "echo 2"])
        with pytest.raises(DagDefinitionError,
                           match="task 'bad': max_active_tis_per_dagrun must be a positive"):
            BashOperator.partial(task_id="bad", max_active_tis_per_dagrun=0).expand(
                bash_command=["true"])
    assert limits_of(mapped) == (6, 2)
    # its instances are built as ever (the engine reads the limits off the mapped task)
    instance = mapped.unmap(1, ResolvedInput(("bash_command",), (["echo 1", "echo 2"],), 2))
    assert instance.bash_command == "echo 2"


@pytest.mark.parametrize("name", LIMITS)
def test_they_cannot_be_mapped(name: str) -> None:
    with DAG("d", start_date=START) as dag:
        with pytest.raises(DagDefinitionError, match=f"task 'e': {name} cannot be mapped"):
            BashOperator.partial(task_id="e", bash_command="true").expand(**{name: [1, 2]})
        with pytest.raises(DagDefinitionError, match=f"task 'k': {name} cannot be mapped"):
            BashOperator.partial(task_id="k").expand_kwargs(
                [{"bash_command": "true", name: 1}])
        late = BashOperator.partial(task_id="late").expand_kwargs(
            [{"bash_command": "true"}])
    assert dag.task_ids == ["late"]
    # expand_kwargs over an upstream's output: refused as the instance is built
    resolved = ResolvedInput((), ([{"bash_command": "true", name: 1}],), 1)
    with pytest.raises(ExpandError, match=f"task 'late': {name} cannot be mapped"):
        late.unmap(0, resolved)


def test_the_dag_structure_shows_the_limits_that_are_set() -> None:
    with DAG("d", start_date=START) as dag:
        EmptyOperator(task_id="plain")
        EmptyOperator(task_id="per_dag", max_active_tis_per_dag=2)
        BashOperator.partial(task_id="mapped", max_active_tis_per_dagrun=3).expand(
            bash_command=["true"])
    shown = {t["task_id"]: t for t in dag.structure()["tasks"]}
    assert not set(LIMITS) & set(shown["plain"])
    assert shown["per_dag"]["max_active_tis_per_dag"] == 2
    assert "max_active_tis_per_dagrun" not in shown["per_dag"]
    assert shown["mapped"]["max_active_tis_per_dagrun"] == 3
