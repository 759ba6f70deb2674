"""ui: the web UI's and REST API's answer times over a store holding N DAGs with 10 runs
of 10 tasks each (default N = 1,000: 10,000 runs and 100,000 task instances).

The store (a fresh SQLite file, or `--store`) is filled directly with DAG records (a
chain of 10 tasks each), runs (all ended, states mixed) and task instance rows; an
Orchestrator with no DAG loaded serves it through `aflow.api.serve_api`, and one client
asks, one request at a time, for the pages a person opens: the DAG list (first and a
middle page), a DAG's graph and grid, a run with its Gantt chart, a task instance with
its log, and the API's run list of every DAG. Each page is asked `--requests` times; a
hop is one answer's time (request sent → body read). Nothing is asserted: pages
"responsive" means their p99 stays well under a second.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from aflow.states import DagRunState, RunType, TaskState
from aflow.store.records import DagRecord, DagRunRecord, TaskInstanceRecord
from benchmarks.harness import BenchContext, BenchmarkFailed, Outcome
from benchmarks.measure import Window, peak_rss_mib, percentile
from benchmarks.registry import Option, scenario

RUNS_PER_DAG = 10
TASKS_PER_DAG = 10
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def structure(dag_id: str) -> dict[str, Any]:
    ids = [f"task_{k}" for k in range(TASKS_PER_DAG)]
    return {
        "dag_id": dag_id, "schedule": "@daily", "description": None, "tags": ["bench"],
        "max_active_runs": 16, "max_active_tasks": 16, "params": {}, "webhooks": [],
        "tasks": [{"task_id": t, "operator": "PythonOperator", "trigger_rule": "all_success",
                   "retries": 0, "upstream": ids[i - 1:i], "downstream": ids[i + 1:i + 2],
                   "ui_color": "#ffefeb"} for i, t in enumerate(ids)],
    }


async def seed(store: Any, n: int) -> None:
    await store.upsert_dags([DagRecord(f"dag_{d:04d}", None, structure(f"dag_{d:04d}"),
                                       updated_at=T0) for d in range(n)])
    for d in range(n):
        dag_id = f"dag_{d:04d}"
        for r in range(RUNS_PER_DAG):
            start = T0 + timedelta(days=r)
            failed = (d + r) % 7 == 0
            run = DagRunRecord(dag_id, f"scheduled__{start.isoformat()}", RunType.SCHEDULED,
                               DagRunState.FAILED if failed else DagRunState.SUCCESS, start,
                               start, start + timedelta(days=1), created_at=start,
                               start_date=start, end_date=start + timedelta(minutes=5))
            tis = [TaskInstanceRecord(dag_id, run.run_id, f"task_{k}",
                                      state=TaskState.FAILED if failed and k == 5 else (
                                          TaskState.UPSTREAM_FAILED if failed and k > 5
                                          else TaskState.SUCCESS),
                                      try_number=1, start_date=start + timedelta(seconds=k),
                                      end_date=start + timedelta(seconds=k + 1))
                   for k in range(TASKS_PER_DAG)]
            await store.create_run(run, tis)


@scenario(
    "ui",
    description="web UI and API answer times over N DAGs × 10 runs × 10 tasks",
    default_n=1000,
    default_parallelism=32,
    options=(Option("--requests", int, 20, "times each page is asked", minimum=1),),
)
async def ui(ctx: BenchContext) -> Outcome:
    import httpx  # (these here: the other scenarios need no web stack or TLS context)

    from aflow.api import serve_api
    from aflow.api.auth import create_token, create_user

    n = ctx.n
    async with ctx.orchestrator([], claim=False, triggerer=False) as o:
        ctx.progress(f"seeding {n} DAGs, {n * RUNS_PER_DAG} runs, "
                     f"{n * RUNS_PER_DAG * TASKS_PER_DAG} task instances")
        began = time.perf_counter()
        await seed(o.store, n)
        seed_s = time.perf_counter() - began
        rss_before = peak_rss_mib()
        dag_id = f"dag_{n // 2:04d}"
        run_id = f"scheduled__{(T0 + timedelta(days=3)).isoformat()}"
        q = quote(run_id, safe="")
        pages = {
            "dag_list": "/dags",
            "dag_list_page_10": "/dags?page=10",
            "dag_graph_grid": f"/dags/{dag_id}",
            "run_gantt": f"/dags/{dag_id}/runs/{q}",
            "task_instance": f"/dags/{dag_id}/runs/{q}/tasks/task_5",
            "api_runs_all_dags": "/api/v1/dags/~/runs?limit=100",
        }
        times: dict[str, list[float]] = {name: [] for name in pages}
        async with serve_api(o) as url:
            now = datetime.now(UTC)
            await create_user(o.store, "bench", "viewer", "bench-password", now)
            token, _ = await create_token(o.store, "bench", now)
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
                window = Window.start()
                for _ in range(ctx.options["requests"]):
                    for name, path in pages.items():
                        t = time.perf_counter()
                        answer = await client.get(path)
                        times[name].append(time.perf_counter() - t)
                        if answer.status_code != 200:
                            raise BenchmarkFailed(f"{path}: {answer.status_code} {answer.text[:200]}")
                window.stop()
    hops = [t for ts in times.values() for t in ts]
    extra: dict[str, Any] = {"seed_s": round(seed_s, 2), "dags": n,
                             "runs": n * RUNS_PER_DAG, "task_instances": n * RUNS_PER_DAG * TASKS_PER_DAG}
    for name, ts in times.items():
        extra[f"{name}_ms_p50"] = round(percentile(ts, 50) * 1000, 2)
        extra[f"{name}_ms_p99"] = round(percentile(ts, 99) * 1000, 2)
    return Outcome(window=window, tis=len(hops), hops_s=hops, rss_before_run_mib=rss_before,
                   extra=extra)
