"""What a scenario gets (`BenchContext`) and gives back (`Outcome`), and the standard way to
run one DAG through a real Orchestrator with only the run measured (`BenchContext.run_dag`)."""

from __future__ import annotations

import gc
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio

from aflow import DAG, DagRunState, Orchestrator
from aflow.store.records import DagRunRecord
from benchmarks.measure import SharedStamps, Stamps, Window, peak_rss_mib


class BenchmarkFailed(Exception):
    """The scenario did not run as it should (run failed, a task did not record, timeout):
    its figures would be meaningless, so none are printed."""


def store_kind(url: str) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else "sqlite"
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        return "postgresql"
    if scheme.startswith("sqlite"):
        return "sqlite"
    return scheme


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to print and to store in results."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class Outcome:
    """What a scenario measured.

    `window` is the measured interval (trigger → run end); `tis` how many task instances ran
    in it (tis_per_s = tis / wall); `hops_s` the hop latencies in seconds (the runner reports
    their p50/p99/max in ms); `extra` any scenario-specific keys for the JSON record.
    """

    window: Window
    tis: int
    hops_s: list[float]
    rss_before_run_mib: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchContext:
    scenario: str
    n: int
    parallelism: int
    schedulers: int
    store_arg: str | None  # --store as given; None: a fresh SQLite file in `workdir`
    workdir: Path  # a fresh temporary directory for this run (the Orchestrator home)
    sqlite_synchronous: str = "NORMAL"
    timeout_s: float = 600.0
    quiet: bool = False
    # The scenario's own options (registry.Option), by `dest`, defaults filled in.
    options: dict[str, Any] = field(default_factory=dict)
    runs: int = 1  # runs started at once (spread over the schedulers by their claims)
    # A PostgreSQL store gets a schema of its own per benchmark run (dropped afterwards).
    schema: str = field(default_factory=lambda: f"aflow_bench_{uuid.uuid4().hex[:12]}")
    _shared: SharedStamps | None = None
    # Keys the harness adds to the record (e.g. runs_by_scheduler).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store_url(self) -> str:
        if self.store_arg is None:
            return f"sqlite:///{self.workdir / 'aflow.db'}"
        if store_kind(self.store_arg) == "postgresql":  # the last schema= wins
            sep = "&" if "?" in self.store_arg else "?"
            return f"{self.store_arg}{sep}schema={self.schema}"
        return self.store_arg

    @property
    def multi(self) -> bool:
        """Several schedulers or several runs: runs are created unowned and claimed."""
        return self.schedulers > 1 or self.runs > 1

    def run_ids(self) -> list[str]:
        tag = uuid.uuid5(uuid.NAMESPACE_URL, str(self.workdir)).hex[:12]
        return [f"bench__{self.scenario}__{tag}__{k}" for k in range(self.runs)]

    def stamps(self, size: int) -> Stamps | SharedStamps:
        """Where the task callables stamp: in this process for one run driven here, else
        in a file that the scheduler processes share."""
        if not self.multi:
            return Stamps(size)
        self._shared = SharedStamps(self.workdir / "stamps.bin", size, self.run_ids(), create=True)
        return self._shared

    def stamps_of_runs(self, stamps: Stamps | SharedStamps) -> list[Stamps]:
        if isinstance(stamps, SharedStamps):
            return [stamps.for_run(k) for k in range(self.runs)]
        return [stamps]

    async def drop_schema(self) -> None:
        """Drop this run's own PostgreSQL schema (nothing for SQLite)."""
        if self.store_arg is None or store_kind(self.store_arg) != "postgresql":
            return
        import asyncpg

        from aflow.store.postgres.url import parse_postgres_url, quote_ident

        conn = await asyncpg.connect(parse_postgres_url(self.store_url).dsn, timeout=10)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(self.schema)} CASCADE")
        finally:
            await conn.close()

    def progress(self, message: str) -> None:
        """A human progress line on stderr (stdout carries only the JSON records)."""
        if not self.quiet:
            print(f"[bench {self.scenario}] {message}", file=sys.stderr, flush=True)

    @asynccontextmanager
    async def orchestrator(self, dags: Iterable[DAG], **kwargs: Any) -> AsyncIterator[Orchestrator]:
        """An in-process Orchestrator over this run's home and store, with nothing scheduled
        by timetable (runs are triggered by the scenario)."""
        kwargs.setdefault("schedule", False)
        kwargs.setdefault("parallelism", self.parallelism)
        kwargs.setdefault("shutdown_grace_s", 5.0)
        kwargs.setdefault("sqlite_synchronous", self.sqlite_synchronous)
        async with Orchestrator(
            list(dags), home=self.workdir / "home", store=self.store_url, **kwargs
        ) as o:
            yield o

    async def run_dag(
        self, dag: DAG, conf: dict[str, Any] | None = None
    ) -> tuple[Window, DagRunRecord, float]:
        if self.multi:
            return await self._run_dag_multi(dag, conf)
        return await self._run_dag_one(dag, conf)

    async def _run_dag_one(
        self, dag: DAG, conf: dict[str, Any] | None = None
    ) -> tuple[Window, DagRunRecord, float]:
        """Start an Orchestrator for `dag`, then measure one triggered run of it from the
        trigger call to the run's end (Orchestrator start-up and shutdown not included).

        Returns (window, final run record, peak RSS in MiB just before the trigger).
        Raises BenchmarkFailed if the run does not succeed within the timeout.
        """
        async with self.orchestrator([dag]) as o:
            run_id = f"bench__{self.scenario}__{uuid.uuid4().hex[:12]}"
            gc.collect()  # leftovers of DAG construction are not the run's cost
            rss_before = peak_rss_mib()
            self.progress(f"triggering run {run_id}")
            window = Window.start()
            try:
                handle = await o.trigger(dag.dag_id, conf=conf, run_id=run_id)
                final = await handle.wait(timeout=self.timeout_s)
            except TimeoutError:
                o.cut_grace_short()
                raise BenchmarkFailed(
                    f"run {run_id} did not end within {self.timeout_s:g}s"
                ) from None
            window.stop()
            if final.state is not DagRunState.SUCCESS:
                tis = await handle.task_instances()
                bad = [f"{t.task_id}={t.state.value}" for t in tis if t.state.value != "success"]
                raise BenchmarkFailed(
                    f"run {run_id} ended {final.state.value}; not successful: {', '.join(bad[:10])}"
                )
            self.progress(f"run ended in {window.wall_s:.3f}s; shutting down")
        return window, final, rss_before

    async def _run_dag_multi(
        self, dag: DAG, conf: dict[str, Any] | None = None
    ) -> tuple[Window, DagRunRecord, float]:
        """`runs` runs of `dag`, created unowned at once and claimed by `schedulers`
        scheduler processes: this one and `schedulers - 1` children (benchmarks.worker),
        all over one store. Measured from the first run's creation to the last run's end.
        Adds `runs_by_scheduler` (runs each scheduler drove, most first) to `self.extra`."""
        from aflow.runtime.run_factory import manual_interval, new_run
        from aflow.states import RunType

        assert self._shared is not None, "build the DAG with ctx.stamps() first"
        async with AsyncExitStack() as stack:
            children = [
                await stack.enter_async_context(self._child_scheduler(k))
                for k in range(1, self.schedulers)
            ]
            o = await stack.enter_async_context(self.orchestrator([dag], lease_s=MULTI_LEASE_S))
            for child in children:
                await child.ready()
            # Each scheduler counts its live peers at most every lease_s / 3: let every
            # count be older than that, so the claims see all the peers.
            await anyio.sleep(MULTI_LEASE_S / 3 + 0.2)
            store = o.store
            records = []
            for run_id in self.run_ids():
                now = o.clock.now()
                run, _ = new_run(
                    dag, run_type=RunType.MANUAL, logical_date=now, now=now,
                    data_interval=manual_interval(dag, now), conf=conf, run_id=run_id,
                    triggered_by="benchmark",
                )
                records.append(run)
            gc.collect()
            rss_before = peak_rss_mib()
            self.progress(f"creating {self.runs} runs for {self.schedulers} scheduler(s)")
            window = Window.start()
            for run in records:
                await store.create_run(run, [])
            finals = []
            with anyio.move_on_after(self.timeout_s) as scope:
                for run in records:
                    while True:
                        final = await store.get_run(run.dag_id, run.run_id)
                        if final is not None and final.state in (
                            DagRunState.SUCCESS, DagRunState.FAILED
                        ):
                            finals.append(final)
                            break
                        await anyio.sleep(0.002)
            window.stop()
            if scope.cancelled_caught:
                o.cut_grace_short()
                raise BenchmarkFailed(f"the runs did not end within {self.timeout_s:g}s")
            bad = [f.run_id for f in finals if f.state is not DagRunState.SUCCESS]
            if bad:
                raise BenchmarkFailed(f"runs not successful: {', '.join(bad)}")
            by_owner: dict[str, int] = {}
            for f in finals:
                by_owner[f.owner or "?"] = by_owner.get(f.owner or "?", 0) + 1
            self.extra["runs_by_scheduler"] = sorted(by_owner.values(), reverse=True)
            self.progress(f"runs ended in {window.wall_s:.3f}s; shutting down")
        return window, finals[0], rss_before

    @asynccontextmanager
    async def _child_scheduler(self, k: int) -> AsyncIterator[_Child]:
        import subprocess

        assert self._shared is not None
        args = [
            sys.executable, "-m", "benchmarks.worker",
            "--scenario", self.scenario, "--n", str(self.n), "--store", self.store_url,
            "--home", str(self.workdir / f"home-{k}"), "--parallelism", str(self.parallelism),
            "--stamps", str(self._shared.path), "--lease", str(MULTI_LEASE_S),
            "--runs", ",".join(self.run_ids()),
        ]
        proc = await anyio.open_process(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=None)
        child = _Child(proc)
        try:
            yield child
        finally:
            with anyio.CancelScope(shield=True):
                if proc.stdin is not None:
                    await proc.stdin.aclose()  # the child stops when its stdin closes
                with anyio.move_on_after(30):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


MULTI_LEASE_S = 3.0  # short, so that peers are counted again soon (see _run_dag_multi)


class _Child:
    def __init__(self, proc: Any) -> None:
        self.proc = proc

    async def ready(self) -> None:
        """Wait for the child's "ready" line (its scheduler is claiming)."""
        buffer = b""
        with anyio.fail_after(120):
            while b"ready" not in buffer:
                chunk = await self.proc.stdout.receive()
                if not chunk:
                    raise BenchmarkFailed("a scheduler process exited before it was ready")
                buffer += chunk
