"""High fan-out: one start, 200 small async tasks side by side, one join.

What it shows
-------------
* tasks created in a loop, each with its own ``task_id`` and ``op_kwargs``;
* ``async def`` callables: each task awaits on the shared event loop instead of
  holding a thread, so hundreds of them cost little more than one;
* a join with ``trigger_rule="all_done"``: it runs once every square has finished,
  whether it succeeded or not, and reports which results are missing;
* ``ti.xcom_pull(task_ids=[...])`` with a list returns a list of values, in order
  (``None`` for a task that pushed nothing, e.g. one that failed).

The expected total is 0² + 1² + ... + 199² = 2,646,700. Trigger it by hand
(``schedule=None``); it is also a simple way to watch the scheduler and executor
work through a wide DAG.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import anyio

from aflow import DAG, EmptyOperator, PythonOperator

log = logging.getLogger(__name__)

FANOUT = 200


async def square(index: int) -> int:
    """Stands for a small I/O-bound call (an API request, a query)."""
    await anyio.sleep(0.01)
    return index * index


def sum_squares(task_ids: list[str], ti: Any) -> dict[str, Any]:
    """Add up the squares; with all_done, some upstream results may be missing."""
    values = ti.xcom_pull(task_ids=task_ids)
    missing = [tid for tid, value in zip(task_ids, values, strict=True) if value is None]
    total = sum(value for value in values if value is not None)
    expected = sum(i * i for i in range(len(task_ids)))
    if missing:
        log.warning(
            "%d of %d squares have no result (%s%s); partial sum %d",
            len(missing),
            len(task_ids),
            ", ".join(missing[:5]),
            ", ..." if len(missing) > 5 else "",
            total,
        )
    else:
        log.info("sum of %d squares = %d (expected %d)", len(task_ids), total, expected)
    return {"total": total, "received": len(task_ids) - len(missing), "missing": missing}


with DAG(
    "high_fanout",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    catchup=False,
    max_active_tasks=FANOUT,  # async tasks are cheap: let all of them run at once
    tags=["example", "async", "fanout"],
    description=f"{FANOUT} async tasks between a start and an all_done join",
    doc_md=__doc__,
) as dag:
    start = EmptyOperator(task_id="start")

    squares = [
        PythonOperator(
            task_id=f"square_{i:03d}",
            python_callable=square,
            op_kwargs={"index": i},
        )
        for i in range(FANOUT)
    ]

    join = PythonOperator(
        task_id="sum_squares",
        python_callable=sum_squares,
        op_kwargs={"task_ids": [t.task_id for t in squares]},
        trigger_rule="all_done",
    )

    end = EmptyOperator(task_id="end")

    start >> squares >> join >> end
