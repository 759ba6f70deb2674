"""Wake-ups across processes (Store.notify / Store.listen): LISTEN/NOTIFY on PostgreSQL,
nothing on SQLite. Several store instances on one schema stand for several processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest

from aflow.states import DagRunState, RunType, TaskState
from aflow.store.base import Store
from aflow.store.postgres import PostgresStore
from aflow.store.records import DagRunRecord, TaskInstanceRecord, TriggerRecord
from aflow.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 1, 1, tzinfo=UTC)
WAIT_S = 10.0


def a_run(run_id: str, owner: str | None = None) -> DagRunRecord:
    return DagRunRecord(
        dag_id="d", run_id=run_id, run_type=RunType.MANUAL, state=DagRunState.QUEUED,
        logical_date=T0, data_interval_start=T0, data_interval_end=T0, created_at=T0,
        owner=owner, lease_until=T0 + timedelta(hours=1) if owner else None,
    )


class Inbox:
    """Notifications received on one channel, with a way to wait for the next one."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self._event = anyio.Event()

    def __call__(self, payload: str) -> None:
        self.payloads.append(payload)
        self._event.set()

    async def next(self) -> str:
        with anyio.fail_after(WAIT_S):
            await self._event.wait()
        self._event = anyio.Event()
        return self.payloads[-1]

    def clear(self) -> None:
        self.payloads.clear()
        self._event = anyio.Event()


@pytest.fixture
async def pg_url(postgres_dsn: str) -> AsyncIterator[Callable[[], str]]:
    """Makes URLs of new schemas of this test (dropped at its end)."""
    schemas: list[str] = []
    sep = "&" if "?" in postgres_dsn else "?"

    def make() -> str:
        schemas.append(f"aflow_test_{uuid.uuid4().hex[:12]}")
        return f"{postgres_dsn}{sep}schema={schemas[-1]}"

    yield make
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def wait_live(store: Store, live: bool = True) -> None:
    with anyio.fail_after(WAIT_S):
        while store.notifications_live is not live:  # noqa: ASYNC110 - a property, no event
            await anyio.sleep(0.01)


async def test_sqlite_has_no_notifications_and_listen_is_harmless(tmp_path: Path) -> None:
    async with SqliteStore(f"sqlite:///{tmp_path / 'a.db'}") as store:
        inbox = Inbox()
        unsubscribe = await store.listen(Store.RUNS_CHANNEL, inbox)
        await store.notify(Store.RUNS_CHANNEL, "x")
        await store.create_run(a_run("r1"), [])
        assert store.notifications_live is False
        assert inbox.payloads == []
        unsubscribe()


@pytest.mark.postgres
async def test_a_new_unowned_run_wakes_listeners_in_other_stores_after_commit(
    pg_url: Callable[[], str],
) -> None:
    url = pg_url()
    async with PostgresStore(url) as listener, PostgresStore(url) as writer:
        assert listener.notifications_live is False  # no connection before a listen
        inbox = Inbox()
        await listener.listen(Store.RUNS_CHANNEL, inbox)
        await wait_live(listener)
        assert await inbox.next() == ""  # the look-once call when LISTEN takes effect
        inbox.clear()

        await writer.create_run(a_run("owned", owner="someone"), [])  # driven by its creator
        await writer.create_run(a_run("free"), [])
        await inbox.next()
        # delivered at COMMIT: the run is there for the woken process to claim
        assert await listener.get_run("d", "free") is not None
        claimed = await listener.claim_runs("me", T0, T0 + timedelta(hours=1), 10)
        assert [r.run_id for r in claimed] == ["free"]
        assert inbox.payloads == [""]  # the owned run woke no one


@pytest.mark.postgres
async def test_explicit_notify_reaches_every_subscriber_of_its_schema_only(
    pg_url: Callable[[], str],
) -> None:
    url, other_url = pg_url(), pg_url()
    async with (
        PostgresStore(url) as a,
        PostgresStore(url) as b,
        PostgresStore(other_url) as other,
    ):
        got_a, got_b, got_other = Inbox(), Inbox(), Inbox()
        await a.listen("custom", got_a)
        unsubscribe_b = await b.listen("custom", got_b)
        await other.listen("custom", got_other)
        for store in (a, b, other):
            await wait_live(store)
        for inbox in (got_a, got_b, got_other):
            await inbox.next()
            inbox.clear()

        await other.notify("custom", "first")  # another schema: a and b never hear it
        assert await got_other.next() == "first"
        await a.notify("custom", "second")
        assert await got_a.next() == "second"
        assert await got_b.next() == "second"
        assert got_a.payloads == got_b.payloads == ["second"]
        assert got_other.payloads == ["first"]

        unsubscribe_b()
        await b.notify("custom", "third")
        assert await got_a.next() == "third"
        assert got_b.payloads == ["second"]


@pytest.mark.postgres
async def test_deferrals_fired_triggers_and_released_runs_wake_listeners(
    pg_url: Callable[[], str],
) -> None:
    url = pg_url()
    async with PostgresStore(url) as listener, PostgresStore(url) as writer:
        new, fired, runs = Inbox(), Inbox(), Inbox()
        await listener.listen(Store.TRIGGERS_NEW_CHANNEL, new)
        await listener.listen(Store.TRIGGERS_FIRED_CHANNEL, fired)
        await listener.listen(Store.RUNS_CHANNEL, runs)
        await wait_live(listener)
        await new.next()
        await fired.next()
        await runs.next()
        new.clear()
        fired.clear()
        runs.clear()

        await writer.create_run(a_run("r", owner="w"), [])
        ti = TaskInstanceRecord("d", "r", "t", state=TaskState.DEFERRED, try_number=1)
        await writer.defer_ti(ti, TriggerRecord(
            classpath="x.Y", kwargs={}, dag_id="d", run_id="r", task_id="t", try_number=1,
            created_at=T0,
        ))
        await new.next()  # a triggerer elsewhere claims it at once
        (trigger,) = await writer.list_triggers()
        assert trigger.id is not None
        await writer.fire_trigger(trigger.id, {"kind": "event"}, T0)
        await fired.next()
        assert runs.payloads == []

        await writer.release_runs("w")  # e.g. a scheduler shutting down
        await runs.next()
        runs.clear()
        await writer.create_run(a_run("r2", owner="dead"), [])
        assert await writer.expire_leases_of("dead") == 1
        await runs.next()


@pytest.mark.postgres
async def test_a_lost_listener_connection_reconnects_and_subscribers_look_again(
    pg_url: Callable[[], str], postgres_dsn: str,
) -> None:
    url = pg_url()
    async with PostgresStore(url, listen_ping_s=0.5) as listener, PostgresStore(url) as writer:
        inbox = Inbox()
        await listener.listen(Store.RUNS_CHANNEL, inbox)
        await wait_live(listener)
        await inbox.next()
        inbox.clear()
        conn = listener._listen_conn
        assert conn is not None
        pid = conn.get_server_pid()

        admin = await asyncpg.connect(postgres_dsn, timeout=10)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        # after the reconnect every subscriber is called once: it may have missed something
        assert await inbox.next() == ""
        assert listener.notifications_live
        assert listener._listen_conn is not None
        assert listener._listen_conn.get_server_pid() != pid
        inbox.clear()
        await writer.create_run(a_run("after"), [])
        await inbox.next()
