"""`decide` for every trigger rule and every relevant mix of upstream end states.

Airflow's semantics: a rule runs its task once its condition holds, waits while the
outcome can still change, and decides early (skipped / upstream_failed) as soon as the
outcome can no longer change. `always` and a task without upstream run at once.
"""

from __future__ import annotations

import itertools

import pytest

from aflow.runtime.trigger_rules import Decision, UpstreamCounts, decide
from aflow.states import TaskState, TriggerRule

R = TriggerRule
RUN, WAIT, SKIP, UF = Decision.RUN, Decision.WAIT, Decision.SKIP, Decision.UPSTREAM_FAILED


def counts(
    total: int,
    success: int = 0,
    failed: int = 0,
    upstream_failed: int = 0,
    skipped: int = 0,
    removed: int = 0,
) -> UpstreamCounts:
    c = UpstreamCounts(total=total)
    for state, n in (
        (TaskState.SUCCESS, success),
        (TaskState.FAILED, failed),
        (TaskState.UPSTREAM_FAILED, upstream_failed),
        (TaskState.SKIPPED, skipped),
        (TaskState.REMOVED, removed),
    ):
        for _ in range(n):
            c.add(state)
    assert c.done == success + failed + upstream_failed + skipped + removed
    return c


# (total, success, failed, upstream_failed, skipped) -> expected decision, per rule.
# Three upstream tasks; every case is one "interesting" point of the state space.
CASES: dict[TriggerRule, list[tuple[tuple[int, int, int, int, int], Decision]]] = {
    R.ALL_SUCCESS: [
        ((3, 0, 0, 0, 0), WAIT),
        ((3, 2, 0, 0, 0), WAIT),
        ((3, 3, 0, 0, 0), RUN),
        ((3, 0, 1, 0, 0), UF),  # early: one failure decides, the others still run
        ((3, 0, 0, 1, 0), UF),
        ((3, 2, 1, 0, 0), UF),
        ((3, 1, 0, 0, 1), SKIP),  # early skip
        ((3, 0, 0, 0, 3), SKIP),
        ((3, 0, 1, 0, 1), UF),  # a failure wins over a skip
        ((3, 1, 0, 1, 1), UF),
    ],
    R.ALL_FAILED: [
        ((3, 0, 0, 0, 0), WAIT),
        ((3, 0, 2, 0, 0), WAIT),
        ((3, 0, 3, 0, 0), RUN),
        ((3, 0, 1, 2, 0), RUN),  # upstream_failed counts as failed
        ((3, 0, 0, 3, 0), RUN),
        ((3, 1, 0, 0, 0), SKIP),  # early: one success can never become a failure
        ((3, 0, 1, 0, 1), SKIP),
        ((3, 0, 2, 0, 1), SKIP),
        ((3, 1, 2, 0, 0), SKIP),
    ],
    # its counts part only: the setups' part is in runtime/skips.py (test_branching_taskgroups)
    R.ALL_DONE_SETUP_SUCCESS: [
        ((3, 0, 0, 0, 0), WAIT),
        ((3, 1, 1, 0, 0), WAIT),
        ((3, 1, 1, 1, 0), RUN),
        ((3, 0, 3, 0, 0), RUN),
    ],
    R.ALL_DONE: [
        ((3, 0, 0, 0, 0), WAIT),
        ((3, 1, 1, 0, 0), WAIT),
        ((3, 0, 2, 0, 0), WAIT),
        ((3, 1, 1, 1, 0), RUN),
        ((3, 0, 0, 0, 3), RUN),
        ((3, 0, 3, 0, 0), RUN),
        ((3, 3, 0, 0, 0), RUN),
        ((3, 1, 0, 1, 1), RUN),
    ],
    R.ALL_SKIPPED: [
        ((3, 0, 0, 0, 0), WAIT),
        ((3, 0, 0, 0, 2), WAIT),
        ((3, 0, 0, 0, 3), RUN),
        ((3, 1, 0, 0, 0), SKIP),  # early
        ((3, 0, 1, 0, 0), SKIP),
        ((3, 0, 0, 1, 0), SKIP),
        ((3, 0, 0, 1, 2), SKIP),
        ((3, 1, 0, 0, 2), SKIP),
    ],
    R.ONE_SUCCESS: [
        ((3, 0, 0, 0, 0), WAIT),
        ((3, 1, 0, 0, 0), RUN),  # early: does not wait for the others
        ((3, 1, 2, 0, 0), RUN),
        ((3, 1, 0, 0, 2), RUN),
        ((3, 0, 2, 0, 0), WAIT),
        ((3, 0, 1, 0, 1), WAIT),
        ((3, 0, 0, 0, 2), WAIT),
        ((3, 0, 0, 0, 3), SKIP),  # all done, all skipped
        ((3, 0, 3, 0, 0), UF),  # all done, no success
        ((3, 0, 1, 0, 2), UF),
        ((3, 0, 0, 1, 2), UF),
        ((3, 0, 1, 1, 1), UF),
    ],
    R.ONE_FAILED: [
        ((3, 0, 0, 0, 0), WAIT),
        ((3, 0, 1, 0, 0), RUN),  # early
        ((3, 0, 0, 1, 0), RUN),
        ((3, 2, 1, 0, 0), RUN),
        ((3, 1, 0, 1, 1), RUN),
        ((3, 2, 0, 0, 0), WAIT),
        ((3, 1, 0, 0, 1), WAIT),
        ((3, 3, 0, 0, 0), SKIP),  # all done, none failed
        ((3, 1, 0, 0, 2), SKIP),
        ((3, 0, 0, 0, 3), SKIP),
    ],
    R.ONE_DONE: [
        ((3, 0, 0, 0, 0), WAIT),
        ((3, 1, 0, 0, 0), RUN),  # early
        ((3, 0, 1, 0, 0), RUN),
        ((3, 0, 1, 0, 2), RUN),
        ((3, 1, 0, 0, 2), RUN),
        ((3, 0, 0, 0, 2), WAIT),
        ((3, 0, 0, 1, 0), WAIT),  # upstream_failed is not "done" by running
        ((3, 0, 0, 1, 1), WAIT),
        ((3, 0, 0, 0, 3), SKIP),
        ((3, 0, 0, 2, 1), SKIP),
        ((3, 0, 0, 3, 0), SKIP),
    ],
    R.NONE_FAILED: [
        ((3, 0, 0, 0, 0), WAIT),
        ((3, 2, 0, 0, 0), WAIT),
        ((3, 1, 0, 0, 1), WAIT),
        ((3, 3, 0, 0, 0), RUN),
        ((3, 1, 0, 0, 2), RUN),
        ((3, 0, 0, 0, 3), RUN),  # all skipped still runs
        ((3, 0, 1, 0, 0), UF),  # early
        ((3, 0, 0, 1, 0), UF),
        ((3, 2, 1, 0, 0), UF),
        ((3, 0, 1, 0, 2), UF),
    ],
    R.NONE_FAILED_MIN_ONE_SUCCESS: [
        ((3, 0, 0, 0, 0), WAIT),
        ((3, 1, 0, 0, 0), WAIT),  # unlike one_success it waits for every upstream
        ((3, 1, 0, 0, 1), WAIT),
        ((3, 0, 0, 0, 2), WAIT),
        ((3, 3, 0, 0, 0), RUN),
        ((3, 1, 0, 0, 2), RUN),
        ((3, 0, 0, 0, 3), SKIP),
        ((3, 0, 1, 0, 0), UF),  # early
        ((3, 0, 0, 1, 0), UF),
        ((3, 2, 1, 0, 0), UF),
        ((3, 0, 1, 0, 2), UF),
    ],
    R.NONE_SKIPPED: [
        ((3, 0, 0, 0, 0), WAIT),
        ((3, 2, 0, 0, 0), WAIT),
        ((3, 1, 1, 0, 0), WAIT),
        ((3, 3, 0, 0, 0), RUN),
        ((3, 1, 1, 1, 0), RUN),  # failures do not matter
        ((3, 0, 3, 0, 0), RUN),
        ((3, 0, 0, 0, 1), SKIP),  # early
        ((3, 2, 0, 0, 1), SKIP),
        ((3, 0, 1, 0, 1), SKIP),
    ],
}


def _cases() -> list[tuple[TriggerRule, tuple[int, ...], Decision]]:
    return [(rule, c, expected) for rule, items in CASES.items() for c, expected in items]


@pytest.mark.parametrize(
    ("rule", "c", "expected"),
    _cases(),
    ids=[f"{r.value}-s{c[1]}f{c[2]}uf{c[3]}sk{c[4]}" for r, c, _ in _cases()],
)
def test_decide(rule: TriggerRule, c: tuple[int, int, int, int, int], expected: Decision) -> None:
    total, success, failed, upstream_failed, skipped = c
    assert decide(rule, counts(total, success, failed, upstream_failed, skipped)) is expected


def test_every_rule_except_always_has_cases() -> None:
    assert set(CASES) == set(TriggerRule) - {R.ALWAYS}


def _all_count_combinations(total: int) -> list[UpstreamCounts]:
    out = []
    for s, f, uf, sk in itertools.product(range(total + 1), repeat=4):
        if s + f + uf + sk <= total:
            out.append(counts(total, s, f, uf, sk))
    return out


@pytest.mark.parametrize("c", _all_count_combinations(3), ids=repr)
def test_always_runs_whatever_the_upstream(c: UpstreamCounts) -> None:
    assert decide(R.ALWAYS, c) is RUN


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_no_upstream_runs_at_once(rule: TriggerRule) -> None:
    assert decide(rule, UpstreamCounts(total=0)) is RUN


@pytest.mark.parametrize("rule", [r for r in TriggerRule if r is not R.ALWAYS])
def test_nothing_done_waits(rule: TriggerRule) -> None:
    assert decide(rule, UpstreamCounts(total=1)) is WAIT


# Brute-force cross-check of every rule against a direct statement of Airflow's semantics,
# on every combination of end states for 1..4 upstream tasks.
def _reference(rule: TriggerRule, c: UpstreamCounts) -> Decision:
    s, f, uf, sk, total = c.success, c.failed, c.upstream_failed, c.skipped, c.total
    done = s + f + uf + sk
    all_done = done == total
    fails = f + uf
    if rule is R.ALWAYS:
        return RUN
    if rule is R.ALL_SUCCESS:
        return UF if fails else SKIP if sk else RUN if s == total else WAIT
    if rule is R.ALL_FAILED:
        return SKIP if s or sk else RUN if fails == total else WAIT
    if rule is R.ALL_DONE or rule is R.ALL_DONE_SETUP_SUCCESS:  # (setups: test_branching_taskgroups)
        return RUN if all_done else WAIT
    if rule is R.ALL_SKIPPED:
        return SKIP if s or fails else RUN if sk == total else WAIT
    if rule is R.ONE_SUCCESS:
        if s:
            return RUN
        if not all_done:
            return WAIT
        return SKIP if sk == total else UF
    if rule is R.ONE_FAILED:
        return RUN if fails else SKIP if all_done else WAIT
    if rule is R.ONE_DONE:
        return RUN if s or f else SKIP if all_done else WAIT
    if rule is R.NONE_FAILED:
        return UF if fails else RUN if all_done else WAIT
    if rule is R.NONE_FAILED_MIN_ONE_SUCCESS:
        if fails:
            return UF
        if sk == total:
            return SKIP
        return RUN if all_done else WAIT
    if rule is R.NONE_SKIPPED:
        return SKIP if sk else RUN if all_done else WAIT
    raise AssertionError(rule)


@pytest.mark.parametrize("total", [1, 2, 3, 4])
@pytest.mark.parametrize("rule", list(TriggerRule))
def test_matches_reference_semantics(rule: TriggerRule, total: int) -> None:
    for c in _all_count_combinations(total):
        assert decide(rule, c) is _reference(rule, c), (rule, c)


@pytest.mark.parametrize("rule", [r for r in TriggerRule if r is not R.ALWAYS])
def test_once_decided_never_waits_again(rule: TriggerRule) -> None:
    """Once a rule leaves WAIT it never goes back to it as more upstream tasks end (the
    driver acts on the first decision), and every rule decides once all upstream ended."""
    states = [TaskState.SUCCESS, TaskState.FAILED, TaskState.UPSTREAM_FAILED, TaskState.SKIPPED]
    for order in itertools.product(states, repeat=3):
        c = UpstreamCounts(total=3)
        decided = False
        for state in order:
            c.add(state)
            d = decide(rule, c)
            assert not (decided and d is WAIT), (rule, order)
            decided = decided or d is not WAIT
        assert decided, (rule, order)


def test_removed_upstream_counts_as_done() -> None:
    c = counts(2, success=1, removed=1)
    assert c.done == 2
    assert decide(R.ALL_DONE, c) is RUN
    assert decide(R.NONE_FAILED, c) is RUN
    assert decide(R.ONE_SUCCESS, c) is RUN


def test_add_with_negative_delta_undoes() -> None:
    c = UpstreamCounts(total=2)
    c.add(TaskState.FAILED)
    assert decide(R.ALL_SUCCESS, c) is UF
    c.add(TaskState.FAILED, -1)
    assert c.done == 0
    assert decide(R.ALL_SUCCESS, c) is WAIT


def test_non_end_states_are_not_counted() -> None:
    c = UpstreamCounts(total=1)
    for state in (TaskState.RUNNING, TaskState.UP_FOR_RETRY, TaskState.SCHEDULED, TaskState.NONE):
        c.add(state)
    assert c.done == 0
    assert decide(R.ALL_DONE, c) is WAIT
