"""A login is not sent in clear text by default: a server that offers no STARTTLS (or a
man in the middle that hides it) gets a clear error naming the connection, and no
password; `starttls=false` in the connection's extra allows it on purpose."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from aflow import DAG, EmailOperator
from tests.integration.test_email_operator import PASSWORD, START, Inbox, free_port
from tests.integration.test_sql_operator import run_one, task_log

pytestmark = pytest.mark.anyio


@pytest.fixture
def plain_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port,
                            authenticator=inbox.authenticate, auth_require_tls=False)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


async def test_no_clear_text_login_unless_asked_for(
    orchestrator_factory: Any, monkeypatch: pytest.MonkeyPatch, plain_server: tuple[Inbox, int]
) -> None:
    inbox, port = plain_server
    base = f"smtp://reports%40example.org:{PASSWORD}@127.0.0.1:{port}"
    monkeypatch.setenv("AFLOW_CONN_SMTP_AUTO", base)
    monkeypatch.setenv("AFLOW_CONN_SMTP_PLAIN", base + "?starttls=false")
    with DAG("mail_tls", start_date=START) as dag:
        for conn in ("smtp_auto", "smtp_plain"):
            EmailOperator(task_id=conn, conn_id=conn, to="a@example.org", subject="s",
                          html_content="x", from_email="me@example.org")
    state, _, tis, o = await run_one(orchestrator_factory, dag)
    assert state == "failed"
    refused = tis["smtp_auto"]
    assert refused.state.value == "failed"
    assert "'smtp_auto'" in refused.error and "does not offer STARTTLS" in refused.error
    assert tis["smtp_plain"].state.value == "success"
    assert inbox.logins == ["reports@example.org"]  # only the one allowed on purpose
    assert len(inbox.messages) == 1
    for ti in tis.values():
        assert PASSWORD not in task_log(o, ti) and PASSWORD not in (ti.error or "")
