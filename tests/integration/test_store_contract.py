"""The Store contract: one suite that every backend passes unchanged.

The backend is chosen in one place, the `store_factory` fixture (parametrized by backend
name). It opens any number of stores on the SAME database, so concurrency between
processes is tested with several store instances. `store` is the first of them.
A new backend adds its name to `BACKENDS`, a `StoreFactory` builder like `sqlite_factory`
(its URLs, a way to hold its write lock as another process would) and a branch in
`store_factory`; the tests themselves stay unchanged.

Backends: `sqlite` (a file per test) and `postgresql` (a schema per test, dropped at its
end, on the server of the `postgres_dsn` fixture: skipped without one, failed under CI).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.lowlevel
import pytest

from aflow.exceptions import RunAlreadyExists, StoreError, StoreUnavailable
from aflow.states import DagRunState, RunType, TaskState
from aflow.store.base import Store
from aflow.store.group_commit import GroupCommitter
from aflow.store.records import (
    DagRecord,
    DagRunRecord,
    ImportErrorRecord,
    ProcessRecord,
    TaskInstanceRecord,
    TriggerRecord,
    XComRecord,
)

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

T0 = datetime(2024, 1, 1, tzinfo=UTC)


# -- the backend seam ------------------------------------------------------------------------


@dataclass
class StoreFactory:
    """Opens stores of one backend on one shared database for the length of a test."""

    backend: str
    url: str  # the database every store of this test shares
    make: Callable[[str], Store]  # an unopened store for a URL
    migration_count: int  # how many migration files the backend ships
    latest_migration: int  # the highest version among them
    empty_url: Callable[[], str]  # the URL of another, new and empty database
    missing_url: tuple[str, str]  # (URL whose location does not exist, text its error names)
    bad_urls: list[tuple[str, str]]  # (malformed or unusable URL, text its error names)
    impatient: Callable[[], Store]  # an unopened store that gives up waiting on a lock quickly
    hold_write_lock: Callable[[], AbstractAsyncContextManager[None]]  # as another process would
    applied_migrations: Callable[[str], Awaitable[list[tuple[int, str]]]]  # read directly
    stack: AsyncExitStack

    def unopened(self, url: str | None = None) -> Store:
        return self.make(url or self.url)

    async def __call__(self) -> Store:
        """A store opened on the shared database, closed at the end of the test."""
        return await self.stack.enter_async_context(self.unopened())


def sqlite_factory(tmp_path: Path, stack: AsyncExitStack) -> StoreFactory:
    from aflow.store.sqlite import SqliteStore

    migrations = REPO / "aflow/store/sqlite/migrations"
    db_path = tmp_path / "aflow.db"
    missing = tmp_path / "no_such_dir" / "aflow.db"
    not_a_db = tmp_path / "not_a_db.db"
    not_a_db.write_bytes(b"this is not a database\n" * 100)
    numbers = itertools.count()

    @asynccontextmanager
    async def write_lock() -> AsyncIterator[None]:
        conn = sqlite3.connect(db_path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        finally:
            conn.close()

    async def applied(url: str) -> list[tuple[int, str]]:
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")
            return [(int(v), str(n)) for v, n in rows]
        finally:
            conn.close()

    return StoreFactory(
        backend="sqlite",
        url=f"sqlite:///{db_path}",
        make=SqliteStore,
        migration_count=len(list(migrations.glob("*.sql"))),
        latest_migration=_latest_migration(migrations),
        empty_url=lambda: f"sqlite:///{tmp_path / f'empty{next(numbers)}.db'}",
        missing_url=(f"sqlite:///{missing}", str(missing)),
        bad_urls=[
            ("sqlite://somehost/aflow.db", "sqlite://somehost/aflow.db"),
            (f"sqlite:///{not_a_db}", str(not_a_db)),
        ],
        impatient=lambda: SqliteStore(f"sqlite:///{db_path}", busy_timeout_s=0.05),
        hold_write_lock=write_lock,
        applied_migrations=applied,
        stack=stack,
    )


def _latest_migration(folder: Path) -> int:
    return max(int(p.name.partition("_")[0]) for p in folder.glob("*.sql"))


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def postgres_factory(dsn: str, stack: AsyncExitStack) -> StoreFactory:
    """Stores in a schema of their own (`?schema=`), dropped with every other schema the
    test made when it ends; "another, empty database" is another new schema."""
    import asyncpg

    from aflow.store.postgres import PostgresStore

    migrations = REPO / "aflow/store/postgres/migrations"
    base = f"aflow_test_{uuid.uuid4().hex[:12]}"
    schemas = [base]
    numbers = itertools.count()
    sep = "&" if "?" in dsn else "?"

    def url_of(schema: str) -> str:
        return f"{dsn}{sep}schema={schema}"

    def empty_url() -> str:
        schemas.append(f"{base}_e{next(numbers)}")
        return url_of(schemas[-1])

    async def drop_schemas() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            for schema in schemas:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    stack.push_async_callback(drop_schemas)  # runs last: after every store has closed

    @asynccontextmanager
    async def write_lock() -> AsyncIterator[None]:
        """Another session's transaction holding the lock TI writes need."""
        conn = await asyncpg.connect(dsn, timeout=10, server_settings={"search_path": base})
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE task_instance IN EXCLUSIVE MODE")
                yield
        finally:
            await conn.close()

    async def applied(url: str) -> list[tuple[int, str]]:
        schema = url.rpartition("schema=")[2]
        conn = await asyncpg.connect(dsn, timeout=10, server_settings={"search_path": schema})
        try:
            rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
            return [(int(r[0]), str(r[1])) for r in rows]
        finally:
            await conn.close()

    missing_db = f"aflow_no_such_db_{uuid.uuid4().hex[:8]}"
    host_port = f"{urlsplit(dsn).hostname}:{urlsplit(dsn).port or 5432}"
    no_role = f"aflow_no_such_role_{uuid.uuid4().hex[:8]}"
    return StoreFactory(
        backend="postgresql",
        url=url_of(base),
        make=PostgresStore,
        migration_count=len(list(migrations.glob("*.sql"))),
        latest_migration=_latest_migration(migrations),
        empty_url=empty_url,
        missing_url=(_with_database(url_of(base), missing_db), missing_db),
        bad_urls=[
            ("postgresql://postgres@127.0.0.1:notaport/test", "notaport"),
            ("postgresql://postgres:s3cret@127.0.0.1:1/test", "127.0.0.1:1"),
            (url_of(base).replace(urlsplit(dsn).netloc, f"{no_role}@{host_port}"), no_role),
            (f"{url_of(base)}&no_such_option=1", "no_such_option"),
        ],
        impatient=lambda: PostgresStore(url_of(base), lock_timeout_s=0.05),
        hold_write_lock=write_lock,
        applied_migrations=applied,
        stack=stack,
    )


@pytest.fixture(params=BACKENDS)
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """The one place that picks the backend; every test reaches its stores through it."""
    backend: str = request.param
    async with AsyncExitStack() as stack:
        if backend == "sqlite":
            factory = sqlite_factory(tmp_path, stack)
        elif backend == "postgresql":
            factory = postgres_factory(request.getfixturevalue("postgres_dsn"), stack)
        else:  # pragma: no cover - a new backend adds its branch here
            raise AssertionError(f"unknown backend {backend!r}")
        yield factory


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    return await store_factory()


def committer_of(store: Store) -> GroupCommitter:
    """The backend's group committer (every backend group-commits through one)."""
    committer = getattr(store, "_committer", None)
    assert isinstance(committer, GroupCommitter), "backends group-commit with GroupCommitter"
    return committer


# -- record builders -----------------------------------------------------------------------------


def a_run(
    run_id: str = "r1",
    dag_id: str = "d1",
    *,
    logical_date: datetime = T0,
    state: DagRunState = DagRunState.QUEUED,
    run_type: RunType = RunType.MANUAL,
    created_at: datetime | None = None,
    **kw: Any,
) -> DagRunRecord:
    return DagRunRecord(
        dag_id=dag_id,
        run_id=run_id,
        run_type=run_type,
        state=state,
        logical_date=logical_date,
        data_interval_start=logical_date,
        data_interval_end=logical_date + timedelta(days=1),
        created_at=created_at or logical_date,
        **kw,
    )


def a_ti(run: DagRunRecord, task_id: str = "t1", **kw: Any) -> TaskInstanceRecord:
    return TaskInstanceRecord(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, **kw)


def an_xcom(ti: TaskInstanceRecord, key: str = "return_value", value: Any = 1) -> XComRecord:
    return XComRecord(ti.dag_id, ti.run_id, ti.task_id, key, value, ti.map_index)


def a_process(process_id: str, kind: str = "scheduler", started_at: datetime = T0) -> ProcessRecord:
    return ProcessRecord(process_id, kind, "host-1", 4242, started_at, started_at)


# -- migrations and opening ------------------------------------------------------------------------


async def test_empty_database_is_migrated_to_the_latest_version(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    assert store_factory.migration_count >= 1
    assert await store.schema_version() == store_factory.latest_migration
    # The migrated schema is usable end to end.
    await store.create_run(a_run(), [a_ti(a_run())])
    assert len(await store.get_tis("d1", "r1")) == 1


async def test_opening_twice_is_idempotent_and_keeps_data(store_factory: StoreFactory) -> None:
    async with store_factory.unopened() as first:
        await first.create_run(a_run(), [a_ti(a_run())])
        version = await first.schema_version()
    async with store_factory.unopened() as second:
        assert await second.schema_version() == version == store_factory.latest_migration
        assert await second.get_run("d1", "r1") == a_run()
    # Both open at once is fine as well.
    a, b = await store_factory(), await store_factory()
    assert await a.schema_version() == await b.schema_version() == version


async def test_stores_migrating_one_empty_database_concurrently(
    store_factory: StoreFactory,
) -> None:
    # Several rounds on new databases: the race is in the first moments of a new file.
    for _round in range(8):
        url = store_factory.empty_url()
        versions: list[int] = []

        async def open_one(url: str = url, versions: list[int] = versions) -> None:
            async with store_factory.unopened(url) as s:
                versions.append(await s.schema_version())
                await s.upsert_dags([DagRecord(f"dag{len(versions)}", None, {})])

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(open_one)
        assert versions == [store_factory.latest_migration] * 6
        async with store_factory.unopened(url) as store:
            assert await store.schema_version() == store_factory.latest_migration
            assert len(await store.list_dags()) == 6


async def test_missing_location_raises_store_unavailable_naming_it(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    url, named = store_factory.missing_url
    with pytest.raises(StoreUnavailable) as info:
        async with store_factory.unopened(url):
            pass
    assert named in str(info.value)
    assert not (tmp_path / "no_such_dir").exists()  # nothing was created


def _driver_threads() -> int:
    """Threads other than anyio's idle worker pool (which outlives any one call)."""
    return sum(1 for t in threading.enumerate() if t.name != "AnyIO worker thread")


async def test_bad_urls_raise_store_unavailable_naming_them(store_factory: StoreFactory) -> None:
    threads = _driver_threads()
    for url, named in store_factory.bad_urls:
        with pytest.raises(StoreUnavailable) as info:
            async with store_factory.unopened(url):
                pass
        assert named in str(info.value)
    # A failed open leaves no connection (nor a driver thread) behind.
    gc.collect()
    assert _driver_threads() == threads
    # And the good database is unaffected.
    async with store_factory.unopened() as store:
        assert await store.schema_version() == store_factory.latest_migration


async def test_an_empty_database_gets_every_migration_once(store_factory: StoreFactory) -> None:
    url = store_factory.empty_url()
    async with store_factory.unopened(url) as store:
        assert await store.schema_version() == store_factory.latest_migration
    applied = await store_factory.applied_migrations(url)
    assert [v for v, _ in applied] == sorted({v for v, _ in applied})
    assert len(applied) == store_factory.migration_count
    assert applied[-1][0] == store_factory.latest_migration


async def test_reopening_a_migrated_database_changes_nothing(
    store_factory: StoreFactory,
) -> None:
    url = store_factory.empty_url()
    async with store_factory.unopened(url) as store:
        await store.create_run(a_run(), [a_ti(a_run())])
        await store.upsert_dags([DagRecord("d1", "/dags/d1.py", {"tasks": ["t1"]})])
    applied = await store_factory.applied_migrations(url)

    for _ in range(3):  # one after another
        async with store_factory.unopened(url) as again:
            assert await again.schema_version() == store_factory.latest_migration
    async with anyio.create_task_group() as tg:  # and several at once
        for _ in range(4):
            tg.start_soon(_open_and_close, store_factory.unopened(url))

    assert await store_factory.applied_migrations(url) == applied
    async with store_factory.unopened(url) as store:
        assert await store.get_run("d1", "r1") == a_run()
        assert await store.get_tis("d1", "r1") == [a_ti(a_run())]
        assert [d.dag_id for d in await store.list_dags()] == ["d1"]


async def _open_and_close(store: Store) -> None:
    async with store:
        pass


# -- DAGs and import errors -----------------------------------------------------------------------


async def test_dag_upsert_get_list_and_pause(store: Store) -> None:
    assert await store.list_dags() == []
    assert await store.get_dag("nope") is None
    b = DagRecord("b", "/dags/b.py", {"tasks": ["x"]}, is_paused=True, updated_at=T0)
    a = DagRecord("a", "/dags/a.py", {"tasks": []}, updated_at=T0)
    await store.upsert_dags([b, a])
    assert await store.list_dags() == [a, b]  # ordered by dag_id
    assert await store.get_dag("b") == b  # a new DAG takes the record's paused flag

    await store.set_dag_paused("b", False)
    await store.set_dag_paused("a", True)
    assert (await store.get_dag("b")).is_paused is False  # type: ignore[union-attr]

    # Re-recording the structure keeps the paused flag (the record says otherwise).
    b2 = DagRecord(
        "b", "/dags/b2.py", {"tasks": ["x", "y"]}, is_paused=True, updated_at=T0 + timedelta(1)
    )
    a2 = DagRecord("a", "/dags/a.py", {"tasks": ["z"]}, is_paused=False)
    await store.upsert_dags([b2, a2])
    got = {d.dag_id: d for d in await store.list_dags()}
    assert got["b"] == dataclasses.replace(b2, is_paused=False)
    assert got["a"] == dataclasses.replace(a2, is_paused=True)


async def test_deactivate_dag_ids_deactivates_only_those(store: Store) -> None:
    await store.upsert_dags([DagRecord(d, f"/dags/{d}.py", {}) for d in ("a", "b", "c")])
    await store.set_dag_paused("b", True)
    await store.deactivate_dag_ids(["b"])
    active = {d.dag_id: d.is_active for d in await store.list_dags()}
    assert active == {"a": True, "b": False, "c": True}
    assert (await store.get_dag("b")).is_paused is True  # type: ignore[union-attr]

    # A DAG that comes back is active again, and keeps its paused flag.
    await store.upsert_dags([DagRecord("b", "/dags/b.py", {})])
    b = await store.get_dag("b")
    assert b is not None and b.is_active and b.is_paused

    await store.deactivate_dag_ids(iter([]))  # any iterable; empty changes nothing
    assert [d.is_active for d in await store.list_dags()] == [True, True, True]
    await store.deactivate_dag_ids(iter(["a", "c", "nope"]))
    assert [d.is_active for d in await store.list_dags()] == [False, True, False]


async def test_import_errors_are_replaced_as_a_whole(store: Store) -> None:
    assert await store.list_import_errors() == []
    e_b = ImportErrorRecord("/dags/b.py", "SyntaxError: invalid syntax", T0)
    e_a = ImportErrorRecord(
        "/dags/a.py", "CycleError: a >> b >> a\nline 2 ✗", T0 + timedelta(seconds=1)
    )
    await store.replace_import_errors([e_b, e_a])
    assert await store.list_import_errors() == [e_a, e_b]  # ordered by filename

    e_c = ImportErrorRecord("/dags/c.py", "Timeout", T0)
    await store.replace_import_errors([e_c])
    assert await store.list_import_errors() == [e_c]

    await store.replace_import_errors([])
    assert await store.list_import_errors() == []


async def test_import_errors_can_be_replaced_under_one_folder(store: Store) -> None:
    """Schedulers loading different DAG folders into one store keep each other's errors."""
    mine = ImportErrorRecord("/srv/dags/x.py", "E1", T0)
    sub = ImportErrorRecord("/srv/dags/team/y.py", "E2", T0)
    sibling = ImportErrorRecord("/srv/dags_other/z.py", "E3", T0)  # a prefix, not a parent
    await store.replace_import_errors([mine, sub, sibling])
    fixed = ImportErrorRecord("/srv/dags/x.py", "E4", T0)
    await store.replace_import_errors([fixed], under="/srv/dags")
    assert set(await store.list_import_errors()) == {fixed, sibling}
    await store.replace_import_errors([], under="/srv/dags_other/z.py")  # one file
    assert await store.list_import_errors() == [fixed]


# -- runs --------------------------------------------------------------------------------------


async def test_create_run_with_tis_and_read_back(store: Store) -> None:
    run = a_run(conf={"x": 1}, triggered_by="api", note="hello")
    tis = [a_ti(run, "b"), a_ti(run, "a"), a_ti(run, "m", map_index=1), a_ti(run, "m", map_index=0)]
    await store.create_run(run, tis)
    assert await store.get_run("d1", "r1") == run
    assert await store.get_run("d1", "nope") is None
    assert await store.get_run("nope", "r1") is None
    got = await store.get_tis("d1", "r1")
    assert [(t.task_id, t.map_index) for t in got] == [("a", -1), ("b", -1), ("m", 0), ("m", 1)]
    assert set(got) == set(tis)
    assert await store.get_tis("d1", "nope") == []


async def test_create_run_duplicate_raises_and_leaves_the_first_untouched(store: Store) -> None:
    first = a_run(conf={"n": 1})
    await store.create_run(first, [a_ti(first, "a")])
    second = a_run(state=DagRunState.RUNNING, conf={"n": 2}, logical_date=T0 + timedelta(days=3))
    with pytest.raises(RunAlreadyExists):
        await store.create_run(
            second, [a_ti(second, "a", state=TaskState.RUNNING), a_ti(second, "z")]
        )
    assert await store.get_run("d1", "r1") == first
    assert await store.get_tis("d1", "r1") == [a_ti(first, "a")]
    # The same run_id in another DAG is a different run.
    await store.create_run(a_run(dag_id="d2"), [])
    assert await store.get_run("d2", "r1") is not None


async def test_create_run_is_atomic(store: Store) -> None:
    run = a_run()
    stray = a_ti(a_run("other-run"), "x")  # belongs to a run that does not exist
    with pytest.raises(StoreError):
        await store.create_run(run, [a_ti(run, "a"), stray])
    assert await store.get_run("d1", "r1") is None
    assert await store.get_tis("d1", "r1") == []
    await store.create_run(run, [a_ti(run, "a")])  # the failure left nothing behind
    assert len(await store.get_tis("d1", "r1")) == 1


async def test_list_runs_filters_orders_and_pages(store: Store) -> None:
    runs = [
        a_run(f"r{i}", "d1", logical_date=T0 + timedelta(days=i), state=state)
        for i, state in enumerate(
            [
                DagRunState.SUCCESS,
                DagRunState.FAILED,
                DagRunState.RUNNING,
                DagRunState.QUEUED,
                DagRunState.SUCCESS,
            ]
        )
    ]
    other = a_run("o1", "d2", logical_date=T0 + timedelta(days=10))
    for r in [runs[2], other, runs[0], runs[4], runs[1], runs[3]]:
        await store.create_run(r, [])

    newest_first = list(reversed(runs))
    assert await store.list_runs() == [other, *newest_first]
    assert await store.list_runs(dag_id="d1") == newest_first
    assert await store.list_runs(dag_id="nope") == []
    assert await store.list_runs(dag_id="d1", states=[DagRunState.SUCCESS]) == [runs[4], runs[0]]
    assert await store.list_runs(states={DagRunState.QUEUED, DagRunState.RUNNING}) == [
        other,
        runs[3],
        runs[2],
    ]
    assert await store.list_runs(states=[]) == []
    assert await store.list_runs(dag_id="d1", limit=2) == newest_first[:2]
    assert await store.list_runs(dag_id="d1", limit=2, offset=2) == newest_first[2:4]
    assert await store.list_runs(dag_id="d1", limit=2, offset=4) == newest_first[4:]
    assert await store.list_runs(dag_id="d1", limit=2, offset=6) == []


async def test_latest_run_by_run_type(store: Store) -> None:
    assert await store.latest_run("d1") is None
    sched_old = a_run("s1", logical_date=T0, run_type=RunType.SCHEDULED)
    sched_new = a_run("s2", logical_date=T0 + timedelta(days=2), run_type=RunType.SCHEDULED)
    manual = a_run("m1", logical_date=T0 + timedelta(days=5), run_type=RunType.MANUAL)
    other_dag = a_run("x", "d2", logical_date=T0 + timedelta(days=9), run_type=RunType.SCHEDULED)
    for r in (sched_new, manual, sched_old, other_dag):
        await store.create_run(r, [])
    assert await store.latest_run("d1") == manual
    assert await store.latest_run("d1", RunType.SCHEDULED) == sched_new
    assert await store.latest_run("d1", "scheduled") == sched_new
    assert await store.latest_run("d1", RunType.BACKFILL) is None


async def test_save_run_updates_the_row_but_not_its_lease(store: Store) -> None:
    run = a_run()
    await store.create_run(run, [])
    [claimed] = await store.claim_runs("owner-a", T0, T0 + timedelta(seconds=30), 10)
    done = dataclasses.replace(
        run,
        state=DagRunState.SUCCESS,
        start_date=T0 + timedelta(seconds=1),
        end_date=T0 + timedelta(seconds=9),
        conf={"after": [1, 2]},
        note="done",
    )
    await store.save_run(done)  # a record read before the claim: owner None
    got = await store.get_run("d1", "r1")
    assert got is not None
    assert (got.state, got.start_date, got.end_date, got.conf, got.note) == (
        DagRunState.SUCCESS,
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=9),
        {"after": [1, 2]},
        "done",
    )
    assert (got.owner, got.lease_until) == (claimed.owner, claimed.lease_until)


# -- leases ------------------------------------------------------------------------------------------


async def _create_runs(store: Store, n: int, dag_id: str = "d1", **kw: Any) -> list[DagRunRecord]:
    runs = [
        a_run(f"{dag_id}-r{i:03d}", dag_id, logical_date=T0 + timedelta(hours=i), **kw)
        for i in range(n)
    ]
    for r in runs:
        await store.create_run(r, [])
    return runs


def _keys(runs: list[DagRunRecord]) -> set[tuple[str, str]]:
    return {(r.dag_id, r.run_id) for r in runs}


async def test_claim_runs_takes_unowned_unfinished_runs(store: Store) -> None:
    runs = await _create_runs(store, 3)
    await _create_runs(store, 2, "done", state=DagRunState.SUCCESS)
    await _create_runs(store, 1, "failed", state=DagRunState.FAILED)
    running = a_run("running", "d3", state=DagRunState.RUNNING)
    await store.create_run(running, [])

    until = T0 + timedelta(seconds=30)
    claimed = await store.claim_runs("a", T0, until, limit=100)
    assert _keys(claimed) == _keys([*runs, running])
    for c in claimed:
        assert (c.owner, c.lease_until) == ("a", until)
        stored = await store.get_run(c.dag_id, c.run_id)
        assert stored == c
    # Runs this owner already holds (lease alive) are not returned again.
    assert await store.claim_runs("a", T0 + timedelta(seconds=1), until, limit=100) == []
    # Nor taken by anyone else while the lease lives.
    assert await store.claim_runs("b", T0 + timedelta(seconds=29), until, limit=100) == []


async def test_claim_runs_limit_and_dag_filter(store: Store) -> None:
    d1 = await _create_runs(store, 5, "d1")
    d2 = await _create_runs(store, 3, "d2")
    await _create_runs(store, 3, "d3")
    until = T0 + timedelta(minutes=1)

    first = await store.claim_runs("a", T0, until, limit=2, dag_ids=["d1"])
    assert len(first) == 2 and _keys(first) <= _keys(d1)
    rest = await store.claim_runs("a", T0, until, limit=100, dag_ids={"d1", "d2"})
    assert _keys(first) | _keys(rest) == _keys(d1) | _keys(d2)
    assert not _keys(first) & _keys(rest)
    assert await store.claim_runs("a", T0, until, limit=100, dag_ids=[]) == []
    assert await store.claim_runs("a", T0, until, limit=0) == []
    d3 = await store.claim_runs("b", T0, until, limit=100, dag_ids=iter(["d3", "nope"]))
    assert {r.dag_id for r in d3} == {"d3"} and len(d3) == 3


async def test_an_expired_lease_is_taken_over_but_a_live_one_is_not_stolen(store: Store) -> None:
    [run] = await _create_runs(store, 1)
    await store.claim_runs("a", T0, T0 + timedelta(seconds=30), limit=10)

    assert (
        await store.claim_runs("b", T0 + timedelta(seconds=10), T0 + timedelta(seconds=40), 10)
        == []
    )
    assert (await store.get_run(run.dag_id, run.run_id)).owner == "a"  # type: ignore[union-attr]

    after = T0 + timedelta(seconds=31)
    [taken] = await store.claim_runs("b", after, after + timedelta(seconds=30), 10)
    assert (taken.dag_id, taken.run_id, taken.owner) == (run.dag_id, run.run_id, "b")
    assert await store.get_run(run.dag_id, run.run_id) == taken
    # The old owner no longer holds it: renewing extends nothing.
    assert await store.renew_leases("a", after + timedelta(minutes=5)) == 0
    assert (await store.get_run(run.dag_id, run.run_id)).owner == "b"  # type: ignore[union-attr]


async def test_renew_leases_counts_and_extends_only_the_owners_runs(store: Store) -> None:
    runs = await _create_runs(store, 5)
    await store.claim_runs("a", T0, T0 + timedelta(seconds=30), limit=3)
    await store.claim_runs("b", T0, T0 + timedelta(seconds=30), limit=10)
    later = T0 + timedelta(minutes=5)
    assert await store.renew_leases("a", later) == 3
    assert await store.renew_leases("b", T0 + timedelta(seconds=60)) == 2
    assert await store.renew_leases("nobody", later) == 0
    leases = {r.run_id: (r.owner, r.lease_until) for r in await store.list_runs(dag_id="d1")}
    assert sorted(leases.values(), key=str) == sorted(
        [("a", later)] * 3 + [("b", T0 + timedelta(seconds=60))] * 2, key=str
    )
    # a renewed lease is not taken over at its old expiry
    assert await store.claim_runs("c", T0 + timedelta(seconds=45), later, 10) == []
    assert len(runs) == 5


async def test_release_runs_some_or_all(store: Store) -> None:
    runs = await _create_runs(store, 4)
    until = T0 + timedelta(minutes=1)
    await store.claim_runs("a", T0, until, limit=10)
    await _create_runs(store, 1, "bdag")
    [b_run] = await store.claim_runs("b", T0, until, limit=10)

    await store.release_runs("a", [(runs[0].dag_id, runs[0].run_id)])
    await store.release_runs("a", [(b_run.dag_id, b_run.run_id)])  # not a's: unchanged
    owners = {r.run_id: (r.owner, r.lease_until) for r in await store.list_runs()}
    assert owners[runs[0].run_id] == (None, None)
    assert all(owners[r.run_id] == ("a", until) for r in runs[1:])
    assert owners[b_run.run_id] == ("b", until)

    # A released run is free for anyone at once.
    [again] = await store.claim_runs("c", T0, until, limit=10)
    assert again.run_id == runs[0].run_id

    await store.release_runs("a")
    now_owned = {r.run_id: r.owner for r in await store.list_runs()}
    assert now_owned == {
        runs[0].run_id: "c",
        **{r.run_id: None for r in runs[1:]},
        b_run.run_id: "b",
    }
    await store.release_runs("a", [])  # nothing to do
    assert await store.renew_leases("a", until) == 0


async def test_expire_leases_of_a_dead_owner_lets_others_adopt_at_once(store: Store) -> None:
    await _create_runs(store, 3)
    await _create_runs(store, 1, "bdag")
    until = T0 + timedelta(minutes=10)
    await store.claim_runs("dead", T0, until, limit=3, dag_ids=["d1"])
    await store.claim_runs("alive", T0, until, limit=10)

    assert await store.expire_leases_of("dead") == 3
    assert await store.expire_leases_of("nobody") == 0
    adopted = await store.claim_runs("heir", T0 + timedelta(seconds=1), until, limit=10)
    assert {r.dag_id for r in adopted} == {"d1"} and len(adopted) == 3
    assert all(r.owner == "heir" for r in await store.list_runs(dag_id="d1"))
    assert [r.owner for r in await store.list_runs(dag_id="bdag")] == ["alive"]


async def test_two_stores_claiming_at_once_never_share_a_run(store_factory: StoreFactory) -> None:
    a, b = await store_factory(), await store_factory()
    runs = await _create_runs(a, 60)
    got: dict[str, list[DagRunRecord]] = {"a": [], "b": []}

    async def claim(store: Store, owner: str) -> None:
        for _ in range(20):
            got[owner] += await store.claim_runs(owner, T0, T0 + timedelta(minutes=1), limit=3)

    async with anyio.create_task_group() as tg:
        tg.start_soon(claim, a, "a")
        tg.start_soon(claim, b, "b")
    assert not _keys(got["a"]) & _keys(got["b"])
    assert _keys(got["a"]) | _keys(got["b"]) == _keys(runs)
    assert len(got["a"]) + len(got["b"]) == 60


async def test_many_claimers_in_several_stores_never_share_a_run(
    store_factory: StoreFactory,
) -> None:
    stores = [await store_factory() for _ in range(4)]
    runs = await _create_runs(stores[0], 40, "d1") + await _create_runs(stores[0], 40, "d2")
    got: dict[str, list[DagRunRecord]] = {}

    async def claim(store: Store, owner: str, dag_ids: list[str] | None) -> None:
        got[owner] = []
        for limit in itertools.islice(itertools.cycle([1, 2, 5]), 12):
            got[owner] += await store.claim_runs(
                owner, T0, T0 + timedelta(minutes=1), limit=limit, dag_ids=dag_ids
            )

    async with anyio.create_task_group() as tg:
        for i, store in enumerate(stores):
            for j, dag_ids in enumerate([None, ["d1"], ["d2", "other"]]):
                tg.start_soon(claim, store, f"s{i}-c{j}", dag_ids)

    claimed = [(r.dag_id, r.run_id) for rs in got.values() for r in rs]
    assert len(claimed) == len(set(claimed)) == len(runs)  # each run exactly once
    owners = {(r.dag_id, r.run_id): r.owner for r in await stores[1].list_runs(limit=1000)}
    assert owners == {(r.dag_id, r.run_id): owner for owner, rs in got.items() for r in rs}


async def test_stores_claiming_triggers_at_once_never_share_one(
    store_factory: StoreFactory,
) -> None:
    stores = [await store_factory() for _ in range(3)]
    for i in range(45):
        await _deferred(stores[i % 3], f"t{i:02d}")
    got: dict[str, list[TriggerRecord]] = {}

    async def claim(store: Store, owner: str) -> None:
        got[owner] = []
        for _ in range(10):
            got[owner] += await store.claim_triggers(owner, T0, T0 + timedelta(minutes=1), 2)

    async with anyio.create_task_group() as tg:
        for i, store in enumerate(stores):
            for j in range(2):
                tg.start_soon(claim, store, f"s{i}-c{j}")

    ids = [t.id for ts in got.values() for t in ts]
    assert len(ids) == len(set(ids)) == 45
    owners = {t.id: t.owner for t in await stores[0].list_triggers()}
    assert owners == {t.id: owner for owner, ts in got.items() for t in ts}


async def test_save_tis_from_two_stores_at_once_all_land(store_factory: StoreFactory) -> None:
    a, b = await store_factory(), await store_factory()
    runs = [a_run(f"r{i}") for i in range(4)]
    for run in runs:
        await a.create_run(run, [])

    async def save(store: Store, prefix: str) -> None:
        for n in range(25):  # batches of several TIs, over several runs
            await store.save_tis([a_ti(run, f"{prefix}{n:02d}", try_number=n) for run in runs])

    async with anyio.create_task_group() as tg:
        for prefix, store in (("a", a), ("b", b), ("c", a), ("d", b)):
            tg.start_soon(save, store, prefix)
    for run in runs:
        tis = await b.get_tis(run.dag_id, run.run_id)
        assert sorted(t.task_id for t in tis) == [f"{p}{n:02d}" for p in "abcd" for n in range(25)]
        assert all(t.try_number == int(t.task_id[1:]) for t in tis)


# -- task instances and XCom ---------------------------------------------------------------------


async def test_save_tis_upserts_full_rows(store: Store) -> None:
    run = a_run()
    await store.create_run(run, [a_ti(run, "a"), a_ti(run, "b")])
    full = a_ti(
        run,
        "a",
        state=TaskState.DEFERRED,
        try_number=2,
        max_tries=3,
        start_date=T0 + timedelta(seconds=1),
        end_date=None,
        hostname="host-1",
        operator="PythonOperator",
        priority_weight=7,
        pool="small",
        next_retry_at=T0 + timedelta(minutes=5),
        next_method="execute_complete",
        next_kwargs={"event": {"path": "/tmp/x", "n": [1, 2.5, None]}},
        error="Traceback ...\nValueError: ünïcode",
    )
    mapped = [a_ti(run, "c", map_index=i, state=TaskState.SCHEDULED) for i in range(3)]
    await store.save_tis([full, *mapped])
    got = {t.key: t for t in await store.get_tis("d1", "r1")}
    assert got[full.key] == full
    assert got[("d1", "r1", "b", -1)] == a_ti(run, "b")
    assert [got[m.key] for m in mapped] == mapped

    # An upsert replaces every field, including clearing optional ones.
    cleared = a_ti(run, "a", state=TaskState.SUCCESS, try_number=2, max_tries=3)
    await store.save_tis([cleared])
    assert {t.key: t for t in await store.get_tis("d1", "r1")}[full.key] == cleared
    await store.save_tis([])  # nothing to do
    assert len(await store.get_tis("d1", "r1")) == 5


AWKWARD_TEXTS = [
    "", "NULL", "null", "a,b", "{x}", "{", "}", '"quoted"', "it's", "back\\slash", "\\",
    "tab\there", "line\nbreak", "  spaces  ", "ünïcode ✓ 日本", "(1,2)", "[1]", "$1", "?", "%s",
]


async def test_awkward_texts_and_extreme_datetimes_round_trip_through_batched_writes(
    store: Store,
) -> None:
    """Many rows in one call (the batched encodings of both stores) with texts that trip
    array and CSV-like literals, and datetimes at the ends of the range."""
    run = a_run()
    await store.create_run(run, [])
    far_past = datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    far_future = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    odd_offset = timezone(timedelta(hours=-3, minutes=-30))
    tis = [
        a_ti(
            run,
            f"t{i}:{text}",
            state=TaskState.FAILED,
            try_number=i,
            max_tries=i + 1,
            start_date=far_past if i % 2 else datetime(2024, 2, 29, 12, 0, tzinfo=odd_offset),
            end_date=far_future if i % 3 else None,
            hostname=text,
            operator=text,
            pool=text,
            next_retry_at=far_future if i % 2 else None,
            next_method=text or None,
            next_kwargs={"text": text, text: [text]},
            error=text,
        )
        for i, text in enumerate(AWKWARD_TEXTS)
    ]
    await store.save_tis(tis)
    assert sorted(await store.get_tis("d1", "r1"), key=lambda t: t.try_number) == tis
    done = [dataclasses.replace(t, state=TaskState.SUCCESS, error=t.error + "!") for t in tis]
    await store.finish_tis([(t, [an_xcom(t, value={"v": t.hostname})]) for t in done])
    assert sorted(await store.get_tis("d1", "r1"), key=lambda t: t.try_number) == done
    xcoms = {x.task_id: x.value for x in await store.get_xcoms("d1", "r1")}
    assert xcoms == {t.task_id: {"v": t.hostname} for t in done}


async def test_save_tis_of_a_missing_run_fails_with_store_error(store: Store) -> None:
    with pytest.raises(StoreError) as info:
        await store.save_tis([a_ti(a_run("nope"), "a")])
    assert info.value.__cause__ is not None  # the driver's error is chained
    assert await store.get_tis("d1", "nope") == []


async def test_finish_ti_writes_ti_xcoms_and_run_together(store: Store) -> None:
    run = a_run(state=DagRunState.RUNNING)
    await store.create_run(run, [a_ti(run, "a"), a_ti(run, "b")])
    ti = a_ti(run, "a", state=TaskState.SUCCESS, try_number=1, end_date=T0 + timedelta(seconds=2))
    done = dataclasses.replace(run, state=DagRunState.SUCCESS, end_date=T0 + timedelta(seconds=3))
    await store.finish_ti(
        ti, [an_xcom(ti, "return_value", {"rows": 3}), an_xcom(ti, "extra", "x")], done
    )
    assert {t.key: t for t in await store.get_tis("d1", "r1")}[ti.key] == ti
    assert await store.get_xcoms("d1", "r1") == [
        an_xcom(ti, "extra", "x"),
        an_xcom(ti, "return_value", {"rows": 3}),
    ]
    got = await store.get_run("d1", "r1")
    assert got is not None and got.state is DagRunState.SUCCESS
    assert got.end_date == T0 + timedelta(seconds=3)

    # Without XComs and a run, only the TI row changes.
    tb = a_ti(run, "b", state=TaskState.SKIPPED)
    await store.finish_ti(tb)
    assert {t.key: t for t in await store.get_tis("d1", "r1")}[tb.key] == tb
    assert len(await store.get_xcoms("d1", "r1")) == 2
    assert (await store.get_run("d1", "r1")) == got


async def test_finish_ti_replaces_older_xcoms_of_that_ti_only(store: Store) -> None:
    run = a_run()
    tis = [a_ti(run, "a"), a_ti(run, "b"), a_ti(run, "m", map_index=0), a_ti(run, "m", map_index=1)]
    await store.create_run(run, tis)
    for t in tis:
        await store.finish_ti(
            t, [an_xcom(t, "return_value", f"{t.task_id}{t.map_index}"), an_xcom(t, "old")]
        )

    retry = dataclasses.replace(tis[0], state=TaskState.SUCCESS, try_number=2)
    await store.finish_ti(retry, [an_xcom(retry, "return_value", "new")])
    m0 = dataclasses.replace(tis[2], try_number=2)
    await store.finish_ti(m0, [an_xcom(m0, "return_value", "m0-new")])

    assert await store.get_xcoms("d1", "r1", "a") == [an_xcom(retry, "return_value", "new")]
    assert await store.get_xcoms("d1", "r1", "b") == [
        an_xcom(tis[1], "old"),
        an_xcom(tis[1], "return_value", "b-1"),
    ]
    assert await store.get_xcoms("d1", "r1", "m") == [
        an_xcom(m0, "return_value", "m0-new"),
        an_xcom(tis[3], "old"),
        an_xcom(tis[3], "return_value", "m1"),
    ]
    assert len(await store.get_xcoms("d1", "r1")) == 6
    assert await store.get_xcoms("d1", "r1", "nope") == []
    assert await store.get_xcoms("d1", "nope") == []


async def test_finish_ti_is_atomic(store: Store) -> None:
    run = a_run(state=DagRunState.RUNNING)
    await store.create_run(run, [a_ti(run, "a")])
    ti = a_ti(run, "a", state=TaskState.SUCCESS)
    await store.finish_ti(ti, [an_xcom(ti, "return_value", "kept")])

    retry = dataclasses.replace(ti, try_number=5, state=TaskState.FAILED)
    stray = XComRecord("d1", "no-such-run", "a", "return_value", 1)
    with pytest.raises(StoreError):
        await store.finish_ti(
            retry,
            [an_xcom(retry, "return_value", "lost"), stray],
            dataclasses.replace(run, state=DagRunState.FAILED),
        )
    assert await store.get_tis("d1", "r1") == [ti]
    assert await store.get_xcoms("d1", "r1") == [an_xcom(ti, "return_value", "kept")]
    assert (await store.get_run("d1", "r1")).state is DagRunState.RUNNING  # type: ignore[union-attr]


# -- value round trips ---------------------------------------------------------------------------

JSON_VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**53),
    2**63 - 1,
    0.1,
    1e-300,
    -2.5e300,
    3.141592653589793,
    "",
    'héllo wörld ✓ 日本語 🚀 "quoted" \\ back\nnew line\t\u0001',
    [],
    {},
    [1, "two", 3.0, None, [False, {"deep": [[[]]]}]],
    {"nested": {"list": [1, {"k": "v"}], "none": None, "f": 1.5, "ü": "ß"}, "a": [], "z": {}},
]


async def test_json_values_round_trip(store: Store) -> None:
    conf = {"values": JSON_VALUES, "ключ": "значение"}
    run = a_run(conf=conf)
    ti = a_ti(run, "a", next_kwargs={"event": JSON_VALUES[-1], "list": JSON_VALUES})
    await store.create_run(run, [ti])
    await store.finish_ti(ti, [an_xcom(ti, f"k{i:02d}", v) for i, v in enumerate(JSON_VALUES)])
    xcoms = await store.get_xcoms("d1", "r1", "a")
    assert [x.value for x in xcoms] == JSON_VALUES
    for x, v in zip(xcoms, JSON_VALUES, strict=True):
        assert type(x.value) is type(v)
    assert (await store.get_run("d1", "r1")).conf == conf  # type: ignore[union-attr]
    assert (await store.get_tis("d1", "r1"))[0].next_kwargs == ti.next_kwargs

    structure = {"tasks": [{"id": "é", "weight": 0.25, "up": [], "doc": None}]}
    await store.upsert_dags([DagRecord("d1", None, structure)])
    assert (await store.get_dag("d1")).structure == structure  # type: ignore[union-attr]


async def test_aware_datetimes_round_trip_exactly(store: Store) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    pst = timezone(timedelta(hours=-8))
    logical = datetime(2024, 3, 10, 7, 30, 15, 123456, tzinfo=ist)
    run = a_run(
        logical_date=logical,
        created_at=datetime(2024, 3, 10, 2, 0, 0, 1, tzinfo=UTC),
        start_date=datetime(2024, 3, 9, 18, 0, 0, 999999, tzinfo=pst),
    )
    ti = a_ti(
        run,
        "a",
        start_date=datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=pst),  # next day in UTC
        end_date=datetime(2024, 1, 1, 8, 0, 0, 5, tzinfo=UTC),
    )
    await store.create_run(run, [ti])
    got = await store.get_run("d1", "r1")
    assert got == run
    assert got is not None
    for field in ("logical_date", "created_at", "start_date", "data_interval_end"):
        back, sent = getattr(got, field), getattr(run, field)
        assert back.utcoffset() is not None, field
        assert back == sent, field
        assert back.astimezone(UTC).microsecond == sent.astimezone(UTC).microsecond, field
    [ti_back] = await store.get_tis("d1", "r1")
    assert ti_back.start_date == ti.start_date and ti_back.end_date == ti.end_date
    assert ti_back.start_date.utcoffset() is not None  # type: ignore[union-attr]
    assert ti_back.duration_s == ti.duration_s

    # Ordering is by instant, not by the text of the local time.
    earlier_local_later_instant = a_run(
        "r2",
        logical_date=datetime(2024, 3, 10, 5, 0, 0, tzinfo=pst),  # 13:00 UTC
    )
    await store.create_run(earlier_local_later_instant, [])
    assert [r.run_id for r in await store.list_runs()] == ["r2", "r1"]
    assert (await store.latest_run("d1")).run_id == "r2"  # type: ignore[union-attr]


async def test_naive_datetimes_are_refused_and_change_nothing(store: Store) -> None:
    naive = a_run(logical_date=datetime(2024, 1, 1))
    with pytest.raises((ValueError, StoreError)):
        await store.create_run(naive, [])
    assert await store.get_run("d1", "r1") is None


# -- processes -----------------------------------------------------------------------------------


async def test_processes_register_heartbeat_list_unregister(store: Store) -> None:
    assert await store.list_processes() == []
    s1 = a_process("sched-1", "scheduler", T0)
    t1 = a_process("trig-1", "triggerer", T0 + timedelta(seconds=1))
    s2 = a_process("sched-2", "scheduler", T0 + timedelta(seconds=2))
    for p in (s2, t1, s1):
        await store.register_process(p)
    assert await store.list_processes() == [s1, t1, s2]  # oldest first
    assert await store.list_processes("scheduler") == [s1, s2]
    assert await store.list_processes("webserver") == []

    beat = datetime(2024, 1, 1, 3, 0, 0, 654321, tzinfo=timezone(timedelta(hours=2)))
    await store.heartbeat("sched-1", beat)
    await store.heartbeat("unknown", beat)  # a process that is gone: nothing to do
    [got] = [p for p in await store.list_processes() if p.process_id == "sched-1"]
    assert got == dataclasses.replace(s1, heartbeat_at=beat)

    # Registering again (a restart with the same id) replaces the row.
    s1b = ProcessRecord(
        "sched-1", "scheduler", "host-2", 99, T0 + timedelta(hours=1), T0 + timedelta(hours=1)
    )
    await store.register_process(s1b)
    assert await store.list_processes("scheduler") == [s2, s1b]

    await store.unregister_process("sched-2")
    await store.unregister_process("unknown")
    assert await store.list_processes() == [t1, s1b]


# -- concurrency and group commit ------------------------------------------------------------------


async def test_two_stores_on_one_database_writing_concurrently_lose_nothing(
    store_factory: StoreFactory,
) -> None:
    a, b = await store_factory(), await store_factory()
    run = a_run()
    await a.create_run(run, [])
    n = 500

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(a.save_tis, [a_ti(run, f"a{i:03d}", try_number=i)])
            tg.start_soon(b.save_tis, [a_ti(run, f"b{i:03d}", try_number=i)])

    for reader in (a, b):
        tis = await reader.get_tis("d1", "r1")
        assert len(tis) == 2 * n
        assert {t.task_id for t in tis} == {f"{p}{i:03d}" for p in "ab" for i in range(n)}
        assert all(t.try_number == int(t.task_id[1:]) for t in tis)
    async with store_factory.unopened() as fresh:
        assert len(await fresh.get_tis("d1", "r1")) == 2 * n


async def test_two_stores_updating_the_same_rows_concurrently(store_factory: StoreFactory) -> None:
    a, b = await store_factory(), await store_factory()
    run = a_run()
    tis = [a_ti(run, f"t{i:02d}") for i in range(50)]
    await a.create_run(run, tis)

    async with anyio.create_task_group() as tg:
        for t in tis:
            tg.start_soon(
                a.finish_ti,
                dataclasses.replace(t, state=TaskState.SUCCESS),
                [an_xcom(t, value="a")],
            )
            tg.start_soon(b.save_tis, [dataclasses.replace(t, try_number=1)])
    got = await b.get_tis("d1", "r1")
    assert len(got) == 50
    assert len(await b.get_xcoms("d1", "r1")) == 50


async def test_concurrent_finish_ti_calls_share_transactions(store: Store) -> None:
    committer = committer_of(store)
    run = a_run(state=DagRunState.RUNNING)
    tis = [a_ti(run, f"t{i:03d}") for i in range(300)]
    await store.create_run(run, tis)
    batches0, ops0 = committer.batches, committer.ops

    async with anyio.create_task_group() as tg:
        for t in tis:
            done = dataclasses.replace(t, state=TaskState.SUCCESS, try_number=1)
            tg.start_soon(store.finish_ti, done, [an_xcom(done, value=t.task_id)])

    batches, ops = committer.batches - batches0, committer.ops - ops0
    assert ops == 300
    assert batches < ops
    assert {t.state for t in await store.get_tis("d1", "r1")} == {TaskState.SUCCESS}
    assert [x.value for x in await store.get_xcoms("d1", "r1")] == [t.task_id for t in tis]


async def test_a_failing_op_fails_only_its_own_caller(store: Store) -> None:
    committer = committer_of(store)
    run = a_run(state=DagRunState.RUNNING)
    tis = [a_ti(run, f"t{i:02d}") for i in range(20)]
    await store.create_run(run, tis)
    outcomes: dict[str, BaseException | None] = {}
    batches0 = committer.batches

    async def finish(ti: TaskInstanceRecord, xcoms: list[XComRecord]) -> None:
        try:
            await store.finish_ti(ti, xcoms)
        except Exception as exc:
            outcomes[ti.task_id] = exc
        else:
            outcomes[ti.task_id] = None

    bad_index = 7
    async with anyio.create_task_group() as tg:
        for i, t in enumerate(tis):
            done = dataclasses.replace(t, state=TaskState.SUCCESS)
            xcoms = [an_xcom(done, value=i)]
            if i == bad_index:  # an XCom of a run that does not exist: a foreign key violation
                xcoms.append(XComRecord("d1", "no-such-run", t.task_id, "return_value", i))
            tg.start_soon(finish, done, xcoms)

    bad = tis[bad_index].task_id
    assert isinstance(outcomes.pop(bad), StoreError)
    assert outcomes == {t.task_id: None for t in tis if t.task_id != bad}
    assert committer.batches - batches0 < len(tis)  # they did share batches

    got = {t.task_id: t.state for t in await store.get_tis("d1", "r1")}
    assert got == {
        t.task_id: (TaskState.NONE if t.task_id == bad else TaskState.SUCCESS) for t in tis
    }
    assert [x.value for x in await store.get_xcoms("d1", "r1")] == [
        i for i in range(len(tis)) if i != bad_index
    ]
    # The store goes on working after a failed batch.
    await store.finish_ti(dataclasses.replace(tis[bad_index], state=TaskState.SUCCESS))
    assert {t.state for t in await store.get_tis("d1", "r1")} == {TaskState.SUCCESS}


async def test_a_write_whose_caller_is_cancelled_still_commits(store: Store) -> None:
    run = a_run()
    await store.create_run(run, [])
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(store.save_tis, [a_ti(run, f"t{i:02d}")])
            await anyio.lowlevel.checkpoint()  # every caller has queued its write
            scope.cancel()
    assert scope.cancelled_caught
    # The next write is committed after the abandoned ones (one writer, in order).
    await store.save_tis([a_ti(run, "last")])
    assert len(await store.get_tis("d1", "r1")) == 21


async def test_close_flushes_writes_still_queued(store_factory: StoreFactory) -> None:
    store = store_factory.unopened()
    await store.open()
    run = a_run()
    await store.create_run(run, [])
    with anyio.CancelScope() as scope:  # the callers go away; their writes stay queued
        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(store.save_tis, [a_ti(run, f"t{i:03d}")])
            await anyio.lowlevel.checkpoint()  # every caller has queued its write
            scope.cancel()
    await store.close()
    async with store_factory.unopened() as again:
        assert len(await again.get_tis("d1", "r1")) == 100


async def test_writes_outwait_another_writers_lock_and_then_commit(
    store_factory: StoreFactory,
) -> None:
    """A lock held by another process longer than the store's own lock wait delays a
    group-committed batch; it is retried, not failed."""
    await (await store_factory()).create_run(a_run(), [])  # migrated before the lock is taken
    outcomes: dict[int, BaseException | None] = {}
    async with store_factory.impatient() as store:

        async def save(i: int) -> None:
            try:
                await store.save_tis([a_ti(a_run(), f"t{i:02d}")])
            except Exception as exc:
                outcomes[i] = exc
            else:
                outcomes[i] = None

        async with anyio.create_task_group() as tg:
            async with store_factory.hold_write_lock():
                for i in range(20):  # queued together: one batch of many ops meets the lock
                    tg.start_soon(save, i)
                # The stimulus, not a wait for a result: hold the lock ~10x the store's wait.
                await anyio.sleep(0.5)
        assert outcomes == dict.fromkeys(range(20))
        assert len(await store.get_tis("d1", "r1")) == 20


# -- triggers and webhook events ---------------------------------------------------------------------
def a_trigger(ti: TaskInstanceRecord, **kw: Any) -> TriggerRecord:
    fields: dict[str, Any] = {
        "classpath": "triggers.temporal.DateTimeTrigger",
        "kwargs": {"moment": "2024-01-02T00:00:00+00:00"},
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "try_number": ti.try_number,
        "created_at": T0,
    }
    fields.update(kw)
    return TriggerRecord(**fields)


async def _deferred(store: Store, task_id: str = "t1") -> tuple[DagRunRecord, TaskInstanceRecord]:
    run = a_run(f"run-{task_id}")
    await store.create_run(run, [])
    ti = a_ti(run, task_id, state=TaskState.DEFERRED, try_number=1, next_method="go",
              next_kwargs={"a": 1})
    await store.defer_ti(ti, a_trigger(ti, timeout_at=T0 + timedelta(hours=1)))
    return run, ti


async def test_defer_ti_writes_the_ti_and_its_trigger_together(store: Store) -> None:
    run, ti = await _deferred(store)
    (row,) = await store.get_tis(run.dag_id, run.run_id)
    assert (row.state, row.next_method, row.next_kwargs) == (TaskState.DEFERRED, "go", {"a": 1})
    trigger = await store.get_trigger(run.dag_id, run.run_id, "t1")
    assert trigger is not None and trigger.id is not None
    assert trigger.kwargs == {"moment": "2024-01-02T00:00:00+00:00"}
    assert trigger.timeout_at == T0 + timedelta(hours=1)
    assert trigger.event is None and trigger.owner is None
    # deferring the same TI again replaces its trigger
    await store.defer_ti(ti, a_trigger(ti, kwargs={"moment": "2024-01-03T00:00:00+00:00"}))
    (only,) = await store.list_triggers()
    assert only.kwargs["moment"].startswith("2024-01-03")


async def test_claim_triggers_leases_and_expiry(store: Store) -> None:
    for i in range(3):
        await _deferred(store, f"t{i}")
    until = T0 + timedelta(seconds=30)
    first = await store.claim_triggers("a", T0, until, 2)
    assert [t.task_id for t in first] == ["t0", "t1"]
    assert all(t.owner == "a" and t.lease_until == until for t in first)
    rest = await store.claim_triggers("b", T0, until, 10)
    assert [t.task_id for t in rest] == ["t2"]  # live leases are not stolen
    assert await store.claim_triggers("b", T0, until, 10) == []
    assert await store.renew_trigger_leases("a", until + timedelta(seconds=30)) == 2
    later = until + timedelta(seconds=1)  # b's lease expired, a's was renewed
    taken = await store.claim_triggers("c", later, later + timedelta(seconds=30), 10)
    assert [t.task_id for t in taken] == ["t2"]
    await store.release_triggers("a")
    again = await store.claim_triggers("c", later, later + timedelta(seconds=30), 10)
    assert sorted(t.task_id for t in again) == ["t0", "t1"]


async def test_fire_trigger_commits_the_event_once(store: Store) -> None:
    run, _ = await _deferred(store)
    (claimed,) = await store.claim_triggers("a", T0, T0 + timedelta(seconds=30), 10)
    assert claimed.id is not None
    await store.fire_trigger(claimed.id, {"kind": "event", "payload": {"x": 1}}, T0)
    await store.fire_trigger(claimed.id, {"kind": "event", "payload": {"x": 2}}, T0)  # ignored
    (fired,) = await store.fired_triggers([(run.dag_id, run.run_id)])
    assert fired.event == {"kind": "event", "payload": {"x": 1}}
    assert fired.owner is None and fired.fired_at == T0
    assert await store.claim_triggers("b", T0, T0 + timedelta(seconds=30), 10) == []  # fired
    assert await store.fired_triggers([("d1", "other-run")]) == []
    await store.delete_trigger(run.dag_id, run.run_id, "t1")
    assert await store.list_triggers() == []
    assert await store.get_trigger(run.dag_id, run.run_id, "t1") is None


async def test_finish_ti_can_end_its_trigger_in_the_same_transaction(store: Store) -> None:
    run, ti = await _deferred(store, "a")
    await _deferred(store, "b")
    (claimed, _) = await store.claim_triggers("a", T0, T0 + timedelta(seconds=30), 10)
    assert claimed.id is not None
    await store.fire_trigger(claimed.id, {"kind": "event", "payload": 1}, T0)
    done = dataclasses.replace(ti, state=TaskState.SUCCESS, next_method=None, next_kwargs=None)
    await store.finish_ti(done, [an_xcom(done)], end_trigger=True)
    assert await store.get_trigger(run.dag_id, run.run_id, "a") is None
    assert [t.task_id for t in await store.list_triggers()] == ["b"]  # only its own
    assert await store.get_tis(run.dag_id, run.run_id) == [done]

    # Atomic: a failing XCom keeps the trigger row as well as the TI row.
    run_b = await store.get_run("d1", "run-b")
    assert run_b is not None
    (ti_b,) = await store.get_tis("d1", "run-b")
    stray = XComRecord("d1", "no-such-run", "b", "return_value", 1)
    with pytest.raises(StoreError):
        await store.finish_ti(dataclasses.replace(ti_b, state=TaskState.FAILED), [stray],
                              end_trigger=True)
    assert [t.task_id for t in await store.list_triggers()] == ["b"]
    assert await store.get_tis("d1", "run-b") == [ti_b]


async def test_finish_tis_ends_several_tis_and_their_triggers_at_once(store: Store) -> None:
    run_a, ti_a = await _deferred(store, "a")
    run_b, ti_b = await _deferred(store, "b")
    await _deferred(store, "c")
    done_a = dataclasses.replace(ti_a, state=TaskState.SUCCESS, next_method=None, next_kwargs=None)
    done_b = dataclasses.replace(ti_b, state=TaskState.SUCCESS, next_method=None, next_kwargs=None)
    await store.finish_tis([(done_a, [an_xcom(done_a, value={"x": 1})]), (done_b, [])],
                           end_trigger=True)
    assert [t.task_id for t in await store.list_triggers()] == ["c"]  # only theirs went
    assert await store.get_tis(run_a.dag_id, run_a.run_id) == [done_a]
    assert await store.get_tis(run_b.dag_id, run_b.run_id) == [done_b]
    assert [x.value for x in await store.get_xcoms(run_a.dag_id, run_a.run_id)] == [{"x": 1}]
    assert await store.get_xcoms(run_b.dag_id, run_b.run_id) == []
    await store.finish_tis([])  # nothing to do
    assert [t.task_id for t in await store.list_triggers()] == ["c"]


async def test_webhook_events_are_kept_by_key(store: Store) -> None:
    assert await store.first_webhook("k") is None
    first = await store.deliver_webhook("k", {"n": 1}, T0)
    await store.deliver_webhook("k", {"n": 2}, T0)
    await store.deliver_webhook("other", [1, 2], T0)
    assert await store.first_webhook("k") == (first, {"n": 1})
    assert (await store.first_webhook("other"))[1] == [1, 2]  # type: ignore[index]


# -- PostgreSQL specifics: URLs, an unreachable server, lost connections ------------------------------


def test_postgres_urls_open_a_postgres_store_and_others_sqlite(tmp_path: Path) -> None:
    from aflow.store.factory import open_store_url
    from aflow.store.postgres import PostgresStore
    from aflow.store.sqlite import SqliteStore

    for url in ("postgresql://u@h:5433/db?schema=s1", "postgres://u:pw@h/db"):
        store = open_store_url(url)
        assert isinstance(store, PostgresStore) and store.url == url
    assert open_store_url("postgresql://u@h/db?schema=s1").schema == "s1"  # type: ignore[attr-defined]
    assert open_store_url("postgresql://u@h/db").schema is None  # type: ignore[attr-defined]
    assert isinstance(open_store_url(f"sqlite:///{tmp_path / 'a.db'}"), SqliteStore)
    with pytest.raises(StoreUnavailable, match="schema"):
        open_store_url("postgresql://u@h/db?schema=")
    with pytest.raises(StoreUnavailable, match="port") as info:
        open_store_url("postgresql://u:s3cret@h:x/db")
    assert "s3cret" not in str(info.value)


def test_postgres_url_options_reach_the_driver_and_the_server_is_named() -> None:
    from aflow.store.postgres.url import parse_postgres_url

    t = parse_postgres_url("postgresql://u:p%40ss@h:6000/db?schema=s&sslmode=disable")
    assert (t.dsn, t.schema, t.where) == (
        "postgresql://u:p%40ss@h:6000/db?sslmode=disable", "s", "h:6000/db (schema s)"
    )
    assert t.scrub("no p@ss,\nnor p%40ss") == "no ***, nor ***"
    socket = parse_postgres_url("postgresql:///db?host=/run/postgresql")
    assert socket.dsn.startswith("postgresql:///db?host=") and socket.schema is None
    assert socket.where == "/run/postgresql:5432/db"
    several = parse_postgres_url("postgresql://u@h1:5432,h2:5433/db")
    assert several.where == "h1:5432,h2:5433/db"


async def test_unreachable_postgres_raises_store_unavailable_naming_it() -> None:
    from aflow.store.factory import open_store_url

    store = open_store_url("postgresql://aflow:s3cret@127.0.0.1:1/aflow?schema=x")
    with pytest.raises(StoreUnavailable) as info:
        async with store:
            pass
    message = str(info.value)
    assert "127.0.0.1:1/aflow" in message and "refused" in message
    assert "s3cret" not in message and "\n" not in message
    assert isinstance(info.value.__cause__, OSError)  # the driver's error is chained


async def test_a_server_that_never_answers_gives_store_unavailable_after_the_timeout() -> None:
    from anyio.abc import SocketAttribute, SocketStream

    from aflow.store.postgres import PostgresStore

    async def silent(stream: SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        port = listener.extra(SocketAttribute.local_port)
        tg.start_soon(listener.serve, silent)
        store = PostgresStore(f"postgresql://aflow:s3cret@127.0.0.1:{port}/db", connect_timeout_s=0.2)
        with pytest.raises(StoreUnavailable) as info:
            await store.open()
        tg.cancel_scope.cancel()
    message = str(info.value)
    assert f"127.0.0.1:{port}/db" in message and "no answer within 0.2s" in message
    assert "s3cret" not in message


@pytest.mark.postgres
async def test_writes_and_reads_outlive_lost_connections(
    postgres_dsn: str, pg_schema_url: str
) -> None:
    """The server drops every session of the store (a restart, a failover, a proxy): the
    next writes, transactions and reads are retried on new connections, not failed."""
    import asyncpg

    from aflow.store.postgres import PostgresStore

    name = pg_schema_url.rpartition("application_name=")[2]
    admin = await asyncpg.connect(postgres_dsn, timeout=10)

    async def kill_sessions() -> int:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name=$1 AND state='idle'",  # established, between statements
            name,
        )
        return len(rows)

    try:
        async with PostgresStore(pg_schema_url, pool_min_size=4, pool_max_size=4) as store:
            run = a_run()
            await store.create_run(run, [])
            await store.save_tis([a_ti(run, "before")])
            assert await kill_sessions() >= 1

            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(store.save_tis, [a_ti(run, f"t{i:02d}")])
            assert await kill_sessions() >= 1
            assert len(await store.get_tis("d1", "r1")) == 21  # a read on a dead session, too
            await kill_sessions()
            await store.finish_ti(a_ti(run, "before", state=TaskState.SUCCESS), [an_xcom(a_ti(run, "before"))])
            assert [x.value for x in await store.get_xcoms("d1", "r1")] == [1]
            # Transactions of their own (create, claim) are retried when they failed
            # before their COMMIT.
            await kill_sessions()
            await store.create_run(a_run("r2"), [])
            await kill_sessions()
            claimed = await store.claim_runs("me", T0, T0 + timedelta(minutes=1), limit=10)
            assert {r.run_id for r in claimed} == {"r1", "r2"}
    finally:
        await admin.close()


@pytest.mark.postgres
async def test_client_dsn_reaches_the_stores_schema(postgres_dsn: str, pg_schema_url: str) -> None:
    """Other asyncpg clients (a SqlTrigger on aflow's own tables) see the store's schema."""
    import asyncpg

    from aflow.store.postgres import PostgresStore

    async with PostgresStore(pg_schema_url) as store:
        await store.create_run(a_run(), [])
        assert "schema=" not in store.client_dsn
        conn = await asyncpg.connect(store.client_dsn, timeout=10)
        try:
            assert await conn.fetchval("SELECT run_id FROM dag_run") == "r1"
        finally:
            await conn.close()


@pytest.mark.postgres
async def test_client_dsn_keeps_the_urls_server_settings_in_a_form_triggers_accept(
    pg_schema_url: str,
) -> None:
    """The store hands an option asyncpg does not know to the server as a setting; a
    SqlTrigger on `aflow_store` takes other settings only in libpq's `options`
    (triggers.pg_options), so client_dsn moves them there (a space in a value escaped)."""
    import asyncpg

    from aflow.store.postgres import PostgresStore
    from triggers.sql import parse_dsn

    url = f"{pg_schema_url}&statement_timeout=12345&DateStyle=ISO,%20DMY"
    async with PostgresStore(url) as store:
        await store.create_run(a_run(), [])
        dsn = parse_dsn(store.client_dsn)  # raised "unknown extras DateStyle, statement_timeout"
        conn = await asyncpg.connect(dsn.target, timeout=dsn.connect_timeout)
        try:
            assert await conn.fetchval("SELECT run_id FROM dag_run") == "r1"
            assert await conn.fetchval("SHOW statement_timeout") == "12345ms"
            assert await conn.fetchval("SHOW DateStyle") == "ISO, DMY"
        finally:
            await conn.close()


_CHILD = """
import anyio, json, sys
from datetime import UTC, datetime, timedelta
from aflow.store.postgres import PostgresStore

async def main(url, owner):
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    async with PostgresStore(url) as store:
        claimed = []
        if owner != "-":
            while batch := await store.claim_runs(owner, t0, t0 + timedelta(minutes=5), 3):
                claimed += [[r.dag_id, r.run_id] for r in batch]
        print(json.dumps({"version": await store.schema_version(), "claimed": claimed}))

anyio.run(main, *sys.argv[1:])
"""


@pytest.mark.postgres
async def test_processes_migrate_once_and_never_claim_the_same_run(pg_schema_url: str) -> None:
    """Separate processes: opening one empty schema at once, then claiming from it."""
    import json
    import sys

    from aflow.store.postgres import PostgresStore
    from aflow.store.postgres.migrate import migration_scripts

    async def child(owner: str, out: list[dict[str, Any]]) -> None:
        proc = await anyio.run_process(
            [sys.executable, "-c", _CHILD, pg_schema_url, owner], cwd=REPO, check=True
        )
        out.append(json.loads(proc.stdout.decode().strip().splitlines()[-1]))

    opened: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(child, "-", opened)
    latest = migration_scripts()[-1][0]
    assert [o["version"] for o in opened] == [latest] * 3

    async with PostgresStore(pg_schema_url) as store:
        runs = await _create_runs(store, 90)
        claims: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(child, f"p{i}", claims)
        taken = [tuple(k) for c in claims for k in c["claimed"]]
        assert len(taken) == len(set(taken)) == 90
        assert set(taken) == _keys(runs)
        assert {r.owner for r in await store.list_runs(limit=1000)} <= {"p0", "p1", "p2"}


@pytest.mark.postgres
async def test_triggers_owned_before_0003_keep_their_owner_until_its_lease_ends(
    postgres_dsn: str, pg_schema_url: str
) -> None:
    """Upgrading a PostgreSQL schema left at version 2 with owned triggers."""
    import asyncpg

    from aflow.store.postgres import PostgresStore
    from aflow.store.postgres.migrate import migration_scripts

    schema = PostgresStore(pg_schema_url).schema
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"; SET search_path = "{schema}"')
        await conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for version, name, sql in migration_scripts()[:2]:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
        await conn.execute(
            "INSERT INTO dag_run (dag_id, run_id, logical_date, run_type, state, created_at) "
            "VALUES ('d', 'r', $1, 'manual', 'running', $1)",
            T0,
        )
        for task_id, owner, lease in [
            ("held", "old-triggerer", T0 + timedelta(seconds=30)),
            ("free", None, None),
            ("odd", "no-lease", None),  # owned without a lease: nothing could renew it
        ]:
            await conn.execute(
                "INSERT INTO trigger (classpath, kwargs, created_at, owner, lease_until, dag_id, "
                "run_id, task_id, try_number) VALUES ('m.C', '{}', $1, $2, $3, 'd', 'r', $4, 1)",
                T0, owner, lease, task_id,
            )
    finally:
        await conn.close()

    async with PostgresStore(pg_schema_url) as store:
        assert await store.schema_version() == migration_scripts()[-1][0]
        by_task = {t.task_id: t for t in await store.list_triggers()}
        assert (by_task["held"].owner, by_task["held"].lease_until) == (
            "old-triggerer", T0 + timedelta(seconds=30)
        )
        assert by_task["odd"].owner is None and by_task["free"].owner is None
        # The held one is not taken while its lease lives, and is once it has ended.
        soon = await store.claim_triggers("new", T0, T0 + timedelta(minutes=1), 10)
        assert sorted(t.task_id for t in soon) == ["free", "odd"]
        later = T0 + timedelta(seconds=31)
        (taken,) = await store.claim_triggers("new2", later, later + timedelta(minutes=1), 10)
        assert taken.task_id == "held"
        assert await store.renew_trigger_leases("old-triggerer", later) == 0


async def test_runs_are_counted_with_the_filters_of_list_runs(store: Store) -> None:
    base = DagRunRecord("c", "x", RunType.MANUAL, DagRunState.RUNNING, T0, None, None, created_at=T0)
    runs = [
        base,
        dataclasses.replace(base, run_id="y", state=DagRunState.SUCCESS),
        dataclasses.replace(base, run_id="z", logical_date=T0 + timedelta(days=1)),
        dataclasses.replace(base, dag_id="other", run_id="w"),
    ]
    for run in runs:
        await store.create_run(run, [])
    assert await store.count_runs() == 4
    assert await store.count_runs("c") == 3
    assert await store.count_runs("c", states=[DagRunState.RUNNING]) == 2
    assert await store.count_runs("c", states=[DagRunState.RUNNING], logical_date=T0) == 1
    assert await store.count_runs("c", states=[]) == 0
    assert await store.count_runs("nobody") == 0
