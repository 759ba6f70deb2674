"""A WebhookNotifier's URL is a secret even as httpx rewrites it in its log line (host
lowercased), and one given through an HTTP connection takes its scheme from the
connection as HttpOperator does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from aflow import DAG, PythonOperator, WebhookNotifier
from tests.conftest import run_dag

pytestmark = pytest.mark.anyio


@pytest.fixture
async def hook_port() -> AsyncIterator[tuple[int, list[str]]]:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{path:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], seen
    finally:
        await runner.cleanup()


def boom() -> None:
    raise ValueError("boom")


async def test_a_rewritten_webhook_url_never_reaches_the_task_log(
    home: Path, hook_port: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, seen = hook_port
    monkeypatch.setenv("AFLOW_CONN_HOOKS", f"http://127.0.0.1:{port}")
    with DAG("leak", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        PythonOperator(task_id="t", python_callable=boom, on_failure_callback=[
            WebhookNotifier(f"http://LOCALHOST:{port}/services/T0/B0/SUPERSECRETPATH"),
            WebhookNotifier(http_conn_id="hooks", endpoint="/services/T1/B1/CONNSECRET"),
        ])
    result = await run_dag(dag, home)
    assert result.ti_state("t") == "failed"
    assert sorted(seen) == ["/services/T0/B0/SUPERSECRETPATH", "/services/T1/B1/CONNSECRET"]
    text = "".join(p.read_text() for p in (home / "logs").rglob("*.log"))
    assert "HTTP Request: POST" in text  # httpx did log the requests, masked
    assert "SUPERSECRETPATH" not in text and "CONNSECRET" not in text
