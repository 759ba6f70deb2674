"""Scale-out through the real CLI on a real PostgreSQL: several `aflow scheduler` processes
share one database (a schema of the test's own), runs spread over them, and when one is
SIGKILLed the others adopt its runs once its leases expire.

Each scheduler gets its own `--hostname`, as on separate hosts: a dead one is then found
only by its expired lease (3 s here), not by its pid. Tasks insert a row (run, task, try,
pid) into a side table of the same database when they start: a real side effect outside
aflow, which counts executions across processes. No assertion is about time.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.acceptance.conftest import CLI, Server, wait_until, write_dag

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEASE_S = "3"

SCALE_DAG = '''
import asyncio
import os
from datetime import datetime, timedelta, timezone

import asyncpg

from aflow import DAG, PythonOperator

DSN = {dsn!r}
SCHEMA = {schema!r}
WIDTH, DEPTH = {width}, {depth}
_pool = None


async def pool():
    """One small pool per scheduler process, shared by its tasks (made on first use)."""
    global _pool
    if _pool is None:
        _pool = asyncio.ensure_future(asyncpg.create_pool(
            DSN, min_size=1, max_size=4, server_settings={{"search_path": SCHEMA}}))
    return await _pool


async def work(ti, run_id):
    p = await pool()
    await p.execute(
        "INSERT INTO executions (run_id, task_id, try_number, pid) VALUES ($1, $2, $3, $4)",
        run_id, ti.task_id, ti.try_number, os.getpid(),
    )
    await asyncio.sleep({sleep_s})


with DAG("scale", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
         max_active_runs=50,
         default_args={{"retries": 1, "retry_delay": timedelta(milliseconds=100)}}):
    for w in range(WIDTH):
        previous = None
        for d in range(DEPTH):
            t = PythonOperator(task_id=f"c{{w}}_{{d}}", python_callable=work)
            if previous is not None:
                previous >> t
            previous = t

with DAG("hold", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):
    # `held` blocks until the test creates its release file; retries per the test
    PythonOperator(task_id="held", python_callable=lambda ti: _hold(ti), retries={hold_retries},
                   retry_delay=timedelta(milliseconds=100))


def _hold(ti):
    import time
    from pathlib import Path
    here = Path({here!r})
    with open(here / "hold.log", "a") as f:
        f.write(f"{{ti.try_number}} {{os.getpid()}}\\n")
    deadline = time.monotonic() + 120
    while not (here / "release_held").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.05)
'''


def sql(dsn: str, schema: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query in the test's schema (from this synchronous test: a loop of its own)."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=10, server_settings={"search_path": schema})
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


class Cluster:
    """Scheduler processes on one PostgreSQL schema, each as if on a host of its own."""

    def __init__(self, cli: CLI, dsn: str, schema: str, folder: Path) -> None:
        self.cli = cli
        self.dsn = dsn
        self.schema = schema
        self.folder = folder
        self.hosts = 0

    def q(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return sql(self.dsn, self.schema, query, *args)

    def start(self, *extra: str) -> Server:
        self.hosts += 1
        server = self.cli.spawn(
            "scheduler", "--dags-folder", str(self.folder), "--lease", LEASE_S,
            "--hostname", f"host-{self.hosts}", *extra, name=f"scheduler-host-{self.hosts}",
        )
        return server

    def trigger(self, dag_id: str, run_id: str) -> None:
        self.cli.ok("dags", "trigger", dag_id, "--dags-folder", str(self.folder),
                    "--run-id", run_id)

    def owners(self, run_ids: list[str]) -> dict[str, str | None]:
        rows = self.q("SELECT run_id, owner FROM dag_run WHERE run_id = ANY($1::text[]) "
                      "AND state = 'running'", run_ids)
        return {r["run_id"]: r["owner"] for r in rows}

    def run_states(self, run_ids: list[str]) -> dict[str, str]:
        rows = self.q("SELECT run_id, state FROM dag_run WHERE run_id = ANY($1::text[])", run_ids)
        return {r["run_id"]: r["state"] for r in rows}

    def executions(self, run_ids: list[str]) -> dict[tuple[str, str], list[int]]:
        out: dict[tuple[str, str], list[int]] = defaultdict(list)
        for r in self.q("SELECT run_id, task_id, try_number FROM executions "
                        "WHERE run_id = ANY($1::text[]) ORDER BY id", run_ids):
            out[(r["run_id"], r["task_id"])].append(r["try_number"])
        return dict(out)

    def wait_runs_end(self, run_ids: list[str], servers: list[Server],
                      timeout: float = 60) -> dict[str, str]:
        def ended() -> dict[str, str] | None:
            states = self.run_states(run_ids)
            done = len(states) == len(run_ids) and all(
                s in ("success", "failed") for s in states.values())
            return states if done else None

        try:
            return wait_until(ended, timeout=timeout, what=f"runs {run_ids} to end")
        except AssertionError as exc:
            logs = "\n".join(s.describe()[-3000:] for s in servers)
            raise AssertionError(f"{exc}\n{self.run_states(run_ids)}\n{logs}") from None


def pid_of(owner: str) -> int:
    return int(owner.split(":")[1])  # process ids are host:pid:nonce


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[str]:
    schema = f"aflow_test_{uuid.uuid4().hex[:12]}"
    sql(postgres_dsn, "public", f'CREATE SCHEMA "{schema}"')
    sql(postgres_dsn, schema,
        "CREATE TABLE executions (id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, "
        "task_id TEXT NOT NULL, try_number INTEGER NOT NULL, pid INTEGER NOT NULL)")
    yield schema
    sql(postgres_dsn, "public", f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def make_cluster(cli: CLI, postgres_dsn: str, pg_schema: str, tmp_path: Path, *,
                 width: int = 40, depth: int = 50, sleep_s: float = 0.02,
                 hold_retries: int = 1) -> Cluster:
    folder = tmp_path / "dags"
    write_dag(folder, "scale.py", SCALE_DAG.format(
        dsn=postgres_dsn, schema=pg_schema, width=width, depth=depth, sleep_s=sleep_s,
        here=str(tmp_path), hold_retries=hold_retries))
    sep = "&" if "?" in postgres_dsn else "?"
    cli.env["AFLOW_STORE"] = f"{postgres_dsn}{sep}schema={pg_schema}"
    return Cluster(cli, postgres_dsn, pg_schema, folder)


def test_schedulers_share_runs_and_adopt_a_killed_ones_runs(
    cli: CLI, postgres_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    """Three schedulers, a 2,000-task DAG (40 chains of 50 tasks, retries=1), three rounds
    of three runs; in each round one scheduler holding a run in progress is SIGKILLed and
    a new one takes its place. Every run succeeds, every task succeeds exactly once, no
    task that had succeeded ran again, and no try ran twice."""
    # Tasks sleep 0.1 s: a run lasts at least 5 s (chains of 50), so on a fast stretch
    # of the machine the runs are still running when all three are triggered and
    # claimed (with 0.02 s they could end before the test saw them claimed).
    cluster = make_cluster(cli, postgres_dsn, pg_schema, tmp_path, sleep_s=0.1)
    servers = [cluster.start() for _ in range(3)]
    for server in servers:
        server.wait_ready()

    for round_no in range(3):
        run_ids = [f"r{round_no}_{k}" for k in range(3)]
        for run_id in run_ids:
            cluster.trigger("scale", run_id)

        def all_claimed() -> dict[str, str] | None:
            owners = cluster.owners(run_ids)  # noqa: B023
            return owners if len(owners) == 3 and all(owners.values()) else None

        owners = wait_until(all_claimed, what="every run to be claimed")
        # spread: three idle schedulers never leave one with every run
        assert len(set(owners.values())) >= 2, owners

        # The victim: a scheduler whose run has made progress and has not ended.
        def victim_run() -> str | None:
            counts = {r["run_id"]: r["n"] for r in cluster.q(
                "SELECT run_id, COUNT(*) AS n FROM executions WHERE run_id = ANY($1::text[]) "
                "GROUP BY run_id", run_ids)}  # noqa: B023
            states = cluster.run_states(run_ids)  # noqa: B023
            for run_id in run_ids:  # noqa: B023
                if states.get(run_id) == "running" and 200 <= counts.get(run_id, 0) <= 1500:
                    return run_id
            return None

        run_id = wait_until(victim_run, what="a run in progress")
        victim_pid = pid_of(cluster.owners([run_id])[run_id])
        victim = next(s for s in servers if s.pid == victim_pid)
        victim.kill()
        # what had committed as succeeded when the process died
        succeeded_before = {
            (r["run_id"], r["task_id"]) for r in cluster.q(
                "SELECT run_id, task_id FROM task_instance WHERE state = 'success' "
                "AND run_id = ANY($1::text[])", run_ids)
        }
        orphaned = [r for r, o in cluster.owners(run_ids).items() if pid_of(o) == victim_pid]
        assert run_id in orphaned
        servers.remove(victim)
        servers.append(cluster.start())  # a replacement "host"

        states = cluster.wait_runs_end(run_ids, servers)
        assert states == dict.fromkeys(run_ids, "success"), states

        tis = cluster.q("SELECT run_id, task_id, state, try_number FROM task_instance "
                        "WHERE run_id = ANY($1::text[])", run_ids)
        assert len(tis) == 3 * 2000
        assert {t["state"] for t in tis} == {"success"}
        final_try = {(t["run_id"], t["task_id"]): t["try_number"] for t in tis}
        executions = cluster.executions(run_ids)
        assert set(executions) == set(final_try)
        for key, tries in executions.items():
            assert len(tries) == len(set(tries)), f"{key}: a try ran twice: {tries}"
            assert tries[-1] == final_try[key], f"{key}: ran {tries}, ended in {final_try[key]}"
            if key in succeeded_before:
                assert tries == [1], f"{key} had succeeded, then ran again: {tries}"
        rerun = {k for k, tries in executions.items() if len(tries) > 1}
        # only tries of the dead process were run again, in its runs only
        assert rerun, "no try of the killed scheduler was retried"
        assert {r for r, _ in rerun} <= set(orphaned), rerun
        assert all(executions[k] == [1, 2] for k in rerun)
        assert len(rerun) <= 32, rerun  # at most its parallelism was running

    for server in servers:
        server.signal(signal.SIGTERM)
    for server in servers:
        assert server.wait_exit() == 0, server.describe()
        assert "missed its lease" not in server.stderr(), server.describe()


def holds(tmp_path: Path) -> list[tuple[int, int]]:
    """(try_number, pid) of each start of the `held` task."""
    path = tmp_path / "hold.log"
    if not path.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in path.read_text().splitlines())]


@pytest.mark.parametrize("retries", [1, 0], ids=["retried", "failed"])
def test_a_running_try_of_a_dead_owner_is_retried_or_failed_by_whoever_adopts_the_run(
    cli: CLI, postgres_dsn: str, pg_schema: str, tmp_path: Path, retries: int
) -> None:
    """A zombie: the TI's row says `running`, the process that ran it is gone (on another
    host, so only its expired lease tells). The scheduler that adopts the run retries the
    try (retries=1) or fails it (retries=0), as the retry policy says."""
    cluster = make_cluster(cli, postgres_dsn, pg_schema, tmp_path, width=1, depth=1,
                           hold_retries=retries)
    first = cluster.start("--sweep", "1")
    first.wait_ready()
    cluster.trigger("hold", "zombie")
    wait_until(lambda: holds(tmp_path), what="held to start")
    second = cluster.start("--sweep", "1")  # idle: the run is owned by `first`
    second.wait_ready()
    first.kill()
    rows = cluster.q("SELECT state, try_number, hostname FROM task_instance "
                     "WHERE run_id = 'zombie'")
    assert [tuple(r) for r in rows] == [("running", 1, "host-1")]

    if retries:
        wait_until(lambda: len(holds(tmp_path)) == 2, what="held's second try")
        assert [t for t, _ in holds(tmp_path)] == [1, 2]
        assert holds(tmp_path)[1][1] == second.pid
        (tmp_path / "release_held").touch()
    states = cluster.wait_runs_end(["zombie"], [second])
    ti = cluster.q("SELECT state, try_number, hostname, error FROM task_instance "
                   "WHERE run_id = 'zombie'")[0]
    if retries:
        assert states == {"zombie": "success"}
        assert (ti["state"], ti["try_number"], ti["hostname"]) == ("success", 2, "host-2")
    else:
        assert states == {"zombie": "failed"}
        assert (ti["state"], ti["try_number"]) == ("failed", 1)
        assert "stopped" in ti["error"] and "try is lost" in ti["error"]
        assert len(holds(tmp_path)) == 1
    second.signal(signal.SIGTERM)
    assert second.wait_exit() == 0, second.describe()


def test_a_run_created_elsewhere_wakes_an_idle_scheduler_through_notify(
    cli: CLI, postgres_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    """The safety sweep is 60 s, beyond this test's waits: only a notification sent with
    the new run (by `aflow dags trigger`, another process) can start it in time."""
    cluster = make_cluster(cli, postgres_dsn, pg_schema, tmp_path, width=2, depth=2,
                           sleep_s=0)
    scheduler = cluster.start("--sweep", "60")
    scheduler.wait_ready()
    # The first run may also be found by the look the scheduler takes once its LISTEN
    # is in place; once it has ended, that look is behind us.
    cluster.trigger("scale", "first")
    assert cluster.wait_runs_end(["first"], [scheduler], timeout=30) == {"first": "success"}
    for n in range(3):  # and each later one on its own notification
        cluster.trigger("scale", f"later{n}")
        assert cluster.wait_runs_end([f"later{n}"], [scheduler], timeout=30) == {
            f"later{n}": "success"
        }
    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait_exit() == 0, scheduler.describe()


ORPHAN_DAGS = '''
import time
from datetime import datetime, timezone
from pathlib import Path

from aflow import DAG, PythonOperator

HERE = Path({here!r})


def block(ti):
    (HERE / f"started_{{ti.run_id}}").touch()
    deadline = time.monotonic() + 120
    while not (HERE / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


with DAG("{dag_id}", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
         max_active_runs=1):
    PythonOperator(task_id="block", python_callable=block, retries=3)
'''


def test_runs_of_a_dag_no_scheduler_defines_fail_with_a_note_after_the_grace(
    cli: CLI, postgres_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    """Scheduler A loads DAG `gone`, scheduler B does not. While A is alive B leaves its
    runs alone (A drives one; the other waits for max_active_runs=1, unowned). Once A is
    dead and `gone` has not been recorded for the grace period, B fails both runs with a
    note, and the running TI is marked removed."""
    with_gone, without = tmp_path / "dags_a", tmp_path / "dags_b"
    write_dag(with_gone, "gone.py", ORPHAN_DAGS.format(here=str(tmp_path), dag_id="gone"))
    write_dag(with_gone, "stay.py", ORPHAN_DAGS.format(here=str(tmp_path), dag_id="stay"))
    write_dag(without, "stay.py", ORPHAN_DAGS.format(here=str(tmp_path), dag_id="stay"))
    cluster = make_cluster(cli, postgres_dsn, pg_schema, tmp_path)
    grace = ["--orphan-grace", "2", "--sweep", "1"]
    cluster.folder = with_gone
    a = cluster.start(*grace)
    a.wait_ready()
    cluster.trigger("gone", "g1")
    cluster.trigger("gone", "g2")
    wait_until(lambda: (tmp_path / "started_g1").exists(), what="g1 to run")
    cluster.folder = without
    b = cluster.start(*grace)
    b.wait_ready()

    def stay_recorded() -> Any:
        return cluster.q("SELECT updated_at FROM dag WHERE dag_id = 'stay'")[0]["updated_at"]

    # B re-records its DAGs, then checks for orphans, every second: let it check a few
    # times after the grace of g2 (queued, unowned) has passed while A is alive.
    created = cluster.q("SELECT MAX(created_at) AS c FROM dag_run")[0]["c"]
    seen: list[Any] = []

    def checked_thrice() -> bool:
        at = stay_recorded()
        if at > created and at not in seen:
            seen.append(at)
        return len(seen) >= 4

    wait_until(checked_thrice, what="B's orphan checks")
    assert cluster.run_states(["g1", "g2"]) == {"g1": "running", "g2": "queued"}

    a.kill()
    states = cluster.wait_runs_end(["g1", "g2"], [b])
    assert states == {"g1": "failed", "g2": "failed"}
    notes = {r["run_id"]: r["note"] for r in cluster.q("SELECT run_id, note FROM dag_run")}
    for run_id in ("g1", "g2"):
        assert notes[run_id].startswith("DAG gone is no longer defined"), notes
    tis = cluster.q("SELECT run_id, state, error FROM task_instance WHERE dag_id = 'gone'")
    assert [(t["run_id"], t["state"]) for t in tis] == [("g1", "removed")]
    assert "no longer defined" in tis[0]["error"]
    assert "DAG gone is no longer defined" in b.stderr()
    assert not (tmp_path / "started_g2").exists()

    (tmp_path / "release").touch()
    b.signal(signal.SIGTERM)
    assert b.wait_exit() == 0, b.describe()
