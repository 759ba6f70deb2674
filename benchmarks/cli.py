"""`python -m benchmarks SCENARIO [options]`: run a scenario, print progress on stderr and one
JSON record per run on stdout (the last line of stdout is always the last run's record)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

import aflow
from aflow.cli import LOOP_OPTIONS, tune_gc
from aflow.exceptions import AflowError
from benchmarks import registry
from benchmarks.harness import BenchContext, BenchmarkFailed, Outcome, redact_url, store_kind
from benchmarks.measure import git_commit, hop_stats, machine_info, peak_rss_mib, python_info

REPO = Path(__file__).resolve().parents[1]

# The keys every record has, in this order; scenario-specific keys follow.
REQUIRED_KEYS = (
    "scenario",
    "n",
    "store",
    "wall_s",
    "tis_per_s",
    "hop_ms_p50",
    "hop_ms_p99",
    "peak_rss_mib",
    "cpu_s",
    "aflow_version",
    "python",
    "machine",
    "schedulers",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run an aflow benchmark scenario; one JSON record per run on stdout.",
    )
    p.add_argument("scenario", nargs="?", help="scenario name (see --list)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--n", type=int, help="scenario size (default: the scenario's own)")
    p.add_argument(
        "--store",
        help="store URL (sqlite:///path or postgresql://…); default: a fresh SQLite file "
        "in a temporary directory per run",
    )
    p.add_argument(
        "--parallelism", type=int, help="Orchestrator parallelism (default: the scenario's, 256)"
    )
    p.add_argument("--repeat", type=int, default=1, help="run the scenario R times (default 1)")
    p.add_argument(
        "--schedulers",
        type=int,
        default=1,
        help="scheduler processes sharing the store (default 1; more need PostgreSQL): this "
        "process and S-1 children",
    )
    p.add_argument(
        "--runs",
        type=int,
        help="runs started at once, claimed by the schedulers (default: one per scheduler)",
    )
    p.add_argument(
        "--sqlite-synchronous",
        default="NORMAL",
        choices=("OFF", "NORMAL", "FULL", "EXTRA"),
        help="SQLite `synchronous` level (default NORMAL, the Orchestrator's default)",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="fail a run that takes longer (seconds)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    _add_scenario_options(p)
    return p


def _add_scenario_options(p: argparse.ArgumentParser) -> None:
    """Each scenario's own options, in a group per scenario. A flag two scenarios both
    declare is added once (they must agree on its type)."""
    seen: dict[str, registry.Option] = {}
    for name, scn in registry.all_scenarios().items():
        if not scn.options:
            continue
        group = p.add_argument_group(f"options of scenario {name!r}")
        for opt in scn.options:
            if opt.flag in seen:
                if seen[opt.flag].type is not opt.type:
                    raise ValueError(f"scenario option {opt.flag} is declared with two types")
                continue
            seen[opt.flag] = opt
            group.add_argument(
                opt.flag,
                dest=f"opt_{opt.dest}",
                metavar=opt.dest.upper(),
                type=opt.type,
                choices=opt.choices,
                default=None,
                help=f"{opt.help} (default {opt.shown_default or opt.default})",
            )


def _scenario_options(
    parser: argparse.ArgumentParser, scn: registry.Scenario, args: argparse.Namespace
) -> dict[str, Any]:
    """The chosen scenario's option values (defaults filled in); refuses another
    scenario's option and values below an option's minimum."""
    own = {opt.flag for opt in scn.options}
    for name, other in registry.all_scenarios().items():
        for opt in other.options:
            if opt.flag not in own and getattr(args, f"opt_{opt.dest}", None) is not None:
                parser.error(f"{opt.flag} is an option of scenario {name!r}, not of {scn.name!r}")
    values: dict[str, Any] = {}
    for opt in scn.options:
        value = getattr(args, f"opt_{opt.dest}")
        if value is None:
            value = opt.default
        elif opt.minimum is not None and value < opt.minimum:
            parser.error(f"{opt.flag} must be at least {opt.minimum:g}")
        values[opt.dest] = value
    return values


def _round(x: float, digits: int) -> float | None:
    return None if math.isnan(x) else round(x, digits)


def record(
    ctx: BenchContext,
    outcome: Outcome,
    *,
    repeat: int,
    repeats: int,
    commit: str | None,
) -> dict[str, Any]:
    w = outcome.window
    wall = w.wall_s
    out: dict[str, Any] = {
        "scenario": ctx.scenario,
        "n": ctx.n,
        "store": store_kind(ctx.store_url),
        "wall_s": round(wall, 6),
        "tis_per_s": round(outcome.tis / wall, 1) if wall > 0 else None,
        **hop_stats(outcome.hops_s),
        "peak_rss_mib": _round(peak_rss_mib(), 1),
        "cpu_s": round(w.cpu_s, 4),
        "aflow_version": aflow.__version__,
        "python": python_info(),
        "machine": machine_info(),
        "schedulers": ctx.schedulers,
        "concurrent_runs": ctx.runs,
        # context for reading the figures
        "tis": outcome.tis,
        "cpu_util": round(w.cpu_s / wall, 3) if wall > 0 else None,
        "rss_before_run_mib": _round(outcome.rss_before_run_mib, 1),
        "parallelism": ctx.parallelism,
        "store_url": redact_url(ctx.store_url) if ctx.store_arg else "sqlite (temporary file)",
        "sqlite_synchronous": ctx.sqlite_synchronous,
        "repeat": repeat,
        "repeats": repeats,
        "aflow_commit": commit,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for key, value in ctx.options.items():  # the scenario's own options, as run
        if key in out:
            raise ValueError(f"scenario {ctx.scenario!r} has an option named like key {key!r}")
        out[key] = value
    for key, value in {**ctx.extra, **outcome.extra}.items():
        if key in out:
            raise ValueError(f"scenario {ctx.scenario!r} reports reserved key {key!r}")
        out[key] = value
    return out


def run_one(
    scn: registry.Scenario,
    args: argparse.Namespace,
    repeat: int,
    commit: str | None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"aflow-bench-{scn.name}-") as tmp:
        ctx = BenchContext(
            scenario=scn.name,
            n=args.n if args.n is not None else scn.default_n,
            parallelism=args.parallelism
            if args.parallelism is not None
            else scn.default_parallelism,
            schedulers=args.schedulers,
            store_arg=args.store,
            workdir=Path(tmp),
            sqlite_synchronous=args.sqlite_synchronous,
            timeout_s=args.timeout,
            quiet=args.quiet,
            options=dict(options or {}),
            runs=args.runs or args.schedulers,
        )
        ctx.progress(
            f"run {repeat}/{args.repeat}: n={ctx.n} parallelism={ctx.parallelism} "
            f"store={redact_url(ctx.store_url)}"
        )
        try:
            outcome = anyio.run(scn.fn, ctx, backend="asyncio", backend_options=LOOP_OPTIONS)
        finally:
            anyio.run(ctx.drop_schema)
        rec = record(ctx, outcome, repeat=repeat, repeats=args.repeat, commit=commit)
    ctx.progress(
        f"wall {rec['wall_s']:.3f}s  {rec['tis_per_s']} TI/s  hop p50 {rec['hop_ms_p50']} ms "
        f"p99 {rec['hop_ms_p99']} ms  cpu {rec['cpu_s']}s  peak RSS {rec['peak_rss_mib']} MiB"
    )
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, scn in registry.all_scenarios().items():
            print(f"{name:12s} n={scn.default_n:<8d} {scn.description}")
        return 0
    if not args.scenario:
        parser.error("a scenario is required (see --list)")
    try:
        scn = registry.get(args.scenario)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    if os.environ.get("AFLOW_BENCH_DEFAULT_GC") != "1":  # set it to compare with Python's defaults
        tune_gc()  # as the aflow CLI does: the benchmarks measure what it runs
    for flag, value in (("--n", args.n), ("--parallelism", args.parallelism)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    multi = args.schedulers > 1 or (args.runs or 1) > 1
    if multi and not (args.store and store_kind(args.store) == "postgresql"):
        parser.error("--schedulers above 1 and --runs above 1 need --store postgresql://…")
    if not 1 <= args.schedulers <= scn.max_schedulers:
        parser.error(
            f"scenario {scn.name!r} runs with 1..{scn.max_schedulers} scheduler(s), "
            f"not {args.schedulers}"
        )
    if args.store and store_kind(args.store) not in scn.stores:
        parser.error(f"scenario {scn.name!r} does not support the {store_kind(args.store)} store")

    options = _scenario_options(parser, scn, args)

    commit = git_commit(REPO)
    for i in range(1, args.repeat + 1):
        try:
            rec = run_one(scn, args, i, commit, options)
        except (BenchmarkFailed, AflowError) as exc:
            print(f"[bench {scn.name}] FAILED: {exc}", file=sys.stderr, flush=True)
            return 1
        sys.stdout.write(json.dumps(rec, allow_nan=False) + "\n")
        sys.stdout.flush()
    return 0
