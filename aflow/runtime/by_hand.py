"""Clearing and marking task instances and runs by hand: which tasks a request selects,
and the rows it writes. The Orchestrator applies them through the run driver when this
process drives the run, else in one store transaction (Store.rewrite_run)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime

from aflow.authoring.dag import DAG
from aflow.exceptions import AflowError, RunBusy, TaskNotFound
from aflow.states import FINISHED_TASK_STATES, TaskState
from aflow.store.records import TaskInstanceRecord

FAILED_STATES = frozenset({TaskState.FAILED, TaskState.UPSTREAM_FAILED})
MARK_STATES = (TaskState.SUCCESS, TaskState.FAILED)
# A run marked failed: TIs that were trying fail, the other unfinished ones are skipped.
_TRYING = frozenset({TaskState.RUNNING, TaskState.DEFERRED, TaskState.UP_FOR_RESCHEDULE})


def mark_state(state: str | TaskState) -> TaskState:
    """`success` or `failed`, else a one-line error."""
    try:
        value = TaskState(state)
    except ValueError:
        value = None
    if value not in MARK_STATES:
        raise AflowError(f"cannot mark as {state!r}: use success or failed")
    return value  # type: ignore[return-value]


def relatives(dag: DAG, task_id: str, *, downstream: bool) -> set[str]:
    """Every task after (or before) `task_id`, transitively."""
    seen: set[str] = set()
    todo = [task_id]
    while todo:
        task = dag.task_dict[todo.pop()]
        for other in task.downstream_task_ids if downstream else task.upstream_task_ids:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def select_tasks(
    dag: DAG,
    task_ids: Iterable[str] | None,
    *,
    downstream: bool = False,
    upstream: bool = False,
) -> list[str]:
    """The tasks named (every task with None), with their downstream and/or upstream
    closure, in topological order. Unknown task ids raise TaskNotFound naming them."""
    if task_ids is None:
        chosen = set(dag.task_dict)
    else:
        if isinstance(task_ids, str):
            task_ids = [task_ids]
        chosen = set(task_ids)
        unknown = sorted(chosen - set(dag.task_dict))
        if unknown:
            raise TaskNotFound(
                f"DAG {dag.dag_id!r} has no task {', '.join(repr(t) for t in unknown)}"
            )
    for task_id in list(chosen):
        if downstream:
            chosen |= relatives(dag, task_id, downstream=True)
        if upstream:
            chosen |= relatives(dag, task_id, downstream=False)
    return [t.task_id for t in dag.topological_order() if t.task_id in chosen]


def to_clear(states: dict[str, TaskState], selected: Sequence[str], *, only_failed: bool) -> list[str]:
    """Of `selected` (in order), the TIs a clear resets: those not already `none`, or with
    `only_failed` the failed and upstream_failed ones."""
    if only_failed:
        return [t for t in selected if states[t] in FAILED_STATES]
    return [t for t in selected if states[t] is not TaskState.NONE]


def refuse_busy(dag_id: str, run_id: str, states: dict[str, TaskState], task_ids: Iterable[str], what: str) -> None:
    """RunBusy naming the TIs among `task_ids` that are running or waiting right now
    (not ended, not `none`): their driver holds them in flight."""
    busy = [f"{t} ({states[t].value})" for t in task_ids
            if states[t] not in FINISHED_TASK_STATES and states[t] is not TaskState.NONE]
    if busy:
        raise RunBusy(
            f"cannot {what} task instances of run {run_id!r} of DAG {dag_id!r} that are "
            f"running or waiting right now: {', '.join(busy)}; wait until they end"
        )


def refuse_open_downstream(dag: DAG, states: dict[str, TaskState], task_ids: Sequence[str]) -> None:
    """For a clear or mark in a run another process drives (it learns of it a moment
    later): RunBusy unless every task right after a changed one has ended or is changed
    too, since until then that process could decide such a task on the old state."""
    chosen = set(task_ids)
    open_ = sorted(
        {d for t in task_ids for d in dag.task_dict[t].downstream_task_ids
         if d not in chosen and states.get(d, TaskState.NONE) not in FINISHED_TASK_STATES}
    )
    if open_:
        raise RunBusy(
            f"cannot change {', '.join(task_ids)} now: the run is driven by another process "
            f"and {', '.join(open_)}, right after them, has not ended yet; clear again once "
            "it has (with --downstream to clear it too), or once the run has ended"
        )


def cleared(ti: TaskInstanceRecord, retries: int) -> TaskInstanceRecord:
    """A TI made to run again: state `none`, its try number kept (the next try is the
    following one, with its own log), and a fresh set of retries."""
    return dataclasses.replace(
        ti,
        state=TaskState.NONE,
        max_tries=ti.try_number + retries,
        start_date=None,
        end_date=None,
        next_retry_at=None,
        next_method=None,
        next_kwargs=None,
        error=None,
    )


def cleared_rows(
    dag: DAG,
    tis: dict[str, TaskInstanceRecord],
    instances: dict[str, list[TaskInstanceRecord]],
    chosen: Sequence[str],
) -> list[TaskInstanceRecord]:
    """The rows that clear `chosen`: each task's TI back to `none`, and the instances of
    an expanded mapped task `removed` (it expands afresh when it runs again)."""
    rows = [cleared(tis[t], dag.task_dict[t].retries) for t in chosen]
    rows += [dataclasses.replace(r, state=TaskState.REMOVED) for t in chosen for r in instances.get(t, ())]
    return rows


def marked(ti: TaskInstanceRecord, state: TaskState, now: datetime) -> TaskInstanceRecord:
    return dataclasses.replace(
        ti,
        state=state,
        start_date=ti.start_date or now,
        end_date=now,
        next_retry_at=None,
        next_method=None,
        next_kwargs=None,
        error=None if state is TaskState.SUCCESS else "marked failed by hand",
    )


def run_mark_state(ti_state: TaskState, run_state: TaskState) -> TaskState | None:
    """What an unfinished TI becomes when its run is marked (None: it stays as it is).
    Success: every unfinished TI succeeds. Failed: TIs that were trying fail, the other
    unfinished ones are skipped. Ended TIs keep their state."""
    if ti_state in FINISHED_TASK_STATES:
        return None
    if run_state is TaskState.SUCCESS:
        return TaskState.SUCCESS
    return TaskState.FAILED if ti_state in _TRYING else TaskState.SKIPPED
