"""Slots alone, with task limits (`max_active_tis_per_dag`, `max_active_tis_per_dagrun`):
they hold, waiting tries keep their priority order, a parked try starts when a try of
its own key ends, a try that returns (as a deferral does) frees its task's limit, and a
parked try costs a few heap operations, not a scan per release."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aflow.runtime.slots import Slots, task_limits
from aflow.store.records import PoolRecord
from tests.unit.slots_helpers import Holder, until
from tests.unit.slots_helpers import Tracker as BaseTracker

pytestmark = pytest.mark.anyio


class Tracker(BaseTracker):
    """With `end`: let a try end and wait for the next ones to start."""

    async def end(self, name: str, then_started: int) -> None:
        """Let `name` end, and wait until `then_started` tries have started in all."""
        self.gates[name].set()
        await until(lambda: len(self.started) >= then_started)
        await settle()


async def settle() -> None:
    """Let every worker that can take a try take it."""
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


def no_task_limit_state_left(slots: Slots) -> bool:
    """Nothing is kept per task key once its tries have ended (one key per run of a
    limited task would otherwise stay forever)."""
    return not (slots._per_key or slots._key_wait)  # noqa: SLF001


def per_run(run_id: str, limit: int | None, per_dag: int | None = None) -> Any:
    return task_limits("d", run_id, "t", per_dag, limit)


async def test_task_limits_hold_across_runs_and_within_a_run() -> None:
    """Task t: at most 3 of its tries at once in all, at most 2 in one run; 3 runs of 5
    tries each, with slots for all of them."""
    t = Tracker()
    async with anyio.create_task_group() as tg:
        slots = Slots(32, tg)
        names = []
        for r in range(3):
            for i in range(5):
                name = f"r{r}.{i}"
                names.append(name)
                slots.submit("d", 1, 100, t.start(name, "dag", f"run{r}"),
                             limits=per_run(f"r{r}", 2, per_dag=3))
        await until(lambda: len(t.started) == 3)
        await settle()
        assert len(t.started) == 3 and slots.running == 3 and slots.waiting == 12
        for name in names:
            t.gates[name].set()
            await anyio.lowlevel.checkpoint()
        await until(lambda: t.done == 15)
        assert t.peak["dag"] == 3
        assert max(t.peak[f"run{r}"] for r in range(3)) == 2
        assert slots.running == 0 and slots.waiting == 0 and no_task_limit_state_left(slots)
        tg.cancel_scope.cancel()


async def test_parked_tries_keep_their_priority_and_do_not_hold_up_others() -> None:
    """Two slots; task k may run one try at a time. Its waiting tries (weights 5, 7, 7)
    let the lower-weight y and w go first while k0 runs, and when k0 ends its next try
    is the heaviest, the earlier of a tie first, ahead of a lighter try waiting."""
    t = Tracker()
    k = per_run("r", 1)
    async with anyio.create_task_group() as tg:
        slots = Slots(2, tg)
        slots.submit("d", 1, 100, t.start("k0", "k"), limits=k)
        slots.submit("d", 1, 100, t.start("z"))
        await until(lambda: len(t.started) == 2)
        slots.submit("d", 5, 100, t.start("k1", "k"), limits=k)
        slots.submit("d", 7, 100, t.start("k2", "k"), limits=k)
        slots.submit("d", 7, 100, t.start("k3", "k"), limits=k)
        slots.submit("d", 6, 100, t.start("y"))
        slots.submit("d", 2, 100, t.start("w"))
        await t.end("z", 3)
        assert t.started[2:] == ["y"]  # the heavier k tries wait for k0, y goes on
        await t.end("k0", 4)
        assert t.started[3:] == ["k2"]  # k is free: its heaviest (and first) try, not w
        await t.end("y", 5)
        assert t.started[4:] == ["w"]  # k2 holds k: w
        await t.end("k2", 6)
        assert t.started[5:] == ["k3"]
        await t.end("w", 6)
        await t.end("k3", 7)
        assert t.started == ["k0", "z", "y", "k2", "w", "k3", "k1"]
        assert t.peak["k"] == 1
        t.gates["k1"].set()
        await until(lambda: t.done == 7)
        assert no_task_limit_state_left(slots)
        tg.cancel_scope.cancel()


async def test_a_parked_try_starts_when_a_try_of_its_own_key_ends() -> None:
    """Per-DAG limit 2 on task t: a third try, of another run, waits for one of the two
    to end, and the end of a try of another task does not start it."""
    t = Tracker()
    async with anyio.create_task_group() as tg:
        slots = Slots(8, tg)
        slots.submit("d", 1, 100, t.start("other"))
        slots.submit("d", 1, 100, t.start("a", "t"), limits=task_limits("d", "r1", "t", 2, None))
        slots.submit("d", 1, 100, t.start("b", "t"), limits=task_limits("d", "r1", "t", 2, None))
        slots.submit("d", 1, 100, t.start("c", "t"), limits=task_limits("d", "r2", "t", 2, None))
        # another DAG's task of the same id is another key
        slots.submit("e", 1, 100, t.start("e"), limits=task_limits("e", "r1", "t", 2, None))
        await until(lambda: len(t.started) == 4)
        await settle()
        assert sorted(t.started) == ["a", "b", "e", "other"]
        await t.end("other", 4)
        assert "c" not in t.started
        await t.end("b", 5)
        assert t.started[-1] == "c" and t.peak["t"] == 2
        for name in ("a", "c", "e"):
            t.gates[name].set()
        await until(lambda: t.done == 5)
        assert no_task_limit_state_left(slots)
        tg.cancel_scope.cancel()


async def test_a_try_held_by_its_run_s_limit_lets_a_try_of_another_run_go() -> None:
    """Task t: 2 at once across runs, 1 per run. a (run 1) and x (run 2) run; b (run 1)
    and c (run 3) wait for the DAG-wide limit, b first. When x ends, b is next but its
    run's limit is full (a runs): c must take the room, not wait for a."""
    t = Tracker()
    async with anyio.create_task_group() as tg:
        slots = Slots(8, tg)

        def limits(run_id: str) -> Any:
            return task_limits("d", run_id, "t", 2, 1)

        slots.submit("d", 1, 100, t.start("a", "t"), limits=limits("r1"))
        slots.submit("d", 1, 100, t.start("x", "t"), limits=limits("r2"))
        await until(lambda: len(t.started) == 2)
        slots.submit("d", 1, 100, t.start("b", "t"), limits=limits("r1"))
        slots.submit("d", 1, 100, t.start("c", "t"), limits=limits("r3"))
        await settle()
        assert t.started == ["a", "x"]
        await t.end("x", 3)
        assert t.started == ["a", "x", "c"]
        await t.end("a", 4)
        assert t.started[-1] == "b" and t.peak["t"] == 2
        t.gates["b"].set()
        t.gates["c"].set()
        await until(lambda: t.done == 4)
        assert no_task_limit_state_left(slots)
        tg.cancel_scope.cancel()


async def test_a_try_that_returns_as_a_deferral_does_frees_its_task_limit() -> None:
    """Limit 1 per run. The first try defers (its start returns) keeping its slots of an
    include_deferred pool: the next try of the task starts, and the first one's resumed
    try waits for it as an ordinary try of the task."""
    t = Tracker()
    k = per_run("r", 1)
    async with anyio.create_task_group() as tg:
        slots = Slots(4, tg, pools={"p": PoolRecord("p", 5, include_deferred=True)})
        deferred = Holder()
        slots.submit("d", 1, 100, t.start("defers", "k", keep=True), pool="p", holder=deferred,
                     limits=k)
        slots.submit("d", 1, 100, t.start("next", "k"), pool="p", holder=Holder(), limits=k)
        await until(lambda: t.started == ["defers"])
        await settle()
        assert t.started == ["defers"]
        await t.end("defers", 2)
        assert t.started == ["defers", "next"]
        assert slots.pool_used["p"] == 2  # the deferred TI still holds its pool slot
        # the trigger fired: the resumed try (same holder) waits for the task's limit
        slots.submit("d", 1, 100, t.start("resumed", "k"), pool="p", holder=deferred, limits=k)
        await settle()
        assert t.started == ["defers", "next"]
        await t.end("next", 3)
        assert t.started[-1] == "resumed" and t.peak["k"] == 1
        t.gates["resumed"].set()
        await until(lambda: t.done == 3)
        await settle()
        assert slots.pool_used["p"] == 0 and no_task_limit_state_left(slots)
        tg.cancel_scope.cancel()


async def test_task_limits_with_a_full_dag_and_a_full_pool_lose_no_try() -> None:
    """Tries parked for the DAG or the pool come back and park again at their task's
    limit (and the other way round) without any being lost or any limit exceeded."""
    t = Tracker()
    async with anyio.create_task_group() as tg:
        slots = Slots(6, tg, pools={"p": PoolRecord("p", 3)})
        names = []
        for i in range(30):
            name = f"x{i}"
            names.append(name)
            kind = i % 3
            if kind == 0:  # task a: 2 per run, in the pool
                slots.submit("d", i % 4, 4, t.start(name, "dag", "p", f"a{i % 2}"), pool="p",
                             holder=Holder(), limits=task_limits("d", f"r{i % 2}", "a", None, 1))
            elif kind == 1:  # task b: 1 across the DAG's runs
                slots.submit("d", i % 5, 4, t.start(name, "dag", "b"),
                             limits=task_limits("d", f"r{i % 2}", "b", 1, None))
            else:  # no task limit, in the pool
                slots.submit("d", i % 3, 4, t.start(name, "dag", "p"), pool="p", holder=Holder())
        done = 0
        while done < 30:
            await until(lambda: slots.running > 0)
            await settle()
            running = [n for n in names if n in t.started and not t.gates[n].is_set()]
            t.gates[running[0]].set()
            done += 1
            await until(lambda d=done: t.done == d)
        assert slots.running == 0 and slots.waiting == 0
        assert t.peak["dag"] == 4 and t.peak["p"] <= 3 and t.peak["b"] == 1
        assert t.peak["a0"] == 1 and t.peak["a1"] == 1
        assert no_task_limit_state_left(slots)
        tg.cancel_scope.cancel()


class CountingSlots(Slots):
    pushes = 0

    def _push(self, item: Any) -> None:
        self.pushes += 1
        super()._push(item)


async def test_tries_waiting_for_their_task_limit_cost_no_scan() -> None:
    """1,000 instances limited to 3 at once: each enters the candidates at most twice
    (when submitted, and once when its key has room), however many releases there are."""
    n = 1000
    started = 0
    gate = anyio.Event()
    running = peak = 0

    async def run() -> None:
        nonlocal started, running, peak
        started += 1
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    async with anyio.create_task_group() as tg:
        slots = CountingSlots(8, tg)
        for _ in range(n):
            slots.submit("d", 1, 100, run, limits=per_run("r", 3))
        await until(lambda: started == 3)
        gate.set()
        await until(lambda: slots.running == 0 and started == n)
        assert peak == 3
        assert slots.pushes <= 2 * n
        assert no_task_limit_state_left(slots)
        tg.cancel_scope.cancel()


async def test_a_resumed_try_holding_its_pool_slots_passes_a_try_of_its_task_stuck_on_the_pool(
) -> None:
    """Pool p (3 slots, include_deferred), task k one try at a time. kb's resumed try
    waits for k behind ka; when k frees, ka finds p full (held by deferred tries, for
    good): kb, which holds its own slot of p, must start, not wait behind ka for ever."""
    t = Tracker()
    k = per_run("r", 1)
    pools = {"p": PoolRecord("p", 3, include_deferred=True)}
    async with anyio.create_task_group() as tg:
        slots = Slots(8, tg, pools=pools)
        y, kb, kc = Holder(), Holder(), Holder()
        for name, holder in (("y", y), ("kb", kb), ("kc", kc)):  # each defers keeping a slot
            slots.submit("d", 1, 100, t.start(name, keep=True), pool="p", holder=holder,
                         limits=None if name == "y" else k)
            await t.end(name, len(t.started) + 1)
        assert slots.pool_used["p"] == 3 and slots.running == 0
        slots.submit("d", 1, 100, t.start("kc.resumed", "k", keep=True), pool="p", holder=kc,
                     limits=k)
        await until(lambda: t.started[-1] == "kc.resumed")
        slots.submit("d", 1, 100, t.start("ka", "k"), pool="p", holder=Holder(), limits=k)
        slots.submit("d", 1, 100, t.start("kb.resumed", "k"), pool="p", holder=kb, limits=k)
        await settle()
        assert t.started[-1] == "kc.resumed"
        # kc's resumed try defers again, keeping its slot of p: k is free, p is not
        await t.end("kc.resumed", len(t.started) + 1)
        assert t.started[-1] == "kb.resumed" and slots.pool_used["p"] == 3
        await t.end("kb.resumed", len(t.started) + 1)  # its end frees its slot: ka goes
        assert t.started[-1] == "ka"
        t.gates["ka"].set()
        await until(lambda: t.done == 6)
        assert t.peak["k"] == 1
        slots.release_hold(y)
        slots.release_hold(kc)
        assert slots.pool_used["p"] == 0 and no_task_limit_state_left(slots)
        tg.cancel_scope.cancel()


async def test_tries_blocked_by_their_task_limit_the_dag_and_the_pool_cost_no_scan() -> None:
    """A mapped task m (2 at once per run) and a heavier task x, 300 tries each, share
    pool p of 3 slots and a DAG limit of 4, so m's limit, the pool and the DAG fill in
    turn: each try still enters the candidates a few times in all, not once per
    release (a scan)."""
    n = 300
    pools = {"p": PoolRecord("p", 3)}
    ends: list[anyio.Event] = []
    running: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    done = 0

    def start(kind: str, in_pool: bool) -> Any:
        async def run() -> None:
            nonlocal done
            gate = anyio.Event()
            ends.append(gate)
            counted = (kind, "dag", "p") if in_pool else (kind, "dag")
            for key in counted:
                running[key] += 1
                peak[key] = max(peak[key], running[key])
            await gate.wait()
            for key in counted:
                running[key] -= 1
            done += 1

        return run

    async with anyio.create_task_group() as tg:
        slots = CountingSlots(8, tg, pools=pools)
        for i in range(n):
            slots.submit("d", 1, 4, start("m", True), pool="p", holder=Holder(),
                         limits=per_run("r", 2))
            in_pool = i % 3 != 0
            slots.submit("d", 2, 4, start("x", in_pool), pool="p" if in_pool else "default_pool",
                         holder=Holder())
        ended = 0
        while ended < 2 * n:
            await until(lambda e=ended: len(ends) > e)
            ends[ended].set()  # the earliest started ends first
            ended += 1
            await until(lambda e=ended: done == e)
        assert peak["m"] == 2 and peak["p"] == 3 and peak["dag"] == 4
        assert slots.pushes <= 4 * 2 * n
        assert no_task_limit_state_left(slots) and slots.waiting == 0
        tg.cancel_scope.cancel()
