"""parse: N generated DAG files of 10 tasks each, loaded and then re-parsed live, while
the `chain` DAG runs.

1. N files (`dag_00000.py` …), each one DAG of 10 chained PythonOperators, are written
   to a fresh folder. The Orchestrator is started on that folder (parser processes, then
   the parent's import of every cleanly parsed file): `parse_s` is the DagProcessor's
   first load of all N files.
2. The `chain` DAG (`--chain-tasks` no-op async tasks in a line, built in-process as
   the `chain` scenario does) is added to the same Orchestrator and run twice while
   nothing else happens: `hop_ms_p50_idle` is the median hop of those runs.
3. Every file's mtime is touched at once; the folder watcher re-parses all N. Chain runs
   are started one after the other until every DAG has been reloaded (`reparse_s`, from
   the touch to the last reload); `hop_ms_p50_during_parse` is the median hop of those
   runs. The standard hop keys (`hop_ms_p50` …) report the same hops, and the window
   (`wall_s`) is the re-parse phase.

Target (issue 5): hop_ms_p50_during_parse within 2× hop_ms_p50_idle.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import anyio
import anyio.to_thread

from aflow import DagRunState, Orchestrator
from aflow.runtime.dag_processor import BagChange
from benchmarks.harness import BenchContext, BenchmarkFailed, Outcome
from benchmarks.measure import Stamps, Window, peak_rss_mib, percentile
from benchmarks.registry import Option, scenario
from benchmarks.scenarios.chain import build

TASKS_PER_FILE = 10

FILE = """\
from datetime import UTC, datetime

from aflow import DAG, PythonOperator


def work(i):
    return i


with DAG("parse_{k:05d}", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC),
         tags=["generated"]):
    prev = None
    for i in range({tasks}):
        t = PythonOperator(task_id=f"t_{{i}}", python_callable=work, op_args=[i])
        if prev is not None:
            prev >> t
        prev = t
"""


def generate(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        (folder / f"dag_{k:05d}.py").write_text(FILE.format(k=k, tasks=TASKS_PER_FILE))


def touch_all(folder: Path) -> None:
    now = time.time() + 1  # a different mtime even on coarse-grained filesystems
    for path in sorted(folder.glob("*.py")):
        os.utime(path, (now, now))


async def run_chain(o: Orchestrator, ctx: BenchContext, dag_id: str, stamps: Stamps) -> list[float]:
    n = len(stamps.start)
    stamps.start[:] = [float("nan")] * n
    stamps.end[:] = [float("nan")] * n
    handle = await o.trigger(dag_id, run_id=f"bench__parse__{uuid.uuid4().hex[:12]}")
    try:
        final = await handle.wait(timeout=ctx.timeout_s)
    except TimeoutError:
        o.cut_grace_short()
        raise BenchmarkFailed(f"a chain run did not end within {ctx.timeout_s:g}s") from None
    if final.state is not DagRunState.SUCCESS:
        raise BenchmarkFailed(f"a chain run ended {final.state.value}")
    if missing := stamps.missing():
        raise BenchmarkFailed(f"{missing} task(s) did not record their start and end")
    return [stamps.start[i + 1] - stamps.end[i] for i in range(n - 1)]


@scenario(
    "parse",
    description="N generated DAG files (10 tasks each): load time, and chain hop latency "
    "idle vs while all files are re-parsed",
    default_n=1000,
    default_parallelism=256,
    stores=("sqlite", "postgresql"),
    options=(
        Option("--chain-tasks", int, 200, "tasks of the chain DAG whose hops are measured",
               minimum=2),
    ),
)
async def parse(ctx: BenchContext) -> Outcome:
    n = ctx.n
    folder = ctx.workdir / "dags"
    ctx.progress(f"writing {n} DAG files of {TASKS_PER_FILE} tasks to {folder}")
    await anyio.to_thread.run_sync(generate, folder, n)
    stamps = Stamps(ctx.options["chain_tasks"])
    chain = build(len(stamps.start), stamps)
    expected = {f"parse_{k:05d}" for k in range(n)}

    ctx.progress("starting the Orchestrator on the folder (first parse)")
    t0 = time.perf_counter()
    async with Orchestrator(
        folder,
        home=ctx.workdir / "home",
        store=ctx.store_url,
        schedule=False,
        parallelism=ctx.parallelism,
        shutdown_grace_s=5.0,
        sqlite_synchronous=ctx.sqlite_synchronous,
    ) as o:
        parse_s = time.perf_counter() - t0
        loaded = set(o.dagbag.dags)
        if loaded != expected or o.dagbag.import_errors:
            raise BenchmarkFailed(
                f"{len(loaded & expected)} of {n} DAGs loaded; "
                f"{len(o.dagbag.import_errors)} import errors"
            )
        ctx.progress(f"{n} files loaded in {parse_s:.2f}s; running the chain idle")
        o.dagbag.add_dag(chain, "<memory>")
        idle: list[float] = []
        for _ in range(2):
            idle += await run_chain(o, ctx, chain.dag_id, stamps)

        reloaded: set[str] = set()
        done = anyio.Event()

        def on_change(change: BagChange) -> None:
            reloaded.update(change.loaded & expected)
            if reloaded == expected:
                done.set()

        o.on_dags_changed.append(on_change)
        rss_before = peak_rss_mib()
        ctx.progress("touching every file; running the chain while they are re-parsed")
        window = Window.start()
        await anyio.to_thread.run_sync(touch_all, folder)
        during: list[float] = []
        runs = 0
        with anyio.fail_after(ctx.timeout_s):
            while not done.is_set():
                during += await run_chain(o, ctx, chain.dag_id, stamps)
                runs += 1
            reparse_s = time.perf_counter() - window.t0
        window.stop()
        ctx.progress(f"re-parsed {n} files in {reparse_s:.2f}s during {runs} chain run(s)")
    return Outcome(
        window=window,
        tis=runs * len(stamps.start),
        hops_s=during,
        rss_before_run_mib=rss_before,
        extra={
            "files": n,
            "tasks_per_file": TASKS_PER_FILE,
            "parse_s": round(parse_s, 3),
            "reparse_s": round(reparse_s, 3),
            "chain_runs_during_parse": runs,
            "hop_ms_p50_idle": round(percentile(idle, 50) * 1000, 4),
            "hop_ms_p50_during_parse": round(percentile(during, 50) * 1000, 4),
        },
    )
