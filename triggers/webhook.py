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
    delivered to the host's webhook inbox.

    With an inbox that numbers its events (aflow's), the event also carries its `"id"`,
    and `after_id` waits for an event numbered above it: as an asset watcher the trigger
    moves past each event it reported, so every delivered event is reported once."""

    def __init__(self, key: str, after_id: int | None = None) -> None:
        super().__init__()
        if not isinstance(key, str) or not key:
            raise ValueError(f"WebhookTrigger: key must be a non-empty string, not {key!r}")
        if after_id is not None and (isinstance(after_id, bool) or not isinstance(after_id, int)):
            raise ValueError(f"WebhookTrigger: after_id must be an int, not {after_id!r}")
        self.key = key
        self.after_id = after_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {"key": self.key}
        if self.after_id is not None:
            kwargs["after_id"] = self.after_id
        return classpath_of(WebhookTrigger), kwargs

    def next_watch(self, payload: Any) -> BaseTrigger | None:
        event_id = payload.get("id") if isinstance(payload, dict) else None
        if not isinstance(event_id, int):
            return None  # an inbox without numbered events: nothing to move past
        return WebhookTrigger(self.key, after_id=event_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        inbox = current_resources().webhook_inbox
        if inbox is None:
            raise RuntimeError(
                f"WebhookTrigger(key={self.key!r}) needs a webhook inbox, and the shared "
                "trigger resources have none: the host must pass "
                "Resources(webhook_inbox=...) (aflow's triggerer does)"
            )
        wait_after = getattr(inbox, "wait_after", None)
        if wait_after is None:
            if self.after_id is not None:
                raise RuntimeError(
                    f"WebhookTrigger(key={self.key!r}, after_id=...) needs an inbox with "
                    "numbered events (wait_after)"
                )
            payload = await inbox.wait_for(self.key)
            yield TriggerEvent({"key": self.key, "payload": payload})
            return
        event_id, payload = await wait_after(self.key, self.after_id or 0)
        yield TriggerEvent({"key": self.key, "payload": payload, "id": event_id})
