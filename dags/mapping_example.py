"""Dynamic task mapping: one task instance per country found in the clickstream sample.

What it shows
-------------
* ``countries`` reads the bundled ``data/clickstream_sample.csv`` and returns the
  countries it finds: how many there are is known only when the run gets there;
* ``revenue.partial(path=...).expand(country=countries())``: one instance of ``revenue``
  per country (``map_index`` 0, 1, ...), each with its own log, XCom and retries;
* ``report`` receives the list of every instance's value (in map-index order) and
  reduces it: the classic map/reduce;
* ``expand_kwargs``: ``label`` runs once per dict of arguments, built from each of
  ``report``'s rows by ``.map(label_args)`` (a plain function, applied to each element
  as its instance is built), and a classic ``BashOperator`` is mapped over a literal
  list of commands with ``BashOperator.partial(...).expand(bash_command=[...])``.

It needs no network and no database. ``schedule=None``: trigger it by hand.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aflow import BashOperator, dag, task

SAMPLE = Path(__file__).parent / "data" / "clickstream_sample.csv"


def label_args(row: dict[str, Any]) -> dict[str, Any]:
    """A ranked row of the report -> the arguments of one ``label`` instance."""
    return {"country": row["country"], "place": row["place"]}


@dag(
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    catchup=False,
    tags=["example", "mapping"],
)
def mapping_example() -> None:
    @task
    def countries(path: str) -> list[str]:
        with open(path, newline="") as f:
            return sorted({row["country"] for row in csv.DictReader(f)})

    @task(retries=1)
    def revenue(country: str, path: str) -> dict[str, Any]:
        total = 0.0
        orders = 0
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["country"] == country and row["event_type"] == "purchase":
                    total += float(row["price"]) * int(row["quantity"] or 1)
                    orders += 1
        return {"country": country, "orders": orders, "revenue": round(total, 2)}

    @task
    def report(per_country: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ranked = sorted(per_country, key=lambda r: r["revenue"], reverse=True)
        for place, row in enumerate(ranked, 1):
            print(f"{place}. {row['country']}: {row['revenue']:.2f} from {row['orders']} orders")
        return [{**r, "place": i} for i, r in enumerate(ranked, 1)]

    @task
    def label(country: str, place: int) -> str:
        return f"{country} is number {place}"

    per_country = revenue.partial(path=str(SAMPLE)).expand(country=countries(str(SAMPLE)))
    label.expand_kwargs(report(per_country).map(label_args))
    BashOperator.partial(task_id="disk_check").expand(
        bash_command=["df -h . | tail -1", "echo rows: $(wc -l < '" + str(SAMPLE) + "')"]
    )


mapping_example()
