"""`aflow variables ...` and `aflow connections ...`: Variables and Connections in the
store (see aflow.secrets). Passwords are never printed by a listing; `connections get`
shows one only with --reveal."""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from aflow.exceptions import AflowError, SecretsError
from aflow.secrets import backends as secrets
from aflow.secrets.backends import connection_from_record, connection_to_record, lookup_connection
from aflow.secrets.connection import Connection
from aflow.secrets.crypto import generate_key
from aflow.secrets.masking import MASK, is_sensitive_key
from aflow.secrets.variable import Variable, check_key, encode_value
from aflow.store.records import VariableRecord

TEST_TIMEOUT_S = 10.0
LIST_VALUE_WIDTH = 60


def add_parsers(groups: Any, common: argparse.ArgumentParser, output: argparse.ArgumentParser) -> None:
    variables = groups.add_parser(
        "variables", help="Variables: named values for DAGs (AFLOW_VAR_<KEY> overrides)"
    ).add_subparsers(dest="cmd", required=True)
    p = variables.add_parser("get", parents=[common], help="print a variable's value")
    p.add_argument("key")
    p.add_argument("--json", action="store_true", help="print it as parsed JSON")
    p.add_argument("--default", help="print this when the variable does not exist")
    p.set_defaults(handler=cmd_variables_get)
    p = variables.add_parser("set", parents=[common], help="create or change a variable")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--json", action="store_true", help="VALUE is JSON: check it first")
    p.add_argument("--description", default="", help="what the variable is for")
    p.set_defaults(handler=cmd_variables_set)
    p = variables.add_parser("list", parents=[common, output],
                             help="stored variables (values of secret-looking keys masked)")
    p.set_defaults(handler=cmd_variables_list)
    p = variables.add_parser("delete", parents=[common], help="delete a stored variable")
    p.add_argument("key")
    p.set_defaults(handler=cmd_variables_delete)
    p = variables.add_parser("import", parents=[common],
                             help="set variables from a JSON file {key: value} (all or none)")
    p.add_argument("file", type=Path)
    p.set_defaults(handler=cmd_variables_import)
    p = variables.add_parser("export", parents=[common],
                             help="write every stored variable to a JSON file {key: value}")
    p.add_argument("file", type=Path)
    p.set_defaults(handler=cmd_variables_export)

    conns = groups.add_parser(
        "connections", help="Connections: how to reach external systems (AFLOW_CONN_<ID> "
        "overrides); secrets encrypted with core.fernet_key"
    ).add_subparsers(dest="cmd", required=True)
    p = conns.add_parser("add", parents=[common], help="add a connection (--uri, or --conn-type "
                         "and fields)")
    p.add_argument("conn_id")
    p.add_argument("--uri", help="conn-type://login:password@host:port/schema?extra=value")
    p.add_argument("--conn-type", help="the connection type (e.g. postgresql, sqlite, http)")
    p.add_argument("--conn-host")
    p.add_argument("--conn-login")
    p.add_argument("--conn-password")
    p.add_argument("--conn-schema")
    p.add_argument("--conn-port", type=int)
    p.add_argument("--conn-extra", help="a JSON object")
    p.add_argument("--conn-description", default="")
    p.add_argument("--replace", action="store_true", help="replace a connection of that id")
    p.set_defaults(handler=cmd_connections_add)
    p = conns.add_parser("get", parents=[common, output],
                         help="show a connection as tasks see it (password masked)")
    p.add_argument("conn_id")
    p.add_argument("--reveal", action="store_true", help="show the password and the URI in clear")
    p.set_defaults(handler=cmd_connections_get)
    p = conns.add_parser("list", parents=[common, output],
                         help="stored connections (passwords never shown)")
    p.set_defaults(handler=cmd_connections_list)
    p = conns.add_parser("delete", parents=[common], help="delete a stored connection")
    p.add_argument("conn_id")
    p.set_defaults(handler=cmd_connections_delete)
    p = conns.add_parser("test", parents=[common],
                         help="try to connect (sqlite, postgresql, http/https)")
    p.add_argument("conn_id")
    p.set_defaults(handler=cmd_connections_test)
    p = conns.add_parser("generate-key", parents=[common],
                         help="print a new key for core.fernet_key")
    p.set_defaults(handler=cmd_connections_generate_key)


def _store(args: argparse.Namespace) -> Any:
    from aflow.cli import _open_store

    return _open_store(args)


# -- variables -----------------------------------------------------------------------------------
async def cmd_variables_get(args: argparse.Namespace) -> int:
    async with _store(args) as store:
        from aflow.runtime import services

        token = services.set_store(store)
        try:
            default = args.default if args.default is not None else _NONE
            value = await Variable.aget(args.key, default, deserialize_json=args.json)
        finally:
            services.reset_store(token)
    print(json.dumps(value, indent=2) if args.json and value is not args.default else value)
    return 0


_NONE: Any = Variable.aget.__defaults__[0]  # type: ignore[index]


async def cmd_variables_set(args: argparse.Namespace) -> int:
    check_key(args.key)
    if args.json:
        try:
            json.loads(args.value)
        except ValueError as exc:
            raise SecretsError(f"variable {args.key!r}: --json value is not JSON: {exc}") from None
    async with _store(args) as store:
        await store.set_variables([VariableRecord(args.key, args.value, args.description)])
    print(f"variable {args.key} set")
    return 0


def _listed(key: str, value: str) -> str:
    if is_sensitive_key(key):
        return MASK
    return value if len(value) <= LIST_VALUE_WIDTH else value[: LIST_VALUE_WIDTH - 1] + "…"


async def cmd_variables_list(args: argparse.Namespace) -> int:
    from aflow.cli import emit

    async with _store(args) as store:
        rows = await store.list_variables()
    emit([{"key": v.key, "value": _listed(v.key, v.value) if args.output == "table"
           else (MASK if is_sensitive_key(v.key) else v.value), "description": v.description}
          for v in rows], ["key", "value", "description"], args.output)
    return 0


async def cmd_variables_delete(args: argparse.Namespace) -> int:
    async with _store(args) as store:
        if not await store.delete_variable(args.key):
            raise SecretsError(f"no stored variable {args.key!r}")
    print(f"variable {args.key} deleted")
    return 0


def parse_variables_file(path: Path, text: str) -> list[VariableRecord]:
    """Airflow's file: {"key": value, ...}; a value that is not a string is stored as its
    JSON; {"key": {"value": ..., "description": "..."}} also gives a description."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SecretsError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SecretsError(f"{path} must hold a JSON object {{key: value}}, not "
                           f"{type(data).__name__}")
    records = []
    for key, item in data.items():
        check_key(key)
        description = ""
        if isinstance(item, dict) and "value" in item and set(item) <= {"value", "description"}:
            description = str(item.get("description") or "")
            item = item["value"]
        value = item if isinstance(item, str) else encode_value(key, item, serialize_json=True)
        records.append(VariableRecord(key, value, description))
    return records


async def cmd_variables_import(args: argparse.Namespace) -> int:
    try:
        text = await anyio.Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretsError(f"cannot read {args.file}: {exc}") from None
    records = parse_variables_file(args.file, text)
    async with _store(args) as store:
        await store.set_variables(records)  # one transaction: all or none
    print(f"{len(records)} variable(s) imported from {args.file}")
    return 0


async def cmd_variables_export(args: argparse.Namespace) -> int:
    async with _store(args) as store:
        rows = await store.list_variables()
    out: dict[str, Any] = {}
    for v in rows:
        try:
            out[v.key] = json.loads(v.value)
        except ValueError:
            out[v.key] = v.value
    try:
        await anyio.Path(args.file).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise SecretsError(f"cannot write {args.file}: {exc}") from None
    print(f"{len(out)} variable(s) exported to {args.file}")
    return 0


# -- connections ---------------------------------------------------------------------------------
def connection_from_args(args: argparse.Namespace) -> Connection:
    fields = {"conn_type": args.conn_type, "host": args.conn_host, "login": args.conn_login,
              "password": args.conn_password, "schema": args.conn_schema,
              "port": args.conn_port, "extra": args.conn_extra}
    if args.uri is not None:
        given = [f"--conn-{k.replace('conn_', '').replace('_', '-')}"
                 for k, v in fields.items() if v is not None]
        if given:
            raise SecretsError(f"give either --uri or the fields ({', '.join(given)}), not both")
        return Connection.from_uri(args.conn_id, args.uri, description=args.conn_description)
    if not args.conn_type:
        raise SecretsError(f"connection {args.conn_id!r}: give --uri URI or --conn-type TYPE")
    extra: Any = {}
    if args.conn_extra is not None:
        try:
            extra = json.loads(args.conn_extra)
        except ValueError as exc:
            raise SecretsError(f"--conn-extra is not JSON: {exc}") from None
    return Connection(
        conn_id=args.conn_id, conn_type=args.conn_type, host=args.conn_host,
        login=args.conn_login, password=args.conn_password, schema=args.conn_schema,
        port=args.conn_port, extra=extra, description=args.conn_description,
    )


async def cmd_connections_add(args: argparse.Namespace) -> int:
    conn = connection_from_args(args)
    record = connection_to_record(conn, secrets.settings.fernet_key)  # before any write
    async with _store(args) as store:
        if not args.replace and await store.get_connection(conn.conn_id) is not None:
            raise SecretsError(f"a connection {conn.conn_id!r} exists already (delete it, or "
                               "add it again with --replace)")
        await store.set_connection(record)
    print(f"connection {conn.conn_id} ({conn.conn_type}) added")
    return 0


async def cmd_connections_get(args: argparse.Namespace) -> int:
    async with _store(args) as store:
        conn = await lookup_connection(args.conn_id, store=store)
    shown = conn.to_dict(reveal=args.reveal)
    if not args.reveal and conn.password is not None:
        shown["uri"] = conn.get_uri().replace(":" + _quoted(conn.password) + "@", f":{MASK}@")
        shown["extra"] = {k: MASK if is_sensitive_key(k) else v for k, v in conn.extra.items()}
    else:
        shown["uri"] = conn.get_uri()
    if args.output == "json":
        print(json.dumps(shown, indent=2))
    else:
        for key, value in shown.items():
            print(f"{key}: {'' if value is None else value}")
    return 0


def _quoted(password: str) -> str:
    from urllib.parse import quote

    return quote(password, safe="")


async def cmd_connections_list(args: argparse.Namespace) -> int:
    from aflow.cli import emit

    async with _store(args) as store:
        records = await store.list_connections()
    rows = []
    for record in records:
        conn = connection_from_record(record, None, decrypt=False)
        rows.append({"conn_id": conn.conn_id, "conn_type": conn.conn_type, "host": conn.host,
                     "port": conn.port, "login": conn.login, "schema": conn.schema,
                     "password": conn.password, "description": conn.description})
    emit(rows, ["conn_id", "conn_type", "host", "port", "login", "schema", "password",
                "description"], args.output)
    return 0


async def cmd_connections_delete(args: argparse.Namespace) -> int:
    async with _store(args) as store:
        if not await store.delete_connection(args.conn_id):
            raise SecretsError(f"no stored connection {args.conn_id!r}")
    print(f"connection {args.conn_id} deleted")
    return 0


async def cmd_connections_test(args: argparse.Namespace) -> int:
    async with _store(args) as store:
        conn = await lookup_connection(args.conn_id, store=store)
    try:
        with anyio.fail_after(TEST_TIMEOUT_S):
            detail = await test_connection(conn)
    except TimeoutError:
        raise AflowError(f"connection {conn.conn_id!r}: no answer within {TEST_TIMEOUT_S:g}s") from None
    print(f"connection {conn.conn_id}: OK ({detail})")
    return 0


async def test_connection(conn: Connection) -> str:
    """Connect once; a one-line description of what answered, or AflowError saying why not."""
    kind = conn.conn_type.lower()
    what = f"connection {conn.conn_id!r}"
    if kind == "sqlite":
        path = conn.schema or conn.host
        if not path:
            raise AflowError(f"{what}: a sqlite connection needs a file path")

        def probe() -> str:
            if not Path(path).is_file():
                raise AflowError(f"{what}: no SQLite file at {path}")
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TEST_TIMEOUT_S)
            try:
                version = db.execute("SELECT sqlite_version()").fetchone()[0]
            except sqlite3.Error as exc:
                raise AflowError(f"{what}: {path} is not a SQLite database: {exc}") from None
            finally:
                db.close()
            return f"SQLite {version} at {path}"

        return await anyio.to_thread.run_sync(probe)
    if kind in ("postgresql", "postgres"):
        # as the SQL operator and sensor will connect: the same extras (sslmode, ...)
        from aflow.authoring.operators.sql import PG_CONNECT_ERRORS, connect_pg, pg_dsn_of

        try:
            dsn = pg_dsn_of(conn)
        except ValueError as exc:
            raise AflowError(f"{what}: {_masked(exc)}") from None
        try:
            pg = await connect_pg(dsn)
        except PG_CONNECT_ERRORS as exc:
            raise AflowError(f"{what}: cannot connect: {_masked(exc)}") from None
        try:
            version = await pg.fetchval("SHOW server_version")
        finally:
            await pg.close()
        return f"PostgreSQL {version} at {conn.host}:{conn.port or 5432}"
    if kind in ("http", "https"):
        import httpx

        base = Connection(conn.conn_id, kind, host=conn.host, port=conn.port,
                          schema=conn.schema).get_uri()
        auth = httpx.BasicAuth(conn.login or "", conn.password or "") if conn.login else None
        try:
            async with httpx.AsyncClient(timeout=TEST_TIMEOUT_S) as client:
                response = await client.get(base, auth=auth)
        except httpx.HTTPError as exc:
            raise AflowError(f"{what}: cannot reach {base}: {_masked(exc)}") from None
        if response.status_code >= 500:
            raise AflowError(f"{what}: {base} answered HTTP {response.status_code}")
        return f"HTTP {response.status_code} from {base}"
    raise AflowError(f"{what}: cannot test connections of type {conn.conn_type!r} "
                     "(sqlite, postgresql, http and https can be tested)")


def _masked(exc: BaseException) -> str:
    from aflow.secrets.masking import mask

    return mask(str(exc) or type(exc).__name__)


async def cmd_connections_generate_key(args: argparse.Namespace) -> int:
    print(generate_key())
    return 0
