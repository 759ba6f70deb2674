"""Shared fixtures: the anyio backend, a fresh AFLOW_HOME per test, and helpers that run
DAGs through a real Orchestrator on a real SQLite file."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aflow.authoring.dag import DAG
from aflow.orchestrator import Orchestrator
from aflow.store.records import DagRunRecord, TaskInstanceRecord

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh AFLOW_HOME folder (store, logs) for one test."""
    h = tmp_path / "aflow_home"
    h.mkdir()
    return h


@pytest.fixture
def cli_env(home: Path) -> dict[str, str]:
    """Environment for running the `aflow` CLI as a subprocess against `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFLOW_")}
    env["AFLOW_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def aflow_cmd(*args: str) -> list[str]:
    """The `aflow` CLI of this interpreter, as an argv list."""
    return [sys.executable, "-m", "aflow.cli", *args]


class RunResult:
    def __init__(self, run: DagRunRecord, tis: list[TaskInstanceRecord], home: Path) -> None:
        self.run = run
        self.tis = {t.task_id: t for t in tis}
        self.home = home

    @property
    def state(self) -> str:
        return self.run.state.value

    def ti_state(self, task_id: str) -> str:
        return self.tis[task_id].state.value

    def states(self) -> dict[str, str]:
        return {k: v.state.value for k, v in self.tis.items()}

    def log(self, task_id: str, try_number: int | None = None) -> str:
        from aflow.runtime.logs import log_path, read_log

        ti = self.tis[task_id]
        path = log_path(
            self.home / "logs", self.run.dag_id, self.run.run_id, task_id,
            try_number or ti.try_number, ti.map_index,
        )
        return read_log(path)[0]


async def run_dag(
    dag: DAG | Iterable[DAG],
    home: Path,
    *,
    dag_id: str | None = None,
    conf: dict[str, Any] | None = None,
    timeout: float = 60,  # noqa: ASYNC109 - a plain wait limit, passed to fail_after
    **orchestrator_kwargs: Any,
) -> RunResult:
    """Trigger one run of `dag` on a fresh Orchestrator over `home` and wait for its end."""
    dags = [dag] if isinstance(dag, DAG) else list(dag)
    orchestrator_kwargs.setdefault("schedule", False)
    async with Orchestrator(dags, home=home, **orchestrator_kwargs) as o:
        handle = await o.trigger(dag_id or dags[0].dag_id, conf=conf)
        final = await handle.wait(timeout=timeout)
        tis = await handle.task_instances()
    return RunResult(final, tis, home)


@pytest.fixture
async def orchestrator_factory(home: Path) -> AsyncIterator[Any]:
    """Build Orchestrators over `home` (closed at the end of the test)."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:

        async def make(dags: Any, **kwargs: Any) -> Orchestrator:
            kwargs.setdefault("schedule", False)
            return await stack.enter_async_context(Orchestrator(dags, home=home, **kwargs))

        yield make


# -- PostgreSQL --------------------------------------------------------------------------------

DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.asynccontextmanager
async def driver_and_bystander(
    dag: DAG, store_url: str, home: Path
) -> AsyncIterator[tuple[Orchestrator, Orchestrator]]:
    """Two Orchestrators on one PostgreSQL store: the driver drives the runs and hears of
    other processes' changes only by NOTIFY (its claim sweep and poll would take an hour);
    the bystander claims nothing, so clears and marks made through it come from another
    process."""
    async with (
        Orchestrator(dag, store=store_url, home=home, schedule=False, sweep_s=3600,
                     poll_s=3600) as driver,
        Orchestrator(dag, store=store_url, home=home, schedule=False, claim=False,
                     triggerer=False) as bystander,
    ):
        yield driver, bystander


def _postgres_problem(dsn: str) -> str | None:
    """Why no PostgreSQL answers at `dsn`, or None when one does."""
    import asyncio
    import concurrent.futures

    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # no loop of the test's thread
        try:
            pool.submit(lambda: asyncio.run(probe())).result(timeout=15)
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of a PostgreSQL server for tests: AFLOW_TEST_POSTGRES_DSN, default
    DEFAULT_POSTGRES_DSN. Skips when none answers, but fails when the CI environment
    variable is set (CI must run them). Tests use their own schema/table/channel names
    (e.g. with a uuid) so concurrent or earlier runs never see each other's rows."""
    from urllib.parse import urlsplit

    dsn = os.environ.get("AFLOW_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
    problem = _postgres_problem(dsn)
    if problem is not None:
        parts = urlsplit(dsn)
        shown = dsn if parts.password is None else dsn.replace(parts.password, "***")
        message = (
            f"no PostgreSQL answers at {shown} ({problem}). To run these tests, start a "
            "server and set AFLOW_TEST_POSTGRES_DSN=postgresql://user@host:port/db"
        )
        if os.environ.get("CI", "") not in ("", "0", "false", "False"):
            pytest.fail(f"CI is set, so PostgreSQL tests must run: {message}", pytrace=False)
        pytest.skip(message)
    return dsn


@pytest.fixture
async def pg_schema_url(postgres_dsn: str) -> AsyncIterator[str]:
    """A URL of a new schema of its own, dropped at the end; `application_name` names the
    store's sessions so a test can find (and kill) exactly those."""
    import uuid

    import asyncpg

    name = f"aflow_test_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in postgres_dsn else "?"
    yield f"{postgres_dsn}{sep}schema={name}&application_name={name}"
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def clean_secrets() -> Iterator[None]:
    """No secrets backend configuration and no known secrets before or after the test."""
    from aflow.secrets import configure_secrets
    from aflow.secrets.masking import forget_secrets

    configure_secrets()
    forget_secrets()
    yield
    configure_secrets()
    forget_secrets()
