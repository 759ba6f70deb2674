"""Shared measurement helpers: the run window (wall + CPU), peak RSS, percentiles, and
facts about the machine and the interpreter, so every scenario reports them the same way."""

from __future__ import annotations

import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ru_maxrss is KiB on Linux, bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


def peak_rss_mib() -> float:
    """High-water mark of this process's resident set since it started, in MiB.

    It cannot be reset, so it includes the interpreter, imports and DAG construction, and
    with `--repeat` it is the peak over all runs so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT / (1024 * 1024)


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) and of its waited-for
    children, in seconds."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


@dataclass
class Window:
    """A measured interval: wall time by perf_counter, CPU by getrusage (self + children).

    w = Window.start()
    ...  # the thing measured
    w.stop()
    w.wall_s, w.cpu_s
    """

    t0: float
    cpu0: float
    t1: float | None = None
    cpu1: float | None = None

    @classmethod
    def start(cls) -> Window:
        cpu0 = cpu_seconds()
        return cls(t0=time.perf_counter(), cpu0=cpu0)

    def stop(self) -> Window:
        self.t1 = time.perf_counter()
        self.cpu1 = cpu_seconds()
        return self

    @property
    def wall_s(self) -> float:
        assert self.t1 is not None, "window not stopped"
        return self.t1 - self.t0

    @property
    def cpu_s(self) -> float:
        assert self.cpu1 is not None, "window not stopped"
        return self.cpu1 - self.cpu0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks
    (numpy's default method). NaN for an empty sequence."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def hop_stats(hops_s: Sequence[float]) -> dict[str, Any]:
    """p50/p99/max of hop latencies (given in seconds) in milliseconds, and their count.
    Null (None) figures when a scenario has no hops."""
    if not hops_s:
        return {"hop_ms_p50": None, "hop_ms_p99": None, "hop_ms_max": None, "hop_count": 0}
    return {
        "hop_ms_p50": round(percentile(hops_s, 50) * 1000, 4),
        "hop_ms_p99": round(percentile(hops_s, 99) * 1000, 4),
        "hop_ms_max": round(max(hops_s) * 1000, 4),
        "hop_count": len(hops_s),
    }


class Stamps:
    """Preallocated perf_counter() stamps that task callables write by index: as cheap as a
    list store, so recording does not disturb what is measured."""

    __slots__ = ("start", "end")

    def __init__(self, n: int) -> None:
        self.start: list[float] = [math.nan] * n
        self.end: list[float] = [math.nan] * n

    def missing(self) -> int:
        """How many tasks did not record both moments (should be 0 after a good run)."""
        return sum(1 for a, b in zip(self.start, self.end, strict=True) if a != a or b != b)

    def callable(self) -> Callable[[int], Awaitable[None]]:
        """A no-op async task callable that stamps its start and end under index `i`.

        One function object shared by all tasks (PythonOperator caches its signature facts
        per callable); the index arrives through op_kwargs, which holds nothing to template.
        """
        start, end, perf = self.start, self.end, time.perf_counter

        async def noop(i: int) -> None:
            start[i] = perf()
            end[i] = perf()

        return noop


# -- facts about where the figures came from ----------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
    }


def python_info() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def git_commit(path: Path) -> str | None:
    """`<sha>` or `<sha>-dirty` of the checkout at `path`, or None outside a git checkout.
    Call it outside any measured window (it runs a child process)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha or None


class SharedStamps:
    """Stamps of several runs that task callables in several processes write: one file of
    float64 pairs (start, end) per task per run, mapped into every process. A run's
    stamps are found by its run_id, which the callable gets from the task context.
    perf_counter() is CLOCK_MONOTONIC on Linux, one clock for every process of the host.

    `for_run(k)` gives run k's stamps with the same `start`/`end`/`missing()` as Stamps."""

    def __init__(self, path: Path, size: int, run_ids: Sequence[str], *, create: bool) -> None:
        import mmap

        self.path = Path(path)
        self.size = size
        self.run_ids = list(run_ids)
        self._index = {run_id: k for k, run_id in enumerate(self.run_ids)}
        nbytes = len(self.run_ids) * size * 2 * 8
        if create:
            with self.path.open("wb") as f:
                f.write(b"\xff" * nbytes)  # all NaN
        self._file = self.path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), nbytes)
        self._values = memoryview(self._map).cast("d")

    def callable(self) -> Callable[..., Awaitable[None]]:
        values, index, size, perf = self._values, self._index, self.size, time.perf_counter

        async def noop(i: int, run_id: str) -> None:
            base = 2 * (index[run_id] * size + i)
            values[base] = perf()
            values[base + 1] = perf()

        return noop

    def for_run(self, k: int) -> Stamps:
        stamps = Stamps(self.size)
        base = 2 * k * self.size
        chunk = self._values[base : base + 2 * self.size].tolist()
        stamps.start = chunk[0::2]
        stamps.end = chunk[1::2]
        return stamps

    def close(self) -> None:
        self._values.release()
        self._map.close()
        self._file.close()
