"""Trigger rules end to end: real Orchestrator, real SQLite file, real bash subprocesses.

Upstream tasks succeed, fail (an exception or `exit 1`), are skipped (SkipTask or
`exit 99`) or end upstream_failed; the join task's state, whether it ran, and the run's
final state (failed iff a leaf ended failed/upstream_failed) are checked.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, BashOperator, PythonOperator, SkipTask, TriggerRule
from aflow.authoring.baseoperator import BaseOperator
from tests.conftest import run_dag

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)
R = TriggerRule


def _ok() -> str:
    return "ok"


def _fail() -> None:
    raise ValueError("upstream boom")


def _skip() -> None:
    raise SkipTask("nothing to do")


async def _async_skip() -> None:
    raise SkipTask("nothing to do, async")


def recorder(ran: list[str], task_id: str) -> Callable[[], str]:
    def record() -> str:
        ran.append(task_id)
        return task_id

    return record


def upstream(kind: str, task_id: str) -> BaseOperator:
    """A task (inside the current DAG) that ends in the state `kind` describes."""
    if kind == "ok":
        return PythonOperator(task_id=task_id, python_callable=_ok)
    if kind == "fail":
        return PythonOperator(task_id=task_id, python_callable=_fail)
    if kind == "skip":
        return PythonOperator(task_id=task_id, python_callable=_skip)
    if kind == "async_skip":
        return PythonOperator(task_id=task_id, python_callable=_async_skip)
    if kind == "bash_skip":
        return BashOperator(task_id=task_id, bash_command="echo skipping; exit 99")
    if kind == "bash_fail":
        return BashOperator(task_id=task_id, bash_command="echo failing; exit 1")
    if kind == "upfail":  # a failing root makes this one upstream_failed
        root = PythonOperator(task_id=f"{task_id}_root", python_callable=_fail)
        t = PythonOperator(task_id=task_id, python_callable=_ok)
        root >> t
        return t
    raise AssertionError(kind)


END_STATE = {
    "ok": "success",
    "fail": "failed",
    "bash_fail": "failed",
    "skip": "skipped",
    "async_skip": "skipped",
    "bash_skip": "skipped",
    "upfail": "upstream_failed",
}

# (rule, upstream outcomes, the join's expected end state)
CASES: list[tuple[TriggerRule, tuple[str, ...], str]] = [
    (R.ALL_SUCCESS, ("ok", "ok"), "success"),
    (R.ALL_SUCCESS, ("ok", "fail"), "upstream_failed"),
    (R.ALL_SUCCESS, ("ok", "bash_fail"), "upstream_failed"),
    (R.ALL_SUCCESS, ("ok", "skip"), "skipped"),
    (R.ALL_SUCCESS, ("ok", "bash_skip"), "skipped"),
    # all_success decides on the first skip or failure it sees, as Airflow's does: which
    # one that is follows the order the upstreams end in (one at a time here, see below)
    (R.ALL_SUCCESS, ("fail", "skip"), "upstream_failed"),
    (R.ALL_SUCCESS, ("skip", "fail"), "skipped"),
    (R.ALL_SUCCESS, ("ok", "upfail"), "upstream_failed"),
    (R.ALL_FAILED, ("fail", "bash_fail"), "success"),
    (R.ALL_FAILED, ("fail", "upfail"), "success"),
    (R.ALL_FAILED, ("fail", "ok"), "skipped"),
    (R.ALL_FAILED, ("fail", "skip"), "skipped"),
    (R.ALL_DONE, ("ok", "fail", "skip", "upfail"), "success"),
    (R.ALL_DONE, ("bash_fail", "bash_skip"), "success"),
    # with no setup upstream it is all_done (with setups: test_task_groups_setup_teardown.py)
    (R.ALL_DONE_SETUP_SUCCESS, ("ok", "fail", "skip"), "success"),
    (R.ALL_SKIPPED, ("skip", "bash_skip", "async_skip"), "success"),
    (R.ALL_SKIPPED, ("skip", "ok"), "skipped"),
    (R.ALL_SKIPPED, ("skip", "fail"), "skipped"),
    (R.ALL_SKIPPED, ("skip", "upfail"), "skipped"),
    (R.ONE_SUCCESS, ("ok", "fail", "skip"), "success"),
    (R.ONE_SUCCESS, ("fail", "skip"), "upstream_failed"),
    (R.ONE_SUCCESS, ("upfail", "bash_fail"), "upstream_failed"),
    (R.ONE_SUCCESS, ("skip", "bash_skip"), "skipped"),
    (R.ONE_FAILED, ("ok", "fail"), "success"),
    (R.ONE_FAILED, ("ok", "upfail"), "success"),
    (R.ONE_FAILED, ("ok", "skip"), "skipped"),
    (R.ONE_FAILED, ("ok", "ok"), "skipped"),
    (R.ONE_DONE, ("fail", "skip"), "success"),
    (R.ONE_DONE, ("ok", "bash_skip"), "success"),
    (R.ONE_DONE, ("skip", "upfail"), "skipped"),
    (R.ONE_DONE, ("skip", "bash_skip"), "skipped"),
    (R.NONE_FAILED, ("ok", "skip"), "success"),
    (R.NONE_FAILED, ("skip", "bash_skip"), "success"),
    (R.NONE_FAILED, ("ok", "fail"), "upstream_failed"),
    (R.NONE_FAILED, ("ok", "upfail"), "upstream_failed"),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, ("ok", "skip"), "success"),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, ("skip", "bash_skip"), "skipped"),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, ("ok", "bash_fail"), "upstream_failed"),
    (R.NONE_SKIPPED, ("ok", "fail"), "success"),
    (R.NONE_SKIPPED, ("ok", "upfail"), "success"),
    (R.NONE_SKIPPED, ("ok", "skip"), "skipped"),
    (R.NONE_SKIPPED, ("fail", "bash_skip"), "skipped"),
    (R.ALWAYS, ("fail", "skip"), "success"),
    (R.ALWAYS, ("upfail", "ok"), "success"),
]


def test_every_rule_is_covered() -> None:
    assert {rule for rule, _, _ in CASES} == set(TriggerRule)
    assert {state for _, _, state in CASES} == {"success", "skipped", "upstream_failed"}


@pytest.mark.parametrize(
    ("rule", "outcomes", "expected"),
    CASES,
    ids=[f"{r.value}-{'+'.join(o)}" for r, o, _ in CASES],
)
async def test_join_after_mixed_upstream(
    home: Path, rule: TriggerRule, outcomes: tuple[str, ...], expected: str
) -> None:
    ran: list[str] = []
    # One try at a time, in the order listed: each upstream's end is counted before the
    # next one starts, so a rule that decides early sees them in a known order.
    with DAG("tr", start_date=START, max_active_tasks=1) as dag:
        ups = [upstream(kind, f"up{i}") for i, kind in enumerate(outcomes)]
        for i, up in enumerate(ups):
            up.priority_weight = len(ups) - i  # (the first listed starts first)
        join = PythonOperator(
            task_id="join", python_callable=recorder(ran, "join"), trigger_rule=rule
        )
        ups >> join

    result = await run_dag(dag, home)

    for i, kind in enumerate(outcomes):
        assert result.ti_state(f"up{i}") == END_STATE[kind], (i, kind, result.states())
    assert result.ti_state("join") == expected, result.states()
    assert ran == (["join"] if expected == "success" else [])
    # The join is the only leaf: the run fails iff it ended upstream_failed.
    assert result.state == ("failed" if expected == "upstream_failed" else "success")
    join_ti = result.tis["join"]
    assert join_ti.try_number == (1 if expected == "success" else 0)
    assert join_ti.end_date is not None


# -- early decisions ----------------------------------------------------------------------
# One upstream ends at once (`fast`), the other (`slow`) waits on a gate that only the
# join's all_done watcher opens: the join must be decided while `slow` still runs.
EARLY: list[tuple[TriggerRule, str, str]] = [
    (R.ALL_SUCCESS, "fail", "upstream_failed"),
    (R.ALL_SUCCESS, "skip", "skipped"),
    (R.ALL_FAILED, "ok", "skipped"),
    (R.ALL_FAILED, "skip", "skipped"),
    (R.ALL_SKIPPED, "ok", "skipped"),
    (R.ALL_SKIPPED, "fail", "skipped"),
    (R.ONE_SUCCESS, "ok", "success"),
    (R.ONE_FAILED, "fail", "success"),
    (R.ONE_FAILED, "upfail", "success"),
    (R.ONE_DONE, "ok", "success"),
    (R.ONE_DONE, "bash_fail", "success"),
    (R.NONE_FAILED, "fail", "upstream_failed"),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, "bash_fail", "upstream_failed"),
    (R.NONE_SKIPPED, "bash_skip", "skipped"),
]


@pytest.mark.parametrize(
    ("rule", "fast", "expected"), EARLY, ids=[f"{r.value}-{f}" for r, f, _ in EARLY]
)
async def test_early_decision_does_not_wait_for_running_upstream(
    home: Path, rule: TriggerRule, fast: str, expected: str
) -> None:
    gate = anyio.Event()
    ran: list[str] = []

    async def slow() -> str:
        with anyio.fail_after(10):  # a missing early decision deadlocks until here
            await gate.wait()
        return "slow done"

    async def open_gate() -> None:
        ran.append("watcher")
        gate.set()

    with DAG("early", start_date=START) as dag:
        f = upstream(fast, "fast")
        s = PythonOperator(task_id="slow", python_callable=slow)
        join = PythonOperator(
            task_id="join", python_callable=recorder(ran, "join"), trigger_rule=rule
        )
        watcher = PythonOperator(
            task_id="watcher", python_callable=open_gate, trigger_rule=R.ALL_DONE
        )
        [f, s] >> join >> watcher

    result = await run_dag(dag, home)

    assert result.ti_state("slow") == "success", result.log("slow")
    assert result.ti_state("join") == expected
    assert result.ti_state("watcher") == "success"
    assert ran == (["join", "watcher"] if expected == "success" else ["watcher"])
    join_end = result.tis["join"].end_date
    slow_end = result.tis["slow"].end_date
    assert join_end is not None and slow_end is not None and join_end <= slow_end
    # The only leaf (watcher) succeeded, so the run succeeded even with failures upstream.
    assert result.state == "success"


async def test_always_runs_before_its_upstream_ends(home: Path) -> None:
    gate = anyio.Event()

    async def blocked() -> str:
        with anyio.fail_after(10):
            await gate.wait()
        return "released"

    async def always() -> str:
        gate.set()
        return "ran"

    with DAG("always_first", start_date=START) as dag:
        b = PythonOperator(task_id="blocked", python_callable=blocked)
        a = PythonOperator(task_id="always", python_callable=always, trigger_rule=R.ALWAYS)
        b >> a

    result = await run_dag(dag, home)
    assert result.states() == {"blocked": "success", "always": "success"}
    assert result.state == "success"


# -- propagation over several levels -------------------------------------------------------
def _chain(first: BaseOperator, rules: list[TriggerRule], ran: list[str]) -> list[BaseOperator]:
    tasks = [first]
    for i, rule in enumerate(rules, start=1):
        t = PythonOperator(
            task_id=f"l{i}", python_callable=recorder(ran, f"l{i}"), trigger_rule=rule
        )
        tasks[-1] >> t
        tasks.append(t)
    return tasks


async def test_upstream_failed_propagates_through_levels(home: Path) -> None:
    ran: list[str] = []
    with DAG("uf_chain", start_date=START) as dag:
        first = upstream("fail", "l0")
        _chain(first, [R.ALL_SUCCESS, R.ALL_SUCCESS, R.NONE_FAILED, R.ALL_SUCCESS], ran)

    result = await run_dag(dag, home)
    assert result.states() == {
        "l0": "failed",
        "l1": "upstream_failed",
        "l2": "upstream_failed",
        "l3": "upstream_failed",
        "l4": "upstream_failed",
    }
    assert ran == []
    assert result.state == "failed"
    assert all(result.tis[f"l{i}"].try_number == 0 for i in range(1, 5))


@pytest.mark.parametrize("kind", ["skip", "bash_skip", "async_skip"])
async def test_skip_propagates_through_levels(home: Path, kind: str) -> None:
    ran: list[str] = []
    with DAG("skip_chain", start_date=START) as dag:
        first = upstream(kind, "l0")
        _chain(first, [R.ALL_SUCCESS, R.NONE_SKIPPED, R.ALL_SUCCESS], ran)

    result = await run_dag(dag, home)
    assert result.states() == {f"l{i}": "skipped" for i in range(4)}
    assert ran == []
    assert result.state == "success"  # skipped leaves do not fail a run


async def test_skip_stops_at_none_failed_and_the_rest_runs(home: Path) -> None:
    ran: list[str] = []
    with DAG("skip_then_run", start_date=START) as dag:
        first = upstream("bash_skip", "l0")
        _chain(first, [R.ALL_SUCCESS, R.ALL_SUCCESS, R.NONE_FAILED, R.ALL_SUCCESS], ran)

    result = await run_dag(dag, home)
    assert result.states() == {
        "l0": "skipped",
        "l1": "skipped",
        "l2": "skipped",
        "l3": "success",
        "l4": "success",
    }
    assert ran == ["l3", "l4"]
    assert result.state == "success"


async def test_upstream_failed_chain_rescued_by_all_done(home: Path) -> None:
    ran: list[str] = []
    with DAG("rescue", start_date=START) as dag:
        first = upstream("bash_fail", "l0")
        _chain(first, [R.ALL_SUCCESS, R.ALL_SUCCESS, R.ALL_DONE, R.ALL_SUCCESS], ran)

    result = await run_dag(dag, home)
    assert result.states() == {
        "l0": "failed",
        "l1": "upstream_failed",
        "l2": "upstream_failed",
        "l3": "success",
        "l4": "success",
    }
    assert ran == ["l3", "l4"]
    assert result.state == "success"  # the only leaf succeeded


async def test_one_failed_runs_after_an_upstream_failed_chain(home: Path) -> None:
    ran: list[str] = []
    with DAG("cleanup", start_date=START) as dag:
        first = upstream("fail", "l0")
        _chain(first, [R.ALL_SUCCESS, R.ONE_FAILED, R.ALL_SUCCESS], ran)

    result = await run_dag(dag, home)
    assert result.states() == {
        "l0": "failed",
        "l1": "upstream_failed",
        "l2": "success",
        "l3": "success",
    }
    assert ran == ["l2", "l3"]
    assert result.state == "success"


async def test_wide_fan_in_join_decided_once(home: Path) -> None:
    """A join after many parallel tasks runs exactly once, after all of them."""
    ran: list[str] = []
    with DAG("fan", start_date=START) as dag:
        ups = [upstream("ok", f"u{i}") for i in range(40)]
        skips = [upstream("skip", f"s{i}") for i in range(5)]
        join = PythonOperator(
            task_id="join",
            python_callable=recorder(ran, "join"),
            trigger_rule=R.NONE_FAILED_MIN_ONE_SUCCESS,
        )
        ups + skips >> join
        after = PythonOperator(task_id="after", python_callable=recorder(ran, "after"))
        join >> after

    result = await run_dag(dag, home)
    assert ran == ["join", "after"]
    join_start = result.tis["join"].start_date
    assert join_start is not None
    for i in range(40):
        end = result.tis[f"u{i}"].end_date
        assert end is not None and end <= join_start
    assert result.state == "success"


# -- the run's final state ---------------------------------------------------------------
Build = Callable[[list[str]], None]


def _leaf_failed(ran: list[str]) -> None:
    a = upstream("ok", "a")
    a >> [
        upstream("fail", "leaf_fail"),
        PythonOperator(task_id="leaf_ok", python_callable=recorder(ran, "leaf_ok")),
    ]


def _leaf_upstream_failed(ran: list[str]) -> None:
    upstream("ok", "other_leaf")
    upstream("upfail", "leaf")


def _leaf_skipped(ran: list[str]) -> None:
    upstream("ok", "leaf_ok")
    upstream("bash_skip", "leaf_skip")


def _failure_not_at_leaf(ran: list[str]) -> None:
    f = upstream("fail", "mid")
    f >> PythonOperator(
        task_id="leaf", python_callable=recorder(ran, "leaf"), trigger_rule=R.ALL_DONE
    )


def _all_failed_leaf_ran(ran: list[str]) -> None:
    f = upstream("fail", "mid")
    f >> PythonOperator(
        task_id="leaf", python_callable=recorder(ran, "leaf"), trigger_rule=R.ALL_FAILED
    )


def _bash_leaf_failed(ran: list[str]) -> None:
    a = upstream("ok", "a")
    a >> upstream("bash_fail", "leaf")


RUN_STATE_CASES: list[tuple[str, Build, str]] = [
    ("leaf_failed", _leaf_failed, "failed"),
    ("leaf_upstream_failed", _leaf_upstream_failed, "failed"),
    ("leaf_skipped", _leaf_skipped, "success"),
    ("failure_not_at_leaf", _failure_not_at_leaf, "success"),
    ("all_failed_leaf_ran", _all_failed_leaf_ran, "success"),
    ("bash_leaf_failed", _bash_leaf_failed, "failed"),
]


@pytest.mark.parametrize(
    ("build", "expected"),
    [(b, e) for _, b, e in RUN_STATE_CASES],
    ids=[name for name, _, _ in RUN_STATE_CASES],
)
async def test_run_state_follows_the_leaves(home: Path, build: Build, expected: str) -> None:
    ran: list[str] = []
    with DAG("leaves", start_date=START) as dag:
        build(ran)

    result = await run_dag(dag, home)
    leaves = {t.task_id for t in dag.leaves}
    bad_leaf = any(result.ti_state(t) in ("failed", "upstream_failed") for t in leaves)
    assert result.state == ("failed" if bad_leaf else "success")
    assert result.state == expected, result.states()
    assert result.run.end_date is not None
    assert all(
        state in ("success", "failed", "skipped", "upstream_failed")
        for state in result.states().values()
    )


async def test_failed_run_is_recorded_in_the_store(orchestrator_factory: Any) -> None:
    with DAG("stored", start_date=START) as dag:
        upstream("fail", "a") >> upstream("ok", "b")

    o = await orchestrator_factory([dag])
    handle = await o.trigger("stored")
    final = await handle.wait(timeout=30)
    stored = await o.store.get_run("stored", handle.run_id)
    assert stored is not None
    assert final.state.value == stored.state.value == "failed"
    tis = {t.task_id: t for t in await o.store.get_tis("stored", handle.run_id)}
    assert tis["a"].state.value == "failed"
    assert "upstream boom" in (tis["a"].error or "")
    assert tis["b"].state.value == "upstream_failed"
