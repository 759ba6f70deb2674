"""webhook: N signed webhook requests at once from another process → each run's first
task started.

One DAG, `bench_webhook`, with a signed `Webhook("bench")` that maps the payload to the
run's conf, and one async task that records `time.time()` when it is entered. The
Orchestrator and the API server (`aflow.api.serve_api`, loopback) run in this process;
`python -m benchmarks.webhook_client` sends the N requests at once from a separate
process, each with its sequence number, its send time and its own delivery id (retried
with the same id on a failure). A hop is one request's send time → its run's first task
entered (both wall clocks of this machine): `webhook_to_start_ms_p50`/`_p99`. `lost`
counts requests whose run never started within `--timeout`; `duplicated` counts runs
beyond one per request. The window is the first send → the last task start.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any

import anyio

from aflow import DAG, PythonOperator, Webhook
from benchmarks.harness import BenchContext, BenchmarkFailed, Outcome
from benchmarks.measure import Window, peak_rss_mib, percentile
from benchmarks.registry import scenario


def build(n: int, secret: str, starts: dict[int, float]) -> DAG:
    async def first(dag_run: Any) -> None:
        starts.setdefault(dag_run.conf["seq"], time.time())

    with DAG(
        "bench_webhook",
        schedule=None,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        max_active_runs=n,
        webhooks=[Webhook("bench", secret=secret,
                          conf=lambda payload, headers: {"seq": payload["seq"],
                                                         "sent": payload["sent"]})],
    ) as dag:
        PythonOperator(task_id="first", python_callable=first)
    return dag


@scenario(
    "webhook",
    description="N signed webhook POSTs at once from another process → first task started",
    default_n=1000,
    default_parallelism=256,
)
async def webhook(ctx: BenchContext) -> Outcome:
    from aflow.api import serve_api  # (here: the other scenarios need no web stack)

    n = ctx.n
    secret = secrets.token_hex(16)
    starts: dict[int, float] = {}
    dag = build(n, secret, starts)
    async with ctx.orchestrator([dag]) as o, serve_api(o) as url:
        rss_before = peak_rss_mib()
        ctx.progress(f"sending {n} signed requests at once from a client process")
        window = Window.start()
        sent_at = time.time()
        result = await anyio.run_process(
            [sys.executable, "-m", "benchmarks.webhook_client",
             f"{url}/api/v1/webhooks/bench", str(n), secret],
            check=False,
        )
        if result.returncode != 0:
            raise BenchmarkFailed(f"the client failed: {result.stderr.decode()[-2000:]}")
        client = json.loads(result.stdout.decode().strip().splitlines()[-1])
        with anyio.move_on_after(ctx.timeout_s):
            while len(starts) < n:  # noqa: ASYNC110 - the tasks stamp a dict
                await anyio.sleep(0.01)
        window.stop()
        runs = await o.store.list_runs("bench_webhook", limit=2 * n + 10)
    per_seq: dict[int, int] = {}
    sent: dict[int, float] = {}
    for run in runs:
        seq = run.conf["seq"]
        per_seq[seq] = per_seq.get(seq, 0) + 1
        sent.setdefault(seq, run.conf["sent"])
    hops = [starts[s] - sent[s] for s in starts if s in sent]
    if not hops:
        raise BenchmarkFailed("no run started")

    def ms(x: float) -> float:
        return round(x * 1000, 3)

    return Outcome(
        window=window,
        tis=len(starts),
        hops_s=hops,
        rss_before_run_mib=rss_before,
        extra={
            "webhook_to_start_ms_p50": ms(percentile(hops, 50)),
            "webhook_to_start_ms_p99": ms(percentile(hops, 99)),
            "lost": n - len(starts),
            "duplicated": sum(c - 1 for c in per_seq.values() if c > 1),
            "client_statuses": client["statuses"],
            "client_retries": client["retries"],
            "client_failed": client["failed"],
            "first_send_to_last_start_s": round(max(starts.values()) - sent_at, 3),
        },
    )
