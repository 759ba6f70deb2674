"""EmailOperator through the real engine against a real SMTP server (aiosmtpd) on
loopback: the delivered message (headers, HTML body, attachment, Bcc only in the
envelope), AUTH with the connection's login, and a refused login failing with the
connection and host named but not the password, in the error or the task log."""

from __future__ import annotations

import email
import email.policy
import re
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from aflow import DAG, EmailOperator
from aflow.exceptions import DagDefinitionError
from tests.integration.test_sql_operator import run_one, task_log

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_secrets")]

PASSWORD = "Smtp-Pa55-" + uuid.uuid4().hex[:10]
START = datetime(2024, 1, 1, tzinfo=UTC)




class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password.decode() == PASSWORD
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=inbox.authenticate,
                            auth_require_tls=False)
    controller.start()
    monkeypatch.setenv("AFLOW_CONN_SMTP_DEFAULT",
                       f"smtp://reports%40example.org:{PASSWORD}@127.0.0.1:{port}"
                       "?from_email=reports%40example.org&starttls=false")
    monkeypatch.setenv("AFLOW_CONN_SMTP_WRONG",
                       f"smtp://reports%40example.org:not-{PASSWORD}@127.0.0.1:{port}"
                       "?starttls=false")
    try:
        yield inbox, port
    finally:
        controller.stop()


async def test_delivers_html_with_attachment_cc_and_bcc(
    orchestrator_factory: Any, smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    inbox, port = smtp
    report = tmp_path / "report.csv"
    report.write_text("a,b\n1,2\n")
    with DAG("mail", start_date=START) as dag:
        EmailOperator(task_id="send", to=["ann@example.org", "bob@example.org"],
                      cc="cyd@example.org", bcc="audit@example.org",
                      subject="Report for {{ ds }}", html_content="<h1>Hi {{ params.who }}</h1>",
                      files=[str(report)], params={"who": "team"})
        EmailOperator(task_id="refused", conn_id="smtp_wrong", to="ann@example.org",
                      subject="never", html_content="x")
    state, _, tis, o = await run_one(orchestrator_factory, dag)
    assert tis["send"].state.value == "success", tis["send"].error
    assert len(inbox.messages) == 1
    mail_from, rcpts, msg = inbox.messages[0]
    assert mail_from == "reports@example.org"
    assert sorted(rcpts) == ["ann@example.org", "audit@example.org", "bob@example.org",
                             "cyd@example.org"]
    assert msg["To"] == "ann@example.org, bob@example.org" and msg["Cc"] == "cyd@example.org"
    assert msg["Bcc"] is None
    assert re.fullmatch(r"Report for \d{4}-\d{2}-\d{2}", msg["Subject"])  # {{ ds }} rendered
    body = msg.get_body(preferencelist=("html",))
    assert body is not None and body.get_content().strip() == "<h1>Hi team</h1>"
    attachments = list(msg.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["report.csv"]
    assert attachments[0].get_content() == "a,b\n1,2\n"
    assert inbox.logins == ["reports@example.org"]
    assert tis["refused"].state.value == "failed"
    error = tis["refused"].error
    assert "'smtp_wrong'" in error and f"127.0.0.1:{port}" in error and "535" in error
    for ti in tis.values():
        assert PASSWORD not in task_log(o, ti) and PASSWORD not in (ti.error or "")


async def test_unreachable_server(orchestrator_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("AFLOW_CONN_SMTP_DOWN", f"smtp://u:{PASSWORD}@127.0.0.1:{port}")
    with DAG("mail_down", start_date=START) as dag:
        EmailOperator(task_id="send", conn_id="smtp_down", to="a@example.org", subject="s",
                      html_content="x", from_email="me@example.org")
    state, _, tis, o = await run_one(orchestrator_factory, dag)
    assert state == "failed"
    assert "'smtp_down'" in tis["send"].error and f"127.0.0.1:{port}" in tis["send"].error
    assert PASSWORD not in tis["send"].error


def test_bad_arguments_are_named() -> None:
    with DAG("mail_bad", start_date=START):
        with pytest.raises(DagDefinitionError, match="'a'.*at least one address"):
            EmailOperator(task_id="a", to="", subject="s", html_content="x")
        with pytest.raises(DagDefinitionError, match="'b'.*files"):
            EmailOperator(task_id="b", to="x@y", subject="s", html_content="x", files="f.txt")
