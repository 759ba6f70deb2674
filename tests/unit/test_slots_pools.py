"""Slots alone: pool slots and DAG limits gate tries without blocking the others, a
held pool hold skips its pool, and tries parked for a missing pool start once it exists."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from aflow.runtime.slots import Slots
from aflow.store.records import PoolRecord
from tests.unit.slots_helpers import Holder, Tracker, until

pytestmark = pytest.mark.anyio


async def test_a_try_blocked_by_its_pool_lets_its_dag_go_on() -> None:
    """DAG limit 1: the heaviest waiting try names a pool that does not exist; the next
    one must still get the DAG's slot when it frees."""
    t = Tracker()
    reasons: list[str] = []
    async with anyio.create_task_group() as tg:
        slots = Slots(4, tg, pools={"p": PoolRecord("p", 2)})
        slots.on_unrunnable = lambda entry, why: reasons.append(why)
        slots.submit("d", 1, 1, t.start("z", "d"))
        await until(lambda: t.started == ["z"])
        slots.submit("d", 9, 1, t.start("x", "d"), pool="nowhere", holder=Holder())
        slots.submit("d", 5, 1, t.start("y", "d"), pool="p", holder=Holder())
        t.gates["z"].set()
        await until(lambda: t.started == ["z", "y"])
        assert reasons == ["waiting for pool 'nowhere', which does not exist "
                           "(create it with `aflow pools set nowhere SLOTS`)"]
        t.gates["y"].set()
        t.gates["x"].set()
        slots.set_pools({"p": PoolRecord("p", 2), "nowhere": PoolRecord("nowhere", 1)})
        await until(lambda: t.done == 3)
        assert slots.pool_used == {"default_pool": 0, "p": 0, "nowhere": 0}
        tg.cancel_scope.cancel()


async def test_a_dag_slot_goes_to_the_heaviest_try_not_the_first_candidate() -> None:
    """DAG limit 1: `a` and `b` (weight 7) were parked while the DAG was full; `c`
    (weight 5) came while no worker was idle, so it is still a candidate, not parked.
    When the DAG's try ends, `a` starts before `c`, then `b`."""
    t = Tracker()
    async with anyio.create_task_group() as tg:
        slots = Slots(2, tg)
        slots.submit("d", 1, 1, t.start("z", "d"))
        await until(lambda: t.started == ["z"])
        slots.submit("d", 7, 1, t.start("a", "d"))
        slots.submit("d", 7, 1, t.start("b", "d"))
        slots.submit("e", 1, 9, t.start("e1", "e"))
        await until(lambda: t.started == ["z", "e1"])
        slots.submit("d", 5, 1, t.start("c", "d"))
        await t.release_in_turn(("z", ["z", "e1", "a"]), ("a", ["z", "e1", "a", "b"]),
                                ("b", ["z", "e1", "a", "b", "c"]))
        t.gates["c"].set()
        t.gates["e1"].set()
        await until(lambda: t.done == 5)
        tg.cancel_scope.cancel()


async def test_pool_slots_go_to_the_heaviest_try_not_the_first_candidate() -> None:
    """As for a DAG's slot: pool `p` of 1, `a` and `b` (weight 7) parked at the pool, `c`
    (weight 5) still a candidate when the pool's slot is given back."""
    t = Tracker()
    async with anyio.create_task_group() as tg:
        slots = Slots(2, tg, pools={"p": PoolRecord("p", 1)})
        slots.submit("d1", 1, 9, t.start("z", "p"), pool="p")
        await until(lambda: t.started == ["z"])
        slots.submit("d2", 7, 9, t.start("a", "p"), pool="p")
        slots.submit("d3", 7, 9, t.start("b", "p"), pool="p")
        slots.submit("e", 1, 9, t.start("e1", "e"))
        await until(lambda: t.started == ["z", "e1"])
        slots.submit("d4", 5, 9, t.start("c", "p"), pool="p")
        await t.release_in_turn(("z", ["z", "e1", "a"]), ("a", ["z", "e1", "a", "b"]),
                                ("b", ["z", "e1", "a", "b", "c"]))
        t.gates["c"].set()
        t.gates["e1"].set()
        await until(lambda: t.done == 5)
        assert t.peak["p"] == 1
        tg.cancel_scope.cancel()


async def test_tries_submitted_together_start_by_priority_not_by_order() -> None:
    """Roots of a run become ready together: with one slot, the heaviest starts first
    even when it is submitted last (outside a batch, the first submitted takes the idle
    slot at once)."""
    t = Tracker()
    async with anyio.create_task_group() as tg:
        slots = Slots(1, tg)
        with slots.batch():
            for name, weight in (("light", 1), ("middle", 5), ("heavy", 9)):
                slots.submit("d", weight, 9, t.start(name, "d"))
            assert t.started == []
        for name in ("heavy", "middle", "light"):
            await until(lambda: name in t.started)  # noqa: B023
            t.gates[name].set()
        await until(lambda: t.done == 3)
        assert t.started == ["heavy", "middle", "light"]
        tg.cancel_scope.cancel()


async def test_a_try_parked_at_its_pool_leaves_the_pools_room_to_one_that_fits() -> None:
    """Pool `q` of 2 frees both slots; `Q` (DAG `d`, limit 1) takes one, `P` parks at its
    DAG, and `C`, a candidate that needs both slots, parks at the pool: the slot it was
    counted against must go to `W`, parked at the pool and fitting, not stay idle."""
    t = Tracker()
    async with anyio.create_task_group() as tg:
        slots = Slots(3, tg, pools={"q": PoolRecord("q", 2)})
        slots.submit("e", 1, 16, t.start("B1", "q"), pool="q", holder=Holder())
        slots.submit("e", 1, 16, t.start("B2", "q"), pool="q", holder=Holder())
        await until(lambda: t.started == ["B1", "B2"])
        slots.submit("d", 9, 1, t.start("Q", "q"), pool="q", holder=Holder())
        slots.submit("d", 5, 1, t.start("P", "q"), pool="q", holder=Holder())
        slots.submit("e", 3, 16, t.start("W", "q"), pool="q", holder=Holder())
        slots.submit("f", 1, 16, t.start("X", "f"), holder=Holder())
        await until(lambda: "X" in t.started)
        slots.submit("g", 2, 16, t.start("C", "q", slots=2), pool="q", pool_slots=2, holder=Holder())
        t.gates["B1"].set()
        t.gates["B2"].set()
        await until(lambda: "W" in t.started)
        assert t.started == ["B1", "B2", "X", "Q", "W"]
        assert slots.pool_used["q"] == 2
        for name in ("Q", "W", "X", "P", "C"):
            t.gates[name].set()
        await until(lambda: t.done == 7)
        tg.cancel_scope.cancel()


async def test_pool_slots_gate_and_a_held_hold_skips_the_pool() -> None:
    t = Tracker()
    async with anyio.create_task_group() as tg:
        slots = Slots(8, tg, pools={"p": PoolRecord("p", 3)})
        for i in range(6):
            slots.submit("d", 1, 100, t.start(f"t{i}", "p", slots=2), pool="p", pool_slots=2,
                         holder=Holder())
        await until(lambda: len(t.started) == 1)
        assert slots.pool_used["p"] == 2
        # a TI that kept its hold while deferred goes on without waiting for the pool
        held = Holder()
        slots.take_hold(held, "p", 1)
        assert slots.pool_used["p"] == 3
        slots.submit("d", 1, 100, t.start("resumed", "p"), pool="p", holder=held)
        await until(lambda: "resumed" in t.started)
        t.gates["resumed"].set()
        for i in range(6):
            t.gates[f"t{i}"].set()
        await until(lambda: t.done == 7)
        assert t.peak["p"] <= 3
        assert slots.pool_used["p"] == 0 and held.pool_hold is None
        tg.cancel_scope.cancel()


async def test_a_start_that_keeps_its_hold_holds_until_released() -> None:
    t = Tracker()
    async with anyio.create_task_group() as tg:
        slots = Slots(2, tg, pools={"p": PoolRecord("p", 1, include_deferred=True)})
        deferred = Holder()
        slots.submit("d", 1, 10, t.start("defers", "p", keep=True), pool="p", holder=deferred)
        slots.submit("d", 1, 10, t.start("next", "p"), pool="p", holder=Holder())
        t.gates["defers"].set()
        await until(lambda: t.done == 1)
        await anyio.lowlevel.checkpoint()
        assert t.started == ["defers"] and slots.running == 0
        assert slots.pool_used["p"] == 1  # kept by the deferred TI
        slots.release_hold(deferred)
        t.gates["next"].set()
        await until(lambda: t.done == 2)
        assert slots.pool_used["p"] == 0
        tg.cancel_scope.cancel()
