"""Errors that name where they happened and are not retried in vain: an HTTP request
httpx refuses to make fails at once (no retries), and an SMTP alert that cannot reach
its server says which server, in the task's log."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aflow import DAG, HttpOperator, PythonOperator, SmtpNotifier
from tests.conftest import run_dag
from tests.integration.test_email_operator import free_port

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


async def test_a_request_httpx_cannot_make_fails_without_retries(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFLOW_CONN_ODD", "http://ftp%3A%2F%2F127.0.0.1")  # host ftp://127.0.0.1
    with DAG("odd_scheme", start_date=START) as dag:
        HttpOperator(task_id="get", http_conn_id="odd", endpoint="x", method="GET",
                     request_retries=3, request_retry_backoff_s=5)
    result = await run_dag(dag, home, timeout=30)
    ti = result.tis["get"]
    assert ti.state.value == "failed"
    assert "UnsupportedProtocol" in (ti.error or "") and "attempt" not in (ti.error or "")
    assert "retry 1 of 3" not in result.log("get")


async def test_an_smtp_alert_that_fails_names_its_server(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AFLOW_CONN_MAIL_DOWN", f"smtp://127.0.0.1:{port}?from_email=a%40example.org")

    def boom(context: Any = None) -> None:
        raise ValueError("the task fails")

    with DAG("alert_down", start_date=START) as dag:
        PythonOperator(task_id="t", python_callable=boom,
                       on_failure_callback=SmtpNotifier("ops@example.org", conn_id="mail_down"))
    result = await run_dag(dag, home, timeout=30)
    assert result.state == "failed"
    assert f"connection 'mail_down' (smtp server 127.0.0.1:{port})" in result.log("t")
