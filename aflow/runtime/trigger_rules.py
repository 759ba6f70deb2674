"""Trigger rules, evaluated in O(1) from running counts of upstream end states.

A task's upstream counts change only when an upstream TI reaches (or leaves) an end
state, so the run driver updates them incrementally and asks `decide` once per change:
a join after 10,000 parallel tasks costs 10,000 constant-time checks, not 10,000².
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from aflow.states import TaskState, TriggerRule


class Decision(Enum):
    WAIT = "wait"  # not decided yet
    RUN = "run"
    SKIP = "skip"  # becomes skipped
    UPSTREAM_FAILED = "upstream_failed"  # becomes upstream_failed


@dataclass(slots=True)
class UpstreamCounts:
    total: int
    success: int = 0
    failed: int = 0
    upstream_failed: int = 0
    skipped: int = 0
    removed: int = 0

    @property
    def done(self) -> int:
        return self.success + self.failed + self.upstream_failed + self.skipped + self.removed

    def add(self, state: TaskState, delta: int = 1) -> None:
        if state is TaskState.SUCCESS:
            self.success += delta
        elif state is TaskState.FAILED:
            self.failed += delta
        elif state is TaskState.UPSTREAM_FAILED:
            self.upstream_failed += delta
        elif state is TaskState.SKIPPED:
            self.skipped += delta
        elif state is TaskState.REMOVED:
            self.removed += delta


def decide(rule: TriggerRule, c: UpstreamCounts) -> Decision:
    """What a task with these upstream counts should do now, following Airflow's rules,
    including failing or skipping early once the outcome can no longer change."""
    if c.total == 0 or rule is TriggerRule.ALWAYS:
        return Decision.RUN
    all_done = c.done == c.total
    any_failed = c.failed + c.upstream_failed > 0

    if rule is TriggerRule.ALL_SUCCESS:
        if any_failed:
            return Decision.UPSTREAM_FAILED
        if c.skipped:
            return Decision.SKIP
        return Decision.RUN if c.success == c.total else Decision.WAIT
    if rule is TriggerRule.ALL_FAILED:
        if c.success or c.skipped:
            return Decision.SKIP
        return Decision.RUN if c.failed + c.upstream_failed == c.total else Decision.WAIT
    if rule is TriggerRule.ALL_DONE or rule is TriggerRule.ALL_DONE_SETUP_SUCCESS:
        # (the setups' part of all_done_setup_success is checked in runtime/skips.py)
        return Decision.RUN if all_done else Decision.WAIT
    if rule is TriggerRule.ALL_SKIPPED:
        if c.success or any_failed:
            return Decision.SKIP
        return Decision.RUN if c.skipped == c.total else Decision.WAIT
    if rule is TriggerRule.ONE_SUCCESS:
        if c.success:
            return Decision.RUN
        if all_done:
            return Decision.SKIP if c.skipped == c.done else Decision.UPSTREAM_FAILED
        return Decision.WAIT
    if rule is TriggerRule.ONE_FAILED:
        if any_failed:
            return Decision.RUN
        return Decision.SKIP if all_done else Decision.WAIT
    if rule is TriggerRule.ONE_DONE:
        if c.success or c.failed:
            return Decision.RUN
        return Decision.SKIP if all_done else Decision.WAIT
    if rule is TriggerRule.NONE_FAILED:
        if any_failed:
            return Decision.UPSTREAM_FAILED
        return Decision.RUN if all_done else Decision.WAIT
    if rule is TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS:
        if any_failed:
            return Decision.UPSTREAM_FAILED
        if not all_done:
            return Decision.WAIT
        return Decision.RUN if c.success else Decision.SKIP
    if rule is TriggerRule.NONE_SKIPPED:
        if c.skipped:
            return Decision.SKIP
        return Decision.RUN if all_done else Decision.WAIT
    raise ValueError(f"unknown trigger rule {rule!r}")
