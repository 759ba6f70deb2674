"""Retries, retry delays (on a ManualClock), callbacks and execution_timeout, end to end
through a real Orchestrator, real SQLite, real threads and real subprocesses."""

from __future__ import annotations

import os
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, BashOperator, ManualClock, PythonOperator, TaskFailure, TriggerRule
from aflow.runtime.dag_loader import load_file
from aflow.states import TaskState
from tests.conftest import run_dag

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


class WatchedClock(ManualClock):
    """A ManualClock that lets a test wait (on an event, not a poll) for a sleeper."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = anyio.Event()

    async def sleep_until(self, when: datetime) -> None:
        if when > self.now():
            changed, self._changed = self._changed, anyio.Event()
            changed.set()  # the sleeper is registered before anyone wakes up
        await super().sleep_until(when)

    async def wait_for_sleeper(self, limit_s: float = 10) -> datetime:
        with anyio.fail_after(limit_s):
            while self.pending == 0:
                await self._changed.wait()
        wake = self.next_wakeup()
        assert wake is not None
        return wake


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def process_gone(pid: int, limit_s: float = 10) -> bool:
    """True once `pid` has exited (a zombie counts as gone); waits on a pidfd, not a poll."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        with anyio.move_on_after(limit_s):
            await anyio.wait_readable(fd)
            return True
        return False
    finally:
        os.close(fd)


# -- what a retry re-runs -------------------------------------------------------------------
async def test_retry_reruns_only_the_failed_task_and_its_downstream(
    home: Path, tmp_path: Path
) -> None:
    record = tmp_path / "executions.txt"

    def flaky() -> str:
        with record.open("a") as f:
            f.write("b\n")
        if lines(record).count("b") < 3:
            raise ValueError("transient")
        return "b ok"

    async def down() -> None:
        with record.open("a") as f:
            f.write("c\n")

    with DAG("retry_scope", start_date=START, default_args={"retry_delay": 0}) as dag:
        a = BashOperator(task_id="a", bash_command=f"echo a >> {record}", retries=3)
        b = PythonOperator(task_id="b", python_callable=flaky, retries=3)
        c = PythonOperator(task_id="c", python_callable=down)
        side = BashOperator(task_id="side", bash_command=f"echo side >> {record}", retries=2)
        a >> b >> c
        a >> side

    result = await run_dag(dag, home)
    assert result.state == "success"
    executed = lines(record)
    assert executed.count("a") == 1  # a succeeded upstream never runs again
    assert executed.count("side") == 1
    assert executed.count("b") == 3
    assert executed.count("c") == 1
    assert executed.index("c") > len(executed) - executed[::-1].index("b") - 1  # after b's last try
    assert result.tis["a"].try_number == 1
    assert result.tis["b"].try_number == 3
    assert result.tis["c"].try_number == 1
    # Each try has its own log; the failing ones hold their traceback.
    assert "ValueError: transient" in result.log("b", 1)
    assert "ValueError: transient" in result.log("b", 2)
    assert "transient" not in result.log("b", 3)


async def test_downstream_retry_does_not_rerun_upstream(home: Path, tmp_path: Path) -> None:
    record = tmp_path / "executions.txt"

    def up() -> int:
        with record.open("a") as f:
            f.write("up\n")
        return 1

    def down(ti: Any) -> None:
        with record.open("a") as f:
            f.write("down\n")
        assert ti.xcom_pull(task_ids="up") == 1
        if ti.try_number == 1:
            raise RuntimeError("first try fails")

    with DAG("down_retry", start_date=START) as dag:
        u = PythonOperator(task_id="up", python_callable=up, retries=5, retry_delay=0)
        d = PythonOperator(task_id="down", python_callable=down, retries=1, retry_delay=0)
        u >> d

    result = await run_dag(dag, home)
    assert result.states() == {"up": "success", "down": "success"}
    assert lines(record) == ["up", "down", "down"]


async def test_retries_exhausted_fails_and_propagates(home: Path, tmp_path: Path) -> None:
    record = tmp_path / "executions.txt"

    with DAG("exhausted", start_date=START) as dag:
        b = BashOperator(
            task_id="b", bash_command=f"echo b >> {record}; exit 3", retries=2, retry_delay=0
        )
        after = PythonOperator(task_id="after", python_callable=lambda: None)
        b >> after

    result = await run_dag(dag, home)
    assert result.states() == {"b": "failed", "after": "upstream_failed"}
    assert result.state == "failed"
    assert lines(record) == ["b", "b", "b"]
    assert result.tis["b"].try_number == 3
    assert "exit code 3" in (result.tis["b"].error or "")


async def test_task_failure_does_not_retry(home: Path, tmp_path: Path) -> None:
    record = tmp_path / "executions.txt"
    calls: list[str] = []

    def fatal() -> None:
        with record.open("a") as f:
            f.write("x\n")
        raise TaskFailure("the input is corrupt")

    with DAG("fatal", start_date=START) as dag:
        PythonOperator(
            task_id="t",
            python_callable=fatal,
            retries=5,
            retry_delay=0,
            on_retry_callback=lambda ctx: calls.append("retry"),
            on_failure_callback=lambda ctx: calls.append("failure"),
        )

    result = await run_dag(dag, home)
    assert result.ti_state("t") == "failed"
    assert result.state == "failed"
    assert lines(record) == ["x"]
    assert result.tis["t"].try_number == 1
    assert result.tis["t"].next_retry_at is None
    assert "TaskFailure: the input is corrupt" in (result.tis["t"].error or "")
    assert calls == ["failure"]
    assert "the input is corrupt" in result.log("t", 1)


# -- retry delays on a ManualClock ---------------------------------------------------------
async def test_retry_delay_waits_on_the_clock(orchestrator_factory: Any) -> None:
    clock = WatchedClock()
    attempts: list[int] = []

    async def flaky(ti: Any) -> str:
        attempts.append(ti.try_number)
        if ti.try_number < 2:
            raise ValueError("not yet")
        return "done"

    with DAG("delay", start_date=START) as dag:
        PythonOperator(
            task_id="t", python_callable=flaky, retries=2, retry_delay=timedelta(minutes=5)
        )

    o = await orchestrator_factory([dag], clock=clock)
    failed_at = clock.now()
    handle = await o.trigger("delay")
    wake = await clock.wait_for_sleeper()

    assert wake == failed_at + timedelta(minutes=5)
    (ti,) = await handle.task_instances()
    assert ti.state is TaskState.UP_FOR_RETRY
    assert ti.try_number == 1
    assert ti.next_retry_at == wake
    assert attempts == [1]

    clock.advance(timedelta(minutes=5) - timedelta(seconds=1))
    assert clock.pending == 1  # one second early: still waiting
    assert clock.next_wakeup() == wake

    clock.advance(1)
    final = await handle.wait(timeout=10)
    assert final.state.value == "success"
    assert attempts == [1, 2]
    (ti,) = await handle.task_instances()
    assert ti.state is TaskState.SUCCESS
    assert ti.try_number == 2
    assert ti.start_date == wake
    assert clock.pending == 0


@pytest.mark.parametrize(
    ("max_retry_delay", "expected"),
    [
        (None, [10, 20, 40, 80]),
        (timedelta(seconds=25), [10, 20, 25, 25]),
    ],
    ids=["uncapped", "capped"],
)
async def test_exponential_backoff_with_max_retry_delay(
    orchestrator_factory: Any, max_retry_delay: timedelta | None, expected: list[int]
) -> None:
    clock = WatchedClock()
    attempts: list[int] = []

    async def always_fails(ti: Any) -> None:
        attempts.append(ti.try_number)
        raise ValueError(f"try {ti.try_number} failed")

    with DAG("backoff", start_date=START) as dag:
        t = PythonOperator(
            task_id="t",
            python_callable=always_fails,
            retries=len(expected),
            retry_delay=10,
            retry_exponential_backoff=True,
            max_retry_delay=max_retry_delay,
        )
        after = PythonOperator(task_id="after", python_callable=lambda: None)
        t >> after

    o = await orchestrator_factory([dag], clock=clock)
    handle = await o.trigger("backoff")
    for try_number, delay in enumerate(expected, start=1):
        now = clock.now()
        wake = await clock.wait_for_sleeper()
        assert wake - now == timedelta(seconds=delay), try_number
        tis = {x.task_id: x for x in await handle.task_instances()}
        assert tis["t"].state is TaskState.UP_FOR_RETRY
        assert tis["t"].try_number == try_number
        assert tis["after"].state is TaskState.NONE
        assert attempts == list(range(1, try_number + 1))
        clock.advance(delay)

    final = await handle.wait(timeout=10)
    assert final.state.value == "failed"
    assert attempts == list(range(1, len(expected) + 2))
    tis = {x.task_id: x for x in await handle.task_instances()}
    assert tis["t"].state is TaskState.FAILED
    assert tis["after"].state is TaskState.UPSTREAM_FAILED
    assert clock.pending == 0


async def test_retry_without_delay_needs_no_clock_advance(orchestrator_factory: Any) -> None:
    clock = WatchedClock()
    attempts: list[int] = []

    async def flaky(ti: Any) -> None:
        attempts.append(ti.try_number)
        if ti.try_number < 3:
            raise ValueError("again")

    with DAG("nodelay", start_date=START) as dag:
        PythonOperator(task_id="t", python_callable=flaky, retries=3, retry_delay=0)

    o = await orchestrator_factory([dag], clock=clock)
    final = await (await o.trigger("nodelay")).wait(timeout=10)
    assert final.state.value == "success"
    assert attempts == [1, 2, 3]


# -- callbacks ----------------------------------------------------------------------------
async def test_callbacks_get_the_context(home: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    dag_done = anyio.Event()

    def on_success(context: dict[str, Any]) -> None:
        ti = context["ti"]
        calls.append(
            ("success", ti.task_id, ti.try_number, context["task"].task_id, context["run_id"])
        )

    async def on_failure(context: dict[str, Any]) -> None:
        ti = context["ti"]
        calls.append(("failure", ti.task_id, ti.try_number, context["exception"]))

    def on_retry(context: dict[str, Any]) -> None:
        ti = context["ti"]
        calls.append(
            ("retry", ti.task_id, ti.try_number, context["exception"], context["dag"].dag_id)
        )

    def raising_callback(context: dict[str, Any]) -> None:
        calls.append(("raising", context["ti"].task_id))
        raise RuntimeError("callback bug")

    async def dag_failed(context: dict[str, Any]) -> None:
        calls.append(
            ("dag", context["dag"].dag_id, context["reason"], context["dag_run"].state.value)
        )
        dag_done.set()

    def flaky(ti: Any) -> str:
        if ti.try_number == 1:
            raise ValueError("flaky first try")
        return "ok"

    def broken() -> None:
        raise KeyError("missing")

    cbs = {
        "on_success_callback": on_success,
        "on_failure_callback": on_failure,
        "on_retry_callback": on_retry,
    }
    with DAG("callbacks", start_date=START, on_failure_callback=dag_failed) as dag:
        PythonOperator(task_id="ok", python_callable=lambda: 1, **cbs)
        PythonOperator(task_id="flaky", python_callable=flaky, retries=1, retry_delay=0, **cbs)
        PythonOperator(task_id="broken", python_callable=broken, retries=1, retry_delay=0, **cbs)
        PythonOperator(
            task_id="cb_raises",
            python_callable=lambda: 2,
            on_success_callback=[raising_callback, on_success],
        )

    result = await run_dag(dag, home)
    with anyio.fail_after(10):
        await dag_done.wait()

    run_id = result.run.run_id
    assert result.states() == {
        "ok": "success",
        "flaky": "success",
        "broken": "failed",
        "cb_raises": "success",
    }
    by_task: dict[str, list[tuple[Any, ...]]] = {}
    for call in calls:
        by_task.setdefault(call[1], []).append(call)
    assert by_task["ok"] == [("success", "ok", 1, "ok", run_id)]
    assert by_task["flaky"] == [
        ("retry", "flaky", 1, "ValueError: flaky first try", "callbacks"),
        ("success", "flaky", 2, "flaky", run_id),
    ]
    assert by_task["broken"] == [
        ("retry", "broken", 1, "KeyError: 'missing'", "callbacks"),
        ("failure", "broken", 2, "KeyError: 'missing'"),
    ]
    # A callback that raises is logged and changes nothing; the next one still runs.
    assert by_task["cb_raises"] == [
        ("raising", "cb_raises"),
        ("success", "cb_raises", 1, "cb_raises", run_id),
    ]
    assert "callback bug" in result.log("cb_raises")
    assert by_task["callbacks"] == [("dag", "callbacks", "task_failure", "failed")]


# -- execution_timeout --------------------------------------------------------------------
async def test_timeout_cancels_an_async_task(home: Path) -> None:
    seen: list[str] = []

    async def hang() -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise
        seen.append("finished")

    with DAG("timeout_async", start_date=START) as dag:
        t = PythonOperator(task_id="hang", python_callable=hang, execution_timeout=0.3)
        after = PythonOperator(task_id="after", python_callable=lambda: None)
        cleanup = PythonOperator(
            task_id="cleanup", python_callable=lambda: "cleaned", trigger_rule=TriggerRule.ALL_DONE
        )
        t >> [after, cleanup]

    with anyio.fail_after(10):
        result = await run_dag(dag, home)
    assert seen == ["cancelled"]
    assert result.states() == {"hang": "failed", "after": "upstream_failed", "cleanup": "success"}
    error = result.tis["hang"].error or ""
    assert "execution_timeout" in error and "0.3" in error
    assert "execution_timeout" in result.log("hang")
    assert result.state == "failed"


async def test_timed_out_try_is_retried(home: Path) -> None:
    async def slow_then_fast(ti: Any) -> str:
        if ti.try_number == 1:
            await anyio.sleep(30)
        return f"try {ti.try_number}"

    with DAG("timeout_retry", start_date=START) as dag:
        PythonOperator(
            task_id="t",
            python_callable=slow_then_fast,
            execution_timeout=0.3,
            retries=1,
            retry_delay=0,
        )

    result = await run_dag(dag, home)
    assert result.ti_state("t") == "success"
    assert result.tis["t"].try_number == 2
    assert "execution_timeout" in result.log("t", 1)


async def test_own_timeout_error_is_not_an_execution_timeout(home: Path) -> None:
    """A TimeoutError raised by the task's own code (a socket, a client library) is an
    ordinary failure with its traceback, not 'exceeded its execution_timeout'."""

    def call_service() -> None:
        raise TimeoutError("the service did not answer")

    async def acall_service() -> None:
        raise TimeoutError("the async service did not answer")

    with DAG("own_timeout", start_date=START) as dag:
        PythonOperator(task_id="sync", python_callable=call_service)
        PythonOperator(task_id="async_", python_callable=acall_service, execution_timeout=30)

    result = await run_dag(dag, home)
    for task_id, msg in (
        ("sync", "the service did not answer"),
        ("async_", "the async service did not answer"),
    ):
        assert result.ti_state(task_id) == "failed"
        error = result.tis[task_id].error or ""
        assert msg in error, error
        assert "execution_timeout" not in error
        log = result.log(task_id)
        assert "Traceback (most recent call last)" in log and msg in log


async def test_timeout_kills_the_whole_bash_process_group(home: Path, tmp_path: Path) -> None:
    bash_pid = tmp_path / "bash.pid"
    child_pid = tmp_path / "child.pid"
    command = f"echo $$ > {bash_pid}; sleep 60 & echo $! > {child_pid}; echo started; wait"

    with DAG("timeout_bash", start_date=START) as dag:
        BashOperator(task_id="b", bash_command=command, execution_timeout=0.5)

    with anyio.fail_after(20):
        result = await run_dag(dag, home)
    assert result.ti_state("b") == "failed"
    assert "execution_timeout" in (result.tis["b"].error or "")
    assert "started" in result.log("b")
    pids = [int(bash_pid.read_text()), int(child_pid.read_text())]
    for pid in pids:
        assert await process_gone(pid), f"pid {pid} survived the timeout"


async def test_timeout_of_a_thread_task_frees_its_slot(home: Path) -> None:
    """parallelism=1: the sync task's thread cannot be killed, but the timeout fails the
    task and frees its slot (and thread capacity) so the next sync task runs while the
    abandoned thread is still blocked."""
    release = threading.Event()
    state = {"started": False, "finished": False}
    observed: list[dict[str, bool]] = []
    main_thread = threading.get_ident()

    def stuck() -> None:
        state["started"] = True
        release.wait(5)
        state["finished"] = True

    def next_task() -> None:
        observed.append({**state, "in_thread": threading.get_ident() != main_thread})

    with DAG("timeout_thread", start_date=START) as dag:
        s = PythonOperator(task_id="stuck", python_callable=stuck, execution_timeout=0.3)
        n = PythonOperator(
            task_id="next", python_callable=next_task, trigger_rule=TriggerRule.ALL_DONE
        )
        s >> n

    try:
        with anyio.fail_after(10):
            result = await run_dag(dag, home, parallelism=1)
        assert result.states() == {"stuck": "failed", "next": "success"}
        assert "execution_timeout" in (result.tis["stuck"].error or "")
        # `next` ran in a worker thread while the abandoned one was still blocked.
        assert observed == [{"started": True, "finished": False, "in_thread": True}]
        assert state["finished"] is False
    finally:
        release.set()


PROCESS_DAG = """
import os
import time
from datetime import UTC, datetime

from aflow import DAG, PythonOperator


def hang():
    with open({pid_file!r}, "w") as f:
        f.write(str(os.getpid()))
    print("child started", flush=True)
    time.sleep(60)


with DAG("timeout_process", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
    PythonOperator(task_id="hang", python_callable=hang, run_in="process", execution_timeout=1.0)
    PythonOperator(task_id="other", python_callable=lambda: "fine")
"""


async def test_timeout_kills_a_process_task(home: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    dag_file = tmp_path / "timeout_process_dag.py"
    dag_file.write_text(textwrap.dedent(PROCESS_DAG.format(pid_file=str(pid_file))))
    (dag,) = load_file(dag_file)

    with anyio.fail_after(20):
        result = await run_dag(dag, home)
    assert result.states() == {"hang": "failed", "other": "success"}
    error = result.tis["hang"].error or ""
    assert "execution_timeout" in error and "killed" in error
    assert "child started" in result.log("hang")
    pid = int(pid_file.read_text())
    assert pid != os.getpid()
    assert await process_gone(pid), f"task process {pid} survived the timeout"
