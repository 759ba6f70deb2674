"""Weather dashboard: a classic fetch >> transform >> load pipeline.

What it shows
-------------
* the classic style: ``with DAG(...)``, ``PythonOperator`` and ``>>``;
* ``default_args`` (every task gets 2 retries, 5 seconds apart);
* passing small JSON results between tasks with XCom (``ti.xcom_pull``);
* a templated argument: ``op_kwargs={"ds": "{{ ds }}"}`` is rendered per run;
* an idempotent load: rows are upserted on ``(city, ds)``, so re-running a day
  replaces that day's rows instead of adding new ones.

Data
----
``fetch`` makes a real HTTP call when ``WEATHER_API_URL`` is set, for example an
Open-Meteo forecast for one place::

    WEATHER_API_URL="https://api.open-meteo.com/v1/forecast?latitude=52.52&longitude=13.41&hourly=temperature_2m,relative_humidity_2m,wind_speed_10m&forecast_days=1"

Otherwise it reads the bundled sample ``data/weather_sample.json`` (five cities,
24 hourly readings each), so the DAG runs offline.

The results go to the table ``weather_daily`` of a SQLite file:
``$AFLOW_EXAMPLES_DB`` if set, else ``$AFLOW_HOME/examples.db`` (``AFLOW_HOME``
defaults to ``~/aflow``).

All three callables are plain (sync) functions, so aflow runs them in worker
threads and the blocking HTTP call and SQLite writes never stall the event loop.
Nothing here does I/O at import time: the file is parsed often.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import statistics
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aflow import DAG, PythonOperator

log = logging.getLogger(__name__)

SAMPLE_FILE = Path(__file__).parent / "data" / "weather_sample.json"


def examples_db_path() -> str:
    """Where the example DAGs keep their results (read at run time, not at import)."""
    explicit = os.environ.get("AFLOW_EXAMPLES_DB")
    if explicit:
        return explicit
    home = os.environ.get("AFLOW_HOME") or os.path.join("~", "aflow")
    return os.path.join(os.path.expanduser(home), "examples.db")


# -- task callables ------------------------------------------------------------------


def fetch_weather() -> dict[str, Any]:
    """Hourly observations per city: from WEATHER_API_URL, or the bundled sample."""
    url = os.environ.get("WEATHER_API_URL")
    if url:
        import httpx  # only needed when going to the network

        log.info("fetching weather from %s", url.split("?")[0])  # the query may hold an API key
        response = httpx.get(url, timeout=30.0, follow_redirects=True)
        response.raise_for_status()  # a failed call fails the try; retries take over
        payload = response.json()
    else:
        log.info("WEATHER_API_URL is not set: reading the bundled sample %s", SAMPLE_FILE)
        payload = json.loads(SAMPLE_FILE.read_text(encoding="utf-8"))

    cities = _as_cities(payload)
    log.info("fetched %d cities: %s", len(cities), ", ".join(c["city"] for c in cities))
    return {"cities": cities}


def _as_cities(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Accept the sample's {"cities": [...]} or a single Open-Meteo location."""
    if "cities" in payload:
        return payload["cities"]
    if "hourly" in payload:  # Open-Meteo answers for one latitude/longitude
        name = os.environ.get("WEATHER_CITY") or (
            f"{payload.get('latitude')},{payload.get('longitude')}"
        )
        return [{"city": name, **payload}]
    raise ValueError(f"unexpected weather payload: keys {sorted(payload)}")


def transform_weather(ti: Any) -> list[dict[str, Any]]:
    """Daily statistics per city from the hourly readings that `fetch` pushed."""
    raw = ti.xcom_pull(task_ids="fetch")
    return daily_stats(raw["cities"])


def daily_stats(cities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stats = []
    for city in cities:
        hourly = city["hourly"]
        temps = [t for t in hourly.get("temperature_2m", []) if t is not None]
        humidity = [h for h in hourly.get("relative_humidity_2m", []) if h is not None]
        wind = [w for w in hourly.get("wind_speed_10m", []) if w is not None]
        if not temps:
            log.warning("no temperature readings for %s: skipped", city["city"])
            continue
        stats.append(
            {
                "city": city["city"],
                "readings": len(temps),
                "temp_min": min(temps),
                "temp_max": max(temps),
                "temp_mean": round(statistics.fmean(temps), 2),
                "humidity_mean": round(statistics.fmean(humidity), 1) if humidity else None,
                "wind_mean": round(statistics.fmean(wind), 1) if wind else None,
                "wind_max": max(wind) if wind else None,
            }
        )
    for s in stats:
        log.info(
            "%-10s min %5.1f  max %5.1f  mean %5.2f °C",
            s["city"],
            s["temp_min"],
            s["temp_max"],
            s["temp_mean"],
        )
    return sorted(stats, key=lambda s: s["city"])


def load_weather(ds: str, ti: Any) -> dict[str, Any]:
    """Upsert the day's statistics into weather_daily, keyed by (city, ds)."""
    stats = ti.xcom_pull(task_ids="transform")
    path = examples_db_path()
    upsert_weather(path, ds, stats)
    log.info("loaded %d rows for %s into %s", len(stats), ds, path)
    return {"rows": len(stats), "ds": ds, "database": path}


def upsert_weather(path: str, ds: str, stats: list[dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
    rows = [{**s, "ds": ds, "loaded_at": loaded_at} for s in stats]
    with closing(sqlite3.connect(path, timeout=30)) as conn, conn:  # `conn`: one transaction
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS weather_daily (
                city          TEXT NOT NULL,
                ds            TEXT NOT NULL,
                readings      INTEGER NOT NULL,
                temp_min      REAL,
                temp_max      REAL,
                temp_mean     REAL,
                humidity_mean REAL,
                wind_mean     REAL,
                wind_max      REAL,
                loaded_at     TEXT NOT NULL,
                PRIMARY KEY (city, ds)
            )
            """
        )
        conn.executemany(
            """
            INSERT INTO weather_daily (city, ds, readings, temp_min, temp_max, temp_mean,
                                       humidity_mean, wind_mean, wind_max, loaded_at)
            VALUES (:city, :ds, :readings, :temp_min, :temp_max, :temp_mean,
                    :humidity_mean, :wind_mean, :wind_max, :loaded_at)
            ON CONFLICT (city, ds) DO UPDATE SET
                readings = excluded.readings,
                temp_min = excluded.temp_min,
                temp_max = excluded.temp_max,
                temp_mean = excluded.temp_mean,
                humidity_mean = excluded.humidity_mean,
                wind_mean = excluded.wind_mean,
                wind_max = excluded.wind_max,
                loaded_at = excluded.loaded_at
            """,
            rows,
        )


# -- the DAG -------------------------------------------------------------------------

with DAG(
    "weather_dashboard",
    schedule="@daily",
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=5)},
    tags=["example", "classic"],
    description="Daily weather statistics per city, loaded into SQLite",
    doc_md=__doc__,
) as dag:
    fetch = PythonOperator(task_id="fetch", python_callable=fetch_weather)

    transform = PythonOperator(task_id="transform", python_callable=transform_weather)

    load = PythonOperator(
        task_id="load",
        python_callable=load_weather,
        op_kwargs={"ds": "{{ ds }}"},  # rendered to the run's logical date, e.g. 2024-01-01
    )

    fetch >> transform >> load
