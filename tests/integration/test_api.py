"""The REST API on a real loopback server (aiohttp) in front of a real Orchestrator and
SQLite store, called over HTTP with httpx."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from openapi_spec_validator import validate

from aflow import DAG, Orchestrator, Param, PythonOperator
from aflow.api import serve_api
from aflow.api.v1 import api
from tests.auth_helpers import bearer

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


def say(text: str) -> str:
    # logging, not print: pytest swaps sys.stdout back between fixture setup (where the
    # Orchestrator installs its routing proxy) and the test
    logging.getLogger("greet").info("saying %s", text)
    return text.upper()


def build_dags() -> list[DAG]:
    with DAG(
        "greet",
        schedule=None,
        start_date=START,
        tags=["demo"],
        params={
            "name": Param("world", type="string"),
            "times": Param(1, type="integer", minimum=1, maximum=3),
            "mode": Param("loud", enum=["loud", "quiet"]),
        },
    ) as greet:
        first = PythonOperator(task_id="first", python_callable=say, op_args=["{{ params.name }}"])
        second = PythonOperator(task_id="second", python_callable=say, op_args=["again"],
                                max_active_tis_per_dag=4, max_active_tis_per_dagrun=1)
        first >> second
    with DAG("other", schedule="@daily", start_date=START, catchup=False,
             is_paused_upon_creation=True) as other:
        PythonOperator(task_id="only", python_callable=say, op_args=["x"])
    return [greet, other]


@pytest.fixture
async def served(home: Path) -> AsyncIterator[tuple[Orchestrator, httpx.AsyncClient]]:
    async with Orchestrator(build_dags(), home=home) as o, serve_api(o) as url:
        async with httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=30,
                                     headers=await bearer(o.store)) as client:
            yield o, client


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code, body
    assert body["message"]
    return body


async def wait_for_run(client: httpx.AsyncClient, dag_id: str, run_id: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            run = (await client.get(f"/dags/{dag_id}/runs/{run_id}")).json()
            if run["state"] in ("success", "failed"):
                return run
            await anyio.sleep(0.02)


# -- the document matches what is served ---------------------------------------------------------
async def test_openapi_document_lists_exactly_the_served_routes(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    _, client = served
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    declared = {(r.method, "/api/v1" + r.path) for r in api.routes}
    assert documented == declared
    # every documented operation answers (not a router 404/405), with its declared codes
    for method, path in sorted(documented):
        concrete = (path.removeprefix("/api/v1").replace("{dag_id}", "greet")
                    .replace("{dag_run_id}", "nope").replace("{task_id}", "first")
                    .replace("{try_number}", "1").replace("{name}", "no-hook"))
        concrete = re.sub(r"{[^}]+}", "x", concrete)  # any other: a name that does not exist
        response = await client.request(method, concrete, json={} if method != "GET" else None)
        op = doc["paths"][path][method.lower()]
        assert str(response.status_code) in op["responses"], (method, path, response.text)
        if response.status_code == 404:
            assert "no such route" not in response.text
    validate(doc)  # a valid OpenAPI 3.1 document: every $ref resolves
    schemas = doc["components"]["schemas"]
    assert {"DagRun", "DagRunCreate", "TaskInstance", "ErrorResponse"} <= set(schemas)
    create = doc["paths"]["/api/v1/dags/{dag_id}/runs"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("DagRunCreate")
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in create["parameters"])


# -- errors -----------------------------------------------------------------------------------
async def test_unknown_routes_methods_and_malformed_bodies_get_json_errors(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    o, client = served
    error_of(await client.get("/nowhere"), 404, "not_found")
    error_of(await client.delete("/dags"), 405, "method_not_allowed")
    error_of(await client.get("/dags/nope"), 404, "not_found")
    as_json = {"Content-Type": "application/json"}
    error_of(await client.post("/dags/greet/runs", content=b"{not json", headers=as_json), 400,
             "malformed_body")
    error_of(await client.post("/dags/greet/runs", content=b"", headers=as_json), 400,
             "malformed_body")
    unknown = error_of(await client.post("/dags/greet/runs", json={"conf": {}, "colour": 1}),
                       422, "validation_error")
    assert [d["loc"] for d in unknown["details"]] == ["body.colour"]
    wrong = error_of(await client.post("/dags/greet/runs", json={"conf": [1]}), 422,
                     "validation_error")
    assert wrong["details"][0]["loc"] == "body.conf"
    naive = error_of(await client.post("/dags/greet/runs",
                                       json={"logical_date": "2024-05-01T00:00:00"}),
                     422, "validation_error")
    assert naive["details"][0]["loc"] == "body.logical_date"
    assert "timezone" in naive["details"][0]["message"]
    error_of(await client.get("/dags/greet/runs", params={"logical_date": "2024-01-01T00:00:00"}),
             422, "validation_error")
    as_text = await client.post("/dags/greet/runs", content=b'{"conf": {}}',
                                headers={"Content-Type": "text/plain"})
    error_of(as_text, 415, "unsupported_media_type")  # what another site's page could send
    deep = b"[" * 100_000 + b"]" * 100_000
    error_of(await client.post("/dags/greet/runs", content=deep,
                               headers={"Content-Type": "application/json"}), 400, "malformed_body")
    huge = b'{"conf": {"n": ' + b"9" * 5000 + b"}}"
    error_of(await client.post("/dags/greet/runs", content=huge,
                               headers={"Content-Type": "application/json"}), 400, "malformed_body")
    too_big = b'{"conf": {"s": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    error_of(await client.post("/dags/greet/runs", content=too_big,
                               headers={"Content-Type": "application/json"}), 413, "body_too_large")
    bad_query = error_of(await client.get("/dags", params={"limit": "0", "colour": "x"}), 422,
                         "validation_error")
    assert sorted(d["loc"] for d in bad_query["details"]) == ["query.colour", "query.limit"]
    error_of(await client.get("/dags/greet/runs", params={"state": "sleepy"}), 422,
             "validation_error")
    error_of(await client.patch("/dags/greet", json={"is_paused": "maybe"}), 422, "validation_error")
    assert await o.store.list_runs("greet") == []  # nothing of the above created anything


async def test_invalid_conf_lists_every_problem_and_creates_nothing(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    o, client = served
    body = error_of(await client.post("/dags/greet/runs",
                                      json={"conf": {"name": 5, "times": 9, "mode": "whisper"}}),
                    422, "invalid_conf")
    text = " ".join(d["message"] for d in body["details"])
    for name in ("name", "times", "mode"):
        assert name in text, text
    assert len(body["details"]) == 3
    assert await o.store.list_runs("greet") == []


# -- DAGs -------------------------------------------------------------------------------------
async def test_dags_list_detail_and_pause(served: tuple[Orchestrator, httpx.AsyncClient]) -> None:
    o, client = served
    listed = (await client.get("/dags")).json()
    assert listed["total_entries"] == 2
    assert [d["dag_id"] for d in listed["dags"]] == ["greet", "other"]
    assert (await client.get("/dags", params={"paused": "true"})).json()["dags"][0]["dag_id"] == "other"
    assert [d["dag_id"] for d in (await client.get("/dags", params={"tags": "demo"})).json()["dags"]] == ["greet"]
    page = (await client.get("/dags", params={"limit": 1, "offset": 1})).json()
    assert [d["dag_id"] for d in page["dags"]] == ["other"] and page["total_entries"] == 2

    detail = (await client.get("/dags/greet")).json()
    assert [t["task_id"] for t in detail["tasks"]] == ["first", "second"]
    assert detail["tasks"][0]["downstream"] == ["second"]
    assert [(t["max_active_tis_per_dag"], t["max_active_tis_per_dagrun"]) for t in detail["tasks"]] \
        == [(None, None), (4, 1)]
    assert set(detail["params"]) == {"name", "times", "mode"}

    paused = await client.patch("/dags/greet", json={"is_paused": True})
    assert paused.status_code == 200 and paused.json()["is_paused"] is True
    record = await o.store.get_dag("greet")
    assert record is not None and record.is_paused


# -- runs and task instances ---------------------------------------------------------------------
async def test_trigger_a_run_then_read_its_task_instances_logs_and_xcoms(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    o, client = served
    created = await client.post("/dags/greet/runs", json={"conf": {"name": "ada"}})
    assert created.status_code == 201, created.text
    run = created.json()
    run_id = run["dag_run_id"]
    assert run["conf"] == {"name": "ada"} and run["run_type"] == "manual"
    assert await o.store.get_run("greet", run_id) is not None  # committed before the 201

    final = await wait_for_run(client, "greet", run_id)
    assert final["state"] == "success"
    tis = (await client.get(f"/dags/greet/runs/{run_id}/taskInstances")).json()
    assert tis["total_entries"] == 2
    assert [(t["task_id"], t["state"], t["try_number"]) for t in tis["task_instances"]] == [
        ("first", "success", 1), ("second", "success", 1)]
    one = (await client.get(f"/dags/greet/runs/{run_id}/taskInstances/first")).json()
    assert one["state"] == "success" and one["duration"] is not None

    xcoms = (await client.get(f"/dags/greet/runs/{run_id}/taskInstances/first/xcomEntries")).json()
    assert [(x["key"], x["value"]) for x in xcoms["xcom_entries"]] == [("return_value", "ADA")]

    log = (await client.get(f"/dags/greet/runs/{run_id}/taskInstances/first/logs/1")).json()
    assert "saying ada" in log["content"] and log["offset"] == 0
    assert log["next_offset"] == len(log["content"].encode())
    tail = (await client.get(f"/dags/greet/runs/{run_id}/taskInstances/first/logs/1",
                             params={"offset": log["next_offset"]})).json()
    assert tail["content"] == "" and tail["next_offset"] == log["next_offset"]
    middle = (await client.get(f"/dags/greet/runs/{run_id}/taskInstances/first/logs/1",
                               params={"offset": 5})).json()
    assert middle["content"] == log["content"][5:]

    error_of(await client.get(f"/dags/greet/runs/{run_id}/taskInstances/first/logs/2"), 404, "not_found")
    error_of(await client.get(f"/dags/greet/runs/{run_id}/taskInstances/first/logs/x"), 422,
             "validation_error")
    error_of(await client.get(f"/dags/greet/runs/{run_id}/taskInstances/nope"), 404, "not_found")
    error_of(await client.get("/dags/greet/runs/nope/taskInstances"), 404, "not_found")

    listed = (await client.get("/dags/greet/runs", params={"state": ["success", "failed"]})).json()
    assert [r["dag_run_id"] for r in listed["dag_runs"]] == [run_id]
    assert listed["total_entries"] == 1
    assert (await client.get("/dags/greet/runs", params={"state": "running"})).json()["dag_runs"] == []
    everyone = (await client.get("/dags/~/runs")).json()
    assert [r["dag_run_id"] for r in everyone["dag_runs"]] == [run_id]


async def test_a_run_id_taken_is_a_conflict(served: tuple[Orchestrator, httpx.AsyncClient]) -> None:
    o, client = served
    first = await client.post("/dags/greet/runs", json={"dag_run_id": "mine"})
    assert first.status_code == 201
    error_of(await client.post("/dags/greet/runs", json={"dag_run_id": "mine"}), 409, "conflict")
    assert len(await o.store.list_runs("greet")) == 1


async def test_an_idempotency_key_makes_retries_create_one_run(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    o, client = served
    headers = {"Idempotency-Key": "order-42"}
    body = {"conf": {"name": "bob"}}
    answers = await asyncio.gather(
        *(client.post("/dags/greet/runs", json=body, headers=headers) for _ in range(10))
    )
    assert sorted(a.status_code for a in answers) == [200] * 9 + [201]
    assert len({a.json()["dag_run_id"] for a in answers}) == 1
    assert len(await o.store.list_runs("greet")) == 1

    reused = await client.post("/dags/greet/runs", json={"conf": {"name": "eve"}}, headers=headers)
    error_of(reused, 422, "idempotency_key_reused")
    other = await client.post("/dags/greet/runs", json=body, headers={"Idempotency-Key": "order-43"})
    assert other.status_code == 201
    assert len(await o.store.list_runs("greet")) == 2


# -- health and triggers --------------------------------------------------------------------------
async def test_health_reports_store_scheduler_and_triggerer(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    _, client = served
    response = await client.get("/health")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "healthy"
    assert health["store"]["status"] == "healthy"
    assert health["scheduler"]["status"] == "healthy"
    assert health["triggerer"]["status"] == "healthy"
    triggers = (await client.get("/triggers")).json()
    assert triggers == {"triggers": [], "total_waiting": 0}
    assert (await client.get("/importErrors")).json() == {"import_errors": []}


async def test_health_without_a_triggerer_says_so(home: Path) -> None:
    async with Orchestrator(build_dags(), home=home, triggerer=False) as o, serve_api(o) as url:
        async with httpx.AsyncClient(base_url=url, headers=await bearer(o.store)) as client:
            health = (await client.get("/api/v1/health")).json()
    assert health["triggerer"] == {"status": "unhealthy", "latest_heartbeat": None,
                                   "detail": "no triggerer is running"}


async def test_a_log_read_in_chunks_never_cuts_a_character(
    served: tuple[Orchestrator, httpx.AsyncClient], tmp_path: Path
) -> None:
    from aflow.runtime.logs import read_log

    path = tmp_path / "try.log"
    text = "naïve → 日本 🎉 done\n"
    path.write_text(text, encoding="utf-8")
    pieces, offset = [], 0
    for _ in range(100):
        piece, offset = read_log(path, offset, limit=4)
        pieces.append(piece)
        if offset >= len(text.encode()):
            break
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
