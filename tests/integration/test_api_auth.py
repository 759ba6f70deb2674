"""Credentials and roles on a real loopback server: bearer tokens, UI sessions with CSRF,
viewer vs admin, and the routes that need none."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from aflow import DAG, Orchestrator, PythonOperator
from aflow.api import serve_api
from aflow.api.auth import create_token, create_user, hash_password, verify_password
from aflow.exceptions import AflowError
from aflow.web.pages import CSRF_COOKIE
from tests.auth_helpers import PASSWORD, bearer

pytestmark = pytest.mark.anyio


def build() -> DAG:
    with DAG("d", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        PythonOperator(task_id="t", python_callable=lambda: None)
    return dag


@pytest.fixture
async def served(home: Path) -> AsyncIterator[tuple[Orchestrator, str]]:
    async with Orchestrator([build()], home=home) as o, serve_api(o) as url:
        yield o, url


def test_passwords_are_salted_scrypt() -> None:
    one, two = hash_password("s3cret-pass"), hash_password("s3cret-pass")
    assert one != two and one.startswith("scrypt$")
    assert verify_password("s3cret-pass", one) and not verify_password("other-pass", one)
    assert not verify_password("s3cret-pass", "garbage")


async def test_every_route_but_the_public_ones_needs_credentials(
    served: tuple[Orchestrator, str],
) -> None:
    o, url = served
    async with httpx.AsyncClient(base_url=url) as anonymous:
        doc = (await anonymous.get("/api/v1/openapi.json")).json()  # public
        assert (await anonymous.get("/api/v1/health")).status_code == 200
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                concrete = re.sub(r"{[^}]+}", "x", path)
                answer = await anonymous.request(method.upper(), concrete, json={})
                if op.get("security") == []:
                    assert answer.status_code != 401, (method, path)
                    continue
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.json()["error"]["code"] == "unauthorized"
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await anonymous.get("/metrics")).status_code == 401
        for bad in ("Bearer nope", "Basic YWRhOnB3", "Bearer"):
            answer = await anonymous.get("/api/v1/dags", headers={"Authorization": bad})
            assert answer.status_code == 401, bad
    assert await o.store.list_runs("d") == []


async def test_tokens_expire_are_revoked_and_die_with_their_user(
    served: tuple[Orchestrator, str],
) -> None:
    o, url = served
    now = datetime.now(UTC)
    await create_user(o.store, "ada", "admin", PASSWORD, now)
    live, _ = await create_token(o.store, "ada", now)
    old, _ = await create_token(o.store, "ada", now - timedelta(days=2), expires_in=timedelta(days=1))
    revoked, record = await create_token(o.store, "ada", now)
    await o.store.revoke_api_token(record.token_id)
    async with httpx.AsyncClient(base_url=f"{url}/api/v1") as client:
        def auth(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        assert (await client.get("/dags", headers=auth(live))).status_code == 200
        assert (await client.get("/dags", headers=auth(old))).status_code == 401
        assert (await client.get("/dags", headers=auth(revoked))).status_code == 401
        await o.store.delete_user("ada")
        assert (await client.get("/dags", headers=auth(live))).status_code == 401
    with pytest.raises(AflowError, match="no user 'nobody'"):
        await create_token(o.store, "nobody", now)
    with pytest.raises(AflowError, match="at least 8"):
        await create_user(o.store, "bob", "viewer", "short", now)
    with pytest.raises(AflowError, match="unknown role"):
        await create_user(o.store, "bob", "root", PASSWORD, now)


async def test_a_viewer_reads_and_an_admin_changes(served: tuple[Orchestrator, str]) -> None:
    o, url = served
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=await bearer(o.store, "viewer")) as viewer:
        assert (await viewer.get("/dags/d")).status_code == 200
        refused = await viewer.post("/dags/d/runs", json={})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        assert (await viewer.patch("/dags/d", json={"is_paused": True})).status_code == 403
    assert await o.store.list_runs("d") == []
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=await bearer(o.store, "admin")) as admin:
        assert (await admin.post("/dags/d/runs", json={})).status_code == 201


async def login(client: httpx.AsyncClient, username: str, password: str,
                next_: str = "/dags") -> httpx.Response:
    page = await client.get("/login")
    token = page.cookies.get(CSRF_COOKIE) or client.cookies.get(CSRF_COOKIE)
    return await client.post("/login", data={"csrf_token": token, "username": username,
                                             "password": password, "next": next_})


async def test_the_ui_logs_in_with_a_session_and_changes_need_the_csrf_header(
    served: tuple[Orchestrator, str],
) -> None:
    o, url = served
    await create_user(o.store, "ada", "admin", PASSWORD, datetime.now(UTC))
    async with httpx.AsyncClient(base_url=url) as browser:
        first = await browser.get("/dags/d?run_id=x")
        assert first.status_code == 303
        target = httpx.URL(first.headers["location"])
        assert target.path == "/login" and target.params["next"] == "/dags/d?run_id=x"
        wrong = await login(browser, "ada", "not the password")
        unknown = await login(browser, "eve", PASSWORD)
        assert wrong.status_code == unknown.status_code == 401
        assert "Wrong username or password." in wrong.text and "Wrong username or password." in unknown.text
        assert "aflow_session" not in browser.cookies

        ok = await login(browser, "ada", PASSWORD, next_="/dags/d")
        assert ok.status_code == 303 and ok.headers["location"] == "/dags/d"
        page = await browser.get("/dags")
        assert page.status_code == 200 and "ada (admin)" in page.text
        assert (await browser.get("/api/v1/dags")).status_code == 200  # the session works there

        no_header = await browser.post("/api/v1/dags/d/runs", json={})
        assert no_header.status_code == 403 and no_header.json()["error"]["code"] == "csrf"
        csrf = browser.cookies[CSRF_COOKIE]
        made = await browser.post("/api/v1/dags/d/runs", json={}, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201

        out = await browser.post("/logout", data={"csrf_token": csrf})
        assert out.status_code == 303
        assert (await browser.get("/api/v1/dags")).status_code == 401
    assert len(await o.store.list_runs("d")) == 1


async def test_a_viewer_sees_no_change_buttons_and_is_refused_changes(
    served: tuple[Orchestrator, str],
) -> None:
    o, url = served
    await create_user(o.store, "vic", "viewer", PASSWORD, datetime.now(UTC))
    async with httpx.AsyncClient(base_url=url) as browser:
        assert (await login(browser, "vic", PASSWORD)).status_code == 303
        page = await browser.get("/dags")
        assert "vic (viewer)" in page.text
        assert 'title="Trigger d"' not in page.text and 'action="/dags/d/pause"' not in page.text
        refused = await browser.post("/dags/d/pause", data={
            "csrf_token": browser.cookies[CSRF_COOKIE], "paused": "true"})
        assert refused.status_code == 403 and "admin role" in refused.text
    record = await o.store.get_dag("d")
    assert record is not None and not record.is_paused
