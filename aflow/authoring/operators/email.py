"""EmailOperator: send an HTML email through SMTP, with the server from a Connection.

The connection (`smtp_default` unless `conn_id` says otherwise): host and port (default
465 with SSL, else 25), login and password (AUTH when a login is given), and in its extra
`ssl` (connect with TLS from the start), `starttls` (upgrade a plain connection), both
false by default, `from_email` (the sender when the task gives none) and `timeout`
(seconds, default 30). Airflow's `disable_ssl`/`disable_tls` extras are read too.
Boolean extras may be JSON booleans or the text `true`/`false`.

The standard library's `smtplib` does the talking, in a worker thread (one short blocking
exchange per task; no extra dependency). Bcc recipients get the message but are not in
its headers. `files` are attached, their type guessed from their names.
"""

from __future__ import annotations

import logging
import mimetypes
import smtplib
import ssl
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import anyio.to_thread

from aflow.authoring.baseoperator import BaseOperator
from aflow.exceptions import AflowError, DagDefinitionError
from aflow.secrets.backends import lookup_connection
from aflow.secrets.connection import Connection
from aflow.secrets.masking import mask

log = logging.getLogger("aflow.task.email")

DEFAULT_TIMEOUT_S = 30.0


class EmailOperatorError(AflowError):
    """The email could not be sent (no server, refused login, a rejected recipient)."""


def addresses(value: str | Iterable[str] | None) -> list[str]:
    """`a@x, b@y; c@z` or a list of them, as a list."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        out.extend(a.strip() for a in str(item).replace(";", ",").split(",") if a.strip())
    return out


def _flag(extra: dict[str, Any], key: str, default: bool) -> bool:
    value = extra.get(key, default)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class SmtpSettings:
    """How to reach the server of one SMTP connection."""

    def __init__(self, conn: Connection) -> None:
        extra = conn.extra or {}
        if not conn.host:
            raise EmailOperatorError(f"connection {conn.conn_id!r} has no host")
        self.conn_id = conn.conn_id
        self.host = conn.host
        self.use_ssl = _flag(extra, "ssl", False)
        self.starttls = _flag(extra, "starttls", False)
        if "disable_ssl" in extra:
            self.use_ssl = not _flag(extra, "disable_ssl", True)
        if "disable_tls" in extra:
            self.starttls = not _flag(extra, "disable_tls", True)
        self.port = conn.port or (465 if self.use_ssl else 25)
        self.login = conn.login
        self.password = conn.password
        self.from_email = extra.get("from_email") or conn.login
        self.timeout = float(extra.get("timeout") or DEFAULT_TIMEOUT_S)

    @property
    def where(self) -> str:
        return f"connection {self.conn_id!r} (smtp server {self.host}:{self.port})"

    def send(self, msg: EmailMessage, recipients: list[str]) -> None:
        """Blocking: connect, say hello, maybe STARTTLS and AUTH, send, quit."""
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.use_ssl:
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with smtp:
            if self.starttls and not self.use_ssl:
                smtp.starttls(context=context)
            if self.login:
                smtp.login(self.login, self.password or "")
            refused = smtp.send_message(msg, to_addrs=recipients)
        if refused:
            log.warning("the server refused some recipients: %s", sorted(refused))


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
                raise EmailOperatorError(
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
            raise EmailOperatorError(
                f"task {self.task_id!r}: no sender: pass from_email, or set from_email in "
                f"the extra (or a login) of connection {self.conn_id!r}"
            )
        recipients = addresses(self.to) + addresses(self.cc) + addresses(self.bcc)
        msg = await anyio.to_thread.run_sync(self.build_message, sender)
        log.info("sending %r to %s via %s", self.subject, ", ".join(recipients), settings.where)
        try:
            await anyio.to_thread.run_sync(settings.send, msg, recipients)
        except (smtplib.SMTPException, OSError) as exc:
            raise EmailOperatorError(
                f"sending email via {settings.where} failed: {type(exc).__name__}: "
                f"{mask(str(exc)) or 'no detail'}"
            ) from None
        log.info("email sent (%s)", msg["Message-ID"])
        return None
