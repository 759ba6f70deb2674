"""Choosing a Store backend from a URL."""

from __future__ import annotations

from aflow.store.base import Store


def is_postgres_url(url: str) -> bool:
    """Whether `url` names a PostgreSQL store (else it is SQLite)."""
    return url.startswith(("postgresql://", "postgres://"))


def open_store_url(url: str, *, sqlite_synchronous: str = "NORMAL") -> Store:
    """A (not yet opened) store for `url`: `sqlite:///path` or a plain path for SQLite,
    `postgresql://user@host:port/db[?schema=NAME]` (or `postgres://…`) for PostgreSQL
    (see aflow.store.postgres.url for its options)."""
    if is_postgres_url(url):
        from aflow.store.postgres import PostgresStore

        return PostgresStore(url)
    from aflow.store.sqlite import SqliteStore

    return SqliteStore(url, synchronous=sqlite_synchronous)
