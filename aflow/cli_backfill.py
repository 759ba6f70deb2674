"""`aflow backfill`: the command, its live progress display (stderr) and its summary
(stdout). The work is Orchestrator.backfill (aflow/runtime/backfill.py); this module
parses, handles signals and prints."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TextIO

import anyio

from aflow.exceptions import AflowError
from aflow.orchestrator import Orchestrator
from aflow.runtime.backfill import BackfillProgress, BackfillResult, BackfillRun, refresh_result
from aflow.states import DagRunState

EXIT_FAILED = 1
EXIT_SIGNALLED = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number

TTY_REDRAW_S = 0.1  # a terminal's progress line is redrawn at most this often
LINE_EVERY_S = 1.0  # elsewhere (a file, a pipe), a line at most this often


def parse_bound(text: str, flag: str) -> datetime:
    """An ISO-8601 date or date-time; naive values stay naive (read in the DAG's zone)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise AflowError(
            f"invalid {flag} {text!r}: use an ISO-8601 date or date-time, e.g. 2024-01-31, "
            "2024-01-31T06:00 (in the DAG's time zone) or 2024-01-31T06:00+00:00"
        ) from None


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def format_progress(p: BackfillProgress) -> str:
    eta = "ETA --:--" if p.eta_s is None else f"ETA {_duration(p.eta_s)}"
    text = (
        f"backfill {p.dag_id}: {p.done}/{p.total} runs done ({p.succeeded} succeeded, "
        f"{p.failed} failed), {p.active_runs} active, {p.tasks_running} tasks running, "
        f"{p.tasks_failed} tasks failed | {_duration(p.elapsed_s)} elapsed, {eta}"
    )
    return text + (" | stopping" if p.stopping else "")


class ProgressDisplay:
    """Draws progress on `stream`: one line redrawn in place on a terminal; elsewhere a
    plain line whenever the counts changed, at most every LINE_EVERY_S."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self._last_at = -1e9
        self._last_counts: tuple[Any, ...] | None = None
        self._pending: BackfillProgress | None = None
        self._drawn = False  # a terminal line is on screen

    def __call__(self, p: BackfillProgress) -> None:
        now = self.clock()
        counts = (p.total, p.done, p.succeeded, p.failed, p.active_runs, p.tasks_running,
                  p.tasks_failed, p.stopping)
        if self.tty:
            if now - self._last_at >= TTY_REDRAW_S or p.done == p.total:
                self._draw(p, now)
            return
        if counts == self._last_counts:
            return
        if now - self._last_at >= LINE_EVERY_S or p.done == p.total:
            self._line(p, now, counts)
        else:
            self._pending = p  # shown by the next call that may print, or by finish()

    def _draw(self, p: BackfillProgress, now: float) -> None:
        width = 20
        filled = width * p.done // p.total if p.total else width
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r\x1b[2K[{bar}] {format_progress(p)}")
        self.stream.flush()
        self._last_at = now
        self._drawn = True

    def _line(self, p: BackfillProgress, now: float, counts: tuple[Any, ...]) -> None:
        self.stream.write(format_progress(p) + "\n")
        self.stream.flush()
        self._last_at = now
        self._last_counts = counts
        self._pending = None

    def message(self, text: str) -> None:
        """A line of its own (e.g. a signal was received), not overwritten."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        p, self._pending = self._pending, None
        if p is not None and not self.tty:
            self._line(p, self.clock(), ())
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


# -- the summary --------------------------------------------------------------------------
def _row(r: BackfillRun) -> dict[str, Any]:
    return {
        "logical_date": r.logical_date.isoformat(),
        "run_id": r.run_id,
        "state": r.state.value if r.state else "not created",
        "action": r.action,
    }


def print_summary(result: BackfillResult, *, wall_s: float, output: str, signalled: str | None,
                  resume: str) -> None:
    from aflow.cli import emit

    if output == "json":
        print(json.dumps({
            "dag_id": result.dag_id,
            "start": result.start.isoformat(),
            "end": result.end.isoformat(),
            "runs": [_row(r) for r in result.runs],
            "succeeded": len(result.succeeded),
            "failed": len(result.failed),
            "unfinished": len(result.unfinished),
            "not_created": len(result.not_created),
            "interrupted": result.interrupted,
            "wall_s": round(wall_s, 3),
        }, indent=2))
        return
    print(f"backfill of {result.dag_id} from {result.start.isoformat()} to "
          f"{result.end.isoformat()}: {len(result.runs)} intervals")
    emit([_row(r) for r in result.runs], ["logical_date", "run_id", "state", "action"], "table")
    print(f"\n{len(result.runs)} runs: {len(result.succeeded)} succeeded, "
          f"{len(result.failed)} failed, {len(result.unfinished)} unfinished, "
          f"{len(result.not_created)} not created; wall time {wall_s:.1f}s")
    for r in result.failed:
        print(f"failed: {r.run_id} ({r.logical_date.isoformat()})")
    if result.interrupted:
        done = sum(1 for r in result.runs if r.finished)
        print(f"interrupted{f' by {signalled}' if signalled else ''}: {done} of "
              f"{len(result.runs)} intervals done, {len(result.unfinished)} runs unfinished, "
              f"{len(result.not_created)} not created")
        print(f"to resume, run the same command again: {resume}")
    elif result.failed:
        print("to run the failed task instances again: the same command with --reset-failed")


# -- the command ------------------------------------------------------------------------
async def cmd_backfill(args: argparse.Namespace) -> int:
    from aflow.cli import _open_store, dags_folder_of, home_of, store_url_of

    began = time.monotonic()
    start = parse_bound(args.start, "--start")
    end = parse_bound(args.end, "--end")
    if args.max_active_runs is not None and args.max_active_runs < 1:
        raise AflowError(f"--max-active-runs must be at least 1, got {args.max_active_runs}")
    display = ProgressDisplay(sys.stderr)
    stop = anyio.Event()
    signalled: list[signal.Signals] = []
    orchestrator = Orchestrator(
        dags_folder_of(args),
        store=store_url_of(args),
        home=home_of(args),
        parallelism=args.parallelism,
        shutdown_grace_s=args.grace,
        schedule=False,  # no scheduled runs: only the range's
        claim=True,
        claim_dags=[args.dag_id],  # resumes this DAG's unfinished runs, no other DAG's
        triggerer=True,
        triggerer_capacity=args.config.get("triggerer.capacity"),
        lease_s=args.config.get("scheduler.lease_seconds"),
        poll_s=args.config.get("scheduler.poll_seconds"),
        sweep_s=args.config.get("scheduler.sweep_seconds"),
        hostname=args.config.get("scheduler.hostname"),
        sqlite_synchronous=args.config.get("core.sqlite_synchronous"),
        watch_dags=False,
        parse_processes=args.config.get("dag_processor.parse_processes"),
        parse_timeout_s=args.config.get("dag_processor.parse_timeout_seconds"),
    )

    async def on_signals(signals: Any) -> None:
        async for signum in signals:
            sig = signal.Signals(signum)
            if not signalled:
                signalled.append(sig)
                stop.set()
                display.message(f"received {sig.name}: stopping; no new runs start, running "
                                f"tasks get {args.grace:g}s to finish (signal again to stop "
                                "at once)")
            else:
                display.message(f"received {sig.name} again: cancelling running tasks now")
                orchestrator.cut_grace_short()

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(on_signals, signals)
            async with orchestrator as o:
                result = await o.backfill(
                    args.dag_id,
                    start,
                    end,
                    reset_failed=args.reset_failed,
                    max_active_runs=args.max_active_runs,
                    on_progress=display,
                    stop=stop,
                )
                display.finish()
                if result.unfinished:
                    display.message(f"waiting for {len(result.unfinished)} unfinished runs' "
                                    f"running tasks (at most {args.grace:g}s)")
            watchers.cancel_scope.cancel()
    if result.unfinished:  # as the drain left them
        async with _open_store(args) as store:
            result = await refresh_result(store, result)
    resume = "aflow " + shlex.join(getattr(args, "argv", None) or ["backfill", args.dag_id,
                                                                  "--start", args.start,
                                                                  "--end", args.end])
    print_summary(result, wall_s=time.monotonic() - began, output=args.output,
                  signalled=signalled[0].name if signalled else None, resume=resume)
    if result.interrupted:
        return EXIT_SIGNALLED[signalled[0]] if signalled else EXIT_FAILED
    return 0 if all(r.state is DagRunState.SUCCESS for r in result.runs) else EXIT_FAILED


def add_parser(groups: Any, parents: list[argparse.ArgumentParser], grace_help: str) -> None:
    p = groups.add_parser(
        "backfill", parents=parents,
        help="run a DAG's scheduled intervals in a date range, with live progress",
        description="Run every interval of DAG_ID's schedule whose logical date is from "
                    "--start to --end (both included) as a backfill run, in this process. "
                    "Dates without an offset are read in the DAG's time zone (its "
                    "start_date's). Intervals that have a run already are not run again. "
                    "Ctrl-C stops cleanly; the same command again resumes.",
    )
    p.add_argument("dag_id")
    p.add_argument("--start", required=True, help="first logical date (ISO-8601)")
    p.add_argument("--end", required=True, help="last logical date, included (ISO-8601)")
    p.add_argument("--reset-failed", action="store_true",
                   help="clear the failed task instances of failed runs in the range and run "
                        "them again")
    p.add_argument("--max-active-runs", type=int,
                   help="most runs of the range unfinished at once (default: the DAG's "
                        "max_active_runs)")
    p.add_argument("--grace", type=float, help=grace_help)
    p.set_defaults(handler=_handler)


async def _handler(args: argparse.Namespace) -> int:
    return await cmd_backfill(args)
