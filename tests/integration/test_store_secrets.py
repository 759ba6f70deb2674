"""Variables and Connections in the store, on SQLite and PostgreSQL: the store contract,
encryption at rest (the raw table holds no secret in clear) and the lookup order."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from aflow.exceptions import ConnectionNotFound, SecretsError, VariableNotFound
from aflow.runtime import services
from aflow.secrets import (
    Connection,
    SecretsBackend,
    Variable,
    configure_secrets,
    connection_from_record,
    connection_to_record,
    generate_key,
)
from aflow.secrets.backends import lookup_connection, lookup_variable
from aflow.store.base import Store
from aflow.store.records import ConnectionRecord, VariableRecord
from tests.integration import test_store_contract
from tests.integration.test_store_contract import StoreFactory

pytestmark = pytest.mark.anyio

store_factory = test_store_contract.store_factory  # the backends: SQLite and PostgreSQL

KEY = generate_key()
PASSWORD = "s3cr3t-Pa55word!"


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    return await store_factory()


@pytest.fixture(autouse=True)
def secrets_settings() -> Iterator[None]:
    configure_secrets(fernet_key=KEY)
    yield
    configure_secrets()


async def test_variables_are_set_replaced_listed_and_deleted(store: Store) -> None:
    await store.set_variables([VariableRecord("b", "2"), VariableRecord("a", "1", "first")])
    assert await store.list_variables() == [VariableRecord("a", "1", "first"),
                                            VariableRecord("b", "2")]
    await store.set_variables([VariableRecord("a", "one")])
    assert await store.get_variable("a") == VariableRecord("a", "one")
    assert await store.get_variable("zzz") is None
    assert await store.delete_variable("a") is True
    assert await store.delete_variable("a") is False
    assert [v.key for v in await store.list_variables()] == ["b"]


async def test_connections_are_set_replaced_listed_and_deleted(store: Store) -> None:
    row = ConnectionRecord("db", "postgresql", "h", 5432, "u", "tok", "s", "tok2", "d")
    await store.set_connection(row)
    await store.set_connection(ConnectionRecord("api", "http", "example.org"))
    assert await store.get_connection("db") == row
    assert [c.conn_id for c in await store.list_connections()] == ["api", "db"]
    replaced = ConnectionRecord("db", "sqlite", schema="/x.db")
    await store.set_connection(replaced)
    assert await store.get_connection("db") == replaced
    assert await store.delete_connection("db") is True
    assert await store.delete_connection("db") is False
    assert await store.get_connection("db") is None


async def _raw_connection_rows(store: Store) -> list[tuple[object, ...]]:
    path = getattr(store, "abspath", None)
    if path:
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT * FROM connection").fetchall()
        finally:
            db.close()
    import asyncpg

    conn = await asyncpg.connect(store.client_dsn, timeout=10)  # type: ignore[attr-defined]
    try:
        return [tuple(r) for r in await conn.fetch("SELECT * FROM connection")]
    finally:
        await conn.close()


async def test_secrets_are_encrypted_at_rest_and_read_back_with_the_key(store: Store) -> None:
    conn = Connection("db", "postgresql", host="db.example", port=5432, login="etl",
                      password=PASSWORD, schema="warehouse",
                      extra={"sslmode": "require", "api_token": "tok-XYZ-123"})
    await store.set_connection(connection_to_record(conn, KEY))
    raw = repr(await _raw_connection_rows(store))
    assert PASSWORD not in raw and "tok-XYZ-123" not in raw and "sslmode" not in raw
    assert "db.example" in raw  # the rest is plain, for listings
    record = await store.get_connection("db")
    assert record is not None
    assert connection_from_record(record, KEY) == conn
    # Key rotation: a new key first, the old one still decrypts.
    assert connection_from_record(record, f"{generate_key()},{KEY}") == conn
    with pytest.raises(SecretsError, match="another core.fernet_key"):
        connection_from_record(record, generate_key())
    with pytest.raises(SecretsError, match="no encryption key is set.*generate-key"):
        connection_from_record(record, None)
    listed = connection_from_record(record, None, decrypt=False)  # listings need no key
    assert listed.password == "***" and listed.extra == {}


async def test_a_secret_is_never_written_without_a_key(store: Store) -> None:
    with pytest.raises(SecretsError, match="cannot encrypt the secrets of connection 'db'"):
        connection_to_record(Connection("db", "http", password="pw-123"), None)
    assert await store.list_connections() == []
    # Nothing secret: no key needed.
    await store.set_connection(connection_to_record(Connection("web", "http", host="h"), None))
    assert [c.conn_id for c in await store.list_connections()] == ["web"]


class _Vault(SecretsBackend):
    async def get_connection(self, conn_id: str) -> Connection | None:
        return Connection(conn_id, "http", host="vault.example") if conn_id != "none" else None

    async def get_variable(self, key: str) -> str | None:
        return "from-vault" if key.startswith("v_") else None


async def test_lookup_order_is_environment_then_user_backends_then_store(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.set_connection(connection_to_record(
        Connection("db", "postgresql", host="stored", password="pw-1"), KEY))
    await store.set_variables([VariableRecord("v_x", "stored"), VariableRecord("plain", "p")])
    assert (await lookup_connection("db", store=store)).host == "stored"
    assert await lookup_variable("plain", store=store) == "p"

    configure_secrets(fernet_key=KEY, backends=[_Vault()])
    assert (await lookup_connection("db", store=store)).host == "vault.example"
    assert await lookup_variable("v_x", store=store) == "from-vault"
    assert await lookup_variable("plain", store=store) == "p"  # the vault has no answer

    monkeypatch.setenv("AFLOW_CONN_DB", "http://env-host:81")
    monkeypatch.setenv("AFLOW_VAR_V_X", "from-env")
    assert (await lookup_connection("db", store=store)).host == "env-host"
    assert await lookup_variable("v_x", store=store) == "from-env"

    configure_secrets(fernet_key=KEY)
    with pytest.raises(ConnectionNotFound, match="unknown connection 'none'.*AFLOW_CONN_NONE"):
        await lookup_connection("none", store=store)


async def test_variable_api_reads_and_writes_the_try_store(store: Store) -> None:
    token = services.set_store(store)
    try:
        await Variable.aset("cfg", {"a": [1, 2]}, serialize_json=True)
        await Variable.aset("name", "ada", description="who")
        assert await Variable.aget("cfg", deserialize_json=True) == {"a": [1, 2]}
        assert await Variable.aget("cfg") == '{"a": [1, 2]}'
        assert await Variable.aget("name") == "ada"
        assert await Variable.aget("missing", default=None) is None
        with pytest.raises(VariableNotFound, match="unknown variable 'missing'"):
            await Variable.aget("missing")
        with pytest.raises(SecretsError, match="must be a string"):
            await Variable.aset("n", 5)
        assert await Variable.adelete("name") is True
        assert await Variable.aget("name", "gone") == "gone"
    finally:
        services.reset_store(token)
    assert await store.get_variable("cfg") == VariableRecord("cfg", '{"a": [1, 2]}')


async def test_the_store_is_opened_from_its_url_outside_a_try(store: Store) -> None:
    url = f"sqlite:///{store.abspath}" if hasattr(store, "abspath") else store.url
    configure_secrets(fernet_key=KEY, store_url=url)
    await Variable.aset("k", "v")
    assert await Variable.aget("k") == "v"
    assert await store.get_variable("k") == VariableRecord("k", "v")
