"""Sending mail over SMTP through a Connection: used by EmailOperator and SmtpNotifier.

The connection (e.g. `smtp_default`): host and port (default 465 with SSL, else 25),
login and password (AUTH when a login is given), and in its extra `ssl` (connect with
TLS from the start), `starttls` (upgrade a plain connection; by default when the server
offers it, and a login is refused on a connection that stayed plain unless `starttls`
is false on purpose), `from_email` (the sender when the caller gives none) and `timeout` (seconds,
default 30). Airflow's `disable_ssl`/`disable_tls` extras are read too. Boolean extras
may be JSON booleans or the text `true`/`false`.

The standard library's `smtplib` does the talking; `SmtpSettings.send` blocks, so callers
run it in a worker thread (one short exchange per mail; no extra dependency). Bcc
recipients get the message but are not in its headers.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Iterable
from email.message import EmailMessage
from typing import Any

from aflow.exceptions import AflowError
from aflow.secrets.connection import Connection

log = logging.getLogger("aflow.smtp")

DEFAULT_TIMEOUT_S = 30.0


class SmtpError(AflowError):
    """The mail could not be sent (no server, refused login, a rejected recipient)."""


def addresses(value: str | Iterable[str] | None) -> list[str]:
    """`a@x, b@y; c@z` or a list of them, as a list."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        out.extend(a.strip() for a in str(item).replace(";", ",").split(",") if a.strip())
    return out


def _flag(extra: dict[str, Any], key: str, default: bool | None) -> bool | None:
    value = extra.get(key, default)
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class SmtpSettings:
    """How to reach the server of one SMTP connection."""

    def __init__(self, conn: Connection) -> None:
        extra = conn.extra or {}
        if not conn.host:
            raise SmtpError(f"connection {conn.conn_id!r} has no host")
        self.conn_id = conn.conn_id
        self.host = conn.host
        self.use_ssl = _flag(extra, "ssl", False)
        self.starttls = _flag(extra, "starttls", None)  # None: when the server offers it
        if "disable_ssl" in extra:
            self.use_ssl = not _flag(extra, "disable_ssl", True)
        if "disable_tls" in extra:
            self.starttls = not _flag(extra, "disable_tls", True)
        self.port = conn.port or (465 if self.use_ssl else 25)
        self.login = conn.login
        self.password = conn.password
        self.from_email = extra.get("from_email") or conn.login
        try:
            self.timeout = float(extra.get("timeout") or DEFAULT_TIMEOUT_S)
        except (TypeError, ValueError):
            raise SmtpError(f"connection {conn.conn_id!r}: extra timeout must be a number of "
                            f"seconds, got {extra.get('timeout')!r}") from None

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
            smtp.ehlo()
            offered = smtp.has_extn("starttls")
            encrypted = self.use_ssl
            if not self.use_ssl and (self.starttls if self.starttls is not None else offered):
                smtp.starttls(context=context)
                smtp.ehlo()
                encrypted = True
            if self.login:
                if not encrypted and self.starttls is None:
                    # (a server that drops STARTTLS from its answer would get the password)
                    raise SmtpError(
                        f"{self.where} does not offer STARTTLS: the login would go in clear "
                        "text; use ssl=true, or set starttls=false in the connection's extra "
                        "to send it unencrypted on purpose"
                    )
                smtp.login(self.login, self.password or "")
            refused = smtp.send_message(msg, to_addrs=recipients)
        if refused:
            log.warning("the server refused some recipients: %s", sorted(refused))

    async def deliver(self, msg: EmailMessage, recipients: list[str]) -> None:
        """`send` in a worker thread; its errors become an SmtpError naming the server
        (masked: a password never reaches a log or error)."""
        import anyio.to_thread

        from aflow.secrets.masking import mask

        try:
            await anyio.to_thread.run_sync(self.send, msg, recipients, abandon_on_cancel=True)
        except (smtplib.SMTPException, OSError) as exc:
            raise SmtpError(f"sending mail via {self.where} failed: {type(exc).__name__}: "
                            f"{mask(str(exc)) or 'no detail'}") from None
