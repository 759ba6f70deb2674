"""PostgresStore's migrations: migrations/NNNN_name.sql, applied in order at open and
recorded in `schema_migrations`.

All pending migrations run in one transaction that first takes a transaction-scoped
advisory lock keyed by the schema: of several processes opening an empty database at
once, one migrates while the others wait, then find nothing left to do. A database that
is already up to date is only read, never locked.
"""

from __future__ import annotations

import hashlib
import logging
from importlib import resources

import asyncpg

from aflow.store.postgres.url import quote_ident

log = logging.getLogger(__name__)


def migration_scripts() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped, in order."""
    out = []
    folder = resources.files("aflow.store.postgres").joinpath("migrations")
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        version_s, _, rest = entry.name.partition("_")
        out.append((int(version_s), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(out)


def advisory_key(schema: str | None) -> int:
    """A stable signed 64-bit key for the migration lock of one schema."""
    digest = hashlib.sha256(f"aflow.migrate:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def applied_version(conn: asyncpg.Connection) -> int:
    """The highest migration applied in the connection's schema; 0 for an empty one."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))


async def migrate(conn: asyncpg.Connection, schema: str | None, where: str) -> None:
    """Bring the schema (created if missing) to the latest migration."""
    scripts = migration_scripts()
    latest = scripts[-1][0] if scripts else 0
    if await applied_version(conn) >= latest:
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key(schema))
        if schema is not None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        for version, name, sql in scripts:
            if version <= current:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            log.info("applied migration %04d_%s to %s", version, name, where)
