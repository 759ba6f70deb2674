"""A teardown whose work ended early (upstream_failed, or skipped by a branch) waits for
a setup that is still running before it runs: else it would clean up before the setup
had made what it cleans up, which then leaks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from aflow import DAG, BranchPythonOperator, PythonOperator
from tests.conftest import run_dag

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


def build(events: list[str], setup_may_end: anyio.Event, *, branch: bool) -> DAG:
    async def slow_setup() -> None:
        events.append("setup started")
        await setup_may_end.wait()
        events.append("setup ended")

    async def early() -> None:
        await anyio.lowlevel.checkpoint()
        if not branch:
            raise RuntimeError("fails before the setup is done")

    async def teardown() -> None:
        events.append("teardown")

    async def opener() -> None:
        # (the setup is held until the work ended early and its teardown was decided)
        with anyio.fail_after(10):
            while "early ended" not in events:  # noqa: ASYNC110 - the test's own list
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)
        setup_may_end.set()

    with DAG(f"td_{'branch' if branch else 'fail'}", start_date=START) as dag:
        s = PythonOperator(task_id="s", python_callable=slow_setup).as_setup()
        work = PythonOperator(task_id="work", python_callable=lambda: None)
        t = PythonOperator(task_id="t", python_callable=teardown).as_teardown()
        if branch:
            def pick() -> str:
                events.append("early ended")
                return "other"

            chooser = BranchPythonOperator(task_id="choose", python_callable=pick)
            chooser >> [work, PythonOperator(task_id="other", python_callable=lambda: None)]
        else:
            def failed(context: dict) -> None:
                events.append("early ended")

            x = PythonOperator(task_id="x", python_callable=early, on_failure_callback=failed)
            x >> work
        s >> work >> t
        PythonOperator(task_id="opener", python_callable=opener)
    return dag


@pytest.mark.parametrize("branch", [False, True])
async def test_the_teardown_runs_after_its_setup_ended(home: Path, branch: bool) -> None:
    events: list[str] = []
    result = await run_dag(build(events, anyio.Event(), branch=branch), home)
    assert [e for e in events if e != "early ended"] == ["setup started", "setup ended", "teardown"]
    assert result.ti_state("t") == "success"
    assert result.ti_state("work") == ("skipped" if branch else "upstream_failed")
