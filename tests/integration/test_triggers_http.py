"""HttpTrigger against a real aiohttp server on 127.0.0.1 whose answers the tests flip."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

from triggers.base import BaseTrigger, TriggerEvent, load_trigger
from triggers.http import HttpTrigger, http_pool, parse_json_path, resolve_json_path
from triggers.shared import Resources, default_resources, use_resources

pytestmark = pytest.mark.anyio

DEADLINE_S = 20


class FlipServer:
    """What the server answers; the test changes it while triggers wait."""

    def __init__(self) -> None:
        self.status = 503
        self.body: Any = "not ready"
        self.content_type = "text/plain"
        self.extra_delay_s = 0.0
        self.hold = False  # answer nothing until released (a hanging server)
        self.released = asyncio.Event()
        self.require_auth: tuple[str, str] | None = None
        self.require_headers: dict[str, str] = {}
        self.paths: list[str] = []
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def release(self) -> None:
        self.hold = False
        self.released.set()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.paths.append(request.path)
            if self.hold:
                await self.released.wait()
            if self.extra_delay_s:
                await asyncio.sleep(self.extra_delay_s)
            if self.require_auth is not None:
                user, password = self.require_auth
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                if request.headers.get("Authorization") != f"Basic {token}":
                    return web.Response(status=401, text="who are you?")
            for name, value in self.require_headers.items():
                if request.headers.get(name) != value:
                    return web.Response(status=403, text=f"{name} missing")
            text = self.body if isinstance(self.body, str) else json.dumps(self.body)
            return web.Response(status=self.status, text=text, content_type=self.content_type)
        finally:
            self.in_flight -= 1


@asynccontextmanager
async def serve(server: FlipServer, sock: socket.socket | None = None) -> AsyncIterator[int]:
    """Run `server` on an ephemeral 127.0.0.1 port (or on `sock`); yields the port."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: web.BaseSite
    if sock is None:
        site = web.TCPSite(runner, "127.0.0.1", 0)
    else:
        site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        server.release()
        await runner.cleanup()


def rebuilt(trigger: BaseTrigger) -> BaseTrigger:
    """The trigger as a triggerer would see it: rebuilt from its serialized form."""
    classpath, kwargs = trigger.serialize()
    return load_trigger(classpath, json.loads(json.dumps(kwargs)))


async def first_event(trigger: BaseTrigger) -> TriggerEvent:
    events = trigger.run()
    try:
        return await events.__anext__()  # type: ignore[attr-defined, no-any-return]
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        await trigger.cleanup()


async def until(predicate: Any) -> None:
    while not predicate():  # noqa: ASYNC110 - polls state that other tasks change
        await anyio.sleep(0.01)


class Fired:
    """Runs a trigger in the background and keeps its event."""

    def __init__(self) -> None:
        self.event: TriggerEvent | None = None
        self.error: BaseException | None = None

    async def __call__(self, trigger: BaseTrigger) -> None:
        try:
            self.event = await first_event(trigger)
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc


# -- conditions ----------------------------------------------------------------------------------


async def test_fires_when_status_flips_from_503_to_200() -> None:
    server = FlipServer()
    async with default_resources(), serve(server) as port:
        trigger = rebuilt(
            HttpTrigger(f"http://127.0.0.1:{port}/ready", poke_interval=0.02, max_interval=0.1)
        )
        fired = Fired()
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fired, trigger)
                await until(lambda: server.requests >= 3)
                assert fired.event is None
                server.status, server.body = 200, "ready now"
        assert fired.error is None
        assert fired.event == TriggerEvent({"status": 200, "body": "ready now"})
        assert set(server.paths) == {"/ready"}


async def test_expected_status_list_and_json_body() -> None:
    server = FlipServer()
    server.status, server.body, server.content_type = 404, {"err": "no"}, "application/json"
    async with default_resources(), serve(server) as port:
        trigger = rebuilt(
            HttpTrigger(
                f"http://127.0.0.1:{port}/", endpoint="/jobs/7", expected_status=[200, 202],
                poke_interval=0.02, max_interval=0.05,
            )
        )
        fired = Fired()
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fired, trigger)
                await until(lambda: server.requests >= 2)
                server.status, server.body = 202, {"accepted": True}
        assert fired.event == TriggerEvent({"status": 202, "body": {"accepted": True}})
        assert set(server.paths) == {"/jobs/7"}


async def test_fires_when_json_path_value_changes() -> None:
    server = FlipServer()
    server.status, server.content_type = 200, "application/json"
    server.body = {"data": {"items": [{"state": "running"}, {"state": "queued"}]}}
    async with default_resources(), serve(server) as port:
        trigger = rebuilt(
            HttpTrigger(
                f"http://127.0.0.1:{port}/status",
                json_path="data.items[0].state",
                json_equals="done",
                poke_interval=0.02,
                max_interval=0.1,
            )
        )
        fired = Fired()
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fired, trigger)
                await until(lambda: server.requests >= 3)
                assert fired.event is None
                server.body = {"data": {"items": [{"state": "done"}, {"state": "queued"}]}}
        assert fired.error is None
        assert fired.event is not None
        assert fired.event.payload == {
            "status": 200,
            "body": {"data": {"items": [{"state": "done"}, {"state": "queued"}]}},
        }


async def test_fires_when_body_matches_regex_and_body_is_truncated() -> None:
    server = FlipServer()
    server.status, server.body = 200, "progress 40%"
    async with default_resources(), serve(server) as port:
        trigger = rebuilt(
            HttpTrigger(
                f"http://127.0.0.1:{port}/progress",
                body_regex=r"\bDONE\b",
                max_body_chars=12,
                poke_interval=0.02,
                max_interval=0.1,
            )
        )
        fired = Fired()
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fired, trigger)
                await until(lambda: server.requests >= 3)
                assert fired.event is None
                server.body = "progress 100% DONE, see the report"
        assert fired.event == TriggerEvent({"status": 200, "body": "progress 100"})


async def test_connection_is_resolved_at_run_time_and_secrets_stay_out_of_kwargs() -> None:
    server = FlipServer()
    server.status, server.body, server.content_type = 200, {"ok": True}, "application/json"
    server.require_auth = ("robot", "s3cr3t")
    server.require_headers = {"X-Api-Key": "key-42"}
    async with serve(server) as port:
        connections = {"my_api": f"http://robot:s3cr3t@127.0.0.1:{port}/api/v1?X-Api-Key=key-42"}
        resolved: list[str] = []

        def resolve(conn_id: str) -> str:
            resolved.append(conn_id)
            if conn_id not in connections:
                raise LookupError(f"unknown connection {conn_id!r}")
            return connections[conn_id]

        trigger = HttpTrigger(conn_id="my_api", endpoint="jobs/1", poke_interval=0.02)
        text = json.dumps(trigger.serialize())
        assert "s3cr3t" not in text and "key-42" not in text and "robot" not in text
        async with Resources(resolve_connection=resolve) as resources:
            with use_resources(resources), anyio.fail_after(DEADLINE_S):
                event = await first_event(rebuilt(trigger))
                assert event == TriggerEvent({"status": 200, "body": {"ok": True}})
                assert resolved == ["my_api"]
                assert server.paths == ["/api/v1/jobs/1"]

                with pytest.raises(LookupError, match="unknown connection 'nope'"):
                    await first_event(HttpTrigger(conn_id="nope"))


async def test_a_connection_whose_extra_holds_a_number_sends_its_text_extras_as_headers() -> None:
    """aflow's Connection.get_uri() writes `__extra__=<JSON>` once an extra value is not
    text: the trigger opens it, sends the text values as headers and keeps the number
    (a timeout, as HttpOperator reads it) out of them."""
    from aflow.secrets.connection import Connection

    server = FlipServer()
    server.status, server.body, server.content_type = 200, {"ok": True}, "application/json"
    server.require_headers = {"X-Api-Key": "key-42"}
    async with serve(server) as port:
        conn = Connection(conn_id="api", conn_type="http", host="127.0.0.1", port=port,
                          extra={"X-Api-Key": "key-42", "timeout": 5})
        uri = conn.get_uri()
        assert "__extra__" in uri
        bad = conn.get_uri().split("?")[0] + "?__extra__=%5B1%5D"  # a JSON list
        uris = {"api": uri, "bad": bad}
        async with Resources(resolve_connection=uris.__getitem__) as resources:
            with use_resources(resources), anyio.fail_after(DEADLINE_S):
                event = await first_event(HttpTrigger(conn_id="api", poke_interval=0.02))
                assert event == TriggerEvent({"status": 200, "body": {"ok": True}})
                with pytest.raises(ValueError, match="connection 'bad': __extra__ is not a JSON object"):
                    await first_event(HttpTrigger(conn_id="bad", poke_interval=0.02))


# -- politeness and resilience ----------------------------------------------------------------


@pytest.mark.slow
async def test_many_triggers_on_one_host_respect_the_per_host_limit() -> None:
    """500 sensors on one host: the server never sees more than per_host_limit requests
    at once, and every sensor still fires."""
    server = FlipServer()
    server.extra_delay_s = 0.002  # so requests overlap if the client lets them
    limit = 4
    n = 500
    async with default_resources() as resources, serve(server) as port:
        pool = await http_pool(resources)
        pool.per_host_limit = limit
        fired = [Fired() for _ in range(n)]
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i, f in enumerate(fired):
                    trigger = HttpTrigger(
                        f"http://127.0.0.1:{port}/items/{i}", poke_interval=0.05, max_interval=0.5
                    )
                    tg.start_soon(f, rebuilt(trigger))
                await until(lambda: server.requests >= n)
                assert all(f.event is None for f in fired)
                server.status, server.body = 200, "ok"
    assert [f.error for f in fired if f.error is not None] == []
    assert all(f.event == TriggerEvent({"status": 200, "body": "ok"}) for f in fired)
    assert 2 <= server.max_in_flight <= limit
    assert pool.in_flight(f"http://127.0.0.1:{port}") == 0
    assert len({p for p in server.paths}) == n


async def test_server_down_at_first_is_not_yet(caplog: pytest.LogCaptureFixture) -> None:
    """Connection refused, then a server that hangs past timeout_s: both are "not yet"
    (logged); once the server answers, the trigger fires."""
    caplog.set_level(logging.WARNING, logger="triggers")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = sock.getsockname()[1]
    server = FlipServer()
    server.status, server.body, server.hold = 200, "up", True
    trigger = rebuilt(
        HttpTrigger(
            f"http://127.0.0.1:{port}/health", poke_interval=0.02, max_interval=0.1, timeout_s=0.2
        )
    )

    def warned(kind: str) -> bool:
        return any(kind in r.getMessage() and "not yet" in r.getMessage() for r in caplog.records)

    fired = Fired()
    async with default_resources():
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fired, trigger)
                await until(lambda: warned("ConnectError"))
                async with serve(server, sock):
                    await until(lambda: warned("ReadTimeout"))
                    assert fired.event is None and fired.error is None
                    server.release()
                    await until(lambda: fired.event is not None or fired.error is not None)
    assert fired.error is None
    assert fired.event == TriggerEvent({"status": 200, "body": "up"})


# -- serialization and validation -------------------------------------------------------------


async def test_serialize_round_trip_and_bad_arguments() -> None:
    trigger = HttpTrigger(
        "http://example.invalid/base",
        endpoint="x",
        method="post",
        headers={"A": "b"},
        json={"q": [1, 2]},
        expected_status=[200, 201],
        json_path="a.b[0]",
        json_equals=3,
        body_regex="ok",
        poke_interval=1,
        max_interval=2,
        timeout_s=3,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "triggers.http.HttpTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert load_trigger(classpath, kwargs).serialize() == (classpath, kwargs)
    assert kwargs["method"] == "POST"

    with pytest.raises(ValueError, match="exactly one of url and conn_id"):
        HttpTrigger()
    with pytest.raises(ValueError, match="exactly one of url and conn_id"):
        HttpTrigger("http://h/", conn_id="c")
    with pytest.raises(ValueError, match="body_regex"):
        HttpTrigger("http://h/", body_regex="(")
    with pytest.raises(ValueError, match="malformed JSON path"):
        HttpTrigger("http://h/", json_path="a..b")
    with pytest.raises(ValueError, match="not an http"):
        HttpTrigger("ftp://h/")
    with pytest.raises(ValueError, match="not JSON-serializable"):
        HttpTrigger("http://h/", json={"when": object()})


async def test_json_paths() -> None:
    doc = {"data": {"items": [{"state": "a"}, {"state": "b"}], "k.x": 1}, "n": None}
    assert parse_json_path("data.items[0].state") == ["data", "items", 0, "state"]
    assert resolve_json_path(doc, parse_json_path("data.items[0].state")) == "a"
    assert resolve_json_path(doc, parse_json_path("$.data.items[-1].state")) == "b"
    assert resolve_json_path(doc, parse_json_path("data.items.1.state")) == "b"
    assert resolve_json_path(doc, parse_json_path('data["k.x"]')) == 1
    assert resolve_json_path(doc, parse_json_path("n")) is None
    missing = resolve_json_path(doc, parse_json_path("data.items[5].state"))
    assert missing is resolve_json_path(doc, parse_json_path("nope"))
