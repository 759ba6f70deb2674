"""The UI and the REST API with group-prefixed task ids (ids with dots)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from aflow import DAG, BranchPythonOperator, Orchestrator, PythonOperator, TaskGroup
from aflow.api import serve_api
from tests.auth_helpers import bearer

pytestmark = pytest.mark.anyio


def build() -> DAG:
    with DAG("grouped", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        pick = BranchPythonOperator(task_id="pick", python_callable=lambda: "etl")
        with TaskGroup("etl") as etl:
            with TaskGroup("inner"):
                PythonOperator(task_id="load", python_callable=lambda: print("loading rows"))
        with TaskGroup("other") as other:
            PythonOperator(task_id="never", python_callable=lambda: None)
        pick >> [etl, other]
    return dag


async def test_pages_and_api_serve_dotted_task_ids(home: Path) -> None:
    async with Orchestrator([build()], home=home) as o, serve_api(o) as url:
        handle = await o.trigger("grouped")
        run = await handle.wait(timeout=60)
        assert run.state.value == "success"
        run_q = quote(run.run_id, safe="")
        async with httpx.AsyncClient(base_url=url, headers=await bearer(o.store)) as client:
            graph = await client.get("/dags/grouped")
            assert graph.status_code == 200
            assert 'data-task-id="etl.inner.load"' in graph.text
            grid = await client.get("/dags/grouped/grid")
            assert grid.status_code == 200
            assert f"/runs/{run_q}/tasks/etl.inner.load" in grid.text
            assert 'data-task-id="other.never"' in grid.text and "state-skipped" in grid.text
            page = await client.get(f"/dags/grouped/runs/{run_q}")
            assert page.status_code == 200 and "etl.inner.load" in page.text
            task_page = await client.get(f"/dags/grouped/runs/{run_q}/tasks/etl.inner.load")
            assert task_page.status_code == 200
            # the page loads its log from this URL (the API call below)
            assert f"/runs/{run_q}/taskInstances/etl.inner.load/logs/1" in task_page.text
            skipped = await client.get(f"/dags/grouped/runs/{run_q}/tasks/other.never")
            assert skipped.status_code == 200 and "skipped" in skipped.text
            missing = await client.get(f"/dags/grouped/runs/{run_q}/tasks/etl.nothing")
            assert missing.status_code == 404
            api = await client.get(f"/api/v1/dags/grouped/runs/{run_q}/taskInstances/etl.inner.load")
            assert api.status_code == 200, api.text
            assert api.json()["state"] == "success"
            logs = await client.get(
                f"/api/v1/dags/grouped/runs/{run_q}/taskInstances/etl.inner.load/logs/1")
            assert logs.status_code == 200 and "loading rows" in logs.text
