"""Credentials for tests of the web server: a user of a role with a bearer token."""

from __future__ import annotations

from datetime import UTC, datetime

from aflow.api.auth import create_token, create_user
from aflow.store.base import Store

PASSWORD = "correct horse battery"


async def bearer(store: Store, role: str = "admin", username: str | None = None) -> dict[str, str]:
    """Headers that authenticate as a new user of `role`."""
    name = username or f"{role}-user"
    now = datetime.now(UTC)
    if await store.get_user(name) is None:
        await create_user(store, name, role, PASSWORD, now)
    token, _ = await create_token(store, name, now, name="tests")
    return {"Authorization": f"Bearer {token}"}
