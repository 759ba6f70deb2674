"""Upgrading an SQLite store that holds data: each migration keeps what is there."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aflow.store.codec import dt_out
from aflow.store.sqlite import SqliteStore
from aflow.store.sqlite.store import _migration_scripts, _split_statements

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _database_at(path: Path, version: int) -> sqlite3.Connection:
    """A database migrated only up to `version`, as an older aflow left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    for v, name, sql in _migration_scripts():
        if v > version:
            break
        for statement in _split_statements(sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (v, name))
    return conn


async def test_triggers_owned_before_0003_keep_their_owner_until_its_lease_ends(tmp_path: Path):
    path = tmp_path / "old.db"
    conn = _database_at(path, 2)
    conn.execute(
        "INSERT INTO dag_run (dag_id, run_id, logical_date, run_type, state, conf, created_at) "
        "VALUES ('d', 'r', ?, 'manual', 'running', '{}', ?)",
        (dt_out(T0), dt_out(T0)),
    )
    rows = [  # (task, owner, lease_until)
        ("held", "old-triggerer", dt_out(T0 + timedelta(seconds=30))),
        ("free", None, None),
        ("odd", "no-lease", None),  # owned without a lease: nothing can renew it
    ]
    for task_id, owner, lease in rows:
        conn.execute(
            "INSERT INTO trigger (classpath, kwargs, created_at, owner, lease_until, dag_id, "
            "run_id, task_id, try_number) VALUES ('m.C', '{}', ?, ?, ?, 'd', 'r', ?, 1)",
            (dt_out(T0), owner, lease, task_id),
        )
    conn.close()

    async with SqliteStore(str(path)) as store:
        assert await store.schema_version() >= 3
        by_task = {t.task_id: t for t in await store.list_triggers()}
        assert by_task["held"].owner == "old-triggerer"
        assert by_task["held"].lease_until == T0 + timedelta(seconds=30)
        assert by_task["odd"].owner is None

        now = T0 + timedelta(seconds=10)
        taken = await store.claim_triggers("new", now, now + timedelta(seconds=30), 10)
        assert sorted(t.task_id for t in taken) == ["free", "odd"]  # the live lease holds

        later = T0 + timedelta(seconds=31)
        taken = await store.claim_triggers("new", later, later + timedelta(seconds=30), 10)
        assert [t.task_id for t in taken] == ["held"]
        assert {t.owner for t in await store.list_triggers()} == {"new"}
