"""The store contract of users, API tokens and UI sessions, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aflow.exceptions import UserAlreadyExists
from aflow.store.base import Store
from aflow.store.records import ApiTokenRecord, UserRecord, WebSessionRecord
from tests.integration import test_store_contract
from tests.integration.test_store_contract import StoreFactory

pytestmark = pytest.mark.anyio

store_factory = test_store_contract.store_factory  # the backends: SQLite and PostgreSQL

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    return await store_factory()


async def test_users_are_created_once_listed_and_deleted_with_their_credentials(store: Store) -> None:
    ada = UserRecord("ada", "scrypt$x", "admin", T0)
    bob = UserRecord("bob", "scrypt$y", "viewer", T0 + timedelta(seconds=1))
    await store.create_user(bob)
    await store.create_user(ada)
    with pytest.raises(UserAlreadyExists, match="'ada'"):
        await store.create_user(UserRecord("ada", "other", "viewer", T0))
    assert await store.list_users() == [ada, bob]
    assert await store.get_user("ada") == ada
    assert await store.get_user("nobody") is None

    token = ApiTokenRecord("t1", "h1", "ada", "ci", T0, T0 + timedelta(days=1))
    other = ApiTokenRecord("t2", "h2", "bob", None, T0 + timedelta(seconds=1))
    await store.create_api_token(token)
    await store.create_api_token(other)
    session = WebSessionRecord("s1", "ada", T0, T0 + timedelta(hours=8))
    await store.create_web_session(session, now=T0)

    assert await store.delete_user("ada") is True
    assert await store.delete_user("ada") is False
    assert await store.get_api_token("h1") is None
    assert await store.get_web_session("s1") is None
    assert await store.list_api_tokens() == [other]


async def test_tokens_are_found_by_hash_listed_and_revoked(store: Store) -> None:
    await store.create_user(UserRecord("ada", "h", "admin", T0))
    first = ApiTokenRecord("t1", "hash-1", "ada", "ci", T0, T0 + timedelta(days=30))
    second = ApiTokenRecord("t2", "hash-2", "ada", None, T0 + timedelta(minutes=1))
    await store.create_api_token(first)
    await store.create_api_token(second)
    assert await store.get_api_token("hash-1") == first
    assert await store.get_api_token("hash-3") is None
    assert await store.list_api_tokens("ada") == [first, second]
    assert await store.list_api_tokens("bob") == []
    assert await store.revoke_api_token("t1") is True
    assert await store.revoke_api_token("t1") is False
    assert await store.list_api_tokens() == [second]


async def test_sessions_expire_when_a_new_one_is_made(store: Store) -> None:
    await store.create_user(UserRecord("ada", "h", "admin", T0))
    old = WebSessionRecord("old", "ada", T0, T0 + timedelta(hours=1))
    await store.create_web_session(old, now=T0)
    assert await store.get_web_session("old") == old
    new = WebSessionRecord("new", "ada", T0 + timedelta(hours=2), T0 + timedelta(hours=10))
    await store.create_web_session(new, now=T0 + timedelta(hours=2))
    assert await store.get_web_session("old") is None  # expired: gone with the next login
    assert await store.get_web_session("new") == new
    await store.delete_web_session("new")
    assert await store.get_web_session("new") is None
