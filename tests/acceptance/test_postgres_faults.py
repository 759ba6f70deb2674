"""Database faults through the real CLI and a real PostgreSQL.

1. The PostgreSQL server stops in the middle of a run of ~300 tasks driven by a real `aflow
   standalone` process (scheduler and triggerer in one), stays down while tasks finish and a
   deferred sensor's file appears, then starts again. The process logs the outage and the
   reconnection, and the run ends with every task successful, each executed exactly once.

   How the outage is made: a real stop/start of the server with `pg_ctlcluster` when this
   test runs as root on the server's host (the CI machine: the DSN points at 127.0.0.1 and
   the cluster is managed by postgresql-common), so every connection, the LISTEN one
   included, is cut and new ones are refused for a few seconds. Elsewhere (no
   pg_ctlcluster, not root, a remote server) it falls back to terminating every session
   of the store with pg_terminate_backend, repeatedly for the same window: the
   process sees the same lost connections, though reconnects may succeed between two
   sweeps. The server is always running again when the test ends, pass or fail.

2. A database that cannot be used at start (nothing listening, an unknown database or
   role): every CLI command that opens the store exits 1 with one line naming the problem,
   and no traceback.

Each task appends "<task_id> <try_number>" to executions.log when it starts (one small
O_APPEND write, so lines never interleave), which counts executions across the outage.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.acceptance.conftest import CLI, wait_until, write_dag

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

N_FIRST = 150  # tasks before the gate (every 15th of them holds until the gate opens)
N_SECOND = 150  # tasks after it: started only once the outage is over

FAULTY = '''
from datetime import datetime, timezone
from pathlib import Path

import anyio

from aflow import DAG, FileSensor, PythonOperator

HERE = Path({here!r})


def record(ti):
    with open(HERE / "executions.log", "a") as f:
        f.write(f"{{ti.task_id}} {{ti.try_number}}\\n")


async def quick(ti):
    record(ti)


async def hold(ti):
    """Runs across the outage: ends once the test opens the gate (the server is down)."""
    record(ti)
    while not (HERE / "gate").exists():
        await anyio.sleep(0.02)
    with open(HERE / "released.log", "a") as f:
        f.write(f"{{ti.task_id}}\\n")


with DAG("pgfault", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
         max_active_tasks=64):
    start = PythonOperator(task_id="start", python_callable=quick)
    gate = FileSensor(task_id="gate_sensor", filepath=str(HERE / "gate"), deferrable=True,
                      poke_interval=0.1)
    mid = PythonOperator(task_id="mid", python_callable=quick)
    end = PythonOperator(task_id="end", python_callable=quick)
    start >> gate >> mid
    for i in range({n_first}):
        t = PythonOperator(task_id=f"a_{{i:03d}}", python_callable=hold if i % 15 == 0 else quick)
        start >> t >> mid
    for i in range({n_second}):
        mid >> PythonOperator(task_id=f"b_{{i:03d}}", python_callable=quick) >> end
'''

ALL_TASKS = (
    {"start", "gate_sensor", "mid", "end"}
    | {f"a_{i:03d}" for i in range(N_FIRST)}
    | {f"b_{i:03d}" for i in range(N_SECOND)}
)
HELD = {f"a_{i:03d}" for i in range(0, N_FIRST, 15)}


# -- the server --------------------------------------------------------------------------------
def _cluster(dsn: str) -> tuple[str, str] | None:
    """(version, name) of the local cluster serving `dsn` when this process can stop and
    start it with pg_ctlcluster, else None."""
    parts = urlsplit(dsn)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or shutil.which("pg_ctlcluster") is None:
        return None
    if getpass.getuser() != "root":
        return None
    port = str(parts.port or 5432)
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == port and fields[3] == "online":
            return fields[0], fields[1]
    return None


def _pg_ctl(cluster: tuple[str, str], action: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, action],
        check=True, capture_output=True, timeout=120,
    )


def _server_answers(dsn: str) -> bool:
    from tests.conftest import _postgres_problem

    return _postgres_problem(dsn) is None


def _admin(dsn: str, sql: str, *args: object) -> list[object]:
    """Run one statement on a connection of its own (from this sync test, off any loop)."""
    import asyncio

    import asyncpg

    async def run() -> list[object]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def _terminate_sessions(dsn: str, application_name: str) -> int:
    return len(_admin(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name=$1",
        application_name,
    ))


@pytest.fixture
def schema_url(postgres_dsn: str) -> Iterator[str]:
    """A URL of a schema of this test's own (dropped at the end); `application_name` names
    the store's sessions, so the fallback outage cuts exactly those."""
    name = f"aflow_test_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in postgres_dsn else "?"
    yield f"{postgres_dsn}{sep}schema={name}&application_name={name}"
    _admin(postgres_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


class Outage:
    """Stops the server (or cuts the store's sessions) until `end()`; `end()` always leaves
    the server running."""

    def __init__(self, dsn: str, application_name: str) -> None:
        self.dsn = dsn
        self.application_name = application_name
        self.cluster = _cluster(dsn)
        self.how = "pg_ctlcluster stop/start" if self.cluster else "pg_terminate_backend"
        self.down = False

    def begin(self) -> None:
        self.down = True
        if self.cluster is not None:
            _pg_ctl(self.cluster, "stop")
        else:
            _terminate_sessions(self.dsn, self.application_name)

    def hold(self, seconds: float) -> None:
        """Stay down for `seconds` more (the fault's length, not a wait for an event): a
        stopped server stays stopped; otherwise new sessions are cut every 0.2 s."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.cluster is None:
                _terminate_sessions(self.dsn, self.application_name)
            time.sleep(0.2)

    def end(self) -> None:
        if self.cluster is not None and self.down:
            _pg_ctl(self.cluster, "start")
        self.down = False
        wait_until(lambda: _server_answers(self.dsn), timeout=60, interval=0.5,
                   what="PostgreSQL to answer again")


@pytest.fixture
def outage(postgres_dsn: str, schema_url: str) -> Iterator[Outage]:
    name = schema_url.rpartition("application_name=")[2]
    o = Outage(postgres_dsn, name)
    try:
        yield o
    finally:
        if o.down or (o.cluster is not None and not _server_answers(postgres_dsn)):
            o.down = True
            o.end()


def _executions(tmp_path: Path) -> Counter[tuple[str, int]]:
    path = tmp_path / "executions.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter((task, int(try_number)) for task, try_number in (ln.split() for ln in lines))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- 1. a restart mid-run ----------------------------------------------------------------------
def test_postgres_restart_mid_run_loses_nothing(
    cli: CLI, tmp_path: Path, schema_url: str, outage: Outage
) -> None:
    folder = tmp_path / "dags"
    write_dag(folder, "pgfault.py", FAULTY.format(here=str(tmp_path), n_first=N_FIRST,
                                                  n_second=N_SECOND))
    cli.env["AFLOW_STORE"] = schema_url
    cli.env["AFLOW_DAGS_FOLDER"] = str(folder)
    server = cli.spawn("standalone", "--parallelism", "32", "--grace", "5", name="standalone")
    server.wait_ready()
    run_id = cli.json("dags", "trigger", "pgfault")[0]["run_id"]

    # Before the outage: every first-layer task has started (the held ones are running)
    # and the sensor is parked in the triggerer.
    wait_until(lambda: {t for t, _ in _executions(tmp_path)} >= {f"a_{i:03d}" for i in range(N_FIRST)},
               timeout=60, what="the first layer to start")
    wait_until(lambda: any(row["waiting"] for row in cli.json("triggers", "list")),
               what="the file sensor to be deferred")
    assert not any(t.startswith("b_") for t, _ in _executions(tmp_path))

    outage.begin()
    try:
        # While the server is down: the held tasks end and the sensor's file appears.
        (tmp_path / "gate").write_text("open")
        wait_until(lambda: set(_lines(tmp_path / "released.log")) == HELD,
                   what="the held tasks to end during the outage")
        wait_until(lambda: "is unreachable" in server.stderr(), timeout=60,
                   what="the outage in the process log")
        outage.hold(3.0)
        assert server.proc.poll() is None, server.describe()
    finally:
        outage.end()

    cli.wait_run_state("pgfault", run_id, timeout=120)
    final = next(r for r in cli.runs("pgfault") if r["run_id"] == run_id)
    assert final["state"] == "success", server.describe()
    assert server.proc.poll() is None, server.describe()

    states = cli.ti_states("pgfault", run_id)
    assert set(states) == ALL_TASKS
    assert {t: s["state"] for t, s in states.items() if s["state"] != "success"} == {}
    assert {t: s["try_number"] for t, s in states.items() if s["try_number"] != 1} == {}
    runs = _executions(tmp_path)
    assert {t for t, _ in runs} == ALL_TASKS - {"gate_sensor"} or {t for t, _ in runs} == ALL_TASKS
    assert [key for key, count in runs.items() if count != 1 or key[1] != 1] == []

    err = server.stderr()
    assert "is unreachable" in err and "reconnected to PostgreSQL" in err, server.describe()
    assert "Traceback" not in err, server.describe()
    server.signal(15)
    assert server.wait_exit(timeout=60) == 0, server.describe()


# -- 2. unusable at start -----------------------------------------------------------------------
def _commands(folder: Path) -> list[list[str]]:
    return [
        ["db", "init"],
        ["scheduler"],
        ["standalone"],
        ["triggerer"],
        ["runs", "list"],
        ["dags", "trigger", "pgfault"],
        ["dags", "pause", "pgfault"],
        ["dags", "test", "pgfault"],
        ["tasks", "states-for-dag-run", "pgfault", "r1"],
        ["tasks", "logs", "pgfault", "r1", "start"],
        ["triggers", "list"],
        ["triggers", "health"],
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:1/x", "connection refused"),
        ("{dsn_base}/aflow_no_such_database_0", 'database "aflow_no_such_database_0" does not exist'),
        ("{dsn_scheme}aflow_no_such_role:s3cret@{dsn_host}/{dsn_db}", 'role "aflow_no_such_role"'),
    ],
    ids=["refused", "unknown-database", "unknown-role"],
)
def test_unusable_database_at_start_is_one_clear_line(
    cli: CLI, tmp_path: Path, postgres_dsn: str, url: str, expected: str
) -> None:
    parts = urlsplit(postgres_dsn)
    url = url.format(
        dsn_base=f"{parts.scheme}://{parts.netloc}",
        dsn_scheme=f"{parts.scheme}://",
        dsn_host=parts.netloc.rpartition("@")[2],
        dsn_db=parts.path.lstrip("/"),
    )
    folder = tmp_path / "dags"
    write_dag(folder, "pgfault.py", FAULTY.format(here=str(tmp_path), n_first=1, n_second=1))
    for i, command in enumerate(_commands(folder)):
        # alternately the flag and the environment variable
        if i % 2:
            cli.env["AFLOW_STORE"] = url
            args = command
        else:
            cli.env.pop("AFLOW_STORE", None)
            args = [*command, "--store", url]
        started = time.monotonic()
        result = cli.run(*args, "--dags-folder", str(folder), timeout=120)
        what = f"aflow {' '.join(args)} ({time.monotonic() - started:.1f}s)"
        assert result.returncode == 1, f"{what}\n{result.stdout}\n{result.stderr}"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, f"{what}: {result.stderr}"
        assert lines[0].startswith("error: cannot open PostgreSQL store at "), what
        assert expected in lines[0], f"{what}: {lines[0]}"
        assert "s3cret" not in result.stderr + result.stdout
        assert "Traceback" not in result.stdout

