"""Webhook trigger: wait for an event delivered to the host under a key.

The host (aflow's triggerer) provides the inbox as `Resources(webhook_inbox=...)`; it
stores events durably and hands the payload of the first event for a key to
`wait_for(key)`, even one that arrived before the trigger started waiting. The trigger
itself only awaits that call, so it holds nothing that a cancellation does not release.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from triggers.base import BaseTrigger, TriggerEvent, classpath_of
from triggers.shared import current_resources


class WebhookTrigger(BaseTrigger):
    """Fire `TriggerEvent({"key": key, "payload": payload})` when an event for `key` is
    delivered to the host's webhook inbox."""

    def __init__(self, key: str) -> None:
        super().__init__()
        if not isinstance(key, str) or not key:
            raise ValueError(f"WebhookTrigger: key must be a non-empty string, not {key!r}")
        self.key = key

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath_of(WebhookTrigger), {"key": self.key}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        inbox = current_resources().webhook_inbox
        if inbox is None:
            raise RuntimeError(
                f"WebhookTrigger(key={self.key!r}) needs a webhook inbox, and the shared "
                "trigger resources have none: the host must pass "
                "Resources(webhook_inbox=...) (aflow's triggerer does)"
            )
        payload = await inbox.wait_for(self.key)
        yield TriggerEvent({"key": self.key, "payload": payload})
