"""Event-driven pipeline on assets: a CSV landing in the inbox starts a run, and the
table it updates starts the report after it.

`orders_inbox` is an Asset watched by an AssetWatcher: the triggerer waits for new
`*.csv` files in $AFLOW_HOME/inbox (or $AFLOW_INBOX_DIR) with inotify, no task polling,
and each new file is an event of the asset. `load_orders` is scheduled on it, reads the
files that triggered its run and declares the `orders_table` asset as its outlet;
`orders_report` is scheduled on that table. Try it with `aflow standalone` running:

    mkdir -p "$AFLOW_HOME/inbox" && printf 'order,amount\\n1,20\\n2,22\\n' > "$AFLOW_HOME/inbox/a.csv"

A manual run (`aflow dags test load_orders`) has no triggering events and loads nothing.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from aflow import DAG, Asset, AssetWatcher, PythonOperator
from triggers.file import FileTrigger


def inbox_dir() -> Path:
    explicit = os.environ.get("AFLOW_INBOX_DIR")
    home = os.environ.get("AFLOW_HOME", os.path.expanduser("~/aflow"))
    return Path(explicit) if explicit else Path(home) / "inbox"


ORDERS_INBOX = Asset(
    "file://orders/inbox",
    watchers=[AssetWatcher("new_csv", FileTrigger(str(inbox_dir() / "*.csv"), poke_interval=10))],
)
ORDERS_TABLE = Asset("aflow://warehouse/orders")


def load(triggering_asset_events: dict) -> dict:
    files = [e.extra["path"] for e in triggering_asset_events.get(ORDERS_INBOX.uri, [])]
    amounts: list[int] = []
    for path in files:
        with open(path, newline="") as f:
            amounts += [int(row["amount"]) for row in csv.DictReader(f)]
    return {"files": len(files), "orders": len(amounts), "revenue": sum(amounts)}


def report(triggering_asset_events: dict) -> str:
    loads = triggering_asset_events.get(ORDERS_TABLE.uri, [])
    return f"orders table updated {len(loads)} time(s) since the last report"


with DAG("load_orders", schedule=[ORDERS_INBOX], tags=["example", "assets"]):
    PythonOperator(task_id="load", python_callable=load, outlets=[ORDERS_TABLE])

with DAG("orders_report", schedule=[ORDERS_TABLE], tags=["example", "assets"]):
    PythonOperator(task_id="report", python_callable=report)
