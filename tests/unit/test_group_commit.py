"""GroupCommitter with a real in-test `apply`: order, batching, draining, failures, cancellation.

The apply function records every batch it is given and can be held on a gate, so a test
controls exactly which ops queue up behind a batch in flight. Tests wait on events and on
`anyio.wait_all_tasks_blocked()`, never on sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from aflow.store.group_commit import GroupCommitter, Op

pytestmark = pytest.mark.anyio


def op(name: str) -> Op:
    """An op whose single statement names it, so batches can be read back as names."""
    return [(name, [(name,)])]


def names(batch: list[Op]) -> list[str]:
    return [o[0][0] for o in batch]


class Recorder:
    """The apply function: records batches; optionally holds a batch until `gate` opens;
    `fail(names) -> exception | None` decides, per op, what the batch returns."""

    def __init__(
        self,
        *,
        hold_first: bool = False,
        fail: Callable[[str], BaseException | None] | None = None,
        raise_if: Callable[[list[str]], BaseException | None] | None = None,
    ) -> None:
        self.batches: list[list[str]] = []
        self.hold_first = hold_first
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        self.fail = fail or (lambda _name: None)
        self.raise_if = raise_if or (lambda _names: None)

    async def __call__(self, batch: list[Op]) -> list[BaseException | None]:
        batch_names = names(batch)
        self.batches.append(batch_names)
        if self.hold_first and len(self.batches) == 1:
            self.entered.set()
            await self.gate.wait()
        await anyio.lowlevel.checkpoint()  # a real apply awaits I/O; let others queue up
        exc = self.raise_if(batch_names)
        if exc is not None:
            raise exc
        return [self.fail(n) for n in batch_names]

    @property
    def applied(self) -> list[str]:
        return [n for b in self.batches for n in b]


@asynccontextmanager
async def running(gc: GroupCommitter) -> AsyncIterator[anyio.abc.TaskGroup]:
    """Run the writer loop; on exit close() it and wait until it has drained."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(gc.run)
        try:
            yield tg
        finally:
            gc.close()


async def test_single_op_commits_and_counts() -> None:
    rec = Recorder()
    gc = GroupCommitter(rec)
    async with running(gc):
        await gc.submit(op("a"))
        assert rec.applied == ["a"]
    assert (gc.batches, gc.ops) == (1, 1)


async def test_submission_order_is_preserved_within_and_across_batches() -> None:
    rec = Recorder(hold_first=True)
    gc = GroupCommitter(rec)
    expected = [f"op{i:03d}" for i in range(200)]
    async with running(gc) as tg:
        tg.start_soon(gc.submit, op(expected[0]))
        await rec.entered.wait()
        for name in expected[1:]:
            tg.start_soon(gc.submit, op(name))
        await anyio.wait_all_tasks_blocked()
        rec.gate.set()
    assert rec.applied == expected
    assert gc.ops == 200


async def test_ops_queued_behind_a_batch_in_flight_share_the_next_batch() -> None:
    rec = Recorder(hold_first=True)
    gc = GroupCommitter(rec)
    done: list[str] = []

    async def submit(name: str) -> None:
        await gc.submit(op(name))
        done.append(name)

    async with running(gc) as tg:
        tg.start_soon(submit, "first")
        await rec.entered.wait()
        for i in range(50):
            tg.start_soon(submit, f"q{i}")
        await anyio.wait_all_tasks_blocked()
        assert done == []  # nobody is woken before its batch committed
        rec.gate.set()
    assert rec.batches == [["first"], [f"q{i}" for i in range(50)]]
    assert (gc.batches, gc.ops) == (2, 51)
    assert sorted(done) == sorted(["first", *(f"q{i}" for i in range(50))])


async def test_batches_grow_by_themselves_under_load() -> None:
    rec = Recorder()
    gc = GroupCommitter(rec)
    async with running(gc):
        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(gc.submit, op(f"o{i}"))
    assert gc.ops == 1000
    assert gc.batches < gc.ops // 10
    assert sorted(rec.applied) == sorted(f"o{i}" for i in range(1000))


async def test_max_batch_ops_caps_a_batch() -> None:
    rec = Recorder(hold_first=True)
    gc = GroupCommitter(rec, max_batch_ops=10)
    async with running(gc) as tg:
        tg.start_soon(gc.submit, op("first"))
        await rec.entered.wait()
        for i in range(25):
            tg.start_soon(gc.submit, op(f"q{i:02d}"))
        await anyio.wait_all_tasks_blocked()
        rec.gate.set()
    assert [len(b) for b in rec.batches] == [1, 10, 10, 5]
    assert rec.applied == ["first", *(f"q{i:02d}" for i in range(25))]


async def test_close_drains_everything_queued_then_run_returns() -> None:
    rec = Recorder(hold_first=True)
    gc = GroupCommitter(rec)
    results: list[str] = []

    async def submit(name: str) -> None:
        await gc.submit(op(name))
        results.append(name)

    async with anyio.create_task_group() as tg:
        run_returned = anyio.Event()

        async def writer() -> None:
            await gc.run()
            run_returned.set()

        tg.start_soon(writer)
        tg.start_soon(submit, "first")
        await rec.entered.wait()
        for i in range(5):
            tg.start_soon(submit, f"q{i}")
        await anyio.wait_all_tasks_blocked()
        gc.close()
        # New work is refused at once; the queued work is still committed.
        with pytest.raises(RuntimeError, match="closed"):
            await gc.submit(op("late"))
        assert not run_returned.is_set()
        rec.gate.set()
        with anyio.fail_after(10):
            await run_returned.wait()
    assert rec.applied == ["first", *(f"q{i}" for i in range(5))]
    assert sorted(results) == sorted(rec.applied)


async def test_close_with_nothing_queued_returns_at_once() -> None:
    gc = GroupCommitter(Recorder())
    with anyio.fail_after(10):
        async with running(gc):
            await anyio.wait_all_tasks_blocked()
    assert (gc.batches, gc.ops) == (0, 0)


async def test_a_raising_apply_fails_every_waiter_of_that_batch_only() -> None:
    boom = RuntimeError("disk full")
    rec = Recorder(hold_first=True, raise_if=lambda ns: boom if "bad" in ns else None)
    gc = GroupCommitter(rec)
    outcomes: dict[str, BaseException | None] = {}

    async def submit(name: str) -> None:
        try:
            await gc.submit(op(name))
        except Exception as exc:
            outcomes[name] = exc
        else:
            outcomes[name] = None

    async with running(gc) as tg:
        tg.start_soon(submit, "first")
        await rec.entered.wait()
        for name in ("a", "bad", "b"):
            tg.start_soon(submit, name)
        await anyio.wait_all_tasks_blocked()
        rec.gate.set()
        await anyio.wait_all_tasks_blocked()
        # The writer survives a failed batch and goes on with the next one.
        await submit("after")
    assert rec.batches == [["first"], ["a", "bad", "b"], ["after"]]
    assert outcomes["first"] is None and outcomes["after"] is None
    for name in ("a", "bad", "b"):
        assert outcomes[name] is boom
    assert (gc.batches, gc.ops) == (3, 5)


async def test_per_op_results_fail_only_their_own_caller() -> None:
    rec = Recorder(
        hold_first=True, fail=lambda n: ValueError(f"{n} rejected") if n == "bad" else None
    )
    gc = GroupCommitter(rec)
    outcomes: dict[str, Any] = {}

    async def submit(name: str) -> None:
        try:
            await gc.submit(op(name))
            outcomes[name] = "ok"
        except ValueError as exc:
            outcomes[name] = str(exc)

    async with running(gc) as tg:
        tg.start_soon(submit, "first")
        await rec.entered.wait()
        for name in ("a", "bad", "b"):
            tg.start_soon(submit, name)
        await anyio.wait_all_tasks_blocked()
        rec.gate.set()
    assert rec.batches == [["first"], ["a", "bad", "b"]]
    assert outcomes == {"first": "ok", "a": "ok", "bad": "bad rejected", "b": "ok"}


async def test_a_waiter_cancelled_while_queued_still_has_its_op_applied() -> None:
    rec = Recorder(hold_first=True)
    gc = GroupCommitter(rec)
    scopes: list[anyio.CancelScope] = []
    finished_normally: list[str] = []

    async def submit_cancellable(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await gc.submit(op(name))
            finished_normally.append(name)

    async with running(gc) as tg:
        tg.start_soon(gc.submit, op("first"))
        await rec.entered.wait()
        tg.start_soon(submit_cancellable, "x")
        tg.start_soon(gc.submit, op("y"))
        await anyio.wait_all_tasks_blocked()
        scopes[0].cancel()
        await anyio.wait_all_tasks_blocked()
        assert scopes[0].cancelled_caught
        rec.gate.set()
    assert rec.applied == ["first", "x", "y"]
    assert finished_normally == []


async def test_a_waiter_cancelled_during_its_batch_does_not_stop_the_batch() -> None:
    rec = Recorder(hold_first=True)
    gc = GroupCommitter(rec)
    scopes: list[anyio.CancelScope] = []
    others_done: list[str] = []

    async def submit_cancellable(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await gc.submit(op(name))

    async def submit(name: str) -> None:
        await gc.submit(op(name))
        others_done.append(name)

    async with running(gc) as tg:
        tg.start_soon(submit_cancellable, "x")
        tg.start_soon(submit, "y")
        await rec.entered.wait()  # the batch [x, y] is being applied
        scopes[0].cancel()
        await anyio.wait_all_tasks_blocked()
        rec.gate.set()
    assert rec.batches == [["x", "y"]]
    assert others_done == ["y"]


async def test_cancelling_the_writer_does_not_interrupt_a_batch_in_flight() -> None:
    rec = Recorder(hold_first=True)
    gc = GroupCommitter(rec)
    done: list[str] = []

    async def submit(name: str) -> None:
        await gc.submit(op(name))
        done.append(name)

    async def open_gate() -> None:
        rec.gate.set()

    async with anyio.create_task_group() as outer:
        outer.start_soon(submit, "a")
        async with anyio.create_task_group() as writer_tg:
            writer_tg.start_soon(gc.run)
            await rec.entered.wait()
            writer_tg.cancel_scope.cancel()
            # The apply is shielded: the writer is still inside it until the gate opens.
            outer.start_soon(open_gate)
    assert rec.applied == ["a"]
    assert done == ["a"]
