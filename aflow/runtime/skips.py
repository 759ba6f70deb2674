"""What a branch's or short circuit's choice, and a teardown's setups, add to a trigger
rule's decision, and which tasks decide a run's state.

The choice of a branch or short-circuit task is an XCom (`skipmixin_key`, see
aflow.authoring.operators.branch) committed with the task's end, so deciding on it needs
only committed state: a run adopted after a crash decides its `none` TIs exactly as the
dead owner would have.

- A direct downstream task of a branch is skipped when the branch did not follow it, nor
  any task upstream of it (Airflow: a join right after the branch that is also after a
  followed task is not skipped).
- A falsy short circuit skips its direct downstream tasks, and with
  ignore_downstream_trigger_rules every task downstream of it.
- Teardowns are never skipped by a choice: their own rule decides them.
- A teardown (rule all_done_setup_success) runs once its upstream tasks are done if one
  of its setups succeeded; when all its setups were skipped it is skipped, when none
  succeeded it is upstream_failed. Its setups are the setup tasks reached going upstream
  from it through tasks that are neither setups nor teardowns.
- A run's state comes from its leaves, not counting teardowns (unless
  `on_failure_fail_dagrun`): a task whose only downstream tasks are such teardowns
  counts as a leaf.

Everything that depends only on the DAG is computed once per DAG object (`plan_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aflow.authoring.operators.branch import (
    SKIPMIXIN_KEY,
    BranchMixIn,
    ShortCircuitOperator,
)
from aflow.runtime.trigger_rules import Decision
from aflow.runtime.xcom import XComView
from aflow.states import TaskState, TriggerRule

_PLAN_ATTR = "_aflow_skip_plan"


@dataclass(slots=True)
class SkipPlan:
    # task id -> the branch / short-circuit tasks whose choice may skip it
    skippers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # teardown task id -> its setups
    setups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # setup task id -> the teardowns it is not directly upstream of (decided again when
    # it ends: their upstream counts do not hear of it)
    indirect_teardowns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # the tasks whose end states decide the run's state
    leaves: tuple[str, ...] = ()
    # (branch id, followed ids) -> the direct downstream task ids that choice skips
    branch_skips: dict[tuple[str, tuple[str, ...]], frozenset[str]] = field(default_factory=dict)


def plan_for(dag: Any) -> SkipPlan:
    """The DAG's plan, made on first use (a DAG does not change once it runs)."""
    plan = dag.__dict__.get(_PLAN_ATTR)
    if plan is None or plan[0] != len(dag.task_dict):
        plan = (len(dag.task_dict), _make_plan(dag))
        dag.__dict__[_PLAN_ATTR] = plan
    return plan[1]


def _descendants(dag: Any, start: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(start)
    while stack:
        tid = stack.pop()
        for down in dag.task_dict[tid].downstream_task_ids:
            if down not in seen:
                seen.add(down)
                stack.append(down)
    return seen


def _make_plan(dag: Any) -> SkipPlan:
    plan = SkipPlan()
    skippers: dict[str, list[str]] = {}
    for task in dag.task_dict.values():
        if isinstance(task, BranchMixIn):
            reach: Iterable[str] = task.downstream_task_ids
        elif isinstance(task, ShortCircuitOperator):
            reach = _descendants(dag, [task.task_id])
        else:
            continue
        for tid in reach:
            if not dag.task_dict[tid].is_teardown:
                skippers.setdefault(tid, []).append(task.task_id)
    plan.skippers = {k: tuple(v) for k, v in skippers.items()}
    indirect: dict[str, list[str]] = {}
    for task in dag.task_dict.values():
        if task.trigger_rule is TriggerRule.ALL_DONE_SETUP_SUCCESS:
            plan.setups[task.task_id] = tuple(sorted(_setups_of(dag, task)))
            for setup in plan.setups[task.task_id]:
                if setup not in task.upstream_task_ids:
                    indirect.setdefault(setup, []).append(task.task_id)
    plan.indirect_teardowns = {k: tuple(sorted(v)) for k, v in indirect.items()}
    plan.leaves = tuple(t.task_id for t in run_leaves(dag))
    return plan


def _setups_of(dag: Any, teardown: Any) -> set[str]:
    found: set[str] = set()
    seen: set[str] = set()
    stack = list(teardown.upstream_task_ids)
    while stack:
        tid = stack.pop()
        if tid in seen:
            continue
        seen.add(tid)
        task = dag.task_dict[tid]
        if task.is_setup:
            found.add(tid)
        elif not task.is_teardown:
            stack.extend(task.upstream_task_ids)
    return found


def run_leaves(dag: Any) -> list[Any]:
    """The tasks whose end states decide a run's state (Airflow's effective leaves)."""

    def counts(task: Any) -> bool:
        return not task.is_teardown or task.on_failure_fail_dagrun

    leaves = [
        t for t in dag.task_dict.values()
        if counts(t) and not any(counts(dag.task_dict[d]) for d in t.downstream_task_ids)
    ]
    return leaves or list(dag.leaves)


def leaf_ids(dag: Any) -> tuple[str, ...]:
    return plan_for(dag).leaves


def indirect_teardowns(dag: Any, task_id: str) -> tuple[str, ...]:
    """The teardowns to decide again when setup `task_id` ends (see SkipPlan)."""
    return plan_for(dag).indirect_teardowns.get(task_id, ())


def override(
    dag: Any,
    task_id: str,
    decision: Decision,
    xcoms: XComView,
    states_of: Callable[[str], list[TaskState]],
) -> Decision:
    """`decision` (the trigger rule's, on the upstream counts) for the `none` TI of
    `task_id`, changed by a committed branch / short-circuit choice or by the outcome
    of a teardown's setups."""
    plan = plan_for(dag)
    for skipper in plan.skippers.get(task_id, ()):
        if states_of(skipper) != [TaskState.SUCCESS]:
            continue
        choice = xcoms.get(skipper, SKIPMIXIN_KEY)
        if isinstance(choice, dict) and _choice_skips(dag, plan, skipper, task_id, choice):
            return Decision.SKIP
    setups = plan.setups.get(task_id)
    if setups and decision is Decision.RUN:
        # (a mapped setup counts each of its instances: one that succeeded is enough)
        return _setups_decision([state for s in setups for state in states_of(s)])
    return decision


def _choice_skips(dag: Any, plan: SkipPlan, skipper: str, task_id: str, choice: dict[str, Any]) -> bool:
    direct = task_id in dag.task_dict[skipper].downstream_task_ids
    if choice.get("short_circuit"):
        return direct or bool(choice.get("ignore_downstream_trigger_rules"))
    followed = choice.get("followed")
    if not isinstance(followed, list) or not direct:
        return False
    key = (skipper, tuple(followed))
    skipped = plan.branch_skips.get(key)
    if skipped is None:
        known = [f for f in followed if f in dag.task_dict]
        kept = set(known) | _descendants(dag, known)
        skipped = frozenset(
            d for d in dag.task_dict[skipper].downstream_task_ids if d not in kept
        )
        plan.branch_skips[key] = skipped
    return task_id in skipped


def _setups_decision(states: list[TaskState]) -> Decision:
    """A teardown whose upstream tasks are all done, on its setups' states: it waits
    while one has not ended (the work between them may have ended early: skipped, or
    upstream_failed), then runs if one succeeded, is skipped if all were skipped, and
    is upstream_failed otherwise."""
    if any(not s.finished for s in states):
        return Decision.WAIT
    if TaskState.SUCCESS in states:
        return Decision.RUN
    if all(s is TaskState.SKIPPED for s in states):
        return Decision.SKIP
    return Decision.UPSTREAM_FAILED
