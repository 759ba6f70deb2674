"""Run ownership on PostgreSQL, in-process: a scheduler that finds on renewing its leases
that a run now has another owner (it missed its lease; another scheduler took over)
stops driving that run. Real Orchestrator, real PostgreSQL, no mocks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import asyncpg
import pytest

from aflow import DAG, PythonOperator
from aflow.orchestrator import Orchestrator
from aflow.states import DagRunState, TaskState

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """(store URL of a new schema, schema name), dropped at the end."""
    schema = f"aflow_test_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in postgres_dsn else "?"
    yield f"{postgres_dsn}{sep}schema={schema}", schema
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def test_a_run_taken_over_by_another_owner_is_no_longer_driven_here(
    home: Path, postgres_dsn: str, pg: tuple[str, str]
) -> None:
    url, schema = pg
    started, release = anyio.Event(), anyio.Event()

    async def first() -> str:
        started.set()
        await release.wait()
        return "done"

    with DAG("owned", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        a = PythonOperator(task_id="a", python_callable=first)
        b = PythonOperator(task_id="b", python_callable=lambda: "b")
        a >> b

    async with Orchestrator(dag, store=url, home=home, schedule=False, lease_s=0.6) as o:
        handle = await o.trigger("owned")
        with anyio.fail_after(10):
            await started.wait()
        assert o.driver is not None
        key = ("owned", handle.run_id)
        assert key in o.driver.runs
        rs = o.driver.runs[key]

        # Another scheduler has taken the run over (as after a missed lease).
        conn = await asyncpg.connect(postgres_dsn, timeout=10, server_settings={"search_path": schema})
        try:
            await conn.execute(
                "UPDATE dag_run SET owner='thief', lease_until=now() + interval '1 hour' "
                "WHERE run_id=$1", handle.run_id
            )
        finally:
            await conn.close()

        with anyio.fail_after(10):
            while key in o.driver.runs:  # noqa: ASYNC110 - the lease loop drops it, no event
                await anyio.sleep(0.05)
        assert rs.lost
        tries_before = o.driver.tries_started
        release.set()
        # a's try ends and is recorded; its downstream is not started here
        with anyio.fail_after(10):
            while True:
                tis = {t.task_id: t for t in await o.store.get_tis("owned", handle.run_id)}
                if tis["a"].state is TaskState.SUCCESS:
                    break
                await anyio.sleep(0.05)
        assert "b" not in tis
        assert o.driver.tries_started == tries_before
        record = await o.store.get_run("owned", handle.run_id)
        assert record is not None
        assert (record.state, record.owner) == (DagRunState.RUNNING, "thief")
