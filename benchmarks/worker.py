"""`python -m benchmarks.worker`: one more scheduler process for a benchmark run with
`--schedulers S` (the benchmark starts S - 1 of these; it is the first scheduler itself).

It builds the scenario's DAG with the same task callables (stamping into the shared
stamps file), opens an Orchestrator that claims runs from the shared PostgreSQL store,
prints "ready", and stops gracefully when its stdin closes."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import anyio

from aflow import Orchestrator
from aflow.cli import LOOP_OPTIONS, tune_gc
from benchmarks.measure import SharedStamps


async def serve(args: argparse.Namespace) -> None:
    run_ids = args.runs.split(",")
    module = importlib.import_module(f"benchmarks.scenarios.{args.scenario}")
    size = module.stamp_size(args.n)
    stamps = SharedStamps(Path(args.stamps), size, run_ids, create=False)
    dag = module.build(args.n, stamps)
    async with Orchestrator(
        [dag], home=args.home, store=args.store, parallelism=args.parallelism,
        schedule=False, shutdown_grace_s=5.0, lease_s=args.lease,
    ):
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.buffer.read)  # until the benchmark closes it
    stamps.close()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    p.add_argument("--scenario", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--home", required=True)
    p.add_argument("--parallelism", type=int, required=True)
    p.add_argument("--stamps", required=True)
    p.add_argument("--lease", type=float, required=True)
    p.add_argument("--runs", required=True, help="the benchmark's run ids, comma-separated")
    tune_gc()
    anyio.run(serve, p.parse_args(), backend="asyncio", backend_options=LOOP_OPTIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
