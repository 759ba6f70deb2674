"""What the runtime lends to code running inside a try: the store, for built-in sensors
that read aflow's own state (ExternalTaskSensor, WebhookSensor). Set per try by the
task runner through a context variable, so concurrent tries never see each other's."""

from __future__ import annotations

import contextvars

from aflow.exceptions import AflowError
from aflow.store.base import Store

STORE_CONNECTION_ID = "aflow_store"  # triggers reach aflow's own database under this id

_store: contextvars.ContextVar[Store | None] = contextvars.ContextVar("aflow_store", default=None)


def current_store() -> Store:
    store = _store.get()
    if store is None:
        raise AflowError(
            "aflow's store is only available inside a try run by the orchestrator "
            "(not in run_in='process' tasks or `aflow tasks test`)"
        )
    return store


def set_store(store: Store | None) -> contextvars.Token[Store | None]:
    return _store.set(store)


def reset_store(token: contextvars.Token[Store | None]) -> None:
    _store.reset(token)
