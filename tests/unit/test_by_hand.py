"""Which tasks a clear or a mark selects and what the rows become (aflow.runtime.by_hand)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aflow import DAG, EmptyOperator
from aflow.exceptions import AflowError, RunBusy, TaskNotFound
from aflow.runtime import by_hand
from aflow.states import TaskState
from aflow.store.records import TaskInstanceRecord

S = TaskState
NOW = datetime(2024, 1, 2, tzinfo=UTC)


def chain_dag() -> DAG:
    with DAG("x", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        a, b, c, side = (EmptyOperator(task_id=t) for t in ("a", "b", "c", "side"))
        a >> b >> c
        a >> side
    return dag


def test_select_tasks_closes_over_relatives_in_topological_order() -> None:
    dag = chain_dag()
    assert by_hand.select_tasks(dag, ["c"], upstream=True) == ["a", "b", "c"]
    assert by_hand.select_tasks(dag, "b", downstream=True) == ["b", "c"]
    assert set(by_hand.select_tasks(dag, None)) == {"a", "b", "c", "side"}
    with pytest.raises(TaskNotFound, match="has no task 'nope', 'zz'"):
        by_hand.select_tasks(dag, ["zz", "a", "nope"])


def test_to_clear_and_refuse_busy() -> None:
    states = {"a": S.SUCCESS, "b": S.FAILED, "c": S.UPSTREAM_FAILED, "side": S.NONE}
    order = ["a", "b", "c", "side"]
    assert by_hand.to_clear(states, order, only_failed=False) == ["a", "b", "c"]
    assert by_hand.to_clear(states, order, only_failed=True) == ["b", "c"]
    by_hand.refuse_busy("x", "r", states, order, "clear")  # nothing in flight
    states["side"] = S.UP_FOR_RETRY
    with pytest.raises(RunBusy, match=r"right now: side \(up_for_retry\)"):
        by_hand.refuse_busy("x", "r", states, order, "clear")


def test_cleared_and_marked_rows() -> None:
    ti = TaskInstanceRecord(dag_id="x", run_id="r", task_id="b", state=S.FAILED, try_number=3,
                            max_tries=2, start_date=NOW, end_date=NOW, error="boom",
                            next_method="go")
    c = by_hand.cleared(ti, retries=2)
    assert (c.state, c.try_number, c.max_tries, c.start_date, c.end_date, c.error,
            c.next_method) == (S.NONE, 3, 5, None, None, None, None)
    m = by_hand.marked(ti, S.SUCCESS, NOW)
    assert (m.state, m.try_number, m.end_date, m.error) == (S.SUCCESS, 3, NOW, None)
    assert by_hand.marked(ti, S.FAILED, NOW).error == "marked failed by hand"


@pytest.mark.parametrize(("ti_state", "success", "failed"), [
    (S.NONE, S.SUCCESS, S.SKIPPED),
    (S.SCHEDULED, S.SUCCESS, S.SKIPPED),
    (S.UP_FOR_RETRY, S.SUCCESS, S.SKIPPED),
    (S.RUNNING, S.SUCCESS, S.FAILED),
    (S.DEFERRED, S.SUCCESS, S.FAILED),
    (S.UP_FOR_RESCHEDULE, S.SUCCESS, S.FAILED),
    (S.FAILED, None, None),
    (S.SUCCESS, None, None),
])
def test_run_mark_state(ti_state: S, success: S | None, failed: S | None) -> None:
    assert by_hand.run_mark_state(ti_state, S.SUCCESS) is success
    assert by_hand.run_mark_state(ti_state, S.FAILED) is failed


def test_mark_state_accepts_success_and_failed_only() -> None:
    assert by_hand.mark_state("success") is S.SUCCESS
    assert by_hand.mark_state(S.FAILED) is S.FAILED
    for bad in ("skipped", "nope"):
        with pytest.raises(AflowError, match=f"cannot mark as '{bad}': use success or failed"):
            by_hand.mark_state(bad)
