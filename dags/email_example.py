"""EmailOperator, offline: send an HTML report with an attachment to a local SMTP sink.

What it shows
-------------
* ``EmailOperator`` with ``to``, ``cc``, ``bcc``, a templated subject and HTML body, and
  a file attached, sent through the SMTP server of a Connection (``example_smtp``);
* the report is built by an earlier task and reaches the email through XCom in the
  template.

Offline on purpose: the first task starts a minimal SMTP sink on 127.0.0.1 (a daemon
thread that stops by itself after two minutes; it accepts every message and writes it
to ``<examples folder>/outbox/``) and points the connection ``example_smtp`` at it; the
last task checks that the message arrived. With a real server you would add the
connection once, e.g. ``aflow connections add example_smtp --uri
'smtp://bot%40example.org:pw@mail.example.org:587?starttls=true'``, and drop the first
and last tasks.
"""

from __future__ import annotations

import os
import socketserver
import threading
import time
from datetime import datetime, timezone
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import anyio.from_thread

from aflow import DAG, Connection, EmailOperator, task
from aflow.runtime.services import current_store
from aflow.secrets import connection_to_record

SERVER_LIFETIME_S = 120.0


def examples_folder() -> Path:
    """Next to the examples' database ($AFLOW_EXAMPLES_DB, else $AFLOW_HOME/examples.db)."""
    explicit = os.environ.get("AFLOW_EXAMPLES_DB")
    if explicit:
        return Path(explicit).absolute().parent
    home = os.environ.get("AFLOW_HOME") or os.path.join("~", "aflow")
    return Path(os.path.expanduser(home)).absolute()


class _SmtpSink(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to take a message: EHLO, MAIL, RCPT, DATA, QUIT."""

    outbox: Path

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 example sink ready")
        recipients: list[str] = []
        while line := self.rfile.readline():
            verb = line.decode(errors="replace").strip().split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 example sink")
            elif verb == "MAIL":
                recipients = []
                self.reply("250 OK")
            elif verb == "RCPT":
                recipients.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                data = bytearray()
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                name = f"{time.time_ns()}.eml"
                self.outbox.mkdir(parents=True, exist_ok=True)
                (self.outbox / name).write_bytes(
                    f"X-Envelope-To: {', '.join(recipients)}\r\n".encode() + bytes(data))
                self.reply("250 OK queued as " + name)
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 OK" if verb in ("RSET", "NOOP") else "502 not implemented")


def _start_sink(outbox: Path) -> int:
    handler = type("Sink", (_SmtpSink,), {"outbox": outbox})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="example-smtp", daemon=True).start()
    stopper = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
    stopper.daemon = True
    stopper.start()
    return int(server.server_address[1])


with DAG(
    "email_example",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    catchup=False,
    tags=["example", "email"],
):

    @task
    def start_smtp_sink(run_id: str | None = None) -> str:
        """Start the local sink and point connection example_smtp at it (a sync task: it
        runs in a worker thread, and reaches the store on the loop through anyio)."""
        outbox = examples_folder() / "outbox" / str(run_id).replace(":", "_").replace("+", "_")
        port = _start_sink(outbox)
        # No password and no extra (the sender is the task's from_email): nothing to
        # encrypt, so no fernet key is needed for this one.
        record = connection_to_record(
            Connection("example_smtp", "smtp", host="127.0.0.1", port=port,
                       description="the local sink of dags/email_example.py"), None)
        anyio.from_thread.run(current_store().set_connection, record)
        return str(outbox)

    @task
    def build_report(ds: str | None = None) -> dict[str, Any]:
        path = examples_folder() / f"report_{ds}.csv"
        path.write_text("station,celsius\nnorth,11.5\nsouth,17.25\n")
        return {"file": str(path), "rows": 2}

    outbox = start_smtp_sink()
    report = build_report()

    send = EmailOperator(
        task_id="send_report",
        conn_id="example_smtp",
        from_email="reports@example.org",
        to=["team@example.org", "ops@example.org"],
        cc="lead@example.org",
        bcc="archive@example.org",
        subject="Readings for {{ ds }}",
        html_content="<h1>Readings</h1><p>{{ ti.xcom_pull('build_report')['rows'] }} rows "
                     "attached.</p>",
        files=["{{ ti.xcom_pull('build_report')['file'] }}"],
    )

    @task
    def check_delivery(outbox: str) -> dict[str, Any]:
        files = sorted(Path(outbox).glob("*.eml"))
        if len(files) != 1:
            raise RuntimeError(f"expected one message in {outbox}, found {len(files)}")
        msg = message_from_bytes(files[0].read_bytes(), policy=policy.default)
        attachments = [a.get_filename() for a in msg.iter_attachments()]
        print(f"delivered {msg['Subject']!r} to {msg['X-Envelope-To']} with {attachments}")
        return {"subject": str(msg["Subject"]), "to": str(msg["X-Envelope-To"]),
                "attachments": attachments}

    [outbox, report] >> send >> check_delivery(outbox)
