"""What a scenario gets (`BenchContext`) and gives back (`Outcome`), and the standard way to
run one DAG through a real Orchestrator with only the run measured (`BenchContext.run_dag`)."""

from __future__ import annotations

import gc
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aflow import DAG, DagRunState, Orchestrator
from aflow.store.records import DagRunRecord
from benchmarks.measure import Window, peak_rss_mib


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

    @property
    def store_url(self) -> str:
        return self.store_arg or f"sqlite:///{self.workdir / 'aflow.db'}"

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
