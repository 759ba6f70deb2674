"""HttpOperator through the real engine against a real aiohttp server on loopback: base
URL, basic auth and extra headers from the Connection, JSON body, response_check and
response_filter, retries on 5xx and timeouts, 4xx failing at once, and the connection
password never reaching the task log."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from aflow import DAG, HttpOperator
from aflow.authoring.operators.http import HttpOperatorError, base_url
from aflow.secrets import Connection
from tests.integration.test_sql_operator import run_one, task_log

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_secrets")]

PASSWORD = "Http-Pa55-" + uuid.uuid4().hex[:10]
START = datetime(2024, 1, 1, tzinfo=UTC)




class Server:
    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        n = self.hits[name]
        auth = request.headers.get("Authorization", "")
        user, _, password = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        if name == "echo":
            return web.json_response({
                "method": request.method, "json": await request.json(), "user": user,
                "team": request.headers.get("X-Team"), "trace": request.headers.get("X-Trace"),
            })
        if name == "flaky":  # 503 twice, then fine
            if n <= 2:
                return web.Response(status=503, text="busy, try later")
            return web.Response(text="finally")
        if name == "slow":  # the first answer comes too late
            if n == 1:
                await asyncio.sleep(5)
            return web.json_response({"ok": True})
        if name == "missing":
            return web.Response(status=404, text="no such thing here")
        if name == "down":
            return web.Response(status=500, text="broken")
        if name == "leaky":  # says the password back: the log must mask it
            return web.Response(text=f"you sent {password}")
        return web.json_response({"items": [1, 2, 3], "status": "ok"})


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_route("*", "/api/{name}", srv.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    monkeypatch.setenv("AFLOW_CONN_API",
                       f"http://etl:{PASSWORD}@127.0.0.1:{srv.port}/api?X-Team=data")
    try:
        yield srv
    finally:
        await runner.cleanup()


async def test_requests_checks_filters_and_retries(orchestrator_factory: Any, server: Server) -> None:
    fast = {"http_conn_id": "api", "request_retry_backoff_s": 0.01}
    with DAG("http_ops", start_date=START) as dag:
        HttpOperator(task_id="echo", endpoint="echo", json={"n": "{{ params.n }}"},
                     headers={"X-Trace": "t-1"}, params={"n": 7}, **fast)
        HttpOperator(task_id="filtered", endpoint="/items", method="GET",
                     response_check=lambda response: response.json()["status"] == "ok",
                     response_filter=lambda response, ti: [ti.task_id, sum(response.json()["items"])],
                     **fast)
        HttpOperator(task_id="checked_false", endpoint="items", method="GET",
                     response_check=lambda response: "nope" in response.text, **fast)
        HttpOperator(task_id="flaky", endpoint="flaky", method="GET", **fast)
        HttpOperator(task_id="slow", endpoint="slow", method="GET", request_timeout_s=0.3, **fast)
        HttpOperator(task_id="missing", endpoint="missing", method="GET", **fast)
        HttpOperator(task_id="down", endpoint="down", method="GET", request_retries=1, **fast)
        HttpOperator(task_id="leaky", endpoint="leaky", method="GET", log_response=True,
                     do_xcom_push=False, **fast)
    state, x, tis, o = await run_one(orchestrator_factory, dag)
    errors = {k: (t.state.value, t.error) for k, t in tis.items()}
    assert x["echo"] == {"method": "POST", "json": {"n": "7"}, "user": "etl", "team": "data",
                         "trace": "t-1"}, errors
    assert x["filtered"] == ["filtered", 6]
    assert tis["checked_false"].state.value == "failed"
    assert "response_check returned False" in tis["checked_false"].error
    assert x["flaky"] == "finally" and server.hits["flaky"] == 3
    flaky_log = task_log(o, tis["flaky"])
    assert "HTTP 503: busy, try later; retry 1 of 3" in flaky_log
    assert "retry 2 of 3" in flaky_log and "retry 3 of 3" not in flaky_log
    assert x["slow"] == {"ok": True} and server.hits["slow"] == 2
    assert "ReadTimeout" in task_log(o, tis["slow"])
    assert tis["missing"].state.value == "failed" and server.hits["missing"] == 1
    assert "HTTP 404" in tis["missing"].error and "no such thing here" in tis["missing"].error
    assert "(connection 'api')" in tis["missing"].error
    assert tis["down"].state.value == "failed" and server.hits["down"] == 2
    assert "HTTP 500: broken" in tis["down"].error and "2 attempt(s)" in tis["down"].error
    assert tis["leaky"].state.value == "success"
    leaky_log = task_log(o, tis["leaky"])
    assert "you sent ***" in leaky_log
    for ti in tis.values():
        assert PASSWORD not in task_log(o, ti)
        assert PASSWORD not in (ti.error or "")


def test_base_url_forms() -> None:
    def url(**kw: Any) -> str:
        return base_url(Connection("c", **{"conn_type": "http", **kw}))

    assert url(host="h", port=8080) == "http://h:8080"
    assert url(host="h", schema="https") == "https://h"
    assert url(host="h", schema="v1/api") == "http://h/v1/api"
    assert url(host="https://h.example", port=8443) == "https://h.example:8443"
    assert base_url(Connection("c", "https", host="h")) == "https://h"
    with pytest.raises(HttpOperatorError, match="'c' has no host"):
        url()


def test_bad_arguments_are_named() -> None:
    from aflow.exceptions import DagDefinitionError

    with DAG("http_bad", start_date=START):
        with pytest.raises(DagDefinitionError, match="'a'.*method 'FETCH'"):
            HttpOperator(task_id="a", endpoint="x", method="fetch")
        with pytest.raises(DagDefinitionError, match="'b'.*data or json"):
            HttpOperator(task_id="b", endpoint="x", data="a", json={})


async def test_unreachable_host_names_connection_not_password(
    orchestrator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AFLOW_CONN_GONE", f"http://etl:{PASSWORD}@127.0.0.1:{port}")
    with DAG("http_gone", start_date=START) as dag:
        HttpOperator(task_id="q", http_conn_id="gone", endpoint="x", method="GET",
                     request_retries=1, request_retry_backoff_s=0.01)
    state, _, tis, o = await run_one(orchestrator_factory, dag)
    error = tis["q"].error
    assert state == "failed" and "ConnectError" in error and "2 attempt(s)" in error
    assert "(connection 'gone')" in error and f"127.0.0.1:{port}" in error
    assert PASSWORD not in error and PASSWORD not in task_log(o, tis["q"])
