"""chain: N no-op async tasks in a line (t0 >> t1 >> … >> tN-1), one run.

Each callable stamps `time.perf_counter()` when entered and just before it returns None.
A hop is one task's end (its callable returning) to the next task's start (its callable
entered): N - 1 hops, each a full pass through the engine — outcome committed, downstream
evaluated, the next try's running state committed, the next callable called.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aflow import DAG, PythonOperator
from benchmarks.harness import BenchContext, BenchmarkFailed, Outcome
from benchmarks.measure import SharedStamps, Stamps
from benchmarks.registry import scenario


def stamp_size(n: int) -> int:
    return n


def build(n: int, stamps: Stamps | SharedStamps) -> DAG:
    fn = stamps.callable()
    width = len(str(n))
    with DAG(
        "bench_chain",
        schedule=None,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        max_active_runs=1,
    ) as dag:
        prev = None
        for i in range(n):
            t = PythonOperator(task_id=f"t_{i:0{width}d}", python_callable=fn, op_kwargs={"i": i})
            if prev is not None:
                prev >> t
            prev = t
    return dag


@scenario(
    "chain",
    description="N no-op async tasks in a line; per-hop latency through the engine",
    default_n=200,
    default_parallelism=256,
    max_schedulers=8,
)
async def chain(ctx: BenchContext) -> Outcome:
    n = ctx.n
    stamps = ctx.stamps(stamp_size(n))
    ctx.progress(f"building DAG: chain of {n} tasks")
    dag = build(n, stamps)
    window, _run, rss_before = await ctx.run_dag(dag)
    hops: list[float] = []
    firsts: list[float] = []
    lasts: list[float] = []
    for run_stamps in ctx.stamps_of_runs(stamps):
        if missing := run_stamps.missing():
            raise BenchmarkFailed(f"{missing} task(s) did not record their start and end")
        hops += [run_stamps.start[i + 1] - run_stamps.end[i] for i in range(n - 1)]
        firsts.append(run_stamps.start[0])
        lasts.append(run_stamps.end[n - 1])
    return Outcome(
        window=window,
        tis=n * ctx.runs,
        hops_s=hops,
        rss_before_run_mib=rss_before,
        extra={
            "trigger_to_first_ms": round((min(firsts) - window.t0) * 1000, 4),
            "last_to_end_ms": round((window.t1 - max(lasts)) * 1000, 4),
        },
    )
