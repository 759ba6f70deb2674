"""WebhookTrigger against a small real in-memory inbox (the host's durable inbox is
aflow's; this one keeps events in a dict so the trigger's side can be tested alone)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from triggers.base import TriggerEvent, check_kwargs, load_trigger
from triggers.shared import Resources, default_resources, use_resources
from triggers.webhook import WebhookTrigger

pytestmark = pytest.mark.anyio


class MemoryInbox:
    """Events by key; `wait_for` returns the first undelivered one, even if it arrived
    before the call, and consumes it (one event resumes one waiter)."""

    def __init__(self) -> None:
        self.events: dict[str, list[Any]] = {}
        self.waiters: dict[str, list[anyio.Event]] = {}

    def deliver(self, key: str, payload: Any) -> None:
        self.events.setdefault(key, []).append(payload)
        for event in self.waiters.get(key, []):
            event.set()

    async def wait_for(self, key: str) -> Any:
        while not self.events.get(key):
            event = anyio.Event()
            self.waiters.setdefault(key, []).append(event)
            try:
                await event.wait()
            finally:
                self.waiters[key].remove(event)
                if not self.waiters[key]:
                    del self.waiters[key]
        return self.events[key].pop(0)


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - polls bookkeeping that has no event
            await anyio.sleep(0.001)


async def first_event(trigger: WebhookTrigger) -> TriggerEvent:
    try:
        async for event in trigger.run():
            return event
    finally:
        await trigger.cleanup()
    raise AssertionError("run() ended without an event")


async def test_fires_when_the_event_arrives() -> None:
    inbox = MemoryInbox()
    got: list[TriggerEvent] = []
    async with Resources(webhook_inbox=inbox) as resources:
        with use_resources(resources), anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    got.append(await first_event(WebhookTrigger("orders/42")))

                tg.start_soon(wait)
                await until(lambda: "orders/42" in inbox.waiters)
                inbox.deliver("orders/other", {"n": 0})
                inbox.deliver("orders/42", {"n": 1, "items": ["a"]})
    assert got == [TriggerEvent({"key": "orders/42", "payload": {"n": 1, "items": ["a"]}})]
    assert inbox.waiters == {}
    assert inbox.events == {"orders/other": [{"n": 0}], "orders/42": []}


async def test_an_event_delivered_before_the_wait_is_not_missed() -> None:
    inbox = MemoryInbox()
    inbox.deliver("k", "early")
    async with Resources(webhook_inbox=inbox) as resources:
        with use_resources(resources), anyio.fail_after(5):
            event = await first_event(WebhookTrigger("k"))
    assert event.payload == {"key": "k", "payload": "early"}


async def test_cancelling_the_wait_leaves_no_waiter() -> None:
    inbox = MemoryInbox()
    async with Resources(webhook_inbox=inbox) as resources:
        with use_resources(resources):
            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(first_event, WebhookTrigger(f"key-{i % 10}"))
                await until(lambda: sum(len(w) for w in inbox.waiters.values()) == 100)
                tg.cancel_scope.cancel()
    assert inbox.waiters == {}


async def test_no_inbox_is_a_clear_error() -> None:
    async with default_resources():
        with pytest.raises(RuntimeError, match=r"WebhookTrigger\(key='k'\) needs a webhook inbox"):
            await first_event(WebhookTrigger("k"))


def test_serialize_round_trip_and_validation() -> None:
    classpath, kwargs = WebhookTrigger("orders/42").serialize()
    assert (classpath, kwargs) == ("triggers.webhook.WebhookTrigger", {"key": "orders/42"})
    rebuilt = load_trigger(classpath, json.loads(check_kwargs(classpath, kwargs)))
    assert isinstance(rebuilt, WebhookTrigger) and rebuilt.key == "orders/42"
    with pytest.raises(ValueError, match="key"):
        WebhookTrigger("")
