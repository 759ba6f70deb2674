"""Regenerate the bundled sample data of the example DAGs, byte for byte.

    python dags/data/_generate_samples.py

Both files come from a seeded random generator, so running this again rewrites
them unchanged. The leading underscore keeps the DAG loader from importing it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE_DAY = datetime(2024, 1, 1, tzinfo=UTC)

# -- weather: Open-Meteo's hourly shape, one entry per city ------------------------

CITIES = [
    # name, country, lat, lon, timezone, mean °C, daily swing °C, humidity %, wind km/h
    ("Berlin", "DE", 52.52, 13.41, "Europe/Berlin", 2.5, 5.0, 84, 14.0),
    ("Lisbon", "PT", 38.72, -9.14, "Europe/Lisbon", 12.0, 6.5, 76, 11.0),
    ("Oslo", "NO", 59.91, 10.75, "Europe/Oslo", -4.0, 3.5, 80, 9.0),
    ("Reykjavik", "IS", 64.15, -21.94, "Atlantic/Reykjavik", -1.0, 2.0, 78, 26.0),
    ("Madrid", "ES", 40.42, -3.70, "Europe/Madrid", 7.5, 9.0, 68, 8.0),
]


def weather_sample(rng: random.Random) -> dict:
    hours = [SAMPLE_DAY + timedelta(hours=h) for h in range(24)]
    cities = []
    for name, country, lat, lon, tz, mean, swing, humidity, wind in CITIES:
        temps, hums, winds = [], [], []
        for h in range(24):
            # coldest around 05:00, warmest around 15:00
            diurnal = -math.cos((h - 3) / 24 * 2 * math.pi)
            t = mean + swing / 2 * diurnal + rng.gauss(0, 0.4)
            temps.append(round(t, 1))
            hums.append(int(min(100, max(20, humidity - 8 * diurnal + rng.gauss(0, 3)))))
            winds.append(round(max(0.0, wind * (1 + 0.25 * diurnal) + rng.gauss(0, 2)), 1))
        cities.append(
            {
                "city": name,
                "country": country,
                "latitude": lat,
                "longitude": lon,
                "timezone": tz,
                "hourly_units": {
                    "time": "iso8601",
                    "temperature_2m": "°C",
                    "relative_humidity_2m": "%",
                    "wind_speed_10m": "km/h",
                },
                "hourly": {
                    "time": [t.strftime("%Y-%m-%dT%H:%M") for t in hours],
                    "temperature_2m": temps,
                    "relative_humidity_2m": hums,
                    "wind_speed_10m": winds,
                },
            }
        )
    return {"source": "aflow example sample (Open-Meteo hourly format)", "cities": cities}


# -- clickstream: one day of a small web shop ----------------------------------------

PRODUCTS = [
    # product_id, category, price
    ("P100", "books", 12.99),
    ("P101", "books", 24.50),
    ("P102", "books", 8.75),
    ("P200", "electronics", 59.00),
    ("P201", "electronics", 129.99),
    ("P202", "electronics", 19.90),
    ("P300", "home", 34.00),
    ("P301", "home", 15.49),
    ("P302", "home", 89.00),
    ("P400", "outdoor", 45.00),
    ("P401", "outdoor", 74.95),
    ("P500", "toys", 22.00),
    ("P501", "toys", 9.99),
]
COUNTRIES = ["DE", "FR", "NL", "PT", "ES", "SE"]
DEVICES = ["mobile", "desktop", "tablet"]
CLICK_FIELDS = [
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


def clickstream_sample(rng: random.Random) -> str:
    customers = [
        (f"C{n:04d}", rng.choice(COUNTRIES), rng.choices(DEVICES, weights=[6, 3, 1])[0])
        for n in range(1, 41)
    ]
    sessions = []
    for s in range(1, 91):
        start = SAMPLE_DAY + timedelta(seconds=rng.randrange(0, 23 * 3600))
        if rng.random() < 0.15:  # a guest who never logs in
            customer, country, device = "", rng.choice(COUNTRIES), rng.choice(DEVICES)
        else:
            customer, country, device = rng.choice(customers)
        sessions.append((start, f"S{s:04d}", customer, country, device))
    sessions.sort()

    rows: list[dict] = []
    orders = 0
    for start, session_id, customer, country, device in sessions:
        t = start
        cart: list[tuple[str, str, float, int]] = []
        for _ in range(rng.randint(1, 5)):
            product_id, category, price = rng.choice(PRODUCTS)
            t += timedelta(seconds=rng.randint(5, 120))
            rows.append(
                dict(
                    event_time=t,
                    session_id=session_id,
                    customer_id=customer,
                    event_type="page_view",
                    product_id=product_id,
                    category=category,
                    price=price,
                    quantity="",
                    order_id="",
                    device=device,
                    country=country,
                )
            )
            if rng.random() < 0.35:
                quantity = rng.choices([1, 2, 3], weights=[7, 2, 1])[0]
                t += timedelta(seconds=rng.randint(3, 40))
                cart.append((product_id, category, price, quantity))
                rows.append(
                    dict(rows[-1], event_time=t, event_type="add_to_cart", quantity=quantity)
                )
        if cart and customer and rng.random() < 0.6:
            orders += 1
            order_id = f"O{orders:05d}"
            t += timedelta(seconds=rng.randint(30, 300))
            for product_id, category, price, quantity in cart:
                rows.append(
                    dict(
                        event_time=t,
                        session_id=session_id,
                        customer_id=customer,
                        event_type="purchase",
                        product_id=product_id,
                        category=category,
                        price=price,
                        quantity=quantity,
                        order_id=order_id,
                        device=device,
                        country=country,
                    )
                )

    rows.sort(key=lambda r: (r["event_time"], r["session_id"]))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CLICK_FIELDS, lineterminator="\n")
    writer.writeheader()
    for n, row in enumerate(rows, start=1):
        row["event_id"] = f"E{n:06d}"
        row["event_time"] = row["event_time"].strftime("%Y-%m-%dT%H:%M:%SZ")
        row["price"] = f"{row['price']:.2f}"
        writer.writerow(row)
    return out.getvalue()


def main() -> None:
    weather = weather_sample(random.Random(20240101))
    (HERE / "weather_sample.json").write_text(
        json.dumps(weather, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (HERE / "clickstream_sample.csv").write_text(
        clickstream_sample(random.Random(42)), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
