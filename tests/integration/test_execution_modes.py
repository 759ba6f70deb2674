"""Where task code runs: async callables on the event loop, sync callables in worker
threads (the loop keeps running), `run_in="process"` in a child process (crashes fail
only that task), and the slot limits `parallelism` and `max_active_tasks`."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, BashOperator, PythonOperator, TriggerRule, task
from aflow.runtime.dag_loader import load_file
from tests.conftest import run_dag

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


def write_dag_file(tmp_path: Path, name: str, source: str, **fmt: Any) -> DAG:
    """Write a DAG file into tmp_path and load it (process tasks re-import it)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source).format(**{k: repr(v) for k, v in fmt.items()}))
    (dag,) = load_file(path)
    assert dag.fileloc == str(path)
    return dag


# -- loop and threads ---------------------------------------------------------------------
async def test_async_on_the_loop_and_sync_in_worker_threads(home: Path) -> None:
    loop_thread = threading.get_ident()
    seen: dict[str, int] = {}

    async def async_fn() -> None:
        seen["async"] = threading.get_ident()

    def sync_fn() -> None:
        seen["sync"] = threading.get_ident()

    def sync_on_loop() -> None:
        seen["sync_loop"] = threading.get_ident()

    async def async_in_thread() -> None:
        seen["async_thread"] = threading.get_ident()

    with DAG("where", start_date=START) as dag:
        PythonOperator(task_id="async_fn", python_callable=async_fn)
        PythonOperator(task_id="sync_fn", python_callable=sync_fn)
        PythonOperator(task_id="sync_loop", python_callable=sync_on_loop, run_in="loop")
        PythonOperator(task_id="async_thread", python_callable=async_in_thread, run_in="thread")

        @task
        def deco_sync() -> None:
            seen["deco_sync"] = threading.get_ident()

        @task
        async def deco_async() -> None:
            seen["deco_async"] = threading.get_ident()

        deco_sync()
        deco_async()

    result = await run_dag(dag, home)
    assert result.state == "success", result.states()
    assert seen["async"] == loop_thread
    assert seen["deco_async"] == loop_thread
    assert seen["sync_loop"] == loop_thread
    assert seen["sync"] != loop_thread
    assert seen["deco_sync"] != loop_thread
    assert seen["async_thread"] != loop_thread


async def test_sync_task_does_not_block_the_loop(orchestrator_factory: Any) -> None:
    """While a sync task does time.sleep in its thread, an async ticker keeps ticking."""
    ticks: list[int] = []
    sync_done = threading.Event()

    async def ticker() -> None:
        for i in range(1000):
            if sync_done.is_set():
                return
            ticks.append(i)
            await anyio.sleep(0.01)

    def blocking() -> int:
        before = len(ticks)
        time.sleep(0.3)
        sync_done.set()
        return len(ticks) - before

    with DAG("ticks", start_date=START) as dag:
        PythonOperator(task_id="ticker", python_callable=ticker)
        PythonOperator(task_id="blocking", python_callable=blocking)

    o = await orchestrator_factory([dag])
    handle = await o.trigger("ticks")
    final = await handle.wait(timeout=30)
    assert final.state.value == "success"
    (during,) = [x.value for x in await o.store.get_xcoms("ticks", handle.run_id, "blocking")]
    assert during >= 5, f"the loop was blocked: only {during} ticks during a 0.3 s sleep"


# -- child processes ----------------------------------------------------------------------
PROCESS_DAG = """
import logging
import os

from datetime import UTC, datetime

from aflow import DAG, PythonOperator, task

log = logging.getLogger("user.code")

with DAG("in_process", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:

    @task(run_in="process")
    def compute(ti=None):
        print("printed by the child", os.getpid(), flush=True)
        log.info("logged by the child")
        os.write(1, b"raw fd write from the child\\n")
        return {{"pid": os.getpid(), "squares": [i * i for i in range(5)], "try": ti.try_number}}

    @task
    def consume(value):
        return {{"pid": os.getpid(), "got": value["squares"]}}

    @task(run_in="process")
    def pull_back(ti=None):
        return {{"pid": os.getpid(), "consumed": ti.xcom_pull(task_ids="consume")}}

    consume(compute()) >> pull_back()
"""


async def test_process_task_runs_in_another_pid(orchestrator_factory: Any, tmp_path: Path) -> None:
    dag = write_dag_file(tmp_path, "in_process_dag", PROCESS_DAG)
    o = await orchestrator_factory([dag])
    handle = await o.trigger("in_process")
    final = await handle.wait(timeout=30)
    assert final.state.value == "success"

    xcoms = {x.task_id: x.value for x in await o.store.get_xcoms("in_process", handle.run_id)}
    child = xcoms["compute"]
    assert child["pid"] != os.getpid()
    assert child["squares"] == [0, 1, 4, 9, 16]
    assert child["try"] == 1
    assert xcoms["consume"] == {"pid": os.getpid(), "got": [0, 1, 4, 9, 16]}
    # A process task sees the XComs of the tasks before it.
    assert xcoms["pull_back"]["consumed"] == xcoms["consume"]
    assert xcoms["pull_back"]["pid"] not in (os.getpid(), child["pid"])

    from aflow.runtime.logs import log_path, read_log

    text = read_log(log_path(o.log_dir, "in_process", handle.run_id, "compute", 1))[0]
    assert f"printed by the child {child['pid']}" in text
    assert "logged by the child" in text
    assert "raw fd write from the child" in text


CRASH_DAG = """
import os
import resource
import signal
from datetime import UTC, datetime

from aflow import DAG, PythonOperator, TriggerRule


def segfault():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    print("about to segfault", flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)


def hard_exit():
    print("about to exit", flush=True)
    os._exit(3)


def raises():
    raise LookupError("raised in the child")


def fine():
    return os.getpid()


with DAG("crashes", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
    seg = PythonOperator(task_id="segfault", python_callable=segfault, run_in="process")
    ext = PythonOperator(task_id="hard_exit", python_callable=hard_exit, run_in="process")
    exc = PythonOperator(task_id="raises", python_callable=raises, run_in="process")
    ok = PythonOperator(task_id="fine_process", python_callable=fine, run_in="process")
    local = [PythonOperator(task_id=f"local_{{i}}", python_callable=fine) for i in range(5)]
    after = PythonOperator(task_id="after", python_callable=fine, trigger_rule=TriggerRule.ALL_DONE)
    [seg, ext, exc, ok] >> after
    downstream_of_crash = PythonOperator(task_id="downstream_of_crash", python_callable=fine)
    seg >> downstream_of_crash
"""


async def test_crashing_process_fails_only_its_task(
    orchestrator_factory: Any, tmp_path: Path
) -> None:
    dag = write_dag_file(tmp_path, "crash_dag", CRASH_DAG)
    with DAG("later", start_date=START) as later:
        PythonOperator(task_id="t", python_callable=lambda: "still alive")

    o = await orchestrator_factory([dag, later])
    handle = await o.trigger("crashes")
    final = await handle.wait(timeout=30)
    tis = {t.task_id: t for t in await handle.task_instances()}
    states = {k: v.state.value for k, v in tis.items()}
    assert states == {
        "segfault": "failed",
        "hard_exit": "failed",
        "raises": "failed",
        "fine_process": "success",
        **{f"local_{i}": "success" for i in range(5)},
        "after": "success",
        "downstream_of_crash": "upstream_failed",
    }
    assert final.state.value == "failed"  # a leaf ended upstream_failed

    assert "killed by signal SIGSEGV" in (tis["segfault"].error or "")
    assert "exited with code 3" in (tis["hard_exit"].error or "")
    assert "LookupError: raised in the child" in (tis["raises"].error or "")

    from aflow.runtime.logs import log_path, read_log

    def log_of(task_id: str) -> str:
        return read_log(log_path(o.log_dir, "crashes", handle.run_id, task_id, 1))[0]

    assert "about to segfault" in log_of("segfault")
    assert "SIGSEGV" in log_of("segfault")
    assert "about to exit" in log_of("hard_exit")
    assert "exited with code 3" in log_of("hard_exit")
    assert "Traceback (most recent call last)" in log_of("raises")

    # The orchestrator is still up and runs new work.
    again = await o.trigger("later")
    assert (await again.wait(timeout=30)).state.value == "success"


# -- slot limits --------------------------------------------------------------------------
class Gauge:
    """Counts tasks running at once (from the loop and from threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current = 0
        self.peak = 0
        self.total = 0

    def enter(self) -> None:
        with self.lock:
            self.current += 1
            self.total += 1
            self.peak = max(self.peak, self.current)

    def leave(self) -> None:
        with self.lock:
            self.current -= 1


def gauge_tasks(gauge: Gauge, prefix: str, n: int) -> list[PythonOperator]:
    async def async_work() -> None:
        gauge.enter()
        try:
            for _ in range(3):
                await anyio.sleep(0.005)
        finally:
            gauge.leave()

    def sync_work() -> None:
        gauge.enter()
        try:
            time.sleep(0.015)
        finally:
            gauge.leave()

    return [
        PythonOperator(task_id=f"{prefix}{i}", python_callable=async_work if i % 3 else sync_work)
        for i in range(n)
    ]


@pytest.mark.parametrize("parallelism", [1, 3, 8])
async def test_parallelism_is_never_exceeded(home: Path, parallelism: int) -> None:
    gauge = Gauge()
    with DAG("parallel", start_date=START, max_active_tasks=100) as dag:
        tasks = gauge_tasks(gauge, "t", 30)
        join = PythonOperator(task_id="join", python_callable=lambda: None)
        tasks >> join

    result = await run_dag(dag, home, parallelism=parallelism)
    assert result.state == "success"
    assert gauge.total == 30
    assert gauge.current == 0
    assert gauge.peak == parallelism  # reached, never exceeded


@pytest.mark.parametrize("limit", [1, 2, 5])
async def test_max_active_tasks_is_never_exceeded(home: Path, limit: int) -> None:
    gauge = Gauge()
    with DAG("limited", start_date=START, max_active_tasks=limit) as dag:
        gauge_tasks(gauge, "t", 20)

    result = await run_dag(dag, home, parallelism=16)
    assert result.state == "success"
    assert gauge.total == 20
    assert gauge.peak == limit


async def test_a_dag_at_its_limit_does_not_hold_back_other_dags(orchestrator_factory: Any) -> None:
    limited_gauge, free_gauge = Gauge(), Gauge()
    with DAG("limited2", start_date=START, max_active_tasks=2) as limited:
        gauge_tasks(limited_gauge, "l", 20)
    with DAG("free", start_date=START) as free:
        gauge_tasks(free_gauge, "f", 20)

    o = await orchestrator_factory([limited, free], parallelism=10)
    h1 = await o.trigger("limited2")
    h2 = await o.trigger("free")
    r1 = await h1.wait(timeout=30)
    r2 = await h2.wait(timeout=30)
    assert r1.state.value == r2.state.value == "success"
    assert limited_gauge.peak == 2
    assert free_gauge.peak > 2
    assert limited_gauge.peak + free_gauge.peak <= 10


async def test_two_runs_of_one_dag_share_its_max_active_tasks(orchestrator_factory: Any) -> None:
    gauge = Gauge()
    with DAG("shared_limit", start_date=START, max_active_tasks=3) as dag:
        gauge_tasks(gauge, "t", 12)

    o = await orchestrator_factory([dag], parallelism=20)
    handles = [await o.trigger("shared_limit", run_id=f"run_{i}") for i in range(2)]
    for h in handles:
        assert (await h.wait(timeout=30)).state.value == "success"
    assert gauge.total == 24
    assert gauge.peak == 3


async def test_bash_tasks_count_against_parallelism(home: Path, tmp_path: Path) -> None:
    """Bash tasks hold a slot while their subprocess runs: with parallelism=2 at most two of
    them are alive at once (each records its start and end in a shared file)."""
    record = tmp_path / "events.txt"
    with DAG("bash_slots", start_date=START) as dag:
        for i in range(6):
            BashOperator(
                task_id=f"b{i}",
                bash_command=f"echo start >> {record}; sleep 0.05; echo end >> {record}",
            )
        BashOperator(task_id="last", bash_command="echo done", trigger_rule=TriggerRule.ALL_DONE)

    result = await run_dag(dag, home, parallelism=2)
    assert result.state == "success"
    alive = peak = 0
    for event in record.read_text().split():
        alive += 1 if event == "start" else -1
        peak = max(peak, alive)
    assert peak == 2
    assert alive == 0
