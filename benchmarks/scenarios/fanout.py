"""fanout: start → N no-op async tasks → join, all in one run.

Every task is a PythonOperator whose `async def` callable stamps `time.perf_counter()` when
it is entered and just before it returns None (start and join use the same callable instead
of EmptyOperator, so they can stamp too). Hops, N + 1 of them:

* for each fan task: start task's end → that fan task's start. With N above the parallelism
  this includes waiting for a free slot, so the distribution spans the whole fan-out: it is
  the dispatch latency a task sees, not only the per-hop overhead;
* the last fan task's end → join's start (also reported alone as `join_hop_ms`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from aflow import DAG, PythonOperator
from benchmarks.harness import BenchContext, BenchmarkFailed, Outcome
from benchmarks.measure import Stamps
from benchmarks.registry import scenario


def build(n: int, stamps: Stamps) -> DAG:
    """Index 0 is `start`, 1..n the fan tasks, n + 1 `join`."""
    fn = stamps.callable()
    width = len(str(n))
    with DAG(
        "bench_fanout",
        schedule=None,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        max_active_tasks=n,
        max_active_runs=1,
    ) as dag:
        start = PythonOperator(task_id="start", python_callable=fn, op_kwargs={"i": 0})
        join = PythonOperator(task_id="join", python_callable=fn, op_kwargs={"i": n + 1})
        for i in range(1, n + 1):
            t = PythonOperator(task_id=f"fan_{i:0{width}d}", python_callable=fn, op_kwargs={"i": i})
            start >> t
            t >> join
    return dag


@scenario(
    "fanout",
    description="start → N no-op async tasks → join; throughput and dispatch latency",
    default_n=10_000,
    default_parallelism=256,
)
async def fanout(ctx: BenchContext) -> Outcome:
    n = ctx.n
    stamps = Stamps(n + 2)
    ctx.progress(f"building DAG: start → {n} tasks → join")
    dag = build(n, stamps)
    window, _run, rss_before = await ctx.run_dag(dag)
    if missing := stamps.missing():
        raise BenchmarkFailed(f"{missing} task(s) did not record their start and end")
    start_end = stamps.end[0]
    fan_starts = stamps.start[1 : n + 1]
    last_fan_end = max(stamps.end[1 : n + 1])
    join_hop = stamps.start[n + 1] - last_fan_end
    hops = [s - start_end for s in fan_starts]
    hops.append(join_hop)
    return Outcome(
        window=window,
        tis=n + 2,
        hops_s=hops,
        rss_before_run_mib=rss_before,
        extra={
            "join_hop_ms": round(join_hop * 1000, 4),
            # the earliest fan task's hop: no wait for a slot, but it includes the engine
            # deciding and committing all N downstream TIs before the first one starts
            "first_fan_hop_ms": round(min(hops[:-1]) * 1000, 4),
            "trigger_to_first_ms": round((stamps.start[0] - window.t0) * 1000, 4),
            "last_to_end_ms": round((window.t1 - stamps.end[n + 1]) * 1000, 4),
        },
    )
