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
from benchmarks.measure import SharedStamps, Stamps
from benchmarks.registry import scenario


def stamp_size(n: int) -> int:
    return n + 2


def build(n: int, stamps: Stamps | SharedStamps) -> DAG:
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
    max_schedulers=8,
)
async def fanout(ctx: BenchContext) -> Outcome:
    n = ctx.n
    stamps = ctx.stamps(stamp_size(n))
    ctx.progress(f"building DAG: start → {n} tasks → join")
    dag = build(n, stamps)
    window, _run, rss_before = await ctx.run_dag(dag)
    hops: list[float] = []
    join_hops: list[float] = []
    first_fan_hops: list[float] = []
    firsts: list[float] = []
    lasts: list[float] = []
    for run_stamps in ctx.stamps_of_runs(stamps):
        if missing := run_stamps.missing():
            raise BenchmarkFailed(f"{missing} task(s) did not record their start and end")
        start_end = run_stamps.end[0]
        run_hops = [s - start_end for s in run_stamps.start[1 : n + 1]]
        join_hop = run_stamps.start[n + 1] - max(run_stamps.end[1 : n + 1])
        hops += run_hops
        hops.append(join_hop)
        join_hops.append(join_hop)
        first_fan_hops.append(min(run_hops))
        firsts.append(run_stamps.start[0])
        lasts.append(run_stamps.end[n + 1])
    return Outcome(
        window=window,
        tis=(n + 2) * ctx.runs,
        hops_s=hops,
        rss_before_run_mib=rss_before,
        extra={
            "join_hop_ms": round(max(join_hops) * 1000, 4),
            # the earliest fan task's hop: no wait for a slot, but it includes the engine
            # deciding and committing all N downstream TIs before the first one starts
            "first_fan_hop_ms": round(min(first_fan_hops) * 1000, 4),
            "trigger_to_first_ms": round((min(firsts) - window.t0) * 1000, 4),
            "last_to_end_ms": round((window.t1 - max(lasts)) * 1000, 4),
        },
    )
