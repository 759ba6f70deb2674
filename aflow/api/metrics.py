"""`/metrics`: Prometheus text, with the names Airflow users already graph (Airflow's
statsd names with `_` for `.`, prefixed `aflow_`), made by prometheus_client.

Gauges are read from the orchestrator when scraped (no bookkeeping on the hot path);
histograms are fed as things happen. Each application has its own registry, so several
orchestrators in one process (tests, embedding) never mix their figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from aflow.orchestrator import Orchestrator

LAG_PERIOD_S = 0.25
WEBHOOK_RUNS_KEPT = 100_000
DELAY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class OrchestratorCollector(Collector):
    """Figures of one orchestrator, read at scrape time."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.o = orchestrator

    def collect(self) -> Iterator[Any]:
        o = self.o
        running = o.slots_in_use
        queued = o._slots.waiting if o._slots is not None else 0  # noqa: SLF001 - same package
        yield _gauge("aflow_executor_running_tasks", "tries holding an execution slot", running)
        yield _gauge("aflow_executor_queued_tasks", "ready tries waiting for a slot", queued)
        yield _gauge("aflow_executor_open_slots", "free execution slots (parallelism)",
                     max(o.parallelism - running, 0))
        driver = o.driver
        deferred = 0
        if driver is not None:
            deferred = sum(
                1 for rs in driver.runs.values() for ti in rs.all_tis()
                if ti.state.value == "deferred"
            )
        yield _gauge("aflow_scheduler_tasks_deferred", "deferred task instances of the runs "
                     "this process drives (they hold no slot)", deferred)
        yield _gauge("aflow_scheduler_dagruns_running", "runs this process drives",
                     len(driver.runs) if driver is not None else 0)
        triggerer = o.triggerer
        if triggerer is not None:
            yield _gauge("aflow_triggers_running", "triggers parked in this triggerer",
                         len(triggerer.running))
            yield _gauge("aflow_triggerer_capacity_left", "more triggers it can park",
                         triggerer.capacity_left)
        slots = o._slots  # noqa: SLF001 - same package
        if slots is not None:
            used = GaugeMetricFamily("aflow_pool_running_slots", "slots of each pool held by "
                                     "tries of this process (deferred holds included)",
                                     labels=["pool"])
            free = GaugeMetricFamily("aflow_pool_open_slots", "free slots of each pool in this "
                                     "process (-1: no limit)", labels=["pool"])
            for name, pool in sorted(slots.pools.items()):
                held = slots.pool_used.get(name, 0)
                used.add_metric([name], held)
                free.add_metric([name], -1 if pool.slots < 0 else max(pool.slots - held, 0))
            yield used
            yield free
        yield _gauge("aflow_dag_processing_import_errors", "DAG files that failed to import",
                     len(o.dagbag.import_errors))
        yield _gauge("aflow_dagbag_size", "DAGs loaded", len(o.dagbag.dags))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class Metrics:
    """The registry of one application and the histograms it feeds."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(OrchestratorCollector(orchestrator))
        self.start_delay = Histogram(
            "aflow_task_start_delay_seconds",
            "a ready try's wait for an execution slot (its pool and DAG limits included)",
            buckets=DELAY_BUCKETS, registry=self.registry,
        )
        self.commit = Histogram(
            "aflow_store_commit_seconds", "one group-committed store transaction",
            buckets=DELAY_BUCKETS, registry=self.registry,
        )
        self.commit_ops = Histogram(
            "aflow_store_commit_ops", "writes in one group-committed transaction",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000), registry=self.registry,
        )
        self.webhook_to_start = Histogram(
            "aflow_webhook_to_start_seconds",
            "a webhook request's arrival to its run's first try starting (in this process)",
            buckets=DELAY_BUCKETS, registry=self.registry,
        )
        # runs created by webhooks and not started yet: (dag_id, run_id) -> arrival
        self._webhook_runs: OrderedDict[tuple[str, str], float] = OrderedDict()
        slots = orchestrator._slots  # noqa: SLF001 - same package: the process's slots
        if slots is not None:
            slots.on_start = self.start_delay.observe
        if orchestrator.driver is not None:
            orchestrator.driver.on_try_started.append(self._try_started)
        orchestrator.store.observe_commits(self._commit)
        self.loop_lag = Histogram(
            "aflow_event_loop_lag_seconds",
            f"how late a {LAG_PERIOD_S}s sleep of the event loop wakes up",
            buckets=LAG_BUCKETS, registry=self.registry,
        )

    def webhook_run_created(self, dag_id: str, run_id: str, arrived: float) -> None:
        """A webhook creates this run; its first try's start is observed (runs driven
        by another process are forgotten once WEBHOOK_RUNS_KEPT newer ones came)."""
        self._webhook_runs[(dag_id, run_id)] = arrived
        while len(self._webhook_runs) > WEBHOOK_RUNS_KEPT:
            self._webhook_runs.popitem(last=False)

    def webhook_run_forgotten(self, dag_id: str, run_id: str) -> None:
        self._webhook_runs.pop((dag_id, run_id), None)

    def _try_started(self, rs: Any, ti: Any) -> None:
        if self._webhook_runs:
            arrived = self._webhook_runs.pop(rs.key, None)
            if arrived is not None:
                self.webhook_to_start.observe(time.monotonic() - arrived)

    def _commit(self, seconds: float, ops: int) -> None:
        self.commit.observe(seconds)
        self.commit_ops.observe(ops)

    async def watch_loop_lag(self) -> None:
        """Until cancelled: sample the event loop's lag."""
        while True:
            start = time.monotonic()
            await anyio.sleep(LAG_PERIOD_S)
            self.loop_lag.observe(max(time.monotonic() - start - LAG_PERIOD_S, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("aflow_metrics", Metrics)


async def watch_loop_lag(app: web.Application) -> AsyncIterator[None]:
    """The app's cleanup context: sample the loop's lag while the app is up."""
    task = asyncio.get_running_loop().create_task(app[METRICS].watch_loop_lag())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def metrics_page(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
