"""Who is asking, and may they: users, roles, API tokens and UI sessions.

Every route needs credentials except `/api/v1/health`, the OpenAPI document, signed
webhooks (their HMAC is their credential), the login page and static files:

* scripts send `Authorization: Bearer <token>` (tokens from `aflow tokens create`);
* the UI logs in at `/login` and gets an HttpOnly session cookie. A request that
  changes something with that cookie must also carry the page's CSRF token (forms
  send it as a field; API calls as the `X-CSRF-Token` header).

Roles: `viewer` reads everything; `admin` may also change things (trigger, pause,
clear, mark, edit). Passwords are stored as scrypt hashes, tokens and session ids as
SHA-256 (they are 256-bit random strings, so a fast hash is enough).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
from aiohttp import web

from aflow.api import ROLES
from aflow.api.errors import ApiError, error_response
from aflow.exceptions import AflowError
from aflow.store.base import Store
from aflow.store.records import ApiTokenRecord, UserRecord, WebSessionRecord

SESSION_COOKIE = "aflow_session"
SESSION_LIFETIME = timedelta(hours=12)
CSRF_HEADER = "X-CSRF-Token"
TOKEN_PREFIX = "aflow_"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PUBLIC_PAGES = ("/login",)  # (the API's public routes are declared `public=True`)
_PUBLIC_PREFIXES = ("/static/",)


@dataclass(frozen=True)
class Principal:
    username: str
    role: str
    via: str  # "token" | "session"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


PRINCIPAL = web.RequestKey("aflow_principal", Principal)


# -- secrets ------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    """scrypt with a random salt, as `scrypt$n$r$p$salt$hash` (base64)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                            dklen=32)
    return "$".join(["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(base64.b64decode(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def new_password() -> str:
    return secrets.token_urlsafe(15)


def secret_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AflowError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return role


# -- users and tokens (for the CLI and embedding) ---------------------------------------------
async def create_user(store: Store, username: str, role: str, password: str, now: datetime) -> UserRecord:
    username = username.strip()
    if not username or len(username) > 100 or any(c.isspace() for c in username):
        raise AflowError(f"invalid username {username!r}: 1-100 characters, no spaces")
    if len(password) < 8:
        raise AflowError("the password must have at least 8 characters")
    check_role(role)
    hashed = await anyio.to_thread.run_sync(hash_password, password)
    user = UserRecord(username, hashed, role, now)
    await store.create_user(user)
    return user


async def create_token(
    store: Store, username: str, now: datetime, *, name: str | None = None,
    expires_in: timedelta | None = None,
) -> tuple[str, ApiTokenRecord]:
    """A new token for `username`: (the token, shown once; its record)."""
    if await store.get_user(username) is None:
        raise AflowError(f"no user {username!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = ApiTokenRecord(
        token_id="tok_" + secrets.token_hex(6),
        token_hash=secret_hash(token),
        username=username,
        name=name,
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    await store.create_api_token(record)
    return token, record


async def start_session(store: Store, username: str, now: datetime) -> str:
    """A new UI session for `username`; returns the cookie value."""
    sid = secrets.token_urlsafe(32)
    await store.create_web_session(
        WebSessionRecord(secret_hash(sid), username, now, now + SESSION_LIFETIME), now
    )
    return sid


# -- identifying a request ----------------------------------------------------------------------
async def principal_of(request: web.Request, store: Store, now: datetime) -> Principal | None:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        token = await store.get_api_token(secret_hash(value.strip()))
        if token is None or (token.expires_at is not None and token.expires_at <= now):
            return None
        user = await store.get_user(token.username)
        return Principal(user.username, user.role, "token") if user else None
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        session = await store.get_web_session(secret_hash(sid))
        if session is None or session.expires_at <= now:
            return None
        user = await store.get_user(session.username)
        return Principal(user.username, user.role, "session") if user else None
    return None


def is_public(request: web.Request, public_routes: frozenset[str]) -> bool:
    """The login page, static files, and the routes declared public (by their pattern,
    so `/api/v1/webhooks/{name}` covers every webhook)."""
    path = request.path
    if path in _PUBLIC_PAGES or path.startswith(_PUBLIC_PREFIXES):
        return True
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in public_routes


def needs_admin(request: web.Request) -> bool:
    return request.method not in _SAFE_METHODS and request.path != "/logout"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(
    store_of: Callable[[web.Request], Store],
    now_of: Callable[[web.Request], datetime],
    public_routes: frozenset[str],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_public(request, public_routes):
            return await handler(request)
        api = request.path.startswith("/api/") or request.path == "/metrics"
        principal = await principal_of(request, store_of(request), now_of(request))
        if principal is None:
            if api:
                response = error_response(ApiError(
                    401, "unauthorized",
                    "credentials needed: Authorization: Bearer <token> (aflow tokens create)"))
                response.headers["WWW-Authenticate"] = 'Bearer realm="aflow"'
                return response
            target = request.path_qs
            raise web.HTTPSeeOther(f"/login?next={_quote(target)}")
        if needs_admin(request) and not principal.is_admin:
            if api:
                return error_response(ApiError(
                    403, "forbidden", f"user {principal.username!r} ({principal.role}) may only "
                    "read; changes need the admin role"))
            from aflow.web.pages import PageError

            raise PageError(403, f"User {principal.username!r} ({principal.role}) may only "
                                 "read; this needs the admin role.")
        if (principal.via == "session" and api and request.method not in _SAFE_METHODS
                and not _csrf_ok(request)):
            return error_response(ApiError(
                403, "csrf", f"a change made with the session cookie needs the {CSRF_HEADER} "
                "header of the page"))
        request[PRINCIPAL] = principal
        return await handler(request)

    return authenticate


def _csrf_ok(request: web.Request) -> bool:
    from aflow.web.pages import CSRF_COOKIE

    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), sent.encode("utf-8", "replace"))


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="")


def principal_or_none(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL)
