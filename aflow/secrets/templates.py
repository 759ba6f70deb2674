"""`{{ var.value.x }}`, `{{ var.json.x }}` and `{{ conn.my_db.host }}` in templates.

Templates render synchronously on the event loop, where a store lookup cannot wait. So
before a task's templates render, the keys and ids they name are found in the template
text (`var.value.KEY`, `var.json.KEY`, `var.value.get('KEY', ...)`, `var.value['KEY']`,
`conn.ID`, `conn.get('ID')`, `conn['ID']`) and looked up once, asynchronously; the
template reads those values. A key built at render time (`var.value[name]`) is not
known in advance and renders as an error naming it.
"""

from __future__ import annotations

import re
from typing import Any

from aflow.exceptions import ConnectionNotFound, SecretsError, VariableNotFound
from aflow.secrets.backends import lookup_connection, lookup_variable
from aflow.secrets.connection import Connection
from aflow.secrets.variable import _decode
from aflow.store.base import Store

_VAR = re.compile(
    r"""\bvar\s*\.\s*(?:value|json)\s*(?:\.\s*([A-Za-z_]\w*)\b(?!\s*\()"""
    r"""|\.\s*get\s*\(\s*['"]([^'"]+)['"]|\[\s*['"]([^'"]+)['"]\s*\])"""
)
_CONN = re.compile(
    r"""\bconn\s*(?:\.\s*([A-Za-z_]\w*)\b(?!\s*\()|\.\s*get\s*\(\s*['"]([^'"]+)['"]"""
    r"""|\[\s*['"]([^'"]+)['"]\s*\])"""
)

Refs = tuple[frozenset[str], frozenset[str]]  # variable keys, connection ids


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple | set):
        return [s for v in value for s in _strings(v)]
    return []


def find_refs(texts: list[str]) -> Refs | None:
    keys: set[str] = set()
    ids: set[str] = set()
    for text in texts:
        if "var" in text:
            keys.update(next(g for g in m.groups() if g) for m in _VAR.finditer(text))
        if "conn" in text:
            ids.update(next(g for g in m.groups() if g) for m in _CONN.finditer(text))
    return (frozenset(keys), frozenset(ids)) if keys or ids else None


def secret_refs(task: Any) -> Refs | None:
    """The variables and connections a task's templated fields name (cached on the task)."""
    cached = task.__dict__.get("_aflow_secret_refs", False)
    if cached is not False:
        return cached  # type: ignore[no-any-return]
    texts = [s for f in task.template_fields for s in _strings(getattr(task, f, None))]
    refs = find_refs(texts)
    task.__dict__["_aflow_secret_refs"] = refs
    return refs


async def template_context(refs: Refs, store: Store | None = None) -> dict[str, Any]:
    """`var` and `conn` for a template context, with the values `refs` names (looked up
    in `store` when given, else in the try's or the configured one)."""
    keys, ids = refs
    variables = {key: await lookup_variable(key, store=store) for key in keys}
    connections: dict[str, Connection | None] = {}
    for conn_id in ids:
        try:
            connections[conn_id] = await lookup_connection(conn_id, store=store)
        except ConnectionNotFound:
            connections[conn_id] = None
    return {"var": VarAccessor(variables), "conn": ConnAccessor(connections)}


class _VarValues:
    def __init__(self, values: dict[str, str | None], as_json: bool) -> None:
        self._values = values
        self._json = as_json

    def get(self, key: str, default: Any = None) -> Any:
        text = self._values.get(key)
        if text is None:
            if key not in self._values:
                raise SecretsError(
                    f"variable {key!r} is not named literally in the template; "
                    "write var.value.KEY or var.value.get('KEY')"
                )
            return default
        return _decode(key, text, self._json)

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise VariableNotFound(f"unknown variable {key!r} (used in a template)")
        return value

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]


_MISSING: Any = object()


class VarAccessor:
    def __init__(self, values: dict[str, str | None]) -> None:
        self.value = _VarValues(values, as_json=False)
        self.json = _VarValues(values, as_json=True)


class ConnAccessor:
    def __init__(self, connections: dict[str, Connection | None]) -> None:
        self._connections = connections

    def get(self, conn_id: str) -> Connection:
        if conn_id not in self._connections:
            raise SecretsError(
                f"connection {conn_id!r} is not named literally in the template; "
                "write conn.ID or conn.get('ID')"
            )
        conn = self._connections[conn_id]
        if conn is None:
            raise ConnectionNotFound(f"unknown connection {conn_id!r} (used in a template)")
        return conn

    def __getitem__(self, conn_id: str) -> Connection:
        return self.get(conn_id)

    def __getattr__(self, conn_id: str) -> Connection:
        if conn_id.startswith("_"):
            raise AttributeError(conn_id)
        return self.get(conn_id)
