"""Parsing a PostgreSQL store URL, and naming its server without its password.

    postgresql://user[:password]@host[:port]/database[?schema=NAME&<libpq options>]

`schema` is aflow's own option: the store keeps its tables in that schema (created on
first open) by putting it first on each connection's `search_path`, so several aflow
installations, or test runs, can share one database. Without it the tables go where the
server's default `search_path` puts them (normally `public`). Every other query option
is handed to asyncpg unchanged (`sslmode=require`, …); asyncpg sends the options it does
not know itself as server settings (`application_name=…`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from aflow.exceptions import StoreUnavailable

SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = 5432


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    dsn: str  # for asyncpg: the URL without aflow's own options
    schema: str | None
    where: str  # "host:port/database", safe to print (never the password)
    password: str | None
    options: frozenset[str]  # the names of the query options handed to asyncpg

    def scrub(self, text: str) -> str:
        """`text` (a driver's message) with the password masked, on one line."""
        line = " ".join(text.split())
        if self.password:
            for form in (self.password, unquote(self.password)):
                line = line.replace(form, "***")
        return line


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parse_postgres_url(url: str) -> PostgresTarget:
    parts = urlsplit(url)
    password = parts.password
    shown = url if not password else url.replace(password, "***")
    if parts.scheme not in SCHEMES:
        raise StoreUnavailable(f"bad PostgreSQL URL {shown!r}: it must start with postgresql://")
    options = parse_qsl(parts.query, keep_blank_values=True)
    hosts = parts.netloc.rpartition("@")[2]
    if "," in hosts:  # several hosts (asyncpg tries them in turn): shown as written
        server = hosts
    else:
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise StoreUnavailable(
                f"bad PostgreSQL URL {shown!r}: the port is not a number"
            ) from None
        host = parts.hostname or dict(options).get("host") or "localhost"
        server = f"{host}:{port}"
    database = parts.path.lstrip("/") or parts.username or "postgres"
    schemas = [value for key, value in options if key == "schema"]
    rest = [(key, value) for key, value in options if key != "schema"]
    schema = schemas[-1] if schemas else None
    if schema is not None and not schema.strip():
        raise StoreUnavailable(f"bad PostgreSQL URL {shown!r}: ?schema= needs a name")
    query = urlencode(rest)
    dsn = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    where = f"{server}/{database}"
    if schema is not None:
        where += f" (schema {schema})"
    return PostgresTarget(
        dsn=dsn,
        schema=schema,
        where=where,
        password=password,
        options=frozenset(key for key, _ in rest),
    )
