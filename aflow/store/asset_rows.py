"""What a recorded DAG structure says about assets, in the rows both backends keep:
the assets a DAG consumes (its schedule's condition) and the watchers it defines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aflow.store.codec import json_out


def consumed_uris(structure: dict[str, Any]) -> list[str]:
    """The URIs the DAG's asset condition names (none for a DAG without one)."""
    condition = structure.get("asset_condition")
    return sorted(set(_walk(condition))) if condition else []


def _walk(node: dict[str, Any]) -> Iterator[str]:
    if "asset" in node:
        yield node["asset"]
    for child in node.get("all", ()) or node.get("any", ()):
        yield from _walk(child)


def watcher_key(uri: str, name: str) -> str:
    """One text per watcher (URIs and names hold no newline)."""
    return f"{uri}\n{name}"


def watcher_rows(dag_id: str, structure: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(uri, name, dag_id, classpath, kwargs as JSON) of each watcher the DAG defines."""
    return [
        (w["uri"], w["name"], dag_id, w["classpath"], json_out(w["kwargs"]))
        for w in structure.get("asset_watchers") or ()
    ]
