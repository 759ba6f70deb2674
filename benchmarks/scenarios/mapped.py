"""mapped: one task mapped over N elements of an upstream XCom, then a reduce.

`numbers` returns list(range(N)); `double` is `@task async def double(x)` expanded over it
(N task instances, map_index 0..N-1, each returning 2x); `total` receives the collected
list of the N values and returns its sum, which is checked. Hops, 2 per run:

* `numbers`' end → the first instance's start (resolving the input, committing N `none`
  rows in one transaction, sending N instances to the slots);
* the last instance's end → `total`'s start (collecting N XComs into one list).

tis_per_s counts the N instances plus the two plain tasks over the whole run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aflow import DAG, task
from benchmarks.harness import BenchContext, BenchmarkFailed, Outcome
from benchmarks.registry import scenario


class _Marks:
    """perf_counter stamps of the run, written by its tasks (one process)."""

    def __init__(self) -> None:
        self.numbers_end = 0.0
        self.first_start = float("inf")
        self.last_end = 0.0
        self.total_start = 0.0
        self.total: int | None = None


def build(n: int, marks: _Marks) -> DAG:
    with DAG(
        "bench_mapped",
        schedule=None,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        max_active_tasks=n + 2,
        max_active_runs=1,
    ) as dag:

        @task
        async def numbers() -> list[int]:
            marks.numbers_end = time.perf_counter()
            return list(range(n))

        @task
        async def double(x: int) -> int:
            marks.first_start = min(marks.first_start, time.perf_counter())
            value = 2 * x
            marks.last_end = time.perf_counter()
            return value

        @task
        async def total(values: list[int]) -> int:
            marks.total_start = time.perf_counter()
            marks.total = sum(values)
            return marks.total

        total(double.expand(x=numbers()))
    return dag


@scenario(
    "mapped",
    description="one @task mapped over N upstream values, then a reduce; mapped TIs/s and RSS",
    default_n=100_000,
    default_parallelism=256,
)
async def mapped(ctx: BenchContext) -> Outcome:
    n = ctx.n
    marks = _Marks()
    ctx.progress(f"building DAG: numbers → double mapped over {n} → total")
    dag = build(n, marks)
    window, _run, rss_before = await ctx.run_dag(dag)
    expected = n * (n - 1)
    if marks.total != expected:
        raise BenchmarkFailed(f"the reduce saw a sum of {marks.total}, expected {expected}")
    expand_hop = marks.first_start - marks.numbers_end
    reduce_hop = marks.total_start - marks.last_end
    mapped_s = marks.last_end - marks.first_start
    return Outcome(
        window=window,
        tis=n + 2,
        hops_s=[expand_hop, reduce_hop],
        rss_before_run_mib=rss_before,
        extra={
            "expand_hop_ms": round(expand_hop * 1000, 3),
            "reduce_hop_ms": round(reduce_hop * 1000, 3),
            "mapped_tis_per_s": round(n / mapped_s, 1) if mapped_s > 0 else None,
        },
    )
