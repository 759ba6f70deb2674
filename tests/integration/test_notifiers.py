"""Notifiers as task and DAG callbacks, through the real engine: WebhookNotifier against
a loopback aiohttp server, SmtpNotifier against a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from aiohttp import web

from aflow import DAG, PythonOperator, SmtpNotifier, WebhookNotifier
from aflow.exceptions import DagDefinitionError

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


class Hook:
    """A loopback webhook receiver: records each JSON body; answers `status`."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = 200
        self._arrived = anyio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        self._arrived.set()
        return web.json_response({"ok": self.status < 400}, status=self.status)

    async def wait_for(self, n: int) -> list[dict[str, Any]]:
        with anyio.fail_after(15):
            while len(self.bodies) < n:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.bodies


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    receiver = Hook()
    app = web.Application()
    app.router.add_post("/{name}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def boom() -> None:
    raise ValueError("the source table is empty")


async def test_task_failure_posts_the_generic_payload_and_retry_the_retry_one(
    orchestrator_factory: Any, hook: tuple[Hook, str],
) -> None:
    receiver, base = hook
    with DAG("notify_task", start_date=START) as dag:
        PythonOperator(
            task_id="load", python_callable=boom, retries=1, retry_delay=0,
            on_retry_callback=WebhookNotifier(f"{base}/retry"),
            on_failure_callback=[
                WebhookNotifier(f"{base}/fail", base_url="http://aflow.example",
                                message="{{ ti.task_id }} of {{ dag.dag_id }}: {{ exception }}",
                                extra={"team": "data"}),
            ],
        )
    o = await orchestrator_factory([dag])
    handle = await o.trigger("notify_task")
    assert (await handle.wait(timeout=30)).state.value == "failed"
    retry, fail = await receiver.wait_for(2)

    assert retry["reason"] == "task_retry" and retry["state"] == "up_for_retry"
    assert retry["try_number"] == 1
    assert fail["dag_id"] == "notify_task" and fail["run_id"] == handle.run_id
    assert fail["task_id"] == "load" and fail["map_index"] == -1 and fail["try_number"] == 2
    assert fail["state"] == "failed" and fail["reason"] == "task_failure"
    assert "the source table is empty" in fail["exception"]
    assert fail["message"] == "load of notify_task: ValueError: the source table is empty"
    assert fail["log_url"] == (
        f"http://aflow.example/dags/notify_task/runs/{handle.run_id.replace(':', '%3A').replace('+', '%2B')}"
        "/tasks/load")
    assert fail["team"] == "data"
    assert fail["logical_date"] == handle.record.logical_date.isoformat()


async def test_dag_failure_callbacks_in_a_list_send_slack_and_call_functions(
    orchestrator_factory: Any, hook: tuple[Hook, str],
) -> None:
    receiver, base = hook
    seen: list[dict[str, Any]] = []
    called = anyio.Event()

    async def record(context: dict[str, Any]) -> None:
        seen.append(context)
        called.set()

    with DAG("notify_dag", start_date=START, on_failure_callback=[
        WebhookNotifier(f"{base}/slack", slack=True,
                        message=":red_circle: {{ dag.dag_id }} failed ({{ reason }})"),
        record,
    ]) as dag:
        PythonOperator(task_id="ok", python_callable=lambda: 1) >> PythonOperator(
            task_id="bad", python_callable=boom)
    o = await orchestrator_factory([dag])
    handle = await o.trigger("notify_dag")
    assert (await handle.wait(timeout=30)).state.value == "failed"
    (body,) = await receiver.wait_for(1)

    assert body["text"] == ":red_circle: notify_dag failed (task_failure)"
    assert body["blocks"][0] == {"type": "section", "text": {"type": "mrkdwn", "text": body["text"]}}
    facts = body["blocks"][1]["elements"][0]["text"]
    assert "`notify_dag`" in facts and handle.run_id in facts and "failed" in facts
    assert set(body) == {"text", "blocks"}
    with anyio.fail_after(10):
        await called.wait()  # the function runs after the notifier, in the same callback task
    (context,) = seen
    assert context["dag_run"].run_id == handle.run_id and context["reason"] == "task_failure"
    assert context["failed_task_ids"] == ["bad"]


async def test_a_failing_notifier_never_changes_the_run_nor_logs_its_secret_path(
    orchestrator_factory: Any, hook: tuple[Hook, str], home: Any,
) -> None:
    receiver, base = hook
    receiver.status = 500
    with DAG("notify_500", start_date=START,
             on_success_callback=WebhookNotifier(f"{base}/dag")) as dag:
        PythonOperator(task_id="t", python_callable=lambda: "done",
                       on_success_callback=WebhookNotifier(f"{base}/T0B0xoxbsecret"))
    o = await orchestrator_factory([dag])
    handle = await o.trigger("notify_500")
    assert (await handle.wait(timeout=30)).state.value == "success"
    bodies = await receiver.wait_for(2)
    assert {b["reason"] for b in bodies} == {"task_success", "success"}
    (ti,) = await handle.task_instances()
    assert ti.state.value == "success"

    from aflow.runtime.logs import log_path

    text = await anyio.Path(log_path(home / "logs", "notify_500", handle.run_id, "t", 1)).read_text()
    assert f"the webhook at {base} answered 500" in text  # logged in the task's log
    assert "xoxbsecret" not in text  # a webhook's path is its secret: never logged


async def test_webhook_through_an_http_connection_with_headers_and_basic_auth(
    orchestrator_factory: Any, hook: tuple[Hook, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver, base = hook
    host_port = base.removeprefix("http://")
    monkeypatch.setenv("AFLOW_CONN_ALERTS_HOOK",
                       f"http://bot:s3cret@{host_port}/?X-Team=data")
    with DAG("notify_conn", start_date=START) as dag:
        PythonOperator(task_id="bad", python_callable=boom, on_failure_callback=WebhookNotifier(
            http_conn_id="alerts_hook", endpoint="/via-conn"))
    o = await orchestrator_factory([dag])
    handle = await o.trigger("notify_conn")
    await handle.wait(timeout=30)
    (body,) = await receiver.wait_for(1)
    assert body["task_id"] == "bad"
    headers = receiver.headers[0]
    assert headers["X-Team"] == "data"
    assert headers["Authorization"].startswith("Basic ")


def test_bad_notifier_arguments_are_clear_errors() -> None:
    with pytest.raises(DagDefinitionError, match="exactly one of url= or http_conn_id="):
        WebhookNotifier()
    with pytest.raises(DagDefinitionError, match="format must be 'json' or 'slack'"):
        WebhookNotifier("http://x", format="teams")  # type: ignore[arg-type]
    with pytest.raises(DagDefinitionError, match="at least one address"):
        SmtpNotifier(to=[])


# -- SMTP ---------------------------------------------------------------------------------------
class Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.envelopes.append(envelope)
        self.arrived.set()
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp_server() -> Any:
    from aiosmtpd.controller import Controller

    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


async def test_smtp_notifier_mails_a_dag_failure_through_a_connection(
    orchestrator_factory: Any, smtp_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    box, port = smtp_server
    monkeypatch.setenv("AFLOW_CONN_SMTP_DEFAULT",
                       f"smtp://127.0.0.1:{port}/?from_email=aflow%40example.com")
    notifier = SmtpNotifier(
        to=["ops@example.com", "data@example.com"], cc="lead@example.com",
        subject="[aflow] {{ dag.dag_id }} failed",
        html_content="<p>Run <b>{{ run_id }}</b> failed: {{ failed_task_ids|join(', ') }}</p>",
    )
    with DAG("mail_on_failure", start_date=START, on_failure_callback=notifier) as dag:
        PythonOperator(task_id="bad", python_callable=boom)
    o = await orchestrator_factory([dag])
    handle = await o.trigger("mail_on_failure")
    assert (await handle.wait(timeout=30)).state.value == "failed"
    assert await anyio.to_thread.run_sync(box.arrived.wait, 15)

    (envelope,) = box.envelopes
    assert envelope.mail_from == "aflow@example.com"
    assert sorted(envelope.rcpt_tos) == ["data@example.com", "lead@example.com", "ops@example.com"]
    msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert msg["Subject"] == "[aflow] mail_on_failure failed"
    assert msg["To"] == "ops@example.com, data@example.com"
    html = msg.get_body(("html",)).get_content()
    assert f"Run <b>{handle.run_id}</b> failed: bad" in html
    plain = msg.get_body(("plain",)).get_content()
    assert "DAG mail_on_failure" in plain and "failed" in plain


async def test_smtp_default_mail_for_a_task_failure_names_task_and_error(
    orchestrator_factory: Any, smtp_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    box, port = smtp_server
    monkeypatch.setenv("AFLOW_CONN_MAIL", f"smtp://127.0.0.1:{port}/?from_email=a%40example.com")
    with DAG("mail_task", start_date=START) as dag:
        PythonOperator(task_id="bad", python_callable=boom, on_failure_callback=SmtpNotifier(
            "ops@example.com", conn_id="mail", base_url="http://aflow.example"))
    o = await orchestrator_factory([dag])
    handle = await o.trigger("mail_task")
    await handle.wait(timeout=30)
    assert await anyio.to_thread.run_sync(box.arrived.wait, 15)
    msg = email.message_from_bytes(box.envelopes[0].content, policy=email.policy.default)
    assert msg["Subject"].startswith("aflow: task bad of DAG mail_task")
    html = msg.get_body(("html",)).get_content()
    assert "ValueError: the source table is empty" in html
    assert "http://aflow.example/dags/mail_task/runs/" in html


async def test_a_dag_callback_still_running_at_shutdown_is_let_finish(home: Any) -> None:
    """`aflow dags test` and embedded users leave right after the run ends: the DAG's
    failure callback (a notifier) finishes within the shutdown grace, not cut off."""
    from tests.conftest import run_dag

    sent: list[str] = []

    async def slow_notifier(context: dict[str, Any]) -> None:
        await anyio.sleep(0.3)  # a slow webhook: the orchestrator is already leaving
        sent.append(context["reason"])

    with DAG("slow_callback", start_date=START, on_failure_callback=slow_notifier) as dag:
        PythonOperator(task_id="bad", python_callable=boom)
    result = await run_dag(dag, home)
    assert result.state == "failed"
    assert sent == ["task_failure"]


async def test_smtp_notifier_logs_in_with_the_connection_credentials(
    orchestrator_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"p@ss word")

    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port(),
                            authenticator=authenticator, auth_require_tls=False)
    controller.start()
    try:
        monkeypatch.setenv("AFLOW_CONN_SMTP_DEFAULT",
                           f"smtp://bot%40example.com:p%40ss%20word@127.0.0.1:{controller.port}"
                           "?starttls=false")
        with DAG("mail_login", start_date=START) as dag:
            PythonOperator(task_id="t", python_callable=lambda: 1,
                           on_success_callback=SmtpNotifier("ops@example.com"))
        o = await orchestrator_factory([dag])
        handle = await o.trigger("mail_login")
        assert (await handle.wait(timeout=30)).state.value == "success"
        assert await anyio.to_thread.run_sync(box.arrived.wait, 15)
    finally:
        controller.stop()
    assert logins == [(b"bot@example.com", b"p@ss word")]
    (envelope,) = box.envelopes
    assert envelope.mail_from == "bot@example.com"  # no from_email: the login sends
    msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert msg["Subject"] == "aflow: task t of DAG mail_login (run " + handle.run_id + ") succeeded"
