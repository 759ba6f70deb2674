"""The options a PostgreSQL connection may carry: a DSN's query options, which is also
where an aflow Connection's extras end up (`Connection.get_uri()`).

SqlTrigger and SQLExecuteQueryOperator both read a connection through
`triggers.sql.parse_dsn`, which checks its options here, so one connection works for
both, or fails for both with the same message. Accepted:

- `connect_timeout`: seconds > 0 to make a connection (aflow's own; default 10; 0, libpq's
  "no limit", is read as the default);
- what asyncpg reads as connection options, as libpq does (see PG_CONNECTION_OPTIONS):
  `sslmode` (one of PG_SSLMODES), `sslrootcert`, `sslcert`, `sslkey`, `sslcrl`,
  `sslpassword`, `target_session_attrs` (one of PG_TARGET_SESSION_ATTRS), ...; `host`,
  `port`, `user`, `password` and `dbname` are used only where the URI itself names none;
- session settings, sent to the server: `search_path`, `application_name`, and libpq's
  `options` (`-c name=value ...`), which carries any other setting.

Ignored (PG_IGNORED_OPTIONS): extras that connections ported from Airflow or libpq
commonly carry but that mean nothing to asyncpg (Airflow's `cursor`, `iam`,
`aws_conn_id`, ...; libpq's `keepalives*`, `sslcompression`, `gssencmode`,
`tcp_user_timeout`). They are dropped, and the caller warns once per connection that they
have no effect. `client_encoding` is dropped when it is UTF8 (the only encoding asyncpg
speaks) and an error otherwise.

Anything else is an error naming it and what is accepted: asyncpg would send it to the
server as a setting, which refuses one it does not know, but only once a connection is
tried; and such a key is most likely a typo.

Errors never show a value that is not text: it may be a secret (an `sslpassword` given
as a number in a connection's JSON form); they name its type instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = [
    "CONNECT_TIMEOUT_S",
    "PG_CONNECTION_OPTIONS",
    "PG_IGNORED_OPTIONS",
    "PG_OPTIONS",
    "PG_SESSION_SETTINGS",
    "PG_SSLMODES",
    "PG_TARGET_SESSION_ATTRS",
    "CheckedPgOptions",
    "checked_pg_options",
    "connect_timeout_seconds",
    "setting_as_option",
]

CONNECT_TIMEOUT_S = 10.0
PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
PG_TARGET_SESSION_ATTRS = (
    "any", "primary", "standby", "prefer-standby", "read-write", "read-only",
)
PG_CONNECTION_OPTIONS = (
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslpassword",
    "sslnegotiation", "ssl_min_protocol_version", "ssl_max_protocol_version",
    "target_session_attrs", "krbsrvname", "gsslib", "passfile", "service",
    "host", "port", "user", "password", "dbname", "database",
)
"""The query options asyncpg's DSN parser reads itself (asyncpg.connect_utils); it
sends any other one to the server as a setting."""
PG_SESSION_SETTINGS = ("search_path", "application_name", "options")
PG_OPTIONS = ("connect_timeout", *PG_CONNECTION_OPTIONS, *PG_SESSION_SETTINGS)
"""Every option a PostgreSQL connection may carry."""
PG_IGNORED_OPTIONS = (
    # Airflow's PostgresHook: its cursor class, and AWS IAM / Redshift token logins
    "cursor", "iam", "aws_conn_id", "redshift", "cluster-identifier",
    # libpq's, with no asyncpg counterpart (client_encoding: see PG_CLIENT_ENCODINGS)
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "sslcompression", "gssencmode", "client_encoding",
)
"""Extras that connections ported from Airflow or libpq commonly carry and that have no
effect in aflow: dropped, with a warning (the caller's, once per connection)."""
PG_CLIENT_ENCODINGS = ("utf8", "utf-8", "unicode")
"""The `client_encoding` values dropped silently, in any case: asyncpg speaks UTF8 only."""


class CheckedPgOptions(NamedTuple):
    timeout: float  # seconds; 0.0 for connect_timeout=0
    options: list[tuple[str, str]]  # the options to hand asyncpg, as text, in order
    ignored: list[str]  # PG_IGNORED_OPTIONS the connection gave, to warn about, sorted


def connect_timeout_seconds(value: Any) -> float:
    """A `connect_timeout` as a connection's extra or a DSN's query gives it: a number of
    seconds > 0, or 0, as a number or as text (a URI's values are text). 0 is returned as
    0.0: libpq reads it as "wait indefinitely", and connections copied from libpq or
    Airflow use it; the caller (triggers.sql.parse_dsn) uses the default instead, since
    aflow bounds every wait. ValueError otherwise, saying what is accepted; the caller
    names the connection."""
    seconds = math.nan
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except ValueError:
            pass
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(
            f"connect_timeout={value!r} is not a number of seconds > 0 (use e.g. 10 or 2.5; "
            f"0 means the default, {CONNECT_TIMEOUT_S:g})"
        )
    return seconds


def checked_pg_options(options: Mapping[str, Any]) -> CheckedPgOptions:
    """A connection's options checked: the connection timeout, the options to hand
    asyncpg, and the ignored ones that were given (PG_IGNORED_OPTIONS, but not a UTF8
    `client_encoding`). A None or empty value counts as absent. ValueError names every
    option that is not accepted, or else the first bad value, and what is accepted; a
    value that is not text is shown by its type only, never itself."""
    unknown = sorted(key for key in options
                     if key not in PG_OPTIONS and key not in PG_IGNORED_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown extra{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: a "
            f"PostgreSQL connection takes {', '.join(PG_OPTIONS)}; another server setting "
            "goes in options (e.g. options=-c statement_timeout=5000); "
            f"{', '.join(PG_IGNORED_OPTIONS)} are ignored"
        )
    timeout = CONNECT_TIMEOUT_S
    checked: list[tuple[str, str]] = []
    ignored: list[str] = []
    for key, value in options.items():
        if value is None or (value == "" and key != "connect_timeout"):
            continue  # absent (asyncpg skips an empty option too)
        if key == "client_encoding":
            if not isinstance(value, str) or value.lower() not in PG_CLIENT_ENCODINGS:
                shown = repr(value) if isinstance(value, str) else f"of type {type(value).__name__}"
                raise ValueError(
                    f"extra client_encoding {shown} is not supported: PostgreSQL sends "
                    "aflow (asyncpg) text in UTF8 only; remove it or use utf8"
                )
            continue
        if key in PG_IGNORED_OPTIONS:
            ignored.append(key)
            continue
        if key == "connect_timeout":
            if not isinstance(value, int | float | str) or isinstance(value, bool):
                raise ValueError(
                    f"extra connect_timeout of type {type(value).__name__} is not valid: "
                    "use a number of seconds > 0"
                )
            timeout = connect_timeout_seconds(value)
            continue
        if not isinstance(value, str):
            raise ValueError(
                f"extra {key} of type {type(value).__name__} is not valid: use text"
            )
        for name, allowed in (("sslmode", PG_SSLMODES),
                              ("target_session_attrs", PG_TARGET_SESSION_ATTRS)):
            if key == name and value not in allowed:
                raise ValueError(
                    f"extra {key}={value!r} is not valid: use one of {', '.join(allowed)}"
                )
        checked.append((key, value))
    return CheckedPgOptions(timeout, checked, sorted(ignored))


def setting_as_option(name: str, value: str) -> str:
    """A server setting as one `-c name=value` of libpq's `options`, where a space
    separates arguments unless a backslash escapes it."""

    def escaped(text: str) -> str:
        return text.replace("\\", "\\\\").replace(" ", "\\ ")

    return f"-c {escaped(name)}={escaped(value)}"
