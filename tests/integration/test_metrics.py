"""/metrics in Prometheus text format, scraped from a real loopback server while a task
holds a slot and a sensor is parked."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aflow import DAG, FileSensor, Orchestrator, PythonOperator
from aflow.api import serve_api
from tests.auth_helpers import bearer

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[str, float]:
    """name -> value; a labelled sample as name{label=value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            if "le" not in s.labels:
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def test_metrics_show_slots_parked_triggers_and_loop_lag(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    started = anyio.Event()

    async def hold() -> None:
        started.set()
        with anyio.fail_after(30):
            while not gate.exists():  # noqa: ASYNC110 - the test opens the gate
                await anyio.sleep(0.02)

    with DAG("m", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        PythonOperator(task_id="hold", python_callable=hold)
        FileSensor(task_id="wait", filepath=str(tmp_path / "never"), deferrable=True,
                   poke_interval=0.05)

    async with Orchestrator([dag], home=home, parallelism=4) as o, serve_api(o) as url:
        handle = await o.trigger("m")
        await started.wait()
        async with httpx.AsyncClient(base_url=url, headers=await bearer(o.store, "viewer")) as client:
            try:
                with anyio.fail_after(30):
                    while True:
                        response = await client.get("/metrics")
                        assert response.status_code == 200
                        assert response.headers["content-type"].startswith("text/plain")
                        got = samples(response.text)
                        if (got.get("aflow_triggers_running") == 1
                                and got["aflow_event_loop_lag_seconds_count"] >= 1):
                            break
                        await anyio.sleep(0.05)
            finally:
                gate.touch()  # whatever happens, the task ends and the shutdown is quick
            assert got["aflow_executor_running_tasks"] == 1
            assert got["aflow_executor_open_slots"] == 3
            assert got["aflow_executor_queued_tasks"] == 0
            assert got["aflow_scheduler_tasks_deferred"] == 1
            assert got["aflow_scheduler_dagruns_running"] == 1
            assert got["aflow_triggerer_capacity_left"] == o.triggerer_capacity - 1
            assert got["aflow_dagbag_size"] == 1
            assert got["aflow_task_start_delay_seconds_count"] >= 2  # both tasks got a slot
            assert got["aflow_store_commit_seconds_count"] >= 1
            assert got["aflow_store_commit_ops_sum"] >= got["aflow_store_commit_ops_count"]
            assert got["aflow_pool_running_slots{pool=default_pool}"] == 1  # hold
            (tmp_path / "never").touch()
            assert (await handle.wait(timeout=30)).state == "success"
            after = samples((await client.get("/metrics")).text)
    assert after["aflow_executor_running_tasks"] == 0
    assert after["aflow_pool_running_slots{pool=default_pool}"] == 0
    assert after["aflow_pool_open_slots{pool=default_pool}"] == 128
    assert after["aflow_triggers_running"] == 0
    assert after["aflow_scheduler_dagruns_running"] == 0
