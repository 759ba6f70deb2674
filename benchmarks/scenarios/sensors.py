"""sensors: N deferrable sensors parked in one process, then 10,000 conditions true at once.

Shape. One DAG, `bench_sensors`, with S sensors (`--sensors-per-run`, default 1000), run R =
N / S times at once (all runs active, so every sensor of every run defers together):

* half the sensors wait for time, far in the future (a day away, never reached during the
  test): alternately `DateTimeSensor(target_time=<tomorrow>)` and `TimeDeltaSensor(delta=1
  day)`, both deferrable (the triggerer's `DateTimeTrigger` on its shared timer queue);
* the other half are deferrable `FileSensor`s on ONE landing directory, each on its own file
  `<landing>/{{ run_id }}.<k>.ready` (templated, as an Airflow user writes it, so one DAG
  serves every run), each followed by a `process_<k>` task whose async callable stamps
  `time.perf_counter()` when it is entered.

If S does not divide N, a second DAG (`bench_sensors_rest`) runs once with the remainder.
DAG `max_active_runs` = R and `max_active_tasks` = every task of every run, so only
`--parallelism` limits how many sensors execute (and defer) at once.

Phases, all in one Orchestrator over a fresh SQLite file:

1. park: trigger the R runs, then wait until all N TIs are deferred (their trigger rows
   committed) and the triggerer has claimed all N triggers. That interval is the record's
   window: `wall_s` = `park_s`, `tis` = N, `tis_per_s` = sensors parked per second, and
   `cpu_s` the CPU it took. Then wait until the loop is idle (`settle_s`: three 50 ms sleeps
   in a row each wake within 10 ms), so every trigger is waiting, and read VmRSS
   (`parked_rss_mib`).
2. parked: sleep `--park-seconds` and report the process's CPU over it as a percentage of
   one core (`parked_cpu_pct`, from getrusage(RUSAGE_SELF) deltas: every thread, including
   the store's and the file watcher's).
3. fire: F = min(10000, N/2) landing files are created as fast as possible by one thread
   (the loop stays free), spread evenly over the runs; the moment each file exists
   (`perf_counter()` right after its `os.open` returns) is its condition-true time. Each
   hop is that moment → its `process_<k>` callable entered; the standard hop keys and
   `fire_to_start_ms_p50`/`_p99` report them. `fired` counts downstream tasks that started
   within `--fire-timeout` seconds, `lost` those that did not.

Nothing is asserted about the figures; a run fails (no record) only when parking does not
complete within `--timeout` or a downstream task starts whose file was never created.
"""

from __future__ import annotations

import gc
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from aflow import DAG, DateTimeSensor, FileSensor, PythonOperator, TimeDeltaSensor
from benchmarks.harness import BenchContext, BenchmarkFailed, Outcome
from benchmarks.measure import Window, peak_rss_mib, percentile
from benchmarks.registry import Option, scenario

FAR = timedelta(days=1)  # time sensors wait this long: never reached during a run
FIRE_MAX = 10_000


def vm_rss_mib() -> float:
    """The current resident set (VmRSS of /proc/self/status), MiB; NaN where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) of each live thread of this process, summed by Python
    thread name (worker threads share a name); threads Python does not know are "other"."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        name = names.get(int(tid), "other")
        name = re.sub(r"^Thread-\d+ \((.*)\)$", r"\1", name)  # Thread-2 (target) -> target
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Starts:
    """Downstream start stamps by (run_id, k), written by the `process_<k>` callables."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, int], float] = {}
        self.expected = 0
        self.all_started = anyio.Event()

    def callable(self) -> Any:
        at, perf = self.at, time.perf_counter

        async def process(k: int, run_id: str) -> None:
            at[(run_id, k)] = perf()
            if len(at) >= self.expected:
                self.all_started.set()

        return process


def _count(dag: DAG, prefix: str) -> int:
    return sum(1 for t in dag.task_ids if t.startswith(prefix))


def file_name(run_id: str, k: int) -> str:
    return f"{run_id}.{k:05d}.ready"


def build(dag_id: str, sensors: int, landing: Path, starts: Starts, runs: int) -> DAG:
    """`sensors` sensors: the first half time sensors, the rest file sensors each with a
    `process_<k>` downstream."""
    n_time = sensors // 2
    n_file = sensors - n_time
    target = datetime.now(UTC) + FAR
    process = starts.callable()
    with DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        max_active_runs=runs,
        max_active_tasks=(sensors + n_file) * runs,
    ) as dag:
        for j in range(n_time):
            if j % 2 == 0:
                DateTimeSensor(task_id=f"time_{j:05d}", target_time=target)
            else:
                TimeDeltaSensor(task_id=f"time_{j:05d}", delta=FAR)
        for k in range(n_file):
            sensor = FileSensor(
                task_id=f"file_{k:05d}",
                filepath=str(landing / file_name("{{ run_id }}", k)),
            )
            sensor >> PythonOperator(
                task_id=f"process_{k:05d}", python_callable=process, op_kwargs={"k": k}
            )
    return dag


async def wait_loop_idle(timeout: float, step: float = 0.05, slack: float = 0.01) -> float:  # noqa: ASYNC109
    """Until three `step` sleeps in a row each wake within `slack` of their due time (the
    loop has nothing else to do); returns how long that took."""
    t0 = time.perf_counter()
    calm = 0
    while calm < 3 and time.perf_counter() - t0 < timeout:
        before = time.perf_counter()
        await anyio.sleep(step)
        calm = calm + 1 if time.perf_counter() - before - step <= slack else 0
    return time.perf_counter() - t0


def create_files(paths: list[str], created: list[float]) -> None:
    """In a worker thread: create each file, stamping the moment it exists."""
    perf, flags = time.perf_counter, os.O_CREAT | os.O_EXCL | os.O_WRONLY
    for j, path in enumerate(paths):
        fd = os.open(path, flags, 0o644)
        created[j] = perf()
        os.close(fd)


# The same loop in a child process, started before the burst and released by a line on its
# stdin; it prints one stamp per file. time.perf_counter() is CLOCK_MONOTONIC on Linux, one
# clock for every process, so its stamps compare with the parent's.
_WRITER = """
import os, sys, time
paths = open(sys.argv[1], encoding="utf-8").read().split("\\n")
perf, flags, out = time.perf_counter, os.O_CREAT | os.O_EXCL | os.O_WRONLY, []
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
for path in paths:
    fd = os.open(path, flags, 0o644)
    out.append(perf())
    os.close(fd)
sys.stdout.write("\\n".join(map(repr, out)) + "\\n")
"""


class ProcessWriter:
    """A child process that creates the files when told to, with none of this process's
    GIL between it and the file system."""

    def __init__(self, paths: list[str], workdir: Path) -> None:
        if sys.platform != "linux":
            raise BenchmarkFailed("--writer process needs Linux (one monotonic clock)")
        listing = workdir / "fire-paths.txt"
        listing.write_text("\n".join(paths), encoding="utf-8")
        self.n = len(paths)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(listing)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise BenchmarkFailed("the file-writer process did not start")

    def run(self, created: list[float]) -> None:
        """Release the writer and wait for its stamps (call it in a worker thread)."""
        out, _ = self.proc.communicate("go\n")
        stamps = [float(x) for x in out.split()]
        if self.proc.returncode != 0 or len(stamps) != self.n:
            raise BenchmarkFailed(f"the file-writer process failed (exit {self.proc.returncode})")
        created[:] = stamps


@scenario(
    "sensors",
    description="N deferred time+file sensors parked in one process; RSS, idle CPU, "
    "10,000 files at once → downstream start",
    default_n=100_000,
    default_parallelism=256,
    options=(
        Option("--park-seconds", float, 30.0, "seconds all sensors stay parked while the "
               "process's CPU is measured", minimum=0.0),
        Option("--sensors-per-run", int, 1000, "sensors in the DAG (one run's worth); "
               "runs = N / this", minimum=2),
        Option("--fire-timeout", float, 120.0, "seconds the fired downstream tasks get to "
               "start before the missing ones count as lost", minimum=0.0),
        Option("--landing", str, None, "directory in which to make the landing directory "
               "(e.g. /dev/shm, to take a slow disk's file creation out of the burst)",
               shown_default="the run's temporary directory"),
        Option("--writer", str, "thread", "who creates the fired files: a thread of this "
               "process, or a child process (no GIL shared with the loop)",
               choices=("thread", "process")),
    ),
)
async def sensors(ctx: BenchContext) -> Outcome:
    n = ctx.n
    if n < 2:
        raise BenchmarkFailed("sensors needs --n of at least 2 (a time and a file sensor)")
    if ctx.options["landing"]:
        if not os.path.isdir(ctx.options["landing"]):  # noqa: ASYNC240 - setup, not measured
            raise BenchmarkFailed(f"--landing {ctx.options['landing']} is not a directory")
        landing = Path(tempfile.mkdtemp(prefix="aflow-bench-landing-", dir=ctx.options["landing"]))
    else:
        landing = ctx.workdir / "landing"
        landing.mkdir()
    try:
        return await _sensors(ctx, n, landing)
    finally:
        if ctx.options["landing"]:
            shutil.rmtree(landing, ignore_errors=True)


async def _sensors(ctx: BenchContext, n: int, landing: Path) -> Outcome:
    per_run = min(ctx.options["sensors_per_run"], n)
    runs, rest = divmod(n, per_run)
    starts = Starts()

    ctx.progress(f"building DAG: {per_run} sensors × {runs} runs" + (f" + {rest}" if rest else ""))
    plan: list[tuple[DAG, int]] = [(build("bench_sensors", per_run, landing, starts, runs), runs)]
    if rest >= 2:
        plan.append((build("bench_sensors_rest", rest, landing, starts, 1), 1))
    elif rest:
        raise BenchmarkFailed(f"--n {n} leaves 1 sensor over --sensors-per-run {per_run}")
    n_time = sum(_count(d, "time_") * r for d, r in plan)
    file_sensors: list[tuple[str, int]] = []  # (run_id, k) of every file sensor

    async with ctx.orchestrator([d for d, _ in plan]) as o:
        assert o.driver is not None and o.triggerer is not None
        deferred = 0
        all_deferred = anyio.Event()

        def on_deferred() -> None:
            nonlocal deferred
            deferred += 1
            if deferred >= n:
                all_deferred.set()

        o.driver.on_deferred.append(on_deferred)
        triggerer = o.triggerer
        base = datetime.now(UTC).replace(microsecond=0)
        gc.collect()  # leftovers of DAG construction are not the run's cost
        rss_before = peak_rss_mib()
        rss_idle = vm_rss_mib()
        ctx.progress(f"triggering {sum(r for _, r in plan)} runs: {n} sensors "
                     f"({n_time} time, {n - n_time} file)")

        # 1. park -------------------------------------------------------------------------
        window = Window.start()
        i = 0
        for dag, count in plan:
            n_file = _count(dag, "file_")
            for _ in range(count):
                run_id = f"bench_sensors_r{i:05d}"
                await o.trigger(dag.dag_id, run_id=run_id,
                                logical_date=base + timedelta(seconds=i))
                file_sensors.extend((run_id, k) for k in range(n_file))
                i += 1
        triggered_s = time.perf_counter() - window.t0
        with anyio.move_on_after(ctx.timeout_s) as scope:
            await all_deferred.wait()
            deferred_s = time.perf_counter() - window.t0
            while len(triggerer.running) < n:  # noqa: ASYNC110 - polls the triggerer
                await anyio.sleep(0.005)
        if scope.cancelled_caught:
            o.cut_grace_short()
            raise BenchmarkFailed(
                f"parking did not complete within {ctx.timeout_s:g}s: {deferred}/{n} deferred, "
                f"{len(triggerer.running)}/{n} claimed by the triggerer"
            )
        window.stop()
        park_s = window.wall_s
        ctx.progress(f"all {n} parked in {park_s:.2f}s (runs triggered in {triggered_s:.2f}s, "
                     f"all deferred at {deferred_s:.2f}s); waiting for the loop to be idle")
        settle_s = await wait_loop_idle(timeout=ctx.timeout_s)
        parked_rss = vm_rss_mib()

        # 2. parked -------------------------------------------------------------------------
        park_seconds = ctx.options["park_seconds"]
        ctx.progress(f"parked RSS {parked_rss:.1f} MiB; measuring CPU for {park_seconds:g}s")
        by_thread0 = thread_cpu_s()
        cpu0, t0 = self_cpu_s(), time.perf_counter()
        await anyio.sleep(park_seconds)
        cpu1, t1 = self_cpu_s(), time.perf_counter()
        by_thread1 = thread_cpu_s()
        parked_cpu_pct = 100.0 * (cpu1 - cpu0) / (t1 - t0) if t1 > t0 else math.nan
        by_thread = {
            name: round(100.0 * (cpu - by_thread0.get(name, 0.0)) / (t1 - t0), 2)
            for name, cpu in sorted(by_thread1.items())
            if t1 > t0 and cpu - by_thread0.get(name, 0.0) > 0
        }
        lag_s = triggerer.loop_lag_s

        # 3. fire ---------------------------------------------------------------------------
        f = min(FIRE_MAX, len(file_sensors))
        # spread over the runs: k-major order takes the first sensors of every run first
        chosen = sorted(file_sensors, key=lambda rk: (rk[1], rk[0]))[:f]
        paths = [str(landing / file_name(run_id, k)) for run_id, k in chosen]
        created = [math.nan] * f
        starts.expected = f
        writer = ctx.options["writer"]
        ctx.progress(f"creating {f} files at once (from a {writer})")
        if writer == "process":
            child = await anyio.to_thread.run_sync(ProcessWriter, paths, ctx.workdir)
            await anyio.to_thread.run_sync(child.run, created)
        else:
            await anyio.to_thread.run_sync(create_files, paths, created)
        files_s = max(created) - min(created)
        with anyio.move_on_after(ctx.options["fire_timeout"]):
            await starts.all_started.wait()
        fired_keys = set(chosen)
        spurious = [key for key in starts.at if key not in fired_keys]
        if spurious:
            raise BenchmarkFailed(f"{len(spurious)} downstream task(s) started whose file was "
                                  f"never created, e.g. {spurious[0]}")
        hops = [starts.at[key] - c for key, c in zip(chosen, created, strict=True)
                if key in starts.at]
        fired = len(hops)
        last_start = max(starts.at.values()) if starts.at else math.nan
        ctx.progress(f"{fired}/{f} downstream tasks started; shutting down")
        shutdown_t0 = time.perf_counter()
    shutdown_s = time.perf_counter() - shutdown_t0

    def ms(x: float) -> float | None:
        return None if math.isnan(x) else round(x * 1000, 4)

    return Outcome(
        window=window,
        tis=n,
        hops_s=hops,
        rss_before_run_mib=rss_before,
        extra={
            "park_s": round(park_s, 3),
            "parked_rss_mib": round(parked_rss, 1),
            "parked_cpu_pct": round(parked_cpu_pct, 2),
            "fire_to_start_ms_p50": ms(percentile(hops, 50)),
            "fire_to_start_ms_p99": ms(percentile(hops, 99)),
            "fired": fired,
            "lost": f - fired,
            # context
            "time_sensors": n_time,
            "file_sensors": len(file_sensors),
            "runs": sum(r for _, r in plan),
            "rss_idle_mib": round(rss_idle, 1),
            "triggered_s": round(triggered_s, 3),
            "deferred_s": round(deferred_s, 3),
            "settle_s": round(settle_s, 3),
            "park_measured_s": round(t1 - t0, 3),
            "parked_cpu_pct_by_thread": by_thread,
            "loop_lag_ms": round(lag_s * 1000, 2),
            "files_created_s": round(files_s, 4),
            "fire_wall_s": None if not hops else round(last_start - min(created), 4),
            "shutdown_s": round(shutdown_s, 3),
        },
    )
