"""Clearing and marking through the REST API, on a real loopback server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from aflow import DAG, Orchestrator, PythonOperator
from aflow.api import serve_api
from tests.auth_helpers import bearer

pytestmark = pytest.mark.anyio


def build(gate: Path) -> DAG:
    def flaky() -> str:
        if not gate.exists():
            raise RuntimeError("the gate is closed")
        return "through"

    with DAG("fix", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        first = PythonOperator(task_id="first", python_callable=lambda: 1)
        middle = PythonOperator(task_id="middle", python_callable=flaky)
        last = PythonOperator(task_id="last", python_callable=lambda: 3)
        first >> middle >> last
    return dag


@pytest.fixture
async def served(home: Path, tmp_path: Path) -> AsyncIterator[tuple[Orchestrator, httpx.AsyncClient, Path]]:
    gate = tmp_path / "gate"
    async with Orchestrator([build(gate)], home=home) as o, serve_api(o) as url:
        async with httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=30,
                                     headers=await bearer(o.store)) as client:
            yield o, client, gate


async def ended(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            run = (await client.get(f"/dags/fix/runs/{run_id}")).json()
            if run["state"] in ("success", "failed"):
                return run
            await anyio.sleep(0.02)


async def states(client: httpx.AsyncClient, run_id: str) -> dict[str, tuple[str, int]]:
    tis = (await client.get(f"/dags/fix/runs/{run_id}/taskInstances")).json()["task_instances"]
    return {t["task_id"]: (t["state"], t["try_number"]) for t in tis}


async def test_clear_a_failed_task_with_its_downstream(
    served: tuple[Orchestrator, httpx.AsyncClient, Path],
) -> None:
    o, client, gate = served
    run_id = (await client.post("/dags/fix/runs", json={})).json()["dag_run_id"]
    assert (await ended(client, run_id))["state"] == "failed"
    assert await states(client, run_id) == {
        "first": ("success", 1), "middle": ("failed", 1), "last": ("upstream_failed", 0)}

    body = {"dag_run_id": run_id, "task_ids": ["middle"], "include_downstream": True}
    dry = await client.post("/dags/fix/clearTaskInstances", json={**body, "dry_run": True})
    assert dry.json() == {"task_ids": ["middle", "last"], "dry_run": True}
    assert (await client.get(f"/dags/fix/runs/{run_id}")).json()["state"] == "failed"  # unchanged

    gate.touch()
    done = await client.post("/dags/fix/clearTaskInstances", json=body)
    assert done.status_code == 200 and done.json()["task_ids"] == ["middle", "last"]
    assert (await ended(client, run_id))["state"] == "success"
    assert await states(client, run_id) == {
        "first": ("success", 1), "middle": ("success", 2), "last": ("success", 1)}
    tries = (await client.get(f"/dags/fix/runs/{run_id}/taskInstances/middle/tries")).json()
    assert [t["try_number"] for t in tries["tries"]] == [1, 2]
    assert tries["tries"][0]["log_size"] > 0  # the traceback of the failed try
    log = (await client.get(f"/dags/fix/runs/{run_id}/taskInstances/middle/logs/1")).json()
    assert "RuntimeError: the gate is closed" in log["content"]


async def test_mark_a_task_and_a_run(served: tuple[Orchestrator, httpx.AsyncClient, Path]) -> None:
    o, client, _gate = served
    run_id = (await client.post("/dags/fix/runs", json={})).json()["dag_run_id"]
    await ended(client, run_id)
    marked = await client.patch(f"/dags/fix/runs/{run_id}/taskInstances/middle",
                                json={"new_state": "success"})
    assert marked.status_code == 200, marked.text
    assert marked.json()["task_ids"] == ["middle", "last"]  # last is decided again
    assert (await ended(client, run_id))["state"] == "success"
    assert (await states(client, run_id))["last"] == ("success", 1)

    mark_run = await client.patch(f"/dags/fix/runs/{run_id}", json={"state": "failed"})
    assert mark_run.status_code == 200 and mark_run.json()["state"] == "failed"
    bad = await client.patch(f"/dags/fix/runs/{run_id}", json={"state": "running"})
    assert bad.status_code == 422
    unknown = await client.post("/dags/fix/clearTaskInstances",
                                json={"dag_run_id": run_id, "task_ids": ["nope"]})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]
    no_run = await client.post("/dags/fix/clearTaskInstances", json={"dag_run_id": "nope"})
    assert no_run.status_code == 404


async def test_pools_are_listed_set_and_deleted(
    served: tuple[Orchestrator, httpx.AsyncClient, Path],
) -> None:
    o, client, _gate = served
    listed = (await client.get("/pools")).json()["pools"]
    assert [p["name"] for p in listed] == ["default_pool"]
    made = await client.put("/pools/etl", json={"slots": 3, "description": "loads",
                                                "include_deferred": True})
    assert made.status_code == 200, made.text
    assert made.json() == {"name": "etl", "slots": 3, "description": "loads",
                           "include_deferred": True, "running": 0, "deferred": 0}
    stored = await o.store.get_pool("etl")
    assert stored is not None and stored.slots == 3
    assert (await client.put("/pools/etl", json={"slots": -2})).status_code == 422
    assert (await client.put("/pools/bad name", json={"slots": 1})).status_code == 422
    assert (await client.delete("/pools/default_pool")).status_code == 409
    assert (await client.delete("/pools/etl")).status_code == 204
    assert (await client.get("/pools/etl")).status_code == 404
    assert (await client.delete("/pools/etl")).status_code == 404
    page = await client.get(client.base_url.copy_with(path="/pools"))
    assert page.status_code == 200 and 'data-pool="default_pool"' in page.text
