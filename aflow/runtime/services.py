"""What the runtime lends to code running inside a try: the store, for built-in sensors
that read aflow's own state (ExternalTaskSensor, WebhookSensor), and a way to create runs
of other DAGs (TriggerDagRunOperator). Set per try by the task runner through context
variables, so concurrent tries never see each other's."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Protocol

from aflow.exceptions import AflowError
from aflow.store.base import Store
from aflow.store.records import DagRunRecord

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


class RunCreator(Protocol):
    """Creates (and commits) a run of a loaded DAG, driven like one made by the API."""

    def __call__(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        *,
        run_id: str | None = None,
        logical_date: datetime | None = None,
        triggered_by: str | None = None,
    ) -> Awaitable[DagRunRecord]: ...


_run_creator: contextvars.ContextVar[RunCreator | None] = contextvars.ContextVar(
    "aflow_run_creator", default=None
)


def current_run_creator() -> RunCreator:
    creator = _run_creator.get()
    if creator is None:
        raise AflowError(
            "creating a DAG run is only possible inside a try run by the orchestrator "
            "(not in run_in='process' tasks or `aflow tasks test`)"
        )
    return creator


def set_run_creator(creator: RunCreator | None) -> contextvars.Token[RunCreator | None]:
    return _run_creator.set(creator)


def reset_run_creator(token: contextvars.Token[RunCreator | None]) -> None:
    _run_creator.reset(token)


def store_connection_uri(store: Store) -> str:
    """The URI of connection `aflow_store`: aflow's own database, for triggers."""
    path = getattr(store, "abspath", None)  # SQLite: a URL with an absolute path
    if path:
        return f"sqlite:///{path}"
    # PostgreSQL: its own schema as a search_path setting asyncpg understands
    return str(getattr(store, "client_dsn", store.url))


async def connection_uri(conn_id: str, store: Store | None = None) -> str:
    """A connection id as the URI a trigger is given: `aflow_store` is aflow's own
    database; any other id is looked up through the secrets backends (environment, user
    backends, the store: see aflow.secrets.backends). `store` defaults to the try's."""
    from aflow.secrets.backends import lookup_connection

    if store is None:
        store = _store.get()
    if conn_id == STORE_CONNECTION_ID and store is not None:
        return store_connection_uri(store)
    return (await lookup_connection(conn_id, store=store)).get_uri()
