"""Sensor-heavy pipeline: one deferrable FileSensor per partner feed on a landing folder,
each followed by its own processing, then a summary.

The sensors park in the triggerer (no worker slot each; one inotify watcher for the
folder), so 20 or 20,000 of them cost about the same to wait. With the param
`simulate=True` (the default) a task plays the partners and drops their files after short
delays, so `aflow dags test landing_sensors` runs offline; set it to false and copy
files into the landing folder yourself: $AFLOW_LANDING_DIR, default $AFLOW_HOME/landing.
"""

from __future__ import annotations

import csv
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import anyio

from aflow import DAG, FileSensor, Param, PythonOperator

PARTNERS = [f"partner_{i:02d}" for i in range(20)]


def landing_dir() -> Path:
    explicit = os.environ.get("AFLOW_LANDING_DIR")
    home = os.environ.get("AFLOW_HOME", os.path.expanduser("~/aflow"))
    return Path(explicit) if explicit else Path(home) / "landing"


async def simulate_partners(params: dict, ds: str) -> int:
    """Drop each partner's file after a short random delay (only when simulate=True)."""
    if not params.get("simulate", True):
        return 0
    folder = landing_dir() / ds
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    rng = random.Random(ds)
    for partner in rng.sample(PARTNERS, len(PARTNERS)):
        await anyio.sleep(rng.uniform(0.0, 0.05))
        rows = "".join(f"{partner},{n},{rng.randint(1, 500)}\n" for n in range(10))
        tmp = folder / f".{partner}.csv.tmp"
        await anyio.Path(tmp).write_text("partner,order,amount\n" + rows)
        os.replace(tmp, folder / f"{partner}.csv")  # appear atomically
    return len(PARTNERS)


def process_feed(partner: str, ds: str) -> dict:
    path = landing_dir() / ds / f"{partner}.csv"
    with path.open(newline="") as f:
        amounts = [int(row["amount"]) for row in csv.DictReader(f)]
    return {"partner": partner, "orders": len(amounts), "revenue": sum(amounts)}


def summarize(ti) -> dict:
    feeds = [r for r in ti.xcom_pull(task_ids=[f"process_{p}" for p in PARTNERS]) if r]
    return {
        "feeds": len(feeds),
        "orders": sum(r["orders"] for r in feeds),
        "revenue": sum(r["revenue"] for r in feeds),
    }


with DAG(
    "landing_sensors",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    params={"simulate": Param(True, type="boolean", description="drop sample files")},
    max_active_tasks=64,
    user_defined_macros={"landing_dir": landing_dir},
    tags=["sensors", "example"],
):
    summary = PythonOperator(task_id="summarize", python_callable=summarize)
    PythonOperator(task_id="simulate_partners", python_callable=simulate_partners)
    for partner in PARTNERS:
        wait = FileSensor(
            task_id=f"wait_{partner}",
            filepath=f"{{{{ landing_dir() }}}}/{{{{ ds }}}}/{partner}.csv",
            poke_interval=30,
            timeout=3600,
        )
        process = PythonOperator(
            task_id=f"process_{partner}",
            python_callable=process_feed,
            op_kwargs={"partner": partner, "ds": "{{ ds }}"},
        )
        wait >> process >> summary
