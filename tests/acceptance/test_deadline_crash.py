"""A deadline alert survives the crash of the scheduler that recorded the miss, through
the real CLI: `aflow scheduler` records a run's missed deadline and is SIGKILLed while
its alert is being sent (in a first callback that holds it, before the WebhookNotifier
posts); a new scheduler adopts the run and sends the alert, once, to a real loopback
HTTP server, and records it `sent`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow.store.records import DeadlineMissRecord
from aflow.store.sqlite import SqliteStore
from tests.acceptance.conftest import CLI, Server, wait_until, write_dag

LATE = '''
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio

from aflow import DAG, DeadlineAlert, DeadlineReference, PythonOperator, WebhookNotifier

HERE = Path({here!r})


async def hold(context):
    """Notes who calls it; holds the alert while the `hold` file exists."""
    with open(HERE / "callbacks.log", "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    with anyio.fail_after(120):
        while (HERE / "hold").exists():
            await anyio.sleep(0.05)


async def work():
    with anyio.fail_after(120):
        while not (HERE / "release").exists():
            await anyio.sleep(0.05)


with DAG("late", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
         deadline=DeadlineAlert(
             reference=DeadlineReference.FIXED_DATETIME(
                 datetime(2024, 1, 1, tzinfo=timezone.utc)),
             callback=[hold, WebhookNotifier({url!r})])):
    PythonOperator(task_id="work", python_callable=work, retries=3,
                   retry_delay=timedelta(milliseconds=100))
'''


class Receiver:
    """A loopback HTTP server that records the JSON body of each POST."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alert"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
        r.thread.join(timeout=10)


def misses(home: Path) -> list[DeadlineMissRecord]:
    async def read() -> list[DeadlineMissRecord]:
        async with SqliteStore(f"sqlite:///{home / 'aflow.db'}") as store:
            return await store.deadline_misses("late")

    return anyio.run(read)


def callers(tmp_path: Path) -> list[int]:
    path = tmp_path / "callbacks.log"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def start_scheduler(cli: CLI, folder: Path) -> Server:
    server = cli.spawn("scheduler", "--dags-folder", str(folder), name="scheduler")
    server.wait_ready()
    return server


@pytest.mark.slow
def test_an_alert_cut_off_by_a_crash_is_sent_once_by_the_adopter(
    cli: CLI, home: Path, tmp_path: Path, receiver: Receiver,
) -> None:
    folder = tmp_path / "dags"
    write_dag(folder, "late.py", LATE.format(here=str(tmp_path), url=receiver.url))
    (tmp_path / "hold").touch()
    first = start_scheduler(cli, folder)
    run_id = cli.json("dags", "trigger", "late", "--dags-folder", str(folder))[0]["run_id"]

    # The deadline has long passed: the miss is recorded and its alert is being sent.
    wait_until(lambda: callers(tmp_path) == [first.pid], what="the first alert attempt")
    first.kill()  # SIGKILL: its alert never got past the first callback
    (left,) = misses(home)
    assert (left.run_id, left.task_id, left.alert_state) == (run_id, None, "sending")
    assert f":{first.pid}:" in (left.owner or "")
    assert receiver.bodies == []

    (tmp_path / "hold").unlink()
    second = start_scheduler(cli, folder)
    wait_until(lambda: [m.alert_state for m in misses(home)] == ["sent"],
               what="the adopter to send the alert")
    (sent,) = misses(home)
    assert f":{second.pid}:" in (sent.owner or "")
    assert (sent.deadline_at, sent.missed_at) == (left.deadline_at, left.missed_at)
    assert callers(tmp_path) == [first.pid, second.pid]
    (body,) = receiver.bodies
    assert body["reason"] == "deadline_missed" and body["run_id"] == run_id
    assert body["deadline"]["missed_at"] == left.missed_at.isoformat()

    (tmp_path / "release").touch()
    assert cli.wait_run_state("late", run_id)["state"] == "success"
    assert len(receiver.bodies) == 1
