"""A connection URI's query options, as the triggers read them.

`Connection.get_uri()` (aflow's, like Airflow's) writes a connection's extra as plain
query options when every value is text, and otherwise as one `__extra__=<JSON object>`
option. A trigger that reads the options must open that one, or it would pass it on
whole (to a database as a setting, to an HTTP server as a header) and lose what is in it.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

EXTRA_PARAM = "__extra__"
"""The query option that holds a connection's whole extra as a JSON object."""
SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "private_key")
"""An option whose name holds one of these may hold a secret: its value is never shown.
The same words as aflow.secrets.masking.SENSITIVE_WORDS (a test keeps them so); the
triggers package does not import aflow."""
_SECRET = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)


def is_secret_option(key: str) -> bool:
    """Whether a URI's query option (or a connection's extra) `key` may hold a secret."""
    return key == EXTRA_PARAM or _SECRET.search(key) is not None


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
