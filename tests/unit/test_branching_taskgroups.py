"""TaskGroup ids and dependencies, setup/teardown marks, a branch's validation of what
it returns, and the skip / teardown decisions of aflow.runtime.skips."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from aflow import (
    DAG,
    BranchPythonOperator,
    EmptyOperator,
    ShortCircuitOperator,
    TaskGroup,
    TriggerRule,
    chain,
    setup,
    task,
    task_group,
    teardown,
)
from aflow.authoring.operators.branch import followed_ids
from aflow.exceptions import DagDefinitionError, DuplicateTaskIdError, TaskFailure
from aflow.runtime.skips import leaf_ids, override, plan_for
from aflow.runtime.trigger_rules import Decision
from aflow.runtime.xcom import XComView
from aflow.states import TaskState

START = datetime(2024, 1, 1, tzinfo=UTC)
S = TaskState


# -- TaskGroup ids ------------------------------------------------------------------------------


def test_group_prefixes_ids_and_nests() -> None:
    with DAG("ids", start_date=START) as dag:
        with TaskGroup("outer") as outer:
            EmptyOperator(task_id="t")
            with TaskGroup("inner") as inner:
                EmptyOperator(task_id="t")
        EmptyOperator(task_id="t")
    assert sorted(dag.task_ids) == ["outer.inner.t", "outer.t", "t"]
    assert inner.group_id == "outer.inner"
    assert outer.children["outer.inner"] is inner


def test_prefix_group_id_false_keeps_child_ids() -> None:
    with DAG("noprefix", start_date=START) as dag:
        with TaskGroup("outer", prefix_group_id=False):
            EmptyOperator(task_id="a")
            with TaskGroup("inner"):
                EmptyOperator(task_id="b")
    assert sorted(dag.task_ids) == ["a", "inner.b"]


def test_taskflow_ids_in_groups_get_suffixes_per_group() -> None:
    with DAG("tf_ids", start_date=START) as dag:

        @task
        def step() -> None:
            return None

        step()
        with TaskGroup("g"):
            step()
            step()
    assert sorted(dag.task_ids) == ["g.step", "g.step__1", "step"]


def test_group_errors_are_clear() -> None:
    with DAG("bad_groups", start_date=START):
        TaskGroup("g")
        with pytest.raises(DuplicateTaskIdError, match="group_id 'g' is used by more than one"):
            TaskGroup("g")
        EmptyOperator(task_id="t")
        with pytest.raises(DuplicateTaskIdError, match="group_id 't' is also a task_id"):
            TaskGroup("t")
        with pytest.raises(DagDefinitionError, match="cannot contain '.'"):
            TaskGroup("a.b")
        empty = TaskGroup("empty")
        with pytest.raises(DagDefinitionError, match="TaskGroup 'empty': it has no tasks"):
            EmptyOperator(task_id="x") >> empty


def test_dependencies_on_whole_groups() -> None:
    with DAG("deps", start_date=START) as dag:
        a = EmptyOperator(task_id="a")
        with TaskGroup("g") as g:
            r1, r2 = EmptyOperator(task_id="r1"), EmptyOperator(task_id="r2")
            mid = EmptyOperator(task_id="mid")
            [r1, r2] >> mid
        b = EmptyOperator(task_id="b")
        c = EmptyOperator(task_id="c")
        a >> g >> b
        c << g
    assert a.downstream_task_ids == {"g.r1", "g.r2"}
    assert dag.task_dict["g.mid"].downstream_task_ids == {"b", "c"}
    assert mid.upstream_task_ids == {"g.r1", "g.r2"}


def test_groups_in_lists_and_chain_use_leaves_upstream_and_roots_downstream() -> None:
    with DAG("lists", start_date=START) as dag:
        with TaskGroup("g1") as g1:
            EmptyOperator(task_id="x") >> EmptyOperator(task_id="y")
        with TaskGroup("g2") as g2:
            EmptyOperator(task_id="p") >> EmptyOperator(task_id="q")
        end = EmptyOperator(task_id="end")
        [g1, g2] >> end
        start = EmptyOperator(task_id="start")
        chain(start, g1)
    assert end.upstream_task_ids == {"g1.y", "g2.q"}
    assert start.downstream_task_ids == {"g1.x"}
    assert dag.task_dict["g1.x"].upstream_task_ids == {"start"}


def test_group_default_args_fill_over_the_dags() -> None:
    with DAG("defaults", start_date=START, default_args={"retries": 1, "pool_slots": 2}) as dag:
        with TaskGroup("g", default_args={"retries": 5}):
            with TaskGroup("h", default_args={"priority_weight": 7}):
                EmptyOperator(task_id="t")
                EmptyOperator(task_id="own", retries=0)
    t, own = dag.task_dict["g.h.t"], dag.task_dict["g.h.own"]
    assert (t.retries, t.pool_slots, t.priority_weight) == (5, 2, 7)
    assert own.retries == 0


def test_task_group_decorator_returns_the_group_or_the_functions_value() -> None:
    with DAG("deco", start_date=START) as dag:

        @task_group(group_id="work")
        def work_group() -> None:
            EmptyOperator(task_id="a") >> EmptyOperator(task_id="b")

        start = EmptyOperator(task_id="start")
        group = work_group()
        start >> group
        again = work_group()
    assert isinstance(group, TaskGroup) and group.group_id == "work"
    assert isinstance(again, TaskGroup) and again.group_id == "work__1"
    assert start.downstream_task_ids == {"work.a"}
    assert "work__1.b" in dag.task_dict


# -- setup / teardown marks ---------------------------------------------------------------------


def test_as_setup_and_as_teardown() -> None:
    with DAG("marks", start_date=START):
        s = EmptyOperator(task_id="s")
        t = EmptyOperator(task_id="t").as_teardown(setups=s, on_failure_fail_dagrun=True)
    assert s.is_setup and not s.is_teardown
    assert t.is_teardown and t.on_failure_fail_dagrun
    assert t.trigger_rule is TriggerRule.ALL_DONE_SETUP_SUCCESS
    assert t.upstream_task_ids == {"s"}
    with pytest.raises(DagDefinitionError, match="is a teardown; it cannot be a setup"):
        t.as_setup()


def test_setup_and_teardown_decorators() -> None:
    with DAG("deco_st", start_date=START) as dag:

        @setup
        def make() -> str:
            return "x"

        @teardown
        @task
        def drop(name: str) -> None:
            return None

        made = make()
        drop(made)
    assert dag.task_dict["make"].is_setup
    assert dag.task_dict["drop"].is_teardown
    assert dag.task_dict["drop"].upstream_task_ids == {"make"}


# -- a branch's choice --------------------------------------------------------------------------


def _branch_dag() -> tuple[DAG, BranchPythonOperator]:
    with DAG("br", start_date=START) as dag:
        br = BranchPythonOperator(task_id="br", python_callable=lambda: None)
        with TaskGroup("g") as g:
            EmptyOperator(task_id="one") >> EmptyOperator(task_id="two")
        br >> [EmptyOperator(task_id="a"), g]
        EmptyOperator(task_id="far") << dag.task_dict["a"]
    return dag, br


@pytest.mark.parametrize(
    ("returned", "expected"),
    [(None, []), ("a", ["a"]), (["a", "g"], ["a", "g.one"]), (("g.one",), ["g.one"]), ([], [])],
)
def test_followed_ids(returned: Any, expected: list[str]) -> None:
    _, br = _branch_dag()
    assert followed_ids(br, returned) == expected


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("far", "returned 'far', which is not a task .* directly downstream of it; its direct "
                "downstream tasks: a, g.one"),
        ("g.two", "returned 'g.two', which is not"),
        (3, "must return a task id, a list of task ids or None; it returned int 3"),
        ([1], "returned 1 \\(int\\); task ids are strings"),
    ],
)
def test_followed_ids_rejects_what_is_not_directly_downstream(returned: Any, message: str) -> None:
    _, br = _branch_dag()
    with pytest.raises(TaskFailure, match=message):
        followed_ids(br, returned)


# -- skips.override ------------------------------------------------------------------------------


def _decide(dag: DAG, task_id: str, states: dict[str, TaskState], xcoms: XComView,
            decision: Decision = Decision.WAIT) -> Decision:
    return override(dag, task_id, decision, xcoms, lambda t: [states.get(t, S.NONE)])


def test_branch_choice_skips_unfollowed_direct_downstream_only() -> None:
    with DAG("ov", start_date=START) as dag:
        br = BranchPythonOperator(task_id="br", python_callable=lambda: None)
        a, b, join = (EmptyOperator(task_id=i) for i in ("a", "b", "join"))
        br >> [a, b, join]
        a >> join
        b >> EmptyOperator(task_id="after_b")
    xcoms = XComView()
    xcoms.set_one("br", -1, "skipmixin_key", {"followed": ["a"]})
    ended = {"br": S.SUCCESS}
    assert _decide(dag, "b", ended, xcoms, Decision.RUN) is Decision.SKIP
    assert _decide(dag, "a", ended, xcoms, Decision.RUN) is Decision.RUN
    assert _decide(dag, "join", ended, xcoms) is Decision.WAIT  # after the followed a
    assert _decide(dag, "after_b", ended, xcoms) is Decision.WAIT  # its own rule decides
    # no committed choice (not ended, or no XCom): the trigger rule's decision stands
    assert _decide(dag, "b", {"br": S.RUNNING}, xcoms, Decision.RUN) is Decision.RUN
    assert _decide(dag, "b", ended, XComView(), Decision.RUN) is Decision.RUN


def test_short_circuit_choice() -> None:
    with DAG("sc_ov", start_date=START) as dag:
        sc = ShortCircuitOperator(task_id="sc", python_callable=lambda: False)
        a, deep = EmptyOperator(task_id="a"), EmptyOperator(task_id="deep", trigger_rule="all_done")
        td = EmptyOperator(task_id="td", trigger_rule="all_done").as_teardown()
        sc >> a >> deep >> td
    ended = {"sc": S.SUCCESS, "a": S.SKIPPED}
    ignore, respect = XComView(), XComView()
    ignore.set_one("sc", -1, "skipmixin_key",
                   {"short_circuit": True, "ignore_downstream_trigger_rules": True})
    respect.set_one("sc", -1, "skipmixin_key",
                    {"short_circuit": True, "ignore_downstream_trigger_rules": False})
    assert _decide(dag, "a", ended, ignore, Decision.RUN) is Decision.SKIP
    assert _decide(dag, "deep", ended, ignore, Decision.RUN) is Decision.SKIP
    assert _decide(dag, "a", ended, respect, Decision.RUN) is Decision.SKIP
    assert _decide(dag, "deep", ended, respect, Decision.RUN) is Decision.RUN
    # a teardown is never skipped by a choice (it has no setup here: it runs)
    assert _decide(dag, "td", {**ended, "deep": S.SKIPPED}, ignore, Decision.RUN) is Decision.RUN
    assert plan_for(dag).skippers["deep"] == ("sc",)


@pytest.mark.parametrize(
    ("setup_states", "expected"),
    [
        ((S.SUCCESS, S.FAILED), Decision.RUN),
        ((S.FAILED,), Decision.UPSTREAM_FAILED),
        ((S.UPSTREAM_FAILED, S.SKIPPED), Decision.UPSTREAM_FAILED),
        ((S.SKIPPED, S.SKIPPED), Decision.SKIP),
        ((S.RUNNING,), Decision.WAIT),  # it waits for a setup still running
        ((S.SUCCESS, S.RUNNING), Decision.WAIT),
    ],
)
def test_teardown_on_its_setups(setup_states: tuple[TaskState, ...], expected: Decision) -> None:
    with DAG("td", start_date=START) as dag:
        setups = [EmptyOperator(task_id=f"s{i}").as_setup() for i in range(len(setup_states))]
        work = EmptyOperator(task_id="work")
        td = EmptyOperator(task_id="td").as_teardown()
        setups >> work >> td
    states = {f"s{i}": st for i, st in enumerate(setup_states)}
    assert _decide(dag, "td", states, XComView(), Decision.RUN) is expected
    assert _decide(dag, "td", states, XComView(), Decision.WAIT) is Decision.WAIT


def test_a_teardowns_setups_stop_at_other_setups_and_teardowns() -> None:
    with DAG("pairs", start_date=START) as dag:
        s1 = EmptyOperator(task_id="s1").as_setup()
        t1 = EmptyOperator(task_id="t1").as_teardown()
        s2 = EmptyOperator(task_id="s2").as_setup()
        t2 = EmptyOperator(task_id="t2").as_teardown()
        s1 >> EmptyOperator(task_id="w1") >> t1 >> s2 >> EmptyOperator(task_id="w2") >> t2
    plan = plan_for(dag)
    assert plan.setups == {"t1": ("s1",), "t2": ("s2",)}


def test_run_leaves_leave_out_teardowns_unless_they_fail_the_run() -> None:
    with DAG("leaves", start_date=START) as dag:
        s = EmptyOperator(task_id="s").as_setup()
        w = EmptyOperator(task_id="w")
        t = EmptyOperator(task_id="t").as_teardown(setups=s)
        s >> w >> t
    assert leaf_ids(dag) == ("w",)
    with DAG("leaves_fail", start_date=START) as loud:
        s = EmptyOperator(task_id="s").as_setup()
        w = EmptyOperator(task_id="w")
        t = EmptyOperator(task_id="t").as_teardown(setups=s, on_failure_fail_dagrun=True)
        s >> w >> t
    assert leaf_ids(loud) == ("t",)
    with DAG("only_teardown", start_date=START) as alone:
        EmptyOperator(task_id="t").as_teardown()
    assert leaf_ids(alone) == ("t",)
