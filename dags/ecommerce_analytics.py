"""E-commerce analytics: extract >> [transform sales, enrich customers] >> load >> report.

What it shows
-------------
* a fan-out and fan-in: two independent branches run side by side after the
  extract, and the load waits for both;
* an ``async def`` callable next to plain ones: ``extract_clickstream`` awaits the
  HTTP download on the event loop and hands its blocking SQLite write to a worker
  thread; the sync callables run in worker threads on their own;
* pulling several XComs at once: ``ti.xcom_pull(task_ids=[...])`` returns a list;
* passing a reference instead of the data: the raw events go to a staging table
  and only small summaries travel through XCom;
* a ``BashOperator`` whose command is a Jinja template using ``{{ ds }}`` and
  ``ti.xcom_pull(...)``; its last line of output becomes its XCom;
* idempotent loads: every table is keyed by the run's ``ds``, and a re-run
  replaces that day's rows.

Data
----
``extract_clickstream`` downloads a CSV from ``ECOMMERCE_CLICKSTREAM_URL`` when
it is set; otherwise it reads the bundled ``data/clickstream_sample.csv``
(one day of a small web shop, ~430 events, made by ``data/_generate_samples.py``).
Whatever it reads stands for the export of the run's day.

Tables (SQLite, ``$AFLOW_EXAMPLES_DB`` or ``$AFLOW_HOME/examples.db``; ``AFLOW_HOME``
defaults to ``~/aflow``): ``ecommerce_events`` (staging), ``ecommerce_sales_daily``,
``ecommerce_customers_daily`` and ``ecommerce_daily_summary``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio

from aflow import DAG, BashOperator, PythonOperator

log = logging.getLogger(__name__)

SAMPLE_FILE = Path(__file__).parent / "data" / "clickstream_sample.csv"

EVENT_COLUMNS = [
    "event_id",
    "event_time",
    "session_id",
    "customer_id",
    "event_type",
    "product_id",
    "category",
    "price",
    "quantity",
    "order_id",
    "device",
    "country",
]


def examples_db_path() -> str:
    """Where the example DAGs keep their results (read at run time, not at import)."""
    explicit = os.environ.get("AFLOW_EXAMPLES_DB")
    if explicit:
        return explicit
    home = os.environ.get("AFLOW_HOME") or os.path.join("~", "aflow")
    return os.path.join(os.path.expanduser(home), "examples.db")


@contextmanager
def connect(path: str) -> Iterator[sqlite3.Connection]:
    """A connection whose `with` block is one transaction, closed afterwards."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=30)) as conn, conn:
        conn.row_factory = sqlite3.Row
        yield conn


# -- extract (async) -----------------------------------------------------------------


async def extract_clickstream(ds: str) -> dict[str, Any]:
    """Read the day's clickstream CSV and stage it in ecommerce_events."""
    url = os.environ.get("ECOMMERCE_CLICKSTREAM_URL")
    if url:
        import httpx

        source = url.split("?")[0]  # never log a query string: it may hold a token
        log.info("downloading clickstream from %s", source)
        async with httpx.AsyncClient(timeout=60.0, follow_redirects=True) as client:
            response = await client.get(url)
            response.raise_for_status()
            text = response.text
    else:
        log.info("ECOMMERCE_CLICKSTREAM_URL is not set: reading the bundled sample")
        text = await anyio.Path(SAMPLE_FILE).read_text(encoding="utf-8")
        source = SAMPLE_FILE.name

    events = parse_clickstream(text)
    path = examples_db_path()
    # sqlite3 blocks: run it in a worker thread so the event loop stays free.
    await anyio.to_thread.run_sync(stage_events, path, ds, events)
    sessions = len({e["session_id"] for e in events})
    log.info("staged %d events (%d sessions) for %s from %s", len(events), sessions, ds, source)
    return {"ds": ds, "events": len(events), "sessions": sessions, "source": source}


def parse_clickstream(text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    missing = set(EVENT_COLUMNS) - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"clickstream CSV lacks the columns {sorted(missing)}")
    events = []
    for row in reader:
        event = {col: row[col] for col in EVENT_COLUMNS}
        event["price"] = float(row["price"]) if row["price"] else None
        event["quantity"] = int(row["quantity"]) if row["quantity"] else None
        event["customer_id"] = row["customer_id"] or None  # empty: a guest
        event["order_id"] = row["order_id"] or None
        events.append(event)
    return events


def stage_events(path: str, ds: str, events: list[dict[str, Any]]) -> None:
    with connect(path) as conn:
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS ecommerce_events (
                ds TEXT NOT NULL, event_id TEXT NOT NULL, event_time TEXT NOT NULL,
                session_id TEXT NOT NULL, customer_id TEXT, event_type TEXT NOT NULL,
                product_id TEXT, category TEXT, price REAL, quantity INTEGER,
                order_id TEXT, device TEXT, country TEXT,
                PRIMARY KEY (ds, event_id)
            )
            """
        )
        conn.execute("DELETE FROM ecommerce_events WHERE ds = ?", (ds,))
        conn.executemany(
            f"INSERT INTO ecommerce_events (ds, {', '.join(EVENT_COLUMNS)}) "
            f"VALUES (:ds, {', '.join(':' + c for c in EVENT_COLUMNS)})",
            [{**e, "ds": ds} for e in events],
        )


def staged_events(ds: str) -> list[dict[str, Any]]:
    with connect(examples_db_path()) as conn:
        rows = conn.execute(
            "SELECT * FROM ecommerce_events WHERE ds = ? ORDER BY event_time, event_id", (ds,)
        ).fetchall()
    return [dict(r) for r in rows]


# -- the two branches (sync, run in worker threads) ----------------------------------


def transform_sales(ds: str) -> dict[str, Any]:
    """Orders, units and revenue per category, plus the day's totals."""
    return sales_report(staged_events(ds))


def sales_report(events: list[dict[str, Any]]) -> dict[str, Any]:
    purchases = [e for e in events if e["event_type"] == "purchase"]
    by_category: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"orders": set(), "units": 0, "revenue": 0.0}
    )
    for p in purchases:
        c = by_category[p["category"]]
        c["orders"].add(p["order_id"])
        c["units"] += p["quantity"]
        c["revenue"] += p["price"] * p["quantity"]
    categories = sorted(
        (
            {
                "category": name,
                "orders": len(c["orders"]),
                "units": c["units"],
                "revenue": round(c["revenue"], 2),
            }
            for name, c in by_category.items()
        ),
        key=lambda c: (-c["revenue"], c["category"]),
    )
    sessions = {e["session_id"] for e in events}
    converted = {p["session_id"] for p in purchases}
    report = {
        "orders": len({p["order_id"] for p in purchases}),
        "units": sum(p["quantity"] for p in purchases),
        "revenue": round(sum(p["price"] * p["quantity"] for p in purchases), 2),
        "sessions": len(sessions),
        "converted_sessions": len(converted),
        "by_category": categories,
    }
    log.info(
        "%d orders, %d units, revenue %.2f over %d categories",
        report["orders"],
        report["units"],
        report["revenue"],
        len(categories),
    )
    return report


def enrich_customers(ds: str) -> list[dict[str, Any]]:
    """One profile per known customer: activity, spend, usual device and a segment."""
    return customer_profiles(staged_events(ds))


def customer_profiles(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    per_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["customer_id"]:  # guests cannot be enriched
            per_customer[e["customer_id"]].append(e)
    profiles = []
    for customer_id, evs in sorted(per_customer.items()):
        kinds = Counter(e["event_type"] for e in evs)
        purchases = [e for e in evs if e["event_type"] == "purchase"]
        revenue = round(sum(p["price"] * p["quantity"] for p in purchases), 2)
        orders = len({p["order_id"] for p in purchases})
        if revenue >= 150:
            segment = "high_value"
        elif orders:
            segment = "buyer"
        elif kinds["add_to_cart"]:
            segment = "cart_abandoner"
        else:
            segment = "browser"
        profiles.append(
            {
                "customer_id": customer_id,
                "country": evs[0]["country"],
                "device": Counter(e["device"] for e in evs).most_common(1)[0][0],
                "sessions": len({e["session_id"] for e in evs}),
                "page_views": kinds["page_view"],
                "carts": kinds["add_to_cart"],
                "orders": orders,
                "revenue": revenue,
                "segment": segment,
            }
        )
    log.info(
        "%d customer profiles: %s",
        len(profiles),
        dict(sorted(Counter(p["segment"] for p in profiles).items())),
    )
    return profiles


# -- load (sync) ---------------------------------------------------------------------


def load_warehouse(ds: str, ti: Any) -> dict[str, Any]:
    """Write the day's facts and profiles, and return the summary the report prints."""
    extracted, sales, customers = ti.xcom_pull(
        task_ids=["extract_clickstream", "transform_sales", "enrich_customers"]
    )
    summary = {
        "ds": ds,
        "events": extracted["events"],
        "sessions": sales["sessions"],
        "orders": sales["orders"],
        "units": sales["units"],
        "revenue": sales["revenue"],
        "customers": len(customers),
        "conversion_rate": round(sales["converted_sessions"] / sales["sessions"], 4)
        if sales["sessions"]
        else 0.0,
        "top_category": sales["by_category"][0]["category"] if sales["by_category"] else None,
    }
    write_warehouse(examples_db_path(), ds, sales["by_category"], customers, summary)
    log.info("warehouse loaded for %s: %s", ds, summary)
    return summary


def write_warehouse(
    path: str,
    ds: str,
    categories: list[dict[str, Any]],
    customers: list[dict[str, Any]],
    summary: dict[str, Any],
) -> None:
    with connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS ecommerce_sales_daily (
                ds TEXT NOT NULL, category TEXT NOT NULL,
                orders INTEGER NOT NULL, units INTEGER NOT NULL, revenue REAL NOT NULL,
                PRIMARY KEY (ds, category)
            );
            CREATE TABLE IF NOT EXISTS ecommerce_customers_daily (
                ds TEXT NOT NULL, customer_id TEXT NOT NULL,
                country TEXT, device TEXT, sessions INTEGER, page_views INTEGER,
                carts INTEGER, orders INTEGER, revenue REAL, segment TEXT,
                PRIMARY KEY (ds, customer_id)
            );
            CREATE TABLE IF NOT EXISTS ecommerce_daily_summary (
                ds TEXT PRIMARY KEY,
                events INTEGER, sessions INTEGER, orders INTEGER, units INTEGER,
                revenue REAL, customers INTEGER, conversion_rate REAL, top_category TEXT
            );
            """
        )
        # executescript commits; what follows is one transaction, committed by `with`.
        for table in ("ecommerce_sales_daily", "ecommerce_customers_daily"):
            conn.execute(f"DELETE FROM {table} WHERE ds = ?", (ds,))
        conn.executemany(
            "INSERT INTO ecommerce_sales_daily (ds, category, orders, units, revenue) "
            "VALUES (:ds, :category, :orders, :units, :revenue)",
            [{**c, "ds": ds} for c in categories],
        )
        conn.executemany(
            "INSERT INTO ecommerce_customers_daily (ds, customer_id, country, device, "
            "sessions, page_views, carts, orders, revenue, segment) VALUES (:ds, "
            ":customer_id, :country, :device, :sessions, :page_views, :carts, :orders, "
            ":revenue, :segment)",
            [{**c, "ds": ds} for c in customers],
        )
        conn.execute(
            "INSERT OR REPLACE INTO ecommerce_daily_summary (ds, events, sessions, orders, "
            "units, revenue, customers, conversion_rate, top_category) VALUES (:ds, :events, "
            ":sessions, :orders, :units, :revenue, :customers, :conversion_rate, :top_category)",
            summary,
        )


# -- the DAG -------------------------------------------------------------------------

REPORT_COMMAND = """\
{%- set w = ti.xcom_pull(task_ids='load_warehouse') -%}
echo "Daily report {{ ds }}: {{ w.orders }} orders, {{ w.units }} units, \
revenue {{ '%.2f' | format(w.revenue) }}, {{ w.customers }} customers, \
conversion {{ '%.1f' | format(w.conversion_rate * 100) }}%, top category {{ w.top_category }}"
"""

with DAG(
    "ecommerce_analytics",
    schedule="0 6 * * *",  # every day at 06:00 UTC, for the day before
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
    tags=["example", "classic", "async"],
    description="Clickstream to sales facts, customer profiles and a daily report",
    doc_md=__doc__,
) as dag:
    extract = PythonOperator(
        task_id="extract_clickstream",
        python_callable=extract_clickstream,  # async def: awaited on the event loop
        op_kwargs={"ds": "{{ ds }}"},
    )
    sales = PythonOperator(
        task_id="transform_sales",
        python_callable=transform_sales,
        op_kwargs={"ds": "{{ ds }}"},
    )
    customers = PythonOperator(
        task_id="enrich_customers",
        python_callable=enrich_customers,
        op_kwargs={"ds": "{{ ds }}"},
    )
    load = PythonOperator(
        task_id="load_warehouse",
        python_callable=load_warehouse,
        op_kwargs={"ds": "{{ ds }}"},
    )
    report = BashOperator(task_id="daily_report", bash_command=REPORT_COMMAND)

    extract >> [sales, customers] >> load >> report
