"""Time triggers and their shared timer queue, on a real event loop (no mocks, no
wall-clock assertions: every wait has an anyio.fail_after deadline)."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest

from triggers.base import BaseTrigger, TriggerEvent, check_kwargs, load_trigger
from triggers.shared import default_resources
from triggers.temporal import DateTimeTrigger, TimeDeltaTrigger, TimerQueue

pytestmark = pytest.mark.anyio


async def first_event(trigger: BaseTrigger) -> TriggerEvent:
    try:
        async for event in trigger.run():
            return event
    finally:
        await trigger.cleanup()
    raise AssertionError("run() ended without an event")


async def until(condition, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - polls bookkeeping that has no event
            await anyio.sleep(0.001)


async def test_timers_fire_in_deadline_order() -> None:
    async with default_resources():
        queue = await TimerQueue.shared()
        base = time.time() + 0.5
        deadlines = [base + i * 0.002 for i in range(300)]
        shuffled = deadlines[:]
        random.Random(7).shuffle(shuffled)
        timers = [(d, queue.add(d)) for d in shuffled]  # all registered before any fires
        fired: list[float] = []

        async def wait(deadline: float, timer) -> None:
            await timer.wait()
            fired.append(deadline)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for deadline, timer in timers:
                    tg.start_soon(wait, deadline, timer)
        assert fired == deadlines
        assert len(queue) == 0 and queue.heap_size == 0


async def test_ten_thousand_time_triggers_share_one_queue() -> None:
    async with default_resources() as resources:
        queue = await TimerQueue.shared(resources)
        assert queue is await resources.get(TimerQueue, TimerQueue.create)

        # Parked: all of them are entries of the one queue (far moments: none fires).
        far = datetime.now(UTC) + timedelta(hours=1)
        async with anyio.create_task_group() as tg:
            for i in range(10_000):
                tg.start_soon(first_event, DateTimeTrigger(far + timedelta(seconds=i)))
            await until(lambda: len(queue) == 10_000, timeout=60)
            tg.cancel_scope.cancel()
        assert len(queue) == 0 and queue.heap_size == 0 and queue.fired_total == 0

        # Fired: each once, with its own moment. (A moment that has passed by the time
        # its trigger runs fires at once without the queue, so on a loaded machine the
        # queue may fire fewer than all; never more.)
        soon = datetime.now(UTC) + timedelta(seconds=1)
        triggers = [DateTimeTrigger(soon + timedelta(seconds=(i % 100) / 200)) for i in range(10_000)]
        events: list[TriggerEvent] = []

        async def run(trigger: DateTimeTrigger) -> None:
            events.append(await first_event(trigger))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for trigger in triggers:
                    tg.start_soon(run, trigger)
        assert sorted(e.payload for e in events) == sorted(t.moment.isoformat() for t in triggers)
        assert queue.fired_total <= 10_000
        assert len(queue) == 0 and queue.heap_size == 0


async def test_an_earlier_timer_added_later_rearms_the_sleeper() -> None:
    async with default_resources():
        queue = await TimerQueue.shared()
        far = queue.add(time.time() + 3600)
        await until(lambda: queue.armed_deadline == far.deadline)
        soon = datetime.now(UTC) + timedelta(seconds=0.05)
        # the sleeper sleeps towards `far` (or MAX_SLEEP_S); only a re-arm fires this in time
        with anyio.fail_after(10):
            event = await first_event(DateTimeTrigger(soon))
        assert event.payload == soon.isoformat()
        assert not far.fired and len(queue) == 1
        await until(lambda: queue.armed_deadline == far.deadline)
        queue.cancel(far)
        assert len(queue) == 0


async def test_cancelled_waits_are_dropped() -> None:
    async with default_resources():
        queue = await TimerQueue.shared()
        moment = datetime.now(UTC) + timedelta(hours=1)
        triggers = [DateTimeTrigger(moment + timedelta(seconds=i)) for i in range(500)]
        async with anyio.create_task_group() as tg:
            for trigger in triggers:
                tg.start_soon(first_event, trigger)
            await until(lambda: len(queue) == 500)
            tg.cancel_scope.cancel()
        assert len(queue) == 0
        assert queue.heap_size == 0  # all cancelled: nothing kept
        for trigger in triggers:
            await trigger.cleanup()  # idempotent
        assert len(queue) == 0

        # a few cancelled among live ones stay until they surface (lazy), then go
        keep = queue.add(time.time() + 0.2)
        gone = [queue.add(time.time() + 0.1) for _ in range(10)]
        for timer in gone:
            queue.cancel(timer)
        assert len(queue) == 1 and queue.heap_size == 11
        with anyio.fail_after(10):
            await keep.wait()
        assert len(queue) == 0 and queue.heap_size == 0


async def test_cleanup_unregisters_a_pending_timer() -> None:
    async with default_resources():
        queue = await TimerQueue.shared()
        trigger = DateTimeTrigger(datetime.now(UTC) + timedelta(hours=1))
        agen = trigger.run()

        async def step() -> None:
            await agen.__anext__()

        async with anyio.create_task_group() as tg:
            tg.start_soon(step)
            await until(lambda: len(queue) == 1)
            await trigger.cleanup()  # e.g. the trigger moves to another triggerer
            assert len(queue) == 0
            tg.cancel_scope.cancel()
        await agen.aclose()
        assert len(queue) == 0


async def test_past_and_present_moments_fire_at_once() -> None:
    async with default_resources() as resources:
        past = datetime.now(UTC) - timedelta(days=3)
        with anyio.fail_after(5):
            event = await first_event(DateTimeTrigger(past))
            assert event == TriggerEvent(past.isoformat())
            assert (await first_event(TimeDeltaTrigger(timedelta(0)))).payload is not None
            assert (await first_event(TimeDeltaTrigger(-5))).payload is not None
        # none of them went through the queue
        queue = await TimerQueue.shared(resources)
        assert queue.fired_total == 0 and len(queue) == 0


async def test_time_delta_trigger_fires_after_its_delta() -> None:
    async with default_resources():
        trigger = TimeDeltaTrigger(timedelta(milliseconds=100))
        assert isinstance(trigger, DateTimeTrigger)
        with anyio.fail_after(10):
            event = await first_event(trigger)
        assert datetime.now(UTC) >= trigger.moment
        assert event.payload == trigger.moment.isoformat()


def test_serialize_round_trip() -> None:
    tz = timezone(timedelta(hours=2))
    moment = datetime(2031, 5, 4, 12, 30, 15, 123456, tzinfo=tz)
    trigger = DateTimeTrigger(moment, end_from_trigger=True)
    classpath, kwargs = trigger.serialize()
    assert classpath == "triggers.temporal.DateTimeTrigger"
    assert kwargs == {"moment": "2031-05-04T12:30:15.123456+02:00", "end_from_trigger": True}
    rebuilt = load_trigger(classpath, json.loads(check_kwargs(classpath, kwargs)))
    assert isinstance(rebuilt, DateTimeTrigger)
    assert rebuilt.moment == moment and rebuilt.moment.utcoffset() == timedelta(hours=2)
    assert rebuilt.serialize() == (classpath, kwargs)

    delta = TimeDeltaTrigger(timedelta(minutes=5))
    classpath, kwargs = delta.serialize()
    assert classpath == "triggers.temporal.DateTimeTrigger"  # the absolute moment, as Airflow
    again = load_trigger(classpath, json.loads(json.dumps(kwargs)))
    assert type(again) is DateTimeTrigger and again.moment == delta.moment
    assert again.serialize() == (classpath, kwargs)


def test_bad_moments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="naive"):
        DateTimeTrigger(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        DateTimeTrigger("2030-01-01T00:00:00")
    with pytest.raises(ValueError, match="ISO"):
        DateTimeTrigger("next tuesday")
    with pytest.raises(TypeError, match="datetime"):
        DateTimeTrigger(12345)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timedelta"):
        TimeDeltaTrigger("5m")  # type: ignore[arg-type]


async def test_run_outside_resources_is_a_clear_error() -> None:
    trigger = DateTimeTrigger(datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(RuntimeError, match="no shared trigger resources"):
        await first_event(trigger)
