"""TaskFlow: the same kind of pipeline written with ``@dag`` and ``@task``.

What it shows
-------------
* ``@dag`` turns a function into a DAG; calling the function builds it;
* ``@task`` turns functions into tasks, and passing one task's result to another
  both moves the value (through XCom) and makes the dependency: no ``>>`` needed;
* a sync task (run in a worker thread) and an ``async def`` task (awaited on the
  event loop) mixed freely;
* ``multiple_outputs=True``: each key of the returned dict is its own XCom, so
  ``priced["total"]`` hands on just the total;
* params: the ``@dag`` function's argument ``discount_percent`` is a DAG param
  (an integer from 0 to 50, 10 by default) that a run's conf can override,
  e.g. ``{"discount_percent": 25}``; the task that receives it gets the run's value;
* ``@task.bash``: the function returns a shell command, which is then rendered
  with Jinja (here ``{{ run_id }}`` and ``{{ params.discount_percent }}``) and run.

It needs no network, no files and no database. ``schedule=None``: trigger it by hand.
"""

from __future__ import annotations

import logging
import shlex
from datetime import datetime, timezone
from typing import Any

import anyio

from aflow import Param, dag, task

log = logging.getLogger(__name__)

STOCK = {"notebook": 120, "fountain-pen": 8, "ink-bottle": 0}


@dag(
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    catchup=False,
    tags=["example", "taskflow"],
)
def taskflow_example(
    discount_percent: int = Param(  # noqa: B008 - a DAG param, read when the DAG is built
        10,
        type="integer",
        minimum=0,
        maximum=50,
        description="Discount applied to the order, in percent",
    ),
) -> None:
    """Price an order, check stock concurrently, and print a receipt."""

    @task
    def make_order() -> dict[str, Any]:
        """A sync task: build the order (in real life, read it from somewhere)."""
        order = {
            "order_id": "A-1001",
            "customer": "Ada Lovelace",
            "lines": [
                {"sku": "notebook", "unit_price": 4.50, "quantity": 3},
                {"sku": "fountain-pen", "unit_price": 28.00, "quantity": 1},
                {"sku": "ink-bottle", "unit_price": 7.25, "quantity": 2},
            ],
        }
        log.info("order %s with %d lines", order["order_id"], len(order["lines"]))
        return order

    @task(multiple_outputs=True)
    def price_order(order: dict[str, Any], discount_percent: int) -> dict[str, float]:
        """Each key becomes its own XCom: subtotal, discount, tax, total."""
        subtotal = sum(line["unit_price"] * line["quantity"] for line in order["lines"])
        discount = round(subtotal * discount_percent / 100, 2)
        tax = round((subtotal - discount) * 0.20, 2)
        total = round(subtotal - discount + tax, 2)
        log.info(
            "subtotal %.2f, discount %d%% = %.2f, total %.2f",
            subtotal,
            discount_percent,
            discount,
            total,
        )
        return {"subtotal": round(subtotal, 2), "discount": discount, "tax": tax, "total": total}

    @task
    async def check_stock(order: dict[str, Any]) -> dict[str, Any]:
        """An async task: ask an (imaginary) inventory service about every line at once."""

        async def lookup(sku: str, results: dict[str, int]) -> None:
            await anyio.sleep(0.05)  # stands for an HTTP call; the loop serves others meanwhile
            results[sku] = STOCK.get(sku, 0)

        available: dict[str, int] = {}
        async with anyio.create_task_group() as tg:
            for line in order["lines"]:
                tg.start_soon(lookup, line["sku"], available)
        backordered = sorted(
            line["sku"] for line in order["lines"] if available[line["sku"]] < line["quantity"]
        )
        return {"in_stock": not backordered, "backordered": backordered}

    @task
    def make_receipt(order: dict[str, Any], total: float, stock: dict[str, Any]) -> str:
        """Values from three upstream tasks arrive as plain arguments."""
        note = (
            "ships today"
            if stock["in_stock"]
            else f"backordered: {', '.join(stock['backordered'])}"
        )
        return f"order {order['order_id']} for {order['customer']}: total {total:.2f} EUR ({note})"

    @task.bash
    def print_receipt(receipt: str) -> str:
        """The returned command is rendered with Jinja, then run; its last line is its XCom."""
        return (
            "echo 'run {{ run_id }}, discount {{ params.discount_percent }}%'\n"
            "echo " + shlex.quote(receipt)
        )

    order = make_order()
    priced = price_order(order, discount_percent)
    stock = check_stock(order)
    print_receipt(make_receipt(order, priced["total"], stock))


taskflow_example_dag = taskflow_example()
