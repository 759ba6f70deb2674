"""The UI's pages over HTTP (no browser): form safety (CSRF, redirect targets), the live
stream ending with its client, and serve_api's own behaviour."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import pytest

from aflow import DAG, Orchestrator, PythonOperator
from aflow.api import create_app, serve_api
from aflow.web.pages import CSRF_COOKIE, OPEN_STREAMS, local_path
from tests.auth_helpers import bearer

pytestmark = pytest.mark.anyio


def build() -> DAG:
    with DAG("p", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        PythonOperator(task_id="t", python_callable=lambda: None)
    return dag


def test_redirect_targets_stay_on_this_site() -> None:
    assert local_path("/dags?page=2") == "/dags?page=2"
    for bad in (None, "", "https://evil.example/x", "//evil.example", "/\\evil.example",
                "http://[::1", "dags", "/ok\r\nSet-Cookie: x=1"):
        assert local_path(bad) == "/dags", bad


async def test_forms_need_the_matching_token_and_redirect_only_locally(home: Path) -> None:
    async with Orchestrator([build()], home=home) as o, serve_api(o) as url:
        async with httpx.AsyncClient(base_url=url, headers=await bearer(o.store)) as client:
            page = await client.get("/dags")
            token = page.cookies[CSRF_COOKIE]
            assert f'value="{token}"' in page.text
            for sent in ("wrong", "é"):
                refused = await client.post("/dags/p/pause", data={"csrf_token": sent, "paused": "true"})
                assert refused.status_code == 403, sent
            record = await o.store.get_dag("p")
            assert record is not None and not record.is_paused
            done = await client.post("/dags/p/pause", data={
                "csrf_token": token, "paused": "true", "next": "https://evil.example/x"})
            assert done.status_code == 303 and done.headers["location"] == "/dags"
            record = await o.store.get_dag("p")
            assert record is not None and record.is_paused


async def test_a_live_stream_ends_with_its_client_and_at_shutdown(home: Path) -> None:
    async with Orchestrator([build()], home=home) as o:
        app = create_app(o)
        headers = await bearer(o.store, "viewer")
        async with serve_api(o, app=app) as url:
            async with httpx.AsyncClient(base_url=url, headers=headers) as client:
                async with client.stream("GET", "/dags/p/events") as stream:
                    assert await stream.aiter_lines().__anext__() == "event: states"
                    assert len(app[OPEN_STREAMS]) == 1
            with anyio.fail_after(5):  # (keepalives come every 15 s: it must not wait for one)
                while app[OPEN_STREAMS]:  # noqa: ASYNC110 - watching the server's own state
                    await anyio.sleep(0.02)
            client = httpx.AsyncClient(base_url=url, headers=headers)
            stream_cm = client.stream("GET", "/dags/p/events")
            stream = await stream_cm.__aenter__()
            await stream.aiter_lines().__anext__()
            assert len(app[OPEN_STREAMS]) == 1
        assert not app[OPEN_STREAMS]  # the server ended the stream that was still open
        await client.aclose()


async def test_an_error_in_the_served_block_comes_out_as_itself(home: Path) -> None:
    async with Orchestrator([build()], home=home) as o:
        with pytest.raises(KeyError):
            async with serve_api(o):
                raise KeyError("mine")


async def test_the_task_page_shows_its_rendered_templates(home: Path) -> None:
    from aflow import BashOperator, Param

    with DAG("tpl", start_date=datetime(2024, 1, 1, tzinfo=UTC),
             params={"who": Param("world", type="string")}) as dag:
        a = PythonOperator(task_id="a", python_callable=lambda: 42)
        b = BashOperator(task_id="b", bash_command="echo {{ params.who }} {{ ti.xcom_pull('a') }} {{ ds }}")
        a >> b
    async with Orchestrator([dag], home=home) as o, serve_api(o) as url:
        handle = await o.trigger("tpl", conf={"who": "ada"})
        assert (await handle.wait(timeout=30)).state == "success"
        async with httpx.AsyncClient(base_url=url, headers=await bearer(o.store, "viewer")) as client:
            page = await client.get(f"/dags/tpl/runs/{handle.run_id}/tasks/b")
            assert page.status_code == 200
            ds = handle.record.logical_date.strftime("%Y-%m-%d")
            assert f"echo ada 42 {ds}" in page.text
