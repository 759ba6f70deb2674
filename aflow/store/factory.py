"""Choosing a Store backend from a URL."""

from __future__ import annotations

from aflow.exceptions import StoreUnavailable
from aflow.store.base import Store


def open_store_url(url: str, *, sqlite_synchronous: str = "NORMAL") -> Store:
    """A (not yet opened) store for `url`: `sqlite:///path` or a plain path for SQLite,
    `postgresql://…` for PostgreSQL."""
    if url.startswith(("postgresql://", "postgres://")):
        raise StoreUnavailable(
            "the PostgreSQL store is not available in this version; use sqlite:///path"
        )
    from aflow.store.sqlite import SqliteStore

    return SqliteStore(url, synchronous=sqlite_synchronous)
