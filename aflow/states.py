"""States of task instances and runs, trigger rules and run types."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class TaskState(StrEnum):
    NONE = "none"  # created, its upstream not yet satisfied
    SCHEDULED = "scheduled"  # ready, waiting for a slot
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    UP_FOR_RETRY = "up_for_retry"
    UP_FOR_RESCHEDULE = "up_for_reschedule"
    DEFERRED = "deferred"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    REMOVED = "removed"

    @property
    def finished(self) -> bool:
        return self in FINISHED_TASK_STATES


FINISHED_TASK_STATES = frozenset(
    {
        TaskState.SUCCESS,
        TaskState.FAILED,
        TaskState.SKIPPED,
        TaskState.UPSTREAM_FAILED,
        TaskState.REMOVED,
    }
)


class DagRunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (DagRunState.SUCCESS, DagRunState.FAILED)


class RunType(StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"
    BACKFILL = "backfill"
    WEBHOOK = "webhook"
    EVENT = "event"


class TriggerRule(StrEnum):
    ALL_SUCCESS = "all_success"
    ALL_FAILED = "all_failed"
    ALL_DONE = "all_done"
    ALL_SKIPPED = "all_skipped"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    ONE_DONE = "one_done"
    NONE_FAILED = "none_failed"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"
    NONE_SKIPPED = "none_skipped"
    ALWAYS = "always"
    # a teardown's: all upstream done and one of its setups succeeded (see runtime/skips.py)
    ALL_DONE_SETUP_SUCCESS = "all_done_setup_success"


class WeightRule(StrEnum):
    """How a task's effective priority weight is computed (Airflow's `weight_rule`)."""

    DOWNSTREAM = "downstream"  # its own weight plus every downstream task's (the default)
    UPSTREAM = "upstream"  # its own weight plus every upstream task's
    ABSOLUTE = "absolute"  # its own weight only


def mapped_task_state(states: Iterable[TaskState]) -> TaskState:
    """One state for the instances of a mapped task, as a clear or mark sees the task:
    the state of one that has not ended if any (so a busy one refuses the change), else
    failed, upstream_failed, skipped (all were) or success, in that order."""
    ended = []
    for state in states:
        if state not in FINISHED_TASK_STATES:
            return state
        ended.append(state)
    for state in (TaskState.FAILED, TaskState.UPSTREAM_FAILED):
        if state in ended:
            return state
    if ended and all(s is TaskState.SKIPPED for s in ended):
        return TaskState.SKIPPED
    return TaskState.SUCCESS
