"""Deferral end to end: a task parks on a trigger, frees its slot, and resumes with the
trigger's event; trigger errors and timeouts fail (or skip) it; the wait survives a
restart of the orchestrator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from aflow import DAG, BaseOperator, PythonOperator
from aflow.orchestrator import Orchestrator
from aflow.runtime.logs import log_path, read_log
from aflow.states import TaskState
from aflow.store.sqlite import SqliteStore
from tests.conftest import run_dag
from triggers.base import BaseTrigger, TriggerEvent

pytestmark = pytest.mark.anyio
START = datetime(2024, 1, 1, tzinfo=UTC)


class FileFlagTrigger(BaseTrigger):
    """Fires when a file exists (polling: the real FileTrigger lives in triggers/file.py)."""

    def __init__(self, path: str, fail: bool = False) -> None:
        super().__init__()
        self.path = path
        self.fail = fail

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.FileFlagTrigger", {"path": self.path, "fail": self.fail})

    async def _log_from_a_child_task(self) -> None:
        self.log.info("a child task of %s", self.path)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self.log.info("waiting for %s", self.path)
        async with anyio.create_task_group() as tg:  # a task and a thread of its own log too
            tg.start_soon(self._log_from_a_child_task)
        await anyio.to_thread.run_sync(self.log.info, "a worker thread of %s", self.path)
        if self.fail:
            raise RuntimeError("the flag is broken")
        while not await anyio.Path(self.path).exists():  # noqa: ASYNC110 - polls a file
            await anyio.sleep(0.01)
        yield TriggerEvent({"found": self.path})


class WaitForFlag(BaseOperator):
    def __init__(self, *, path: str, fail: bool = False, soft_fail: bool = False,
                 wait_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.fail = fail
        self.soft_fail = soft_fail
        self.wait_timeout = wait_timeout

    async def execute(self, context: dict[str, Any]) -> None:
        self.defer(
            trigger=FileFlagTrigger(self.path, self.fail),
            method_name="done",
            kwargs={"note": "resumed"},
            timeout=self.wait_timeout,
        )

    def done(self, context: dict[str, Any], event: Any = None, note: str = "") -> dict[str, Any]:
        return {"event": event, "note": note, "try": context["ti"].try_number}


async def test_deferred_task_frees_its_slot_and_resumes_with_the_event(
    orchestrator_factory: Any, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    seen: list[str] = []

    async def other() -> None:
        seen.append("other ran while the sensor waited")
        flag.touch()

    with DAG("defer", start_date=START) as dag:
        wait = WaitForFlag(task_id="wait", path=str(flag))
        wait >> PythonOperator(task_id="after", python_callable=lambda: "after")
        PythonOperator(task_id="other", python_callable=other)

    # one slot: `other` can only run if the deferred task gave its slot back
    o = await orchestrator_factory([dag], parallelism=1)
    handle = await o.trigger("defer")
    final = await handle.wait(timeout=30)
    assert final.state.value == "success"
    tis = {t.task_id: t for t in await handle.task_instances()}
    assert tis["wait"].state is TaskState.SUCCESS
    assert tis["wait"].try_number == 1  # resuming is the same try
    assert seen == ["other ran while the sensor waited"]
    xcoms = {x.task_id: x.value for x in await o.store.get_xcoms("defer", final.run_id)}
    assert xcoms["wait"] == {"event": {"found": str(flag)}, "note": "resumed", "try": 1}
    assert await o.store.list_triggers() == []  # the row goes once the TI resumed
    log = read_log(log_path(o.log_dir, "defer", final.run_id, "wait", 1))[0]
    assert "Task deferred" in log
    assert f"waiting for {flag}" in log  # what the trigger logs lands in the try's log


async def test_each_parked_trigger_logs_into_its_own_try(
    orchestrator_factory: Any, tmp_path: Path
) -> None:
    """A trigger's lines land in its own try's log, from its task, a task it started and
    a worker thread; lines of triggers parked side by side never cross."""
    flags = {name: tmp_path / f"flag_{name}" for name in ("a", "b", "c")}

    async def land() -> None:
        for flag in flags.values():
            flag.touch()

    with DAG("defer_logs", start_date=START) as dag:
        waits = [WaitForFlag(task_id=f"wait_{name}", path=str(flag)) for name, flag in flags.items()]
        waits >> PythonOperator(task_id="after", python_callable=lambda: "after")
        PythonOperator(task_id="land", python_callable=land)

    o = await orchestrator_factory([dag])
    final = await (await o.trigger("defer_logs")).wait(timeout=30)
    assert final.state.value == "success"
    for name, flag in flags.items():
        text = read_log(log_path(o.log_dir, "defer_logs", final.run_id, f"wait_{name}", 1))[0]
        assert f"waiting for {flag}" in text
        assert f"a child task of {flag}" in text
        assert f"a worker thread of {flag}" in text
        others = [str(f) for n, f in flags.items() if n != name]
        assert not any(other in text for other in others), text


async def test_trigger_error_fails_the_task_with_its_traceback(home: Path, tmp_path: Path) -> None:
    with DAG("defer_error", start_date=START) as dag:
        WaitForFlag(task_id="wait", path=str(tmp_path / "never"), fail=True)
    result = await run_dag(dag, home, timeout=30)
    assert result.ti_state("wait") == "failed"
    assert result.tis["wait"].error == "TriggerFailed: the trigger failed: RuntimeError: the flag is broken"
    log = result.log("wait", 1)
    assert "RuntimeError: the flag is broken" in log and "Traceback" in log


@pytest.mark.parametrize(("soft_fail", "state"), [(False, "failed"), (True, "skipped")])
async def test_deferral_timeout_fails_or_skips(
    home: Path, tmp_path: Path, soft_fail: bool, state: str
) -> None:
    with DAG("defer_timeout", start_date=START) as dag:
        WaitForFlag(task_id="wait", path=str(tmp_path / "never"), soft_fail=soft_fail,
                    wait_timeout=0.2)
    result = await run_dag(dag, home, timeout=30)
    assert result.ti_state("wait") == state


async def test_deferred_wait_survives_a_restart(home: Path, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    with DAG("defer_restart", start_date=START) as dag:
        WaitForFlag(task_id="wait", path=str(flag))

    async with Orchestrator([dag], home=home, schedule=False) as o:
        handle = await o.trigger("defer_restart")
        with anyio.fail_after(30):
            while True:  # noqa: ASYNC110 - polls the store
                tis = {t.task_id: t for t in await handle.task_instances()}
                if tis["wait"].state is TaskState.DEFERRED:
                    break
                await anyio.sleep(0.01)
    # the first orchestrator is gone; the trigger row waits in the store
    (trigger,) = [t for t in await _triggers(home)]
    assert trigger.event is None
    flag.touch()
    async with Orchestrator([dag], home=home, schedule=False) as o:
        final = await (await o.get_run("defer_restart", handle.run_id)).wait(timeout=30)
        tis = {t.task_id: t for t in await (await o.get_run("defer_restart", handle.run_id)).task_instances()}
    assert final.state.value == "success"
    assert tis["wait"].try_number == 1


class _RunningRowAckLost(SqliteStore):
    """A real SQLite store whose first `running` row of task `t` commits, and whose caller
    then never hears back before the shutdown: the moment between a try's `running` row
    and the try itself."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.committed = anyio.Event()

    async def save_tis(self, tis: Any) -> None:
        await super().save_tis(tis)
        if not self.committed.is_set() and any(
            t.task_id == "t" and t.state is TaskState.RUNNING for t in tis
        ):
            self.committed.set()
            await anyio.sleep_forever()


async def test_a_shutdown_as_the_running_row_commits_uses_no_retry(home: Path) -> None:
    ran: list[int] = []

    def work(ti: Any) -> None:
        ran.append(ti.try_number)

    with DAG("cut_at_start", start_date=START) as dag:
        PythonOperator(task_id="t", python_callable=work, retries=0)

    store = _RunningRowAckLost(f"sqlite:///{home / 'aflow.db'}")
    async with Orchestrator([dag], home=home, store=store, schedule=False,
                            shutdown_grace_s=0.1) as o:
        handle = await o.trigger("cut_at_start")
        with anyio.fail_after(30):
            await store.committed.wait()
    assert ran == []  # the try never started
    async with Orchestrator([dag], home=home, schedule=False) as o:
        run = await o.get_run("cut_at_start", handle.run_id)
        final = await run.wait(timeout=30)
        (ti,) = await run.task_instances()
    assert final.state.value == "success"
    assert ran == [2]  # the interrupted try 1 gave its place back, as a cut-short try does
    assert (ti.try_number, ti.max_tries) == (2, 1)


class SlowToResume(WaitForFlag):
    """Counts its `execute` calls; its first resume hangs until the shutdown cuts it."""

    executed: list[int] = []
    resuming = anyio.Event()

    async def execute(self, context: dict[str, Any]) -> None:
        SlowToResume.executed.append(context["ti"].try_number)
        await super().execute(context)

    async def done(self, context: dict[str, Any], event: Any = None, note: str = "") -> Any:
        if not SlowToResume.resuming.is_set():
            SlowToResume.resuming.set()
            await anyio.sleep_forever()
        return super().done(context, event, note)


async def test_a_resume_cut_short_by_shutdown_resumes_again_in_the_same_try(
    home: Path, tmp_path: Path
) -> None:
    """Not `execute` again (a TriggerDagRunOperator would trigger a second run): the
    restarted scheduler resumes the try from the trigger's event it kept."""
    SlowToResume.executed, SlowToResume.resuming = [], anyio.Event()
    flag = tmp_path / "flag"
    flag.touch()
    with DAG("resume_cut", start_date=START) as dag:
        SlowToResume(task_id="wait", path=str(flag), retries=0)

    async with Orchestrator([dag], home=home, schedule=False, shutdown_grace_s=0.1) as o:
        handle = await o.trigger("resume_cut")
        with anyio.fail_after(30):
            await SlowToResume.resuming.wait()
    async with Orchestrator([dag], home=home, schedule=False) as o:
        run = await o.get_run("resume_cut", handle.run_id)
        final = await run.wait(timeout=30)
        (ti,) = await run.task_instances()
        xcoms = {x.task_id: x.value for x in await o.store.get_xcoms("resume_cut", final.run_id)}
    assert final.state.value == "success"
    assert SlowToResume.executed == [1]
    assert ti.try_number == 1
    assert xcoms["wait"] == {"event": {"found": str(flag)}, "note": "resumed", "try": 1}


async def _triggers(home: Path) -> list[Any]:
    from aflow.store.sqlite import SqliteStore

    async with SqliteStore(f"sqlite:///{home / 'aflow.db'}") as store:
        return await store.list_triggers()


async def test_deferral_timeout_is_a_timedelta_too(home: Path, tmp_path: Path) -> None:
    with DAG("defer_td", start_date=START) as dag:
        WaitForFlag(task_id="wait", path=str(tmp_path / "never"))
    dag.get_task("wait").wait_timeout = timedelta(milliseconds=200)  # type: ignore[attr-defined]
    result = await run_dag(dag, home, timeout=30)
    assert result.ti_state("wait") == "failed"
    assert "deferral timeout" in (result.tis["wait"].error or "")


class FlakyAfterWait(BaseOperator):
    """Try 1: defer, resume, fail. Try 2: defer again and time out."""

    def __init__(self, *, path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path

    async def execute(self, context: dict[str, Any]) -> None:
        n = context["ti"].try_number
        timeout = None if n == 1 else 0.3  # try 2 waits for a flag that never comes
        self.defer(trigger=FileFlagTrigger(f"{self.path}{n}"), method_name="go", timeout=timeout)

    async def go(self, context: dict[str, Any], event: Any = None) -> None:
        raise ValueError("resumed, then failed")


async def test_slots_stay_right_through_defer_resume_retry_timeout(
    orchestrator_factory: Any, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    with DAG("slots", start_date=START) as dag:
        FlakyAfterWait(task_id="t", path=str(flag), retries=1, retry_delay=0)
    o = await orchestrator_factory([dag], parallelism=4)
    handle = await o.trigger("slots")

    async def reach(state: TaskState, try_number: int) -> None:
        with anyio.fail_after(30):
            while True:  # noqa: ASYNC110 - polls the store
                (ti,) = await handle.task_instances()
                if ti.state is state and ti.try_number == try_number:
                    return
                await anyio.sleep(0.005)

    await reach(TaskState.DEFERRED, 1)
    assert o.slots_in_use == 0  # parked: no slot
    (tmp_path / "flag1").touch()  # resume try 1, which fails; try 2 defers and times out
    final = await handle.wait(timeout=30)
    assert final.state.value == "failed"
    (ti,) = await handle.task_instances()
    assert (ti.state, ti.try_number) == (TaskState.FAILED, 2)
    assert "deferral timeout" in (ti.error or "")
    assert o.slots_in_use == 0
    log1 = read_log(log_path(o.log_dir, "slots", final.run_id, "t", 1))[0]
    assert "resumed, then failed" in log1


class BlockingTrigger(BaseTrigger):
    """Misbehaves: blocks the event loop with a sync sleep before firing."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.BlockingTrigger", {})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import time

        time.sleep(0.8)  # noqa: ASYNC251 - the point of this trigger
        yield TriggerEvent("late")


class WaitOnBlocking(BaseOperator):
    async def execute(self, context: dict[str, Any]) -> None:
        self.defer(trigger=BlockingTrigger(), method_name="done")

    def done(self, context: dict[str, Any], event: Any = None) -> Any:
        return event


async def test_watchdog_names_the_trigger_that_blocks_the_loop(
    orchestrator_factory: Any, tmp_path: Path
) -> None:
    with DAG("blocking", start_date=START) as dag:
        WaitOnBlocking(task_id="hog")
        WaitForFlag(task_id="sibling", path=str(tmp_path / "flag"))
    o = await orchestrator_factory([dag])
    handle = await o.trigger("blocking")
    with anyio.fail_after(30):
        while not o.triggerer.watchdog.blocks:  # noqa: ASYNC110 - waits for the thread's report
            await anyio.sleep(0.05)
    (tmp_path / "flag").touch()
    final = await handle.wait(timeout=30)
    assert final.state.value == "success"  # the misbehaving trigger harmed no sibling
    block = o.triggerer.watchdog.blocks[0]
    assert block["classpath"] == f"{__name__}.BlockingTrigger"
    assert block["task"] == f"blocking/{final.run_id}/hog"
    assert block["blocked_s"] >= 0.25
