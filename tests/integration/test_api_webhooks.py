"""Signed webhook endpoints (POST /api/v1/webhooks/{name}) on a real loopback server:
HMAC-SHA256 of the raw body, GitHub style; runs created or events delivered to sensors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from aflow import DAG, Orchestrator, Param, PythonOperator, WebhookSensor
from aflow.api import serve_api
from aflow.authoring.webhooks import Webhook, sign
from aflow.exceptions import DagDefinitionError
from tests.auth_helpers import bearer

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)
SECRET = "s3cret"


def build() -> list[DAG]:
    with DAG("deploy", start_date=START, params={"ref": Param(type="string")},
             webhooks=[Webhook("github-push", secret=SECRET,
                               conf=lambda payload, headers: {"ref": payload["ref"]})]) as deploy:
        PythonOperator(task_id="ship", python_callable=lambda **c: c["params"]["ref"])
    with DAG("echo", start_date=START,
             webhooks=[Webhook("from-env", secret_env="AFLOW_TEST_HOOK_SECRET")]) as echo:
        PythonOperator(task_id="say", python_callable=lambda **c: c["dag_run"].conf)
    with DAG("approval", start_date=START,
             webhooks=[Webhook("approve", secret=SECRET,
                               deliver_to=lambda payload, headers: f"approve-{payload['id']}")]) as approval:
        WebhookSensor(task_id="wait", key="approve-7", poke_interval=0.05)
    return [deploy, approval, echo]


@pytest.fixture
async def served(home: Path) -> AsyncIterator[tuple[Orchestrator, httpx.AsyncClient]]:
    async with Orchestrator(build(), home=home) as o, serve_api(o) as url:
        async with httpx.AsyncClient(base_url=f"{url}/api/v1/webhooks", timeout=30) as client:
            yield o, client


async def post(client: httpx.AsyncClient, name: str, payload: Any, *, secret: str = SECRET,
               delivery: str | None = None, raw: bytes | None = None) -> httpx.Response:
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"X-Hub-Signature-256": sign(secret, body), "Content-Type": "application/json"}
    if delivery:
        headers["X-GitHub-Delivery"] = delivery
    return await client.post(f"/{name}", content=body, headers=headers)


def code_of(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


async def test_a_signed_push_creates_one_run_per_delivery(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    o, client = served
    first = await post(client, "github-push", {"ref": "main"}, delivery="d-1")
    assert first.status_code == 201, first.text
    answer = first.json()
    assert answer["action"] == "triggered" and answer["dag_id"] == "deploy"
    run = await o.store.get_run("deploy", answer["dag_run_id"])  # committed before the 201
    assert run is not None and run.conf == {"ref": "main"} and run.run_type == "webhook"
    assert run.triggered_by == "webhook github-push"

    again = await post(client, "github-push", {"ref": "main"}, delivery="d-1")
    assert again.status_code == 200 and again.json()["dag_run_id"] == answer["dag_run_id"]
    other = await post(client, "github-push", {"ref": "dev"}, delivery="d-2")
    assert other.status_code == 201
    assert len(await o.store.list_runs("deploy")) == 2
    final = await (await o.get_run("deploy", answer["dag_run_id"])).wait(timeout=30)
    assert final.state == "success"
    metrics = (await client.get(str(client.base_url.copy_with(path="/metrics")),
                                headers=await bearer(o.store, "viewer"))).text
    count = next(line for line in metrics.splitlines()
                 if line.startswith("aflow_webhook_to_start_seconds_count"))
    assert float(count.split()[-1]) >= 1  # the run's first try was seen


async def test_bad_or_missing_signatures_change_nothing(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    o, client = served
    wrong = await post(client, "github-push", {"ref": "main"}, secret="guess")
    assert wrong.status_code == 401 and code_of(wrong) == "bad_signature"
    body = json.dumps({"ref": "main"}).encode()
    tampered = await client.post("/github-push", content=body + b" ",
                                 headers={"X-Hub-Signature-256": sign(SECRET, body)})
    assert tampered.status_code == 401
    unsigned = await client.post("/github-push", content=body)
    assert unsigned.status_code == 401
    malformed = await client.post("/github-push", content=body,
                                  headers={"X-Hub-Signature-256": "md5=abc"})
    assert malformed.status_code == 401
    assert await o.store.list_runs("deploy") == []


async def test_bad_payloads_get_clear_errors(served: tuple[Orchestrator, httpx.AsyncClient]) -> None:
    o, client = served
    assert (await post(client, "nope", {})).status_code == 404
    not_json = await post(client, "github-push", None, raw=b"ref=main")
    assert not_json.status_code == 400 and code_of(not_json) == "malformed_body"
    unmapped = await post(client, "github-push", {"branch": "main"})
    assert unmapped.status_code == 422 and code_of(unmapped) == "webhook_mapping_failed"
    assert "KeyError" in unmapped.json()["error"]["message"]
    invalid = await post(client, "github-push", {"ref": 42})
    assert invalid.status_code == 422 and code_of(invalid) == "invalid_conf"
    assert await o.store.list_runs("deploy") == []


async def test_a_secret_from_the_environment(
    served: tuple[Orchestrator, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    o, client = served
    monkeypatch.delenv("AFLOW_TEST_HOOK_SECRET", raising=False)
    unset = await post(client, "from-env", {"x": 1})
    assert unset.status_code == 503 and code_of(unset) == "webhook_not_configured"
    assert "AFLOW_TEST_HOOK_SECRET" in unset.json()["error"]["message"]
    monkeypatch.setenv("AFLOW_TEST_HOOK_SECRET", "rotated")
    ok = await post(client, "from-env", {"x": 1}, secret="rotated")
    assert ok.status_code == 201
    run = await o.store.get_run("echo", ok.json()["dag_run_id"])
    assert run is not None and run.conf == {"payload": {"x": 1}}


async def test_a_webhook_can_deliver_to_a_waiting_sensor(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    o, client = served
    handle = await o.trigger("approval")
    answer = await post(client, "approve", {"id": 7, "by": "ada"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["key"] == "approve-7" and answer.json()["event_id"] >= 1
    final = await handle.wait(timeout=30)
    assert final.state == "success"
    xcoms = await o.store.get_xcoms("approval", handle.run_id, "wait")
    assert [x.value for x in xcoms] == [{"id": 7, "by": "ada"}]


def test_webhooks_are_checked_when_the_dag_is_defined() -> None:
    with pytest.raises(DagDefinitionError, match="exactly one of secret_env or secret"):
        Webhook("x")
    with pytest.raises(DagDefinitionError, match="webhook name"):
        Webhook("bad name", secret="s")
    with pytest.raises(DagDefinitionError, match="defined twice"):
        DAG("twice", webhooks=[Webhook("a", secret="s"), Webhook("a", secret="t")])


async def test_a_name_two_dags_define_is_refused(home: Path) -> None:
    dags = [DAG(d, start_date=START, webhooks=[Webhook("same", secret=SECRET)]) for d in ("a", "b")]
    for dag in dags:
        with dag:
            PythonOperator(task_id="t", python_callable=lambda: None)
    async with Orchestrator(dags, home=home) as o, serve_api(o) as url:
        async with httpx.AsyncClient(base_url=f"{url}/api/v1/webhooks") as client:
            answer = await post(client, "same", {})
    assert answer.status_code == 409 and "a, b" in answer.json()["error"]["message"]


async def test_a_body_that_arrives_in_pieces_is_read_whole(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    """Large payloads reach the server in several reads; the signature covers them all."""
    o, client = served
    body = json.dumps({"id": 7, "padding": "x" * 200_000}).encode()
    head = (
        "POST /api/v1/webhooks/approve HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Hub-Signature-256: {sign(SECRET, body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    host, port = str(client.base_url.host), int(client.base_url.port or 80)
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(head + body[:10])
        await anyio.sleep(0.2)
        for i in range(10, len(body), 65_536):
            await stream.send(body[i:i + 65_536])
            await anyio.sleep(0.01)
        answer = b""
        with anyio.fail_after(10):
            try:
                while True:
                    answer += await stream.receive()
            except anyio.EndOfStream:
                pass
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]


async def test_a_forged_non_ascii_signature_is_a_401(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    o, client = served
    answer = await client.post("/github-push", content=b'{"ref": "main"}',
                               headers={"X-Hub-Signature-256": "sha256=é".encode()})
    assert answer.status_code == 401 and code_of(answer) == "bad_signature"
    assert await o.store.list_runs("deploy") == []
