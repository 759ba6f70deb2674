"""A cleared mapped task's instances go on counting their tries, as an unmapped task's TI
does (and as in Airflow): instance i of the task expanded again starts at the try after
its last one, with a fresh set of retries, so every try keeps its own log file and the
UI and API list them all. Whether the clear came from this process, from another one
while this one drives the run, or from the store while nobody drove it (the run is
adopted afresh). Real Orchestrators, real SQLite files (and PostgreSQL), real logs."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from aflow import DAG, Orchestrator, PythonOperator, task
from aflow.api import serve_api
from aflow.runtime.logs import log_path
from aflow.states import DagRunState
from tests.auth_helpers import bearer
from tests.conftest import driver_and_bystander

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)
WAIT_S = 60
Tries = dict[int, tuple[str, int, int]]  # map index -> (state, try_number, max_tries)

# After the first pass: instance 0 succeeded at once, 1 and 2 failed their first try and
# succeeded their retry. After the clear: one more try for 0, two more for 1 and 2.
FIRST: Tries = {0: ("success", 1, 1), 1: ("success", 2, 1), 2: ("success", 2, 1)}
AGAIN: Tries = {0: ("success", 2, 2), 1: ("success", 4, 3), 2: ("success", 4, 3)}


def flip(calls: Path, gate: anyio.Event | None = None) -> DAG:
    """`each` over [0, 1, 2] with one retry: instance 0 always succeeds, instances 1 and 2
    fail their odd calls and succeed their even ones; each call prints its number. With
    a `gate`, `hold` (not after `each`) keeps the run open until the gate is set."""
    with DAG("flip", start_date=START) as dag:

        @task(retries=1, retry_delay=0)
        def each(x: int) -> int:
            mark = calls / str(x)
            n = len(mark.read_text()) + 1 if mark.exists() else 1
            with mark.open("a") as f:
                f.write(".")
            print(f"instance {x} call {n}")
            if x and n % 2:
                raise RuntimeError(f"instance {x} fails call {n}")
            return n

        each.expand(x=[0, 1, 2])
        if gate is not None:

            @task
            async def hold() -> None:
                with anyio.fail_after(WAIT_S):
                    await gate.wait()

            hold()
    return dag


async def instance_tries(o: Orchestrator, run_id: str, dag_id: str = "flip") -> Tries:
    """map index -> (state, try_number, max_tries) of `each`'s instances in the store."""
    rows = await o.store.get_tis(dag_id, run_id)
    return {r.map_index: (r.state.value, r.try_number, r.max_tries)
            for r in rows if r.task_id == "each" and r.map_index >= 0}


async def until(predicate: Callable[[], Any]) -> None:
    with anyio.fail_after(WAIT_S):
        while not await predicate():  # noqa: ASYNC110 - states in the store, no event to wait on
            await anyio.sleep(0.02)


def calls_made(calls: Path) -> dict[int, int]:
    return {int(p.name): len(p.read_text()) for p in calls.iterdir()}


async def all_ran(o: Orchestrator, run_id: str, calls: Path, counts: dict[int, int]) -> None:
    """Wait until every instance made `counts` calls and has ended as success."""

    async def done() -> bool:
        states = {s for s, _, _ in (await instance_tries(o, run_id)).values()}
        return calls_made(calls) == counts and states == {"success"}

    await until(done)


def log_of(home: Path, dag_id: str, run_id: str, index: int, try_number: int) -> str:
    """The log of one try of instance `index` of `each` (it must exist)."""
    return Path(log_path(home / "logs", dag_id, run_id, "each", try_number, index)).read_text()


def check_logs(home: Path, run_id: str, tries: dict[int, int], dag_id: str = "flip") -> None:
    """Each try's log file exists and holds the output of that call alone."""
    for index, last in tries.items():
        for n in range(1, last + 1):
            text = log_of(home, dag_id, run_id, index, n)
            said = set(re.findall(rf"instance {index} call (\d+)", text))
            assert said == {str(n)}, f"map index {index}, try {n}: calls {sorted(said)}"


# -- the clear comes from this process, which drives the run -------------------------------------
async def test_a_clear_in_a_run_driven_here_continues_each_instance_s_tries(
    home: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    gate = anyio.Event()
    async with Orchestrator([flip(calls, gate)], home=home, schedule=False) as o, \
            serve_api(o) as url:
        run = await o.trigger("flip")
        await all_ran(o, run.run_id, calls, {0: 1, 1: 2, 2: 2})
        assert await instance_tries(o, run.run_id) == FIRST
        assert (run.dag_id, run.run_id) in o.driver.runs  # still driven here: `hold` waits
        assert await o.clear_tasks("flip", run.run_id, ["each"]) == ["each"]
        await all_ran(o, run.run_id, calls, {0: 2, 1: 4, 2: 4})
        assert await instance_tries(o, run.run_id) == AGAIN
        gate.set()
        assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS

        async with httpx.AsyncClient(base_url=url, timeout=30,
                                     headers=await bearer(o.store, "viewer")) as client:
            api = f"/api/v1/dags/flip/runs/{run.run_id}/taskInstances/each"
            for index, last in ((0, 2), (1, 4)):
                listed = (await client.get(f"{api}/tries", params={"map_index": index})).json()
                assert [t["try_number"] for t in listed["tries"]] == list(range(1, last + 1))
                assert all(t["log_size"] > 0 for t in listed["tries"])
            third = (await client.get(f"{api}/logs/3", params={"map_index": 1})).json()
            assert "instance 1 call 3" in third["content"]
            assert "call 1" not in third["content"]
            page = (await client.get(f"/dags/flip/runs/{run.run_id}/tasks/each",
                                     params={"map_index": 1})).text
            assert all(f"try {n}</a>" in page for n in range(1, 5))
            bad = await client.get(f"{api}/tries", params={"map_index": 7})
            assert bad.status_code == 404 and "map index 7" in bad.text
    check_logs(home, run.run_id, {0: 2, 1: 4, 2: 4})


# -- the clear comes from another process while this one drives the run --------------------------
async def test_a_clear_by_another_process_continues_each_instance_s_tries(
    home: Path, tmp_path: Path, orchestrator_factory: Any
) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    gate = anyio.Event()
    dag = flip(calls, gate)
    driver = await orchestrator_factory(dag, poll_s=0.05)
    other = await orchestrator_factory(dag, claim=False, triggerer=False)
    run = await driver.trigger("flip")
    await all_ran(other, run.run_id, calls, {0: 1, 1: 2, 2: 2})
    assert (run.dag_id, run.run_id) in driver.driver.runs
    assert await other.clear_tasks("flip", run.run_id, ["each"]) == ["each"]
    await all_ran(other, run.run_id, calls, {0: 2, 1: 4, 2: 4})
    assert await instance_tries(other, run.run_id) == AGAIN
    gate.set()
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
    check_logs(home, run.run_id, {0: 2, 1: 4, 2: 4})


# -- the run had ended: cleared in the store, adopted afresh after a restart ----------------------
async def test_a_clear_of_an_ended_run_continues_the_tries_after_a_restart(
    home: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    async with Orchestrator([flip(calls)], home=home, schedule=False) as o:
        run = await (await o.trigger("flip")).wait(timeout=WAIT_S)
        assert run.state is DagRunState.SUCCESS
        assert await instance_tries(o, run.run_id) == FIRST
    async with Orchestrator([flip(calls)], home=home, schedule=False, claim=False,
                            triggerer=False) as clearing:  # as the CLI would: drives nothing
        assert await clearing.clear_tasks("flip", run.run_id, ["each"]) == ["each"]
    async with Orchestrator([flip(calls)], home=home, schedule=False) as o:
        with anyio.fail_after(WAIT_S):
            final = await o.wait_for_run("flip", run.run_id)
        assert final.state is DagRunState.SUCCESS
        assert await instance_tries(o, run.run_id) == AGAIN
    assert calls_made(calls) == {0: 2, 1: 4, 2: 4}
    check_logs(home, run.run_id, {0: 2, 1: 4, 2: 4})


# -- the input shrinks, then grows again -----------------------------------------------------------
async def test_an_index_that_comes_back_continues_and_a_new_one_starts_at_one(
    home: Path, tmp_path: Path
) -> None:
    """3 instances, cleared with 2 (index 2 stays `removed` with its try), then with 4:
    index 2 goes on from its try, index 3 is new and starts at try 1."""
    size_file, calls = tmp_path / "size", tmp_path / "calls"
    size_file.write_text("3")
    calls.mkdir()
    gate = anyio.Event()
    with DAG("sized", start_date=START) as dag:

        @task
        def sizes() -> list[int]:
            return list(range(int(size_file.read_text())))

        @task
        def each(x: int) -> None:
            with (calls / str(x)).open("a") as f:
                f.write(".")
            print(f"instance {x} runs")

        @task
        async def hold() -> None:
            with anyio.fail_after(WAIT_S):
                await gate.wait()

        each.expand(x=sizes())
        hold()

    async def pass_ended(counts: dict[int, int], expected: Tries) -> None:
        async def done() -> bool:
            states = {s for s, _, _ in (await instance_tries(o, run.run_id, "sized")).values()}
            return calls_made(calls) == counts and states <= {"success", "removed"}

        await until(done)
        assert await instance_tries(o, run.run_id, "sized") == expected

    async with Orchestrator([dag], home=home, schedule=False) as o:
        run = await o.trigger("sized")
        await pass_ended({0: 1, 1: 1, 2: 1}, {i: ("success", 1, 0) for i in range(3)})
        size_file.write_text("2")
        await o.clear_tasks("sized", run.run_id, ["sizes", "each"])
        await pass_ended({0: 2, 1: 2, 2: 1},
                         {0: ("success", 2, 1), 1: ("success", 2, 1), 2: ("removed", 1, 0)})
        size_file.write_text("4")
        await o.clear_tasks("sized", run.run_id, ["sizes", "each"])
        await pass_ended({0: 3, 1: 3, 2: 2, 3: 1},
                         {0: ("success", 3, 2), 1: ("success", 3, 2), 2: ("success", 2, 1),
                          3: ("success", 1, 0)})
        gate.set()
        assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
    for index, last in ((0, 3), (2, 2), (3, 1)):
        for n in range(1, last + 1):
            text = log_of(home, "sized", run.run_id, index, n)
            assert text.count(f"instance {index} runs") == 1, (index, n)


# -- an instance that cannot be built fails a try of its own ---------------------------------------
async def test_an_instance_that_cannot_be_built_fails_a_new_try_after_a_clear(home: Path) -> None:
    with DAG("bad_arg", start_date=START) as dag:
        PythonOperator.partial(task_id="each", python_callable=lambda: 1).expand(
            execution_timeout=[30, "soon"]  # the second instance's constructor refuses it
        )
    async with Orchestrator([dag], home=home, schedule=False) as o:
        handle = await o.trigger("bad_arg")
        first = await handle.wait(timeout=WAIT_S)
        assert first.state is DagRunState.FAILED
        assert await o.clear_tasks("bad_arg", first.run_id, ["each"]) == ["each"]
        again = await handle.wait(timeout=WAIT_S)
        assert again.state is DagRunState.FAILED
        assert await instance_tries(o, first.run_id, "bad_arg") == {
            0: ("success", 2, 1), 1: ("failed", 2, 1)}
    for n in (1, 2):
        said = log_of(home, "bad_arg", first.run_id, 1, n)
        assert said.count("cannot build map index 1 of task 'each'") == 1, n


# -- PostgreSQL ------------------------------------------------------------------------------------
@pytest.mark.postgres
async def test_cleared_instances_continue_their_tries_on_postgresql(
    home: Path, tmp_path: Path, pg_schema_url: str
) -> None:
    """Cleared by another process while the driver drives the run (woken by NOTIFY),
    then, once the run has ended, cleared in the store and adopted afresh."""
    calls = tmp_path / "calls"
    calls.mkdir()
    gate = anyio.Event()
    dag = flip(calls, gate)
    async with driver_and_bystander(dag, pg_schema_url, home) as (driver, other):
        run = await driver.trigger("flip")
        await all_ran(other, run.run_id, calls, {0: 1, 1: 2, 2: 2})
        with anyio.fail_after(WAIT_S):
            while not driver.store.notifications_live:  # noqa: ASYNC110 - a property
                await anyio.sleep(0.01)
        assert await other.clear_tasks("flip", run.run_id, ["each"]) == ["each"]
        await all_ran(other, run.run_id, calls, {0: 2, 1: 4, 2: 4})
        assert await instance_tries(other, run.run_id) == AGAIN
        gate.set()
        assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
        assert await other.clear_tasks("flip", run.run_id, ["each"]) == ["each"]
        await all_ran(other, run.run_id, calls, {0: 3, 1: 6, 2: 6})
        assert await instance_tries(other, run.run_id) == {
            0: ("success", 3, 3), 1: ("success", 6, 5), 2: ("success", 6, 5)}
    check_logs(home, run.run_id, {0: 3, 1: 6, 2: 6})
