"""Smoke test of the benchmark runner: each scenario runs small as a subprocess and its last
stdout line is a complete JSON record. No timing is asserted (timings belong to benchmarks/)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import aflow

REPO = Path(__file__).resolve().parents[2]

REQUIRED = {
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
}


def run_bench(*args: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr}"
    return json.loads(lines[-1]), proc.stderr


def check_record(
    rec: dict, scenario: str, n: int, tis: int, hops: int, *, store: str = "sqlite",
    schedulers: int = 1,
) -> None:
    assert REQUIRED <= rec.keys(), REQUIRED - rec.keys()
    assert rec["scenario"] == scenario
    assert rec["n"] == n
    assert rec["store"] == store
    assert rec["schedulers"] == schedulers
    assert rec["aflow_version"] == aflow.__version__
    assert rec["tis"] == tis
    assert rec["hop_count"] == hops
    assert rec["python"].split()[-1].startswith(f"{sys.version_info.major}.")
    assert rec["machine"]["cores"] >= 1 and rec["machine"]["cpu"]
    for key in ("wall_s", "tis_per_s", "peak_rss_mib"):
        assert isinstance(rec[key], float) and math.isfinite(rec[key]) and rec[key] > 0, key
    assert rec["cpu_s"] >= 0
    assert 0 <= rec["hop_ms_p50"] <= rec["hop_ms_p99"] <= rec["hop_ms_max"]
    assert rec["tis_per_s"] == pytest.approx(tis / rec["wall_s"], rel=0.01)


def test_fanout_small() -> None:
    rec, stderr = run_bench("fanout", "--n", "50")
    check_record(rec, "fanout", 50, tis=52, hops=51)
    assert rec["parallelism"] == 256
    assert "[bench fanout]" in stderr


def test_mapped_small() -> None:
    rec, stderr = run_bench("mapped", "--n", "30")
    check_record(rec, "mapped", 30, tis=32, hops=2)
    assert rec["mapped_tis_per_s"] > 0 and rec["expand_hop_ms"] >= 0 and rec["reduce_hop_ms"] >= 0
    assert "[bench mapped]" in stderr


def test_chain_small() -> None:
    rec, stderr = run_bench("chain", "--n", "20")
    check_record(rec, "chain", 20, tis=20, hops=19)
    assert "[bench chain]" in stderr


def test_repeat_prints_one_record_per_run_and_bad_input_fails_cleanly() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "chain", "--n", "3", "--repeat", "2", "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["repeat"] for r in records] == [1, 2]
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks", "no_such_scenario"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown scenario" in bad.stderr and not bad.stdout


def test_sensors_small() -> None:
    rec, stderr = run_bench("sensors", "--n", "40", "--park-seconds", "0.5")
    assert REQUIRED <= rec.keys(), REQUIRED - rec.keys()
    assert rec["scenario"] == "sensors" and rec["n"] == 40
    assert rec["fired"] == rec["file_sensors"] > 0
    assert rec["lost"] == 0
    for key in ("parked_rss_mib", "parked_cpu_pct", "fire_to_start_ms_p50", "fire_to_start_ms_p99"):
        assert isinstance(rec[key], float) and math.isfinite(rec[key]) and rec[key] >= 0, key
    assert rec["fire_to_start_ms_p50"] <= rec["fire_to_start_ms_p99"]
    assert "[bench sensors]" in stderr


def _bench_schemas(dsn: str) -> set[str]:
    import asyncio

    import asyncpg

    async def names() -> set[str]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'aflow_bench_%'"
            )
            return {r[0] for r in rows}
        finally:
            await conn.close()

    return asyncio.run(names())


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["fanout", "chain"])
def test_postgresql_with_two_schedulers(postgres_dsn: str, scenario: str) -> None:
    """Two runs claimed by two scheduler processes; the benchmark's own schema is dropped
    after. (How the runs spread is reported, not asserted: claims race.)"""
    before = _bench_schemas(postgres_dsn)
    rec, _ = run_bench(scenario, "--n", "20", "--store", postgres_dsn, "--schedulers", "2")
    per_run = 22 if scenario == "fanout" else 20
    check_record(rec, scenario, 20, tis=2 * per_run, hops=2 * (per_run - 1),
                 store="postgresql", schedulers=2)
    assert rec["concurrent_runs"] == 2
    assert sum(rec["runs_by_scheduler"]) == 2
    assert "schema=aflow_bench_" in rec["store_url"]
    schema = rec["store_url"].rpartition("schema=")[2]
    assert schema not in _bench_schemas(postgres_dsn) | before


def test_several_schedulers_need_postgresql() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFLOW_")}
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks", "chain", "--schedulers", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "need --store postgresql" in bad.stderr and not bad.stdout


def test_webhook_small() -> None:
    rec, stderr = run_bench("webhook", "--n", "20")
    check_record(rec, "webhook", 20, tis=20, hops=20)
    assert rec["lost"] == 0 and rec["duplicated"] == 0
    assert rec["client_statuses"] == {"201": 20} and rec["client_failed"] == 0
    assert 0 <= rec["webhook_to_start_ms_p50"] <= rec["webhook_to_start_ms_p99"]
    assert "[bench webhook]" in stderr


def test_ui_small() -> None:
    rec, stderr = run_bench("ui", "--n", "5", "--requests", "1")
    assert REQUIRED <= rec.keys(), REQUIRED - rec.keys()
    assert rec["scenario"] == "ui" and rec["task_instances"] == 500
    for page in ("dag_list", "dag_graph_grid", "run_gantt", "task_instance", "api_runs_all_dags"):
        assert 0 < rec[f"{page}_ms_p50"] <= rec[f"{page}_ms_p99"], page
    assert "[bench ui]" in stderr
