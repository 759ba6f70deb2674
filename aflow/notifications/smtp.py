"""SmtpNotifier: an e-mail alert sent over SMTP, through a Connection (default
`smtp_default`, e.g. `AFLOW_CONN_SMTP_DEFAULT=smtp://user:pass@mail.example.com:587?
from_email=aflow%40example.com`; aflow.runtime.smtp says what else it may set), in a
worker thread, so the event loop never waits on it."""

from __future__ import annotations

import html
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from aflow.exceptions import DagDefinitionError
from aflow.notifications.base import BaseNotifier, default_message, describe, page_url
from aflow.runtime.smtp import SmtpSettings, addresses

DEFAULT_CONN_ID = "smtp_default"


def _addresses(value: str | list[str] | None, what: str) -> list[str]:
    items = [] if value is None else [value] if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, str):
            raise DagDefinitionError(f"SmtpNotifier: {what} must be addresses, got {item!r}")
    return addresses(items)


class SmtpNotifier(BaseNotifier):
    """`SmtpNotifier(to="ops@example.com")`: `subject` and `html_content` are Jinja
    templates rendered with the callback's context (defaults say what happened)."""

    template_fields = ("to", "subject", "html_content", "cc", "bcc", "from_email")

    def __init__(
        self,
        to: str | list[str],
        subject: str | None = None,
        html_content: str | None = None,
        *,
        conn_id: str = DEFAULT_CONN_ID,
        from_email: str | None = None,
        cc: str | list[str] | None = None,
        bcc: str | list[str] | None = None,
        base_url: str | None = None,
    ) -> None:
        if not _addresses(to, "to"):
            raise DagDefinitionError("SmtpNotifier needs at least one address in to=")
        _addresses(cc, "cc")
        _addresses(bcc, "bcc")
        self.to = to
        self.subject = subject
        self.html_content = html_content
        self.conn_id = conn_id
        self.from_email = from_email
        self.cc = cc
        self.bcc = bcc
        self.base_url = base_url

    def message(self, context: dict[str, Any], sender: str) -> EmailMessage:
        """The mail sent for `context` (this notifier's fields already rendered)."""
        d = describe(context)
        line = default_message(d)
        msg = EmailMessage()
        msg["Subject"] = self.subject if self.subject is not None else line
        msg["From"] = sender
        msg["To"] = ", ".join(_addresses(self.to, "to"))
        if self.cc:
            msg["Cc"] = ", ".join(_addresses(self.cc, "cc"))
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="aflow")
        body = self.html_content if self.html_content is not None else _default_html(d, self.base_url)
        msg.set_content(line + "\n")
        msg.add_alternative(body, subtype="html")
        return msg

    async def notify(self, context: dict[str, Any]) -> None:
        from aflow.secrets.backends import lookup_connection

        settings = SmtpSettings(await lookup_connection(self.conn_id))
        sender = self.from_email or settings.from_email
        if not sender:
            raise DagDefinitionError(
                f"SmtpNotifier: no sender: pass from_email= or set from_email in the extra "
                f"of connection {self.conn_id!r}")
        msg = self.message(context, str(sender))
        rcpt = _addresses(self.to, "to") + _addresses(self.cc, "cc") + _addresses(self.bcc, "bcc")
        await settings.deliver(msg, rcpt)

    def __repr__(self) -> str:
        return f"<SmtpNotifier to {self.to!r} via {self.conn_id}>"


def _default_html(d: dict[str, Any], base_url: str | None) -> str:
    rows = [(k, d[k]) for k in ("dag_id", "run_id", "task_id", "try_number", "state", "reason",
                                "logical_date", "exception") if d.get(k) not in (None, "")]
    if d.get("deadline"):
        rows.append(("deadline", d["deadline"].get("deadline_at")))
    url = page_url(base_url, d)
    cells = "".join(f"<tr><th align='left'>{html.escape(str(k))}</th>"
                    f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    link = f"<p><a href='{html.escape(url)}'>Open in aflow</a></p>" if url else ""
    return (f"<p>{html.escape(default_message(d))}</p><table>{cells}</table>{link}")
