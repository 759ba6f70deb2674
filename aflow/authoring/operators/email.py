"""EmailOperator: send an HTML email through SMTP, with the server from a Connection
(`smtp_default` unless `conn_id` says otherwise; see aflow.runtime.smtp for what the
connection may say). The exchange runs in a worker thread. Bcc recipients get the
message but are not in its headers. `files` are attached, their type guessed from their
names.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import anyio.to_thread

from aflow.authoring.baseoperator import BaseOperator
from aflow.exceptions import DagDefinitionError
from aflow.runtime.smtp import SmtpError, SmtpSettings, addresses
from aflow.secrets.backends import lookup_connection

log = logging.getLogger("aflow.task.email")


class EmailOperator(BaseOperator):
    """Send `html_content` with `subject` to `to` (plus `cc`, `bcc`), attaching `files`."""

    template_fields: Sequence[str] = ("to", "subject", "html_content", "files", "cc", "bcc")
    template_ext: Sequence[str] = (".html",)
    ui_color = "#e6faf9"

    def __init__(
        self,
        *,
        to: str | list[str],
        subject: str,
        html_content: str,
        conn_id: str = "smtp_default",
        from_email: str | None = None,
        cc: str | list[str] | None = None,
        bcc: str | list[str] | None = None,
        files: list[str] | None = None,
        mime_charset: str = "utf-8",
        **kwargs: Any,
    ) -> None:
        task_id = kwargs.get("task_id")
        if not addresses(to):
            raise DagDefinitionError(f"task {task_id!r}: `to` needs at least one address")
        if files is not None and (isinstance(files, str) or not isinstance(files, list | tuple)):
            raise DagDefinitionError(f"task {task_id!r}: files must be a list of paths")
        self.to = to
        self.subject = subject
        self.html_content = html_content
        self.conn_id = conn_id
        self.from_email = from_email
        self.cc = cc
        self.bcc = bcc
        self.files = list(files or [])
        self.mime_charset = mime_charset
        super().__init__(**kwargs)

    def build_message(self, sender: str) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = self.subject
        msg["From"] = sender
        msg["To"] = ", ".join(addresses(self.to))
        if addresses(self.cc):
            msg["Cc"] = ", ".join(addresses(self.cc))
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
        msg.set_content(self.html_content, subtype="html", charset=self.mime_charset)
        for name in self.files:
            path = Path(name)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise SmtpError(
                    f"task {self.task_id!r}: cannot attach {name!r}: {exc.strerror or exc}"
                ) from None
            kind, _ = mimetypes.guess_type(path.name)
            maintype, _, subtype = (kind or "application/octet-stream").partition("/")
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name)
        return msg

    async def execute(self, context: dict[str, Any]) -> Any:
        settings = SmtpSettings(await lookup_connection(self.conn_id))
        sender = self.from_email or settings.from_email
        if not sender:
            raise SmtpError(
                f"task {self.task_id!r}: no sender: pass from_email, or set from_email in "
                f"the extra (or a login) of connection {self.conn_id!r}"
            )
        recipients = addresses(self.to) + addresses(self.cc) + addresses(self.bcc)
        msg = await anyio.to_thread.run_sync(self.build_message, sender)
        log.info("sending %r to %s via %s", self.subject, ", ".join(recipients), settings.where)
        await settings.deliver(msg, recipients)
        log.info("email sent (%s)", msg["Message-ID"])
        return None
