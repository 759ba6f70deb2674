"""Encoding of records' fields for backends that store datetimes and JSON as text."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def dt_out(value: datetime | None) -> str | None:
    """An aware datetime as sortable ISO-8601 text in UTC."""
    if value is None:
        return None
    if value.tzinfo is UTC:
        return value.isoformat(timespec="microseconds")
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: aflow stores only timezone-aware datetimes")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def dt_in(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def json_out(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def json_in(value: str | None) -> Any:
    return None if value is None else json.loads(value)
