"""A connection URI's query options, as the triggers read them.

`Connection.get_uri()` (aflow's, like Airflow's) writes a connection's extra as plain
query options when every value is text, and otherwise as one `__extra__=<JSON object>`
option. A trigger that reads the options must open that one, or it would pass it on
whole (to a database as a setting, to an HTTP server as a header) and lose what is in it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

EXTRA_PARAM = "__extra__"
"""The query option that holds a connection's whole extra as a JSON object."""


def query_items(query: str) -> list[tuple[str, Any]]:
    """A URI's query options in order, `__extra__=<JSON object>` opened into its items
    (typed, as the JSON has them). ValueError when it is not a JSON object."""
    items: list[tuple[str, Any]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != EXTRA_PARAM:
            items.append((key, value))
            continue
        try:
            loaded = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{EXTRA_PARAM} is not valid JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise ValueError(
                f"{EXTRA_PARAM} is not a JSON object (got {type(loaded).__name__})"
            )
        items.extend(loaded.items())
    return items
