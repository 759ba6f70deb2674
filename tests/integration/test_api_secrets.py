"""Variables and Connections through the REST API and the pages: secrets never go out,
and a stored password is encrypted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from aflow import Orchestrator
from aflow.api import serve_api
from aflow.secrets import configure_secrets, generate_key
from tests.auth_helpers import bearer

pytestmark = pytest.mark.anyio


@pytest.fixture
def fernet_key() -> Iterator[str]:
    key = generate_key()
    configure_secrets(fernet_key=key)
    yield key
    configure_secrets()


@pytest.fixture
async def served(home: Path, fernet_key: str) -> AsyncIterator[tuple[Orchestrator, httpx.AsyncClient]]:
    async with Orchestrator([], home=home) as o, serve_api(o) as url:
        async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=await bearer(o.store)) as client:
            yield o, client


async def test_variables(served: tuple[Orchestrator, httpx.AsyncClient]) -> None:
    o, client = served
    assert (await client.put("/variables/region", json={"value": "eu", "description": "where"})).status_code == 200
    assert (await client.put("/variables/api_token", json={"value": "s3cr3t-value"})).status_code == 200
    listed = (await client.get("/variables")).json()["variables"]
    assert {v["key"]: v["value"] for v in listed} == {"api_token": "***", "region": "eu"}
    assert (await client.get("/variables/api_token")).json()["value"] == "***"
    stored = await o.store.get_variable("api_token")
    assert stored is not None and stored.value == "s3cr3t-value"  # kept, only never shown
    assert (await client.get("/variables/nope")).status_code == 404
    assert (await client.put("/variables/%20", json={"value": "x"})).status_code == 422
    assert (await client.delete("/variables/region")).status_code == 204
    assert (await client.delete("/variables/region")).status_code == 404
    page = await client.get(client.base_url.copy_with(path="/variables"))
    assert page.status_code == 200 and "s3cr3t-value" not in page.text and 'data-key="api_token"' in page.text


async def test_connections_never_show_their_secrets(served: tuple[Orchestrator, httpx.AsyncClient]) -> None:
    o, client = served
    body = {"conn_type": "postgresql", "host": "db.example", "port": 5432, "login": "ada",
            "password": "hunter2-password", "schema": "shop", "extra": {"sslmode": "require"}}
    made = await client.put("/connections/shop_db", json=body)
    assert made.status_code == 200, made.text
    out = made.json()
    assert out["password"] == "***" and out["schema"] == "shop" and out["has_extra"] is True
    record = await o.store.get_connection("shop_db")
    assert record is not None and record.password_enc and "hunter2" not in record.password_enc
    for answer in (await client.get("/connections"), await client.get("/connections/shop_db"),
                   await client.get(client.base_url.copy_with(path="/connections"))):
        assert answer.status_code == 200 and "hunter2" not in answer.text and "sslmode" not in answer.text
    assert (await client.put("/connections/x", json={"conn_type": "http", "port": 70000})).status_code == 422
    assert (await client.get("/connections/nope")).status_code == 404
    assert (await client.delete("/connections/shop_db")).status_code == 204


async def test_a_password_without_a_key_is_refused(home: Path) -> None:
    configure_secrets()  # no key
    async with Orchestrator([], home=home) as o, serve_api(o) as url:
        async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=await bearer(o.store)) as client:
            refused = await client.put("/connections/x", json={"conn_type": "http", "password": "p"})
            assert refused.status_code == 422 and "key" in refused.json()["error"]["message"]
            assert await o.store.get_connection("x") is None
            plain = await client.put("/connections/y", json={"conn_type": "http", "host": "h"})
            assert plain.status_code == 200  # nothing secret: no key needed


async def test_rendered_templates_on_the_task_page_hide_secrets(home: Path, fernet_key: str) -> None:
    from datetime import UTC, datetime

    from aflow import DAG, BashOperator

    with DAG("s", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        BashOperator(task_id="b", bash_command="echo {{ var.value.db_password }} {{ var.value.region }}")
    async with Orchestrator([dag], home=home) as o, serve_api(o) as url:
        from aflow.store.records import VariableRecord

        await o.store.set_variables([VariableRecord("db_password", "pa55-word-xyz"),
                                     VariableRecord("region", "eu")])
        handle = await o.trigger("s")
        assert (await handle.wait(timeout=30)).state == "success"
        async with httpx.AsyncClient(base_url=url, headers=await bearer(o.store, "viewer")) as client:
            page = await client.get(f"/dags/s/runs/{handle.run_id}/tasks/b")
        assert "echo *** eu" in page.text and "pa55-word-xyz" not in page.text
