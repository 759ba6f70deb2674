"""`Variable`: small named values for DAGs, in Airflow's shape.

`Variable.get("key")` looks the key up through the secrets backends (environment
`AFLOW_VAR_<KEY>` first, then any user backend, then the store); `set` and `delete` write
the store. The blocking forms work in tasks run in a thread or a child process; async code
(an `async def` task, a trigger) uses `aget`/`aset`/`adelete`.
"""

from __future__ import annotations

import json
from typing import Any

from aflow.exceptions import SecretsError, VariableNotFound
from aflow.secrets.backends import (
    VAR_ENV_PREFIX,
    lookup_variable,
    require_store,
    run_blocking,
    with_store,
)
from aflow.secrets.masking import add_secret, is_sensitive_key
from aflow.store.base import Store
from aflow.store.records import VariableRecord

_NO_DEFAULT: Any = object()


def _decode(key: str, text: str, deserialize_json: bool) -> Any:
    if not deserialize_json:
        return text
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SecretsError(f"variable {key!r} is not valid JSON: {exc}") from None
    if is_sensitive_key(key):
        add_secret(value)
    return value


def encode_value(key: str, value: Any, serialize_json: bool) -> str:
    if serialize_json:
        try:
            return json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise SecretsError(f"variable {key!r}: value is not JSON-serializable: {exc}") from None
    if not isinstance(value, str):
        raise SecretsError(
            f"variable {key!r}: value must be a string (or pass serialize_json=True)"
        )
    return value


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip():
        raise SecretsError(f"a variable key must be a non-empty string, not {key!r}")
    return key


class Variable:
    """Airflow's Variable API. All methods are static: a Variable is a key in a store."""

    @staticmethod
    async def aget(key: str, default: Any = _NO_DEFAULT, deserialize_json: bool = False) -> Any:
        text = await lookup_variable(check_key(key))
        if text is None:
            if default is _NO_DEFAULT:
                raise VariableNotFound(
                    f"unknown variable {key!r}: set it with `aflow variables set {key} VALUE` "
                    f"or {VAR_ENV_PREFIX}{key.upper()}, or pass a default"
                )
            return default
        return _decode(key, text, deserialize_json)

    @staticmethod
    def get(key: str, default: Any = _NO_DEFAULT, deserialize_json: bool = False) -> Any:
        return run_blocking(Variable.aget, key, default, deserialize_json, what="Variable.get")

    @staticmethod
    async def aset(
        key: str, value: Any, serialize_json: bool = False, description: str = "",
        *, store: Store | None = None,
    ) -> None:
        record = VariableRecord(check_key(key), encode_value(key, value, serialize_json),
                                description)
        if is_sensitive_key(key):
            add_secret(record.value)

        async def write(found: Store | None) -> None:
            await require_store(found, "Variable.set").set_variables([record])

        await with_store(write, store)

    @staticmethod
    def set(key: str, value: Any, serialize_json: bool = False, description: str = "") -> None:
        run_blocking(Variable.aset, key, value, serialize_json, description, what="Variable.set")

    @staticmethod
    async def adelete(key: str, *, store: Store | None = None) -> bool:
        """Delete the stored variable; False if there was none."""
        async def delete(found: Store | None) -> bool:
            return await require_store(found, "Variable.delete").delete_variable(check_key(key))

        return await with_store(delete, store)

    @staticmethod
    def delete(key: str) -> bool:
        return run_blocking(Variable.adelete, key, what="Variable.delete")
