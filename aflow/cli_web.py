"""The web server's part of the CLI: `aflow users ...` and `aflow tokens ...` (the
`webserver` command itself is served by aflow.cli's `_serve`, as the scheduler is)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from aflow.api import ROLES
from aflow.exceptions import AflowError
from aflow.store.base import Store

# aflow.api.auth (and the aiohttp it needs) is imported by the commands that use it, so
# that every other command, the scheduler's included, does not load the web stack.

ADMIN_USER = "admin"


async def ensure_admin(store: Store) -> str | None:
    """With no user yet, create `admin` with a new password and return that password
    (to be shown once: only its hash is kept); else None."""
    from aflow.api.auth import create_user, new_password

    if await store.list_users():
        return None
    password = new_password()
    await create_user(store, ADMIN_USER, "admin", password, datetime.now(UTC))
    return password


def add_parsers(groups: Any, common: argparse.ArgumentParser, output: argparse.ArgumentParser) -> None:
    users = groups.add_parser("users", help="who may use the web UI and REST API").add_subparsers(
        dest="cmd", required=True)
    p = users.add_parser("create", parents=[common], help="create a user (prints a new "
                         "password once unless --password-stdin)")
    p.add_argument("username")
    p.add_argument("--role", choices=ROLES, default="viewer", help="default %(default)s")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input (first line)")
    p.set_defaults(handler=cmd_users_create)
    p = users.add_parser("list", parents=[common, output], help="users and their roles")
    p.set_defaults(handler=cmd_users_list)
    p = users.add_parser("delete", parents=[common], help="delete a user, their tokens and sessions")
    p.add_argument("username")
    p.set_defaults(handler=cmd_users_delete)

    tokens = groups.add_parser("tokens", help="bearer tokens for the REST API").add_subparsers(
        dest="cmd", required=True)
    p = tokens.add_parser("create", parents=[common], help="create a token (printed once)")
    p.add_argument("username")
    p.add_argument("--name", help="what the token is for")
    p.add_argument("--expires-days", type=float, help="valid for this many days (default: "
                   "until revoked)")
    p.set_defaults(handler=cmd_tokens_create)
    p = tokens.add_parser("list", parents=[common, output], help="tokens (never their value)")
    p.add_argument("--user", help="only this user's")
    p.set_defaults(handler=cmd_tokens_list)
    p = tokens.add_parser("revoke", parents=[common], help="revoke a token by its id")
    p.add_argument("token_id")
    p.set_defaults(handler=cmd_tokens_revoke)


def _store(args: argparse.Namespace) -> Any:
    from aflow.cli import _open_store

    return _open_store(args)


async def cmd_users_create(args: argparse.Namespace) -> int:
    from aflow.api.auth import create_user, new_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        shown = None
    else:
        password = shown = new_password()
    async with _store(args) as store:
        user = await create_user(store, args.username, args.role, password, datetime.now(UTC))
    print(f"user {user.username} ({user.role}) created")
    if shown is not None:
        print(f"password: {shown}  (shown once: only its hash is stored)")
    return 0


async def cmd_users_list(args: argparse.Namespace) -> int:
    from aflow.cli import emit

    async with _store(args) as store:
        users = await store.list_users()
    emit([{"username": u.username, "role": u.role, "created_at": u.created_at} for u in users],
         ["username", "role", "created_at"], args.output)
    return 0


async def cmd_users_delete(args: argparse.Namespace) -> int:
    async with _store(args) as store:
        if not await store.delete_user(args.username):
            raise AflowError(f"no user {args.username!r}")
    print(f"user {args.username} deleted, with their tokens and sessions")
    return 0


async def cmd_tokens_create(args: argparse.Namespace) -> int:
    from aflow.api.auth import create_token

    if args.expires_days is not None and args.expires_days <= 0:
        raise AflowError("--expires-days must be above 0")
    expires = timedelta(days=args.expires_days) if args.expires_days is not None else None
    async with _store(args) as store:
        token, record = await create_token(store, args.username, datetime.now(UTC),
                                           name=args.name, expires_in=expires)
    until = f", valid until {record.expires_at.isoformat(timespec='seconds')}" if record.expires_at else ""
    print(f"token {record.token_id} for {record.username}{until}:")
    print(token)
    print("(shown once: only its hash is stored; send it as 'Authorization: Bearer <token>')")
    return 0


async def cmd_tokens_list(args: argparse.Namespace) -> int:
    from aflow.cli import emit

    async with _store(args) as store:
        tokens = await store.list_api_tokens(args.user)
    emit([{"token_id": t.token_id, "username": t.username, "name": t.name,
           "created_at": t.created_at, "expires_at": t.expires_at} for t in tokens],
         ["token_id", "username", "name", "created_at", "expires_at"], args.output)
    return 0


async def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    async with _store(args) as store:
        if not await store.revoke_api_token(args.token_id):
            raise AflowError(f"no token {args.token_id!r}")
    print(f"token {args.token_id} revoked")
    return 0
