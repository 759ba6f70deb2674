"""Compare two benchmark results side by side.

    python -m benchmarks.compare before.jsonl after.jsonl

Each file holds the JSON lines that `python -m benchmarks` printed (other lines are ignored).
A file with several records of one scenario (`--repeat`) is summarised by the median of
each figure. Differences in what was run (n, store, parallelism, machine, …) are warned
about, since figures from different set-ups are not comparable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

# Figures compared, and whether a higher value is better.
FIGURES: dict[str, bool] = {
    "wall_s": False,
    "tis_per_s": True,
    "hop_ms_p50": False,
    "hop_ms_p99": False,
    "hop_ms_max": False,
    "join_hop_ms": False,
    "first_fan_hop_ms": False,
    "trigger_to_first_ms": False,
    "cpu_s": False,
    "peak_rss_mib": False,
}
SETUP = (
    "scenario",
    "n",
    "store",
    "parallelism",
    "schedulers",
    "sqlite_synchronous",
    "machine",
    "python",
)


def load(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "scenario" in obj:
                records.append(obj)
    if not records:
        raise SystemExit(f"{path}: no benchmark records found")
    scenarios = {r["scenario"] for r in records}
    if len(scenarios) > 1:
        raise SystemExit(f"{path}: records of several scenarios ({', '.join(sorted(scenarios))})")
    return records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(records[-1])
    for key in FIGURES:
        values = [r[key] for r in records if isinstance(r.get(key), int | float)]
        out[key] = statistics.median(values) if values else None
    out["_runs"] = len(records)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("a", help="JSON lines of the baseline ('-' for stdin)")
    p.add_argument("b", help="JSON lines of the candidate")
    args = p.parse_args(argv)
    a, b = summarise(load(args.a)), summarise(load(args.b))
    for key in SETUP:
        if a.get(key) != b.get(key):
            print(f"warning: {key} differs: {a.get(key)!r} vs {b.get(key)!r}", file=sys.stderr)
    print(
        f"{a['scenario']}: A = {args.a} ({a['_runs']} run(s)), B = {args.b} ({b['_runs']} run(s))"
    )
    print(f"{'figure':22s} {'A':>14s} {'B':>14s} {'B/A':>8s}")
    for key, higher_better in FIGURES.items():
        va, vb = a.get(key), b.get(key)
        if va is None and vb is None:
            continue
        ratio, verdict = "", ""
        if isinstance(va, int | float) and isinstance(vb, int | float) and va:
            r = vb / va
            ratio = f"{r:.2f}x"
            if abs(r - 1) >= 0.05:
                verdict = "better" if (r > 1) == higher_better else "worse"
        print(f"{key:22s} {_fmt(va):>14s} {_fmt(vb):>14s} {ratio:>8s} {verdict}")
    return 0


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
