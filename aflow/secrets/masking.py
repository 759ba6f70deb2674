"""Secret masking: values known to be secret are replaced by `***` wherever aflow writes
text a user may see (task logs, a task's error, rendered templates shown by the CLI).

A value becomes known when aflow hands it out: a connection's password (and its URL-quoted
form), or the value of a variable whose key looks secret (`is_sensitive_key`). The set is
process-wide, as the secrets are: a child process (`run_in="process"`) keeps its own set
and masks its own output before it reaches the log file. Values shorter than
`MIN_MASKED_LENGTH` are not masked: masking every `1` or `ab` would garble logs and hide
nothing worth hiding.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import quote

MASK = "***"
MIN_MASKED_LENGTH = 3
SENSITIVE_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "private_key")
_SENSITIVE = re.compile("|".join(SENSITIVE_WORDS), re.IGNORECASE)

_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()  # longest first, so a secret inside another is masked whole


def is_sensitive_key(key: str) -> bool:
    """Whether a variable (or extra field) named `key` holds a secret by its name."""
    return _SENSITIVE.search(key) is not None


def add_secret(value: Any) -> None:
    """Mask `value` from now on (strings inside dicts and lists too)."""
    global _ordered
    found: set[str] = set()
    _collect(value, found)
    if not found - _secrets:
        return
    with _lock:
        _secrets.update(found)
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def _collect(value: Any, found: set[str]) -> None:
    if isinstance(value, str):
        if len(value) >= MIN_MASKED_LENGTH:
            found.add(value)
            quoted = quote(value, safe="")
            if quoted != value:
                found.add(quoted)
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, found)
    elif isinstance(value, list | tuple):
        for v in value:
            _collect(v, found)


def mask(text: str) -> str:
    """`text` with every known secret replaced by `***` (as is when none is known)."""
    secrets = _ordered
    if not secrets or not text:
        return text
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_value(value: Any) -> Any:
    """`mask` applied to the strings inside `value` (dicts, lists, tuples)."""
    if not _ordered:
        return value
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(mask_value(v) for v in value)
    return value


def masking_active() -> bool:
    return bool(_ordered)


def forget_secrets() -> None:
    """Forget every known secret (tests)."""
    global _ordered
    with _lock:
        _secrets.clear()
        _ordered = ()
