"""Where Variables and Connections come from: a small chain of secrets backends.

Lookup order (first answer wins), the same for `Variable.get`, `Connection.get`, templates
and triggers:

1. `EnvironmentBackend`: `AFLOW_VAR_<KEY>` / `AFLOW_CONN_<ID>` (the key upper-cased);
2. the user's backends, in the order given (`secrets.backends` setting or
   `configure_secrets(backends=[...])`), e.g. a vault;
3. `StoreBackend`: aflow's store (connection secrets decrypted with `core.fernet_key`).

Writes (`Variable.set`, `aflow connections add`) always go to the store.

Which store: inside a try, the orchestrator's (a context variable); in a triggerer, its
own; elsewhere (a `run_in="process"` child, a script, the CLI) the store URL given to
`configure_secrets(store_url=...)`, opened for the call.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.from_thread

from aflow.exceptions import AflowError, ConfigError, ConnectionNotFound, SecretsError
from aflow.secrets.connection import Connection
from aflow.secrets.crypto import SecretCipher, cipher_or_error
from aflow.secrets.masking import add_secret, is_sensitive_key
from aflow.store.base import Store
from aflow.store.records import ConnectionRecord

T = TypeVar("T")

VAR_ENV_PREFIX = "AFLOW_VAR_"
CONN_ENV_PREFIX = "AFLOW_CONN_"


class SecretsBackend:
    """A source of connections and variables. Implement either or both; None means "not
    here" (the next backend is asked). Methods are async: a backend that must block (a
    vault's sync client) runs its call in a thread (`anyio.to_thread.run_sync`)."""

    async def get_connection(self, conn_id: str) -> Connection | None:
        return None

    async def get_variable(self, key: str) -> str | None:
        return None


class EnvironmentBackend(SecretsBackend):
    """`AFLOW_CONN_<ID>` (a URI, or Airflow's JSON form) and `AFLOW_VAR_<KEY>`."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = environ

    def _get(self, name: str) -> str | None:
        env = os.environ if self.environ is None else self.environ
        return env.get(name)

    async def get_connection(self, conn_id: str) -> Connection | None:
        text = self._get(CONN_ENV_PREFIX + conn_id.upper())
        return Connection.from_text(conn_id, text) if text else None

    async def get_variable(self, key: str) -> str | None:
        return self._get(VAR_ENV_PREFIX + key.upper())


class StoreBackend(SecretsBackend):
    """aflow's store; connection secrets are decrypted with `fernet_key`."""

    def __init__(self, store: Store, fernet_key: str | None = None) -> None:
        self.store = store
        self.fernet_key = fernet_key

    async def get_connection(self, conn_id: str) -> Connection | None:
        record = await self.store.get_connection(conn_id)
        return None if record is None else connection_from_record(record, self.fernet_key)

    async def get_variable(self, key: str) -> str | None:
        record = await self.store.get_variable(key)
        return None if record is None else record.value


# -- the stored form -------------------------------------------------------------------------
def connection_to_record(conn: Connection, fernet_key: str | None) -> ConnectionRecord:
    """The row to store: password and extra encrypted (SecretsError without a key)."""
    password_enc = extra_enc = None
    if conn.password is not None or conn.extra:
        cipher = cipher_or_error(fernet_key, f"encrypt the secrets of connection {conn.conn_id!r}")
        if conn.password is not None:
            password_enc = cipher.encrypt(conn.password)
        if conn.extra:
            extra_enc = cipher.encrypt(json.dumps(conn.extra))
    return ConnectionRecord(
        conn_id=conn.conn_id, conn_type=conn.conn_type, host=conn.host, port=conn.port,
        login=conn.login, password_enc=password_enc, schema=conn.schema,
        extra_enc=extra_enc, description=conn.description,
    )


def connection_from_record(
    record: ConnectionRecord, fernet_key: str | None, *, decrypt: bool = True
) -> Connection:
    """The connection of a stored row. Without `decrypt` its password is left out (None
    if it has none, else `***`) and its extra too: for listings, which need no key."""
    password: str | None = None
    extra: dict[str, Any] = {}
    if record.password_enc is not None or record.extra_enc is not None:
        if not decrypt:
            password = "***" if record.password_enc is not None else None
        else:
            what = f"connection {record.conn_id!r}"
            cipher: SecretCipher = cipher_or_error(fernet_key, f"decrypt the secrets of {what}")
            if record.password_enc is not None:
                password = cipher.decrypt(record.password_enc, what)
            if record.extra_enc is not None:
                extra = json.loads(cipher.decrypt(record.extra_enc, what))
    return Connection(
        conn_id=record.conn_id, conn_type=record.conn_type, host=record.host,
        login=record.login, password=password, schema=record.schema, port=record.port,
        extra=extra, description=record.description,
    )


# -- process-wide settings -------------------------------------------------------------------
@dataclass
class SecretsSettings:
    fernet_key: str | None = None
    backends: tuple[SecretsBackend, ...] = ()
    store_url: str | None = None


settings = SecretsSettings()


def configure_secrets(
    *,
    fernet_key: str | None = None,
    backends: Sequence[SecretsBackend | str] = (),
    store_url: str | None = None,
) -> None:
    """Set this process's secrets settings (the CLI does it from `core.fernet_key`,
    `secrets.backends` and `core.store`; embedded use calls it once at start).
    `backends` are SecretsBackend objects or import paths `package.module:Class` of
    classes made with no arguments; they are asked between the environment and the
    store."""
    global settings
    loaded = tuple(b if isinstance(b, SecretsBackend) else load_backend(b) for b in backends)
    settings = SecretsSettings(fernet_key=fernet_key or None, backends=loaded,
                               store_url=store_url)


def load_backend(path: str) -> SecretsBackend:
    module_name, _, attr = path.strip().partition(":")
    if not module_name or not attr:
        raise ConfigError(f"secrets backend {path!r}: write it as package.module:ClassName")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"secrets backend {path!r} cannot be imported: {exc}") from None
    backend = cls()
    if not isinstance(backend, SecretsBackend):
        raise ConfigError(f"secrets backend {path!r} is not a aflow.secrets.SecretsBackend")
    return backend


def parse_backends(text: str | None) -> list[str]:
    """The `secrets.backends` setting: import paths separated by commas."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]


# -- lookups ---------------------------------------------------------------------------------
async def with_store(fn: Callable[[Store | None], Awaitable[T]], store: Store | None = None) -> T:
    """Call `fn` with the store to use (see the module's docstring); None if there is none."""
    if store is None:
        from aflow.runtime import services

        store = services._store.get()
    if store is not None or settings.store_url is None:
        return await fn(store)
    from aflow.store.factory import open_store_url

    async with open_store_url(settings.store_url) as opened:
        return await fn(opened)


def backends_with(store: Store | None) -> list[SecretsBackend]:
    chain: list[SecretsBackend] = [EnvironmentBackend(), *settings.backends]
    if store is not None:
        chain.append(StoreBackend(store, settings.fernet_key))
    return chain


async def lookup_connection(conn_id: str, *, store: Store | None = None) -> Connection:
    async def find(found_store: Store | None) -> Connection:
        for backend in backends_with(found_store):
            conn = await backend.get_connection(conn_id)
            if conn is not None:
                if conn.password:
                    add_secret(conn.password)
                for key, value in conn.extra.items():
                    if is_sensitive_key(key):
                        add_secret(value)
                return conn
        raise ConnectionNotFound(
            f"unknown connection {conn_id!r}: add it with `aflow connections add "
            f"{conn_id} --uri ...` or set {CONN_ENV_PREFIX}{conn_id.upper()}"
        )

    return await with_store(find, store)


async def lookup_variable(key: str, *, store: Store | None = None) -> str | None:
    """The variable's text from the first backend that has it (None: nowhere)."""
    async def find(found_store: Store | None) -> str | None:
        for backend in backends_with(found_store):
            value = await backend.get_variable(key)
            if value is not None:
                if is_sensitive_key(key):
                    add_secret(value)
                return value
        return None

    return await with_store(find, store)


def run_blocking(fn: Callable[..., Awaitable[T]], *args: Any, what: str) -> T:
    """Run an async lookup from blocking code: in a worker thread of the orchestrator's
    loop, on that loop; where no loop runs (a child process, a script), on a loop of its
    own. On the loop itself it refuses: waiting there would block every other task."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise AflowError(
            f"{what} blocks, and this code runs on the event loop: use the async form "
            f"(`await {what.replace('.get', '.aget').replace('.set', '.aset').replace('.delete', '.adelete')}(...)`)"
        )
    try:
        anyio.from_thread.check_cancelled()  # raises RuntimeError outside a worker thread
    except RuntimeError:
        return anyio.run(fn, *args)
    return anyio.from_thread.run(fn, *args)


def require_store(store: Store | None, what: str) -> Store:
    if store is None:
        raise SecretsError(
            f"{what} needs aflow's store: call it inside a task, or configure_secrets("
            "store_url=...) first"
        )
    return store
