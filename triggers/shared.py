"""Resources that many triggers share in one process: one timer queue, one HTTP client
pool, one file watcher per directory, one database pool per DSN, and hooks the host
(aflow's triggerer) provides: resolving a connection id to a URI and the webhook inbox.

The triggerer makes one `Resources`, enters it (`async with`) and runs triggers inside
`use_resources(resources)`. A trigger asks for `current_resources()`; outside a
triggerer (a unit test, a trigger run by hand) wrap the code in `default_resources()`.
Each kind of shared resource lives in the module of the trigger that uses it and is
created lazily through `Resources.get(key, factory)`, so triggers that are not used
cost nothing.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any, Protocol, TypeVar

import anyio

T = TypeVar("T")


class WebhookInbox(Protocol):
    """Delivery of webhook events by key (the host stores them durably)."""

    async def wait_for(self, key: str) -> Any:
        """Return the payload of the first event delivered for `key` (even one that
        arrived before this call)."""
        ...

    # Optional (aflow's inbox has it): `async def wait_after(key, after_id) -> (id, payload)`,
    # the first event for `key` with an id above `after_id`, which WebhookTrigger uses to
    # report each event once when it watches an asset.


def env_connection(conn_id: str) -> str:
    """Default connection lookup: the AFLOW_CONN_<ID> environment variable (a URI)."""
    value = os.environ.get(f"AFLOW_CONN_{conn_id.upper()}")
    if value is None:
        raise LookupError(f"unknown connection {conn_id!r} (set AFLOW_CONN_{conn_id.upper()})")
    return value


class Resources:
    """Shared, lazily created resources; closed (in reverse order) on exit."""

    def __init__(
        self,
        *,
        resolve_connection: Callable[[str], str | Awaitable[str]] = env_connection,
        webhook_inbox: WebhookInbox | None = None,
    ) -> None:
        self.resolve_connection = resolve_connection
        self.webhook_inbox = webhook_inbox
        self._items: dict[Any, Any] = {}
        self._stack = AsyncExitStack()
        self._lock = anyio.Lock()
        self.task_group: Any = None

    async def __aenter__(self) -> Resources:
        await self._stack.__aenter__()
        self.task_group = await self._stack.enter_async_context(anyio.create_task_group())
        # Unwound after every cleanup registered later (LIFO): resources close first, with
        # the task group not yet cancelled, so their awaits run; then its loops stop.
        self._stack.callback(self.task_group.cancel_scope.cancel)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        self._items.clear()
        return await self._stack.__aexit__(*exc)

    async def get(self, key: Any, factory: Callable[[Resources], Awaitable[T]]) -> T:
        """The resource under `key`, made by `await factory(self)` the first time.

        A factory that needs cleanup registers it with `self.push_async_callback`; one
        that runs a background loop starts it in `self.task_group`.
        """
        try:
            return self._items[key]  # type: ignore[no-any-return]
        except KeyError:
            pass
        async with self._lock:
            if key not in self._items:
                self._items[key] = await factory(self)
            return self._items[key]  # type: ignore[no-any-return]

    def push_async_callback(self, callback: Callable[[], Awaitable[Any]]) -> None:
        self._stack.push_async_callback(callback)


_current: contextvars.ContextVar[Resources | None] = contextvars.ContextVar(
    "triggers_resources", default=None
)


@contextmanager
def use_resources(resources: Resources) -> Iterator[Resources]:
    token = _current.set(resources)
    try:
        yield resources
    finally:
        _current.reset(token)


@asynccontextmanager
async def default_resources() -> AsyncIterator[Resources]:
    """Fresh resources for code that runs triggers outside a triggerer (tests, scripts)."""
    async with Resources() as resources:
        with use_resources(resources):
            yield resources


def current_resources() -> Resources:
    resources = _current.get()
    if resources is None:
        raise RuntimeError(
            "no shared trigger resources: run triggers inside `async with Resources() as r:` "
            "and `with use_resources(r):` (aflow's triggerer does this), or use "
            "`async with triggers.shared.default_resources():`"
        )
    return resources
