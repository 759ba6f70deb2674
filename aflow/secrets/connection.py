"""`Connection`: where and how to reach an external system, in Airflow's shape.

The URI form is Airflow's: `conn-type://login:password@host:port/schema?key=value`. The
scheme is the connection type (`-` becomes `_`); login and password are URL-unquoted; the
path without its first `/` is the schema (so `sqlite:////abs/file.db` has schema
`/abs/file.db`); the query becomes `extra` (or, as in Airflow, `__extra__=<JSON>` gives a
whole JSON object). `get_uri()` writes the same form back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from aflow.exceptions import SecretsError

_EXTRA_PARAM = "__extra__"


@dataclass(frozen=True)
class Connection:
    conn_id: str
    conn_type: str
    host: str | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.conn_id or not isinstance(self.conn_id, str):
            raise SecretsError("a connection needs a non-empty conn_id")
        if not self.conn_type:
            raise SecretsError(f"connection {self.conn_id!r} needs a conn_type")
        if self.port is not None and (
            isinstance(self.port, bool) or not isinstance(self.port, int)
            or not 0 < self.port < 65536
        ):
            raise SecretsError(f"connection {self.conn_id!r}: port {self.port!r} is not 1-65535")
        if not isinstance(self.extra, dict):
            raise SecretsError(f"connection {self.conn_id!r}: extra must be a JSON object")

    def __repr__(self) -> str:
        password = "***" if self.password else None
        return (f"Connection(conn_id={self.conn_id!r}, conn_type={self.conn_type!r}, "
                f"host={self.host!r}, login={self.login!r}, password={password!r}, "
                f"schema={self.schema!r}, port={self.port!r})")

    @property
    def extra_dejson(self) -> dict[str, Any]:
        """Airflow's name for the extra as a dict."""
        return dict(self.extra)

    @classmethod
    def from_uri(cls, conn_id: str, uri: str, description: str = "") -> Connection:
        """Parse a connection URI; SecretsError names what is wrong."""
        parts = urlsplit(uri.strip())
        if not parts.scheme or "://" not in uri:
            raise SecretsError(
                f"connection {conn_id!r}: {_shown(uri)!r} is not a connection URI "
                "(conn-type://login:password@host:port/schema?extra=value)"
            )
        userinfo, _, hostport = parts.netloc.rpartition("@")
        login, has_password, password = userinfo.partition(":")
        host, port_text = hostport, ""
        if hostport.startswith("["):  # [IPv6]:port
            end = hostport.find("]")
            host, port_text = hostport[1:end], hostport[end + 2:]
        elif ":" in hostport:
            host, _, port_text = hostport.rpartition(":")
        port: int | None = None
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise SecretsError(
                    f"connection {conn_id!r}: port {port_text!r} is not a number from 1 to 65535"
                )
            port = int(port_text)
        extra: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == _EXTRA_PARAM:
                try:
                    loaded = json.loads(value)
                except ValueError:
                    loaded = None
                if not isinstance(loaded, dict):
                    raise SecretsError(
                        f"connection {conn_id!r}: {_EXTRA_PARAM} is not a JSON object"
                    )
                extra.update(loaded)
            else:
                extra[key] = value
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(
            conn_id=conn_id,
            conn_type=parts.scheme.replace("-", "_"),
            host=unquote(host) or None,
            login=unquote(login) or None,
            password=unquote(password) if has_password else None,
            schema=unquote(path) or None,
            port=port,
            extra=extra,
            description=description,
        )

    @classmethod
    def from_json(cls, conn_id: str, text: str) -> Connection:
        """Airflow's JSON form of a connection (`{"conn_type": ..., "host": ...}`)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SecretsError(f"connection {conn_id!r}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SecretsError(f"connection {conn_id!r}: the JSON form must be an object")
        known = {"conn_type", "host", "login", "password", "schema", "port", "extra",
                 "description"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SecretsError(f"connection {conn_id!r}: unknown field(s) {', '.join(unknown)}")
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except ValueError:
                raise SecretsError(f"connection {conn_id!r}: extra is not JSON") from None
        port = data.get("port")
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        return cls(conn_id=conn_id, **{"conn_type": "", **data, "extra": extra, "port": port})

    @classmethod
    def from_text(cls, conn_id: str, text: str) -> Connection:
        """A URI or, when it starts with `{`, the JSON form (as AFLOW_CONN_<ID> may hold)."""
        text = text.strip()
        if text.startswith("{"):
            return cls.from_json(conn_id, text)
        return cls.from_uri(conn_id, text)

    def get_uri(self) -> str:
        """The connection as a URI (what triggers and drivers are given)."""
        uri = f"{self.conn_type.replace('_', '-')}://"
        if self.login is not None or self.password is not None:
            uri += quote(self.login or "", safe="")
            if self.password is not None:
                uri += ":" + quote(self.password, safe="")
            uri += "@"
        if self.host:
            host = quote(self.host, safe="")
            uri += f"[{self.host}]" if ":" in self.host else host
        if self.port is not None:
            uri += f":{self.port}"
        if self.schema:
            uri += "/" + quote(self.schema, safe="/")
        if self.extra:
            if all(isinstance(v, str) for v in self.extra.values()):
                uri += "?" + urlencode(self.extra)
            else:
                uri += "?" + urlencode({_EXTRA_PARAM: json.dumps(self.extra)})
        return uri

    def to_dict(self, *, reveal: bool = False) -> dict[str, Any]:
        """A JSON-able view; the password is `***` unless `reveal`."""
        password = self.password if reveal or self.password is None else "***"
        return {"conn_id": self.conn_id, "conn_type": self.conn_type, "host": self.host,
                "login": self.login, "password": password, "schema": self.schema,
                "port": self.port, "extra": self.extra, "description": self.description}

    # -- lookup through the secrets backends (see aflow.secrets.backends) --------------
    @staticmethod
    async def aget(conn_id: str) -> Connection:
        """The connection `conn_id` from the first secrets backend that has it."""
        from aflow.secrets.backends import lookup_connection

        return await lookup_connection(conn_id)

    @staticmethod
    def get(conn_id: str) -> Connection:
        """`aget` for blocking code (a task run in a thread or a child process)."""
        from aflow.secrets.backends import run_blocking

        return run_blocking(Connection.aget, conn_id, what="Connection.get")  # type: ignore[no-any-return]


def _shown(uri: str) -> str:
    """A bad URI as it may be shown: without anything that could be a password."""
    if "@" in uri:
        scheme, sep, rest = uri.partition("://")
        return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if sep else "***"
    return uri
