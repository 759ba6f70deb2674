"""Pools with real runs: pool_slots > 1, a missing or too small pool (visible, and the
task runs once the pool is made to fit, live), include_deferred through every way a
deferral ends (inline resume, ordinary resume, resume that fails and retries, trigger
timeout, a run abandoned, adoption), and priority_weight ordering with weight_rule."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, BaseOperator, PythonOperator
from aflow.authoring.baseoperator import loop_safe
from aflow.orchestrator import Orchestrator
from aflow.states import TaskState
from aflow.store.records import PoolRecord
from aflow.store.sqlite import SqliteStore
from tests.integration.test_deferral import FileFlagTrigger

pytestmark = pytest.mark.anyio
START = datetime(2024, 1, 1, tzinfo=UTC)


class Spans:
    """What tasks record: (task_id, start, end) on the monotonic clock."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []
        self.order: list[str] = []

    def task(self, name: str, seconds: float = 0.0) -> Any:
        async def run() -> None:
            t0 = time.monotonic()
            self.order.append(name)
            await anyio.sleep(seconds)
            self.spans.append((name, t0, time.monotonic()))

        return run

    def peak(self, weights: dict[str, int]) -> int:
        """The most `weights` ever held at once by overlapping spans."""
        events = sorted(
            [(s, 1, weights.get(n, 0)) for n, s, _ in self.spans]
            + [(e, 0, -weights.get(n, 0)) for n, _, e in self.spans]
        )
        held = peak = 0
        for _, _, w in events:  # ends sort before starts at the same moment
            held += w
            peak = max(peak, held)
        return peak


async def ti_of(o: Orchestrator, dag_id: str, run_id: str, task_id: str) -> Any:
    for ti in await (await o.get_run(dag_id, run_id)).task_instances():
        if ti.task_id == task_id:
            return ti
    raise AssertionError(task_id)


async def wait_ti(o: Orchestrator, dag_id: str, run_id: str, task_id: str, pred: Any) -> Any:
    with anyio.fail_after(30):
        while True:  # noqa: ASYNC110 - polls the store
            ti = await ti_of(o, dag_id, run_id, task_id)
            if pred(ti):
                return ti
            await anyio.sleep(0.01)


async def test_pool_slots_limit_tries_of_one_pool(orchestrator_factory: Any) -> None:
    spans = Spans()
    with DAG("big", start_date=START, max_active_tasks=10) as dag:
        for name, slots in (("a", 2), ("b", 2), ("c", 1), ("d", 1), ("e", 3)):
            PythonOperator(task_id=name, python_callable=spans.task(name, 0.05), pool="trio",
                           pool_slots=slots)
        PythonOperator(task_id="free", python_callable=spans.task("free", 0.05))
    o = await orchestrator_factory([dag], parallelism=8, pools={"trio": 3})
    final = await (await o.trigger("big")).wait(timeout=30)
    assert final.state.value == "success"
    weights = {"a": 2, "b": 2, "c": 1, "d": 1, "e": 3}
    assert spans.peak(weights) <= 3
    assert len(spans.spans) == 6
    assert o.pool_slots_in_use() == {}


async def test_missing_or_small_pool_is_shown_and_the_task_runs_once_it_fits(
    orchestrator_factory: Any, home: Path
) -> None:
    spans = Spans()
    with DAG("waits", start_date=START) as dag:
        PythonOperator(task_id="nopool", python_callable=spans.task("nopool"), pool="later")
        PythonOperator(task_id="toobig", python_callable=spans.task("toobig"), pool="small",
                       pool_slots=2)
        PythonOperator(task_id="other", python_callable=spans.task("other"))
    o = await orchestrator_factory([dag], pools={"small": 1}, poll_s=0.05)
    handle = await o.trigger("waits")
    ti = await wait_ti(o, "waits", handle.run_id, "nopool", lambda t: t.error)
    assert ti.state is TaskState.SCHEDULED
    assert "waiting for pool 'later', which does not exist" in ti.error
    ti = await wait_ti(o, "waits", handle.run_id, "toobig", lambda t: t.error)
    assert ti.state is TaskState.SCHEDULED
    assert "needs 2 slots of pool 'small', which has 1" in ti.error
    await wait_ti(o, "waits", handle.run_id, "other", lambda t: t.state is TaskState.SUCCESS)
    assert spans.order == ["other"]
    # another process (as `aflow pools set` does) creates one pool and grows the other
    async with SqliteStore(f"sqlite:///{home / 'aflow.db'}") as elsewhere:
        await elsewhere.set_pool(PoolRecord("later", 1))
        await elsewhere.set_pool(PoolRecord("small", 2))
    final = await handle.wait(timeout=30)
    assert final.state.value == "success"
    assert sorted(spans.order) == ["nopool", "other", "toobig"]
    assert (await ti_of(o, "waits", handle.run_id, "nopool")).error is None


async def test_a_pool_shrunk_or_grown_live_limits_what_starts_next(
    orchestrator_factory: Any, home: Path, tmp_path: Path
) -> None:
    """A pool of 1 runs its tasks one by one; grown to 3 while they wait, up to 3 at once."""
    gate = tmp_path / "gate"
    spans = Spans()

    async def held(name: str) -> None:
        t0 = time.monotonic()
        while not gate.exists():  # noqa: ASYNC110 - waits for the test's file
            await anyio.sleep(0.01)
        await anyio.sleep(0.05)
        spans.spans.append((name, t0, time.monotonic()))

    with DAG("grow", start_date=START) as dag:
        for i in range(6):
            PythonOperator(task_id=f"t{i}", python_callable=held, op_kwargs={"name": f"t{i}"},
                           pool="p")
    o = await orchestrator_factory([dag], pools={"p": 1}, poll_s=0.05)
    handle = await o.trigger("grow")
    with anyio.fail_after(30):
        while o.pool_slots_in_use().get("p") != 1:  # noqa: ASYNC110 - polls the engine
            await anyio.sleep(0.01)
    async with SqliteStore(f"sqlite:///{home / 'aflow.db'}") as elsewhere:
        await elsewhere.set_pool(PoolRecord("p", 3))
    with anyio.fail_after(30):
        while o.pool_slots_in_use().get("p") != 3:  # noqa: ASYNC110 - polls the engine
            await anyio.sleep(0.01)
    gate.touch()
    assert (await handle.wait(timeout=30)).state.value == "success"
    assert spans.peak({f"t{i}": 1 for i in range(6)}) <= 3


# -- include_deferred ---------------------------------------------------------------------------


class Waiter(BaseOperator):
    """Defers on a flag file, then resumes: inline (a loop_safe method), as an ordinary
    try, or failing on its first try (it then retries: defers and resumes again)."""

    def __init__(self, *, flag: str, how: str = "inline", wait_timeout: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flag = flag
        self.how = how
        self.wait_timeout = wait_timeout

    async def execute(self, context: dict[str, Any]) -> None:
        method = {"inline": "quick", "try": "slow", "flaky": "flaky"}[self.how]
        self.defer(trigger=FileFlagTrigger(self.flag), method_name=method,
                   timeout=self.wait_timeout)

    @loop_safe
    def quick(self, context: dict[str, Any], event: Any = None) -> str:
        return "inline"

    async def slow(self, context: dict[str, Any], event: Any = None) -> str:
        await anyio.sleep(0.01)
        return "try"

    async def flaky(self, context: dict[str, Any], event: Any = None) -> str:
        if context["ti"].try_number == 1:
            raise ValueError("first resume fails")
        return "retried"


@pytest.mark.parametrize("how", ["inline", "try", "flaky"])
async def test_include_deferred_counts_a_deferred_task_until_it_ends(
    orchestrator_factory: Any, tmp_path: Path, how: str
) -> None:
    flag = tmp_path / "flag"
    spans = Spans()
    # one execution slot: after `start`, `wait` (heavier) goes first and defers; `after`
    # then has the execution slot to itself, but not the pool's
    with DAG("dp", start_date=START) as dag:
        start = PythonOperator(task_id="start", python_callable=spans.task("start"))
        start >> Waiter(task_id="wait", flag=str(flag), how=how, pool="dp", retries=1,
                        retry_delay=0, priority_weight=5)
        start >> PythonOperator(task_id="after", python_callable=spans.task("after"), pool="dp")
    o = await orchestrator_factory(
        [dag], pools={"dp": {"slots": 1, "include_deferred": True}}, parallelism=1
    )
    handle = await o.trigger("dp")
    await wait_ti(o, "dp", handle.run_id, "wait", lambda t: t.state is TaskState.DEFERRED)
    assert o.slots_in_use == 0  # no execution slot...
    assert o.pool_slots_in_use() == {"dp": 1}  # ...but its pool slot
    with anyio.move_on_after(0.3):  # `after` must not start while `wait` is deferred
        while spans.order == ["start"]:  # noqa: ASYNC110 - polls what the task records
            await anyio.sleep(0.01)
    assert spans.order == ["start"]
    flag.touch()
    final = await handle.wait(timeout=30)
    assert final.state.value == "success"
    wait = await ti_of(o, "dp", handle.run_id, "wait")
    assert wait.try_number == (2 if how == "flaky" else 1)
    xcoms = {x.task_id: x.value for x in await o.store.get_xcoms("dp", final.run_id)}
    assert xcoms["wait"] == {"inline": "inline", "try": "try", "flaky": "retried"}[how]
    assert spans.order == ["start", "after"]
    assert o.pool_slots_in_use() == {}


async def test_without_include_deferred_a_deferred_task_frees_its_pool(
    orchestrator_factory: Any, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"

    def after() -> None:
        flag.touch()  # only possible while `wait` is deferred

    # as above, but `after` releases `wait`: the run ends only if `after` could run while
    # `wait` was deferred
    with DAG("ndp", start_date=START) as dag:
        start = PythonOperator(task_id="start", python_callable=lambda: None)
        start >> Waiter(task_id="wait", flag=str(flag), pool="p", priority_weight=5)
        start >> PythonOperator(task_id="after", python_callable=after, pool="p")
    o = await orchestrator_factory([dag], pools={"p": 1}, parallelism=1)
    final = await (await o.trigger("ndp")).wait(timeout=30)
    assert final.state.value == "success"
    assert o.pool_slots_in_use() == {}


async def test_a_trigger_timeout_gives_the_pool_slot_back(
    orchestrator_factory: Any, tmp_path: Path
) -> None:
    spans = Spans()
    with DAG("dpt", start_date=START) as dag:
        w = Waiter(task_id="wait", flag=str(tmp_path / "never"), how="try", pool="dp",
                   wait_timeout=0.2)
        PythonOperator(task_id="after", python_callable=spans.task("after"), pool="dp",
                       trigger_rule="all_done")
        w >> dag.get_task("after")
        PythonOperator(task_id="side", python_callable=spans.task("side"), pool="dp")
    o = await orchestrator_factory([dag], pools={"dp": {"slots": 1, "include_deferred": True}})
    handle = await o.trigger("dpt")
    final = await handle.wait(timeout=30)
    assert (await ti_of(o, "dpt", final.run_id, "wait")).state is TaskState.FAILED
    assert sorted(spans.order) == ["after", "side"]
    assert o.pool_slots_in_use() == {}


async def test_an_abandoned_run_gives_its_deferred_pool_slots_back(
    orchestrator_factory: Any, tmp_path: Path
) -> None:
    with DAG("dpa", start_date=START) as dag:
        Waiter(task_id="wait", flag=str(tmp_path / "never"), pool="dp")
    o = await orchestrator_factory([dag], pools={"dp": {"slots": 1, "include_deferred": True}})
    handle = await o.trigger("dpa")
    await wait_ti(o, "dpa", handle.run_id, "wait", lambda t: t.state is TaskState.DEFERRED)
    assert o.pool_slots_in_use() == {"dp": 1}
    o.driver.abandon(("dpa", handle.run_id))  # as when another process took the run over
    assert o.pool_slots_in_use() == {}


async def test_deferred_tasks_found_at_adoption_hold_their_pool(
    home: Path, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    pools = {"dp": {"slots": 2, "include_deferred": True}}
    with DAG("dpr", start_date=START) as dag:
        start = PythonOperator(task_id="start", python_callable=lambda: None)
        start >> Waiter(task_id="wait", flag=str(flag), how="try", pool="dp", pool_slots=2,
                        priority_weight=5)
        start >> PythonOperator(task_id="after", python_callable=lambda: None, pool="dp")
    async with Orchestrator([dag], home=home, schedule=False, pools=pools, parallelism=1) as o:
        handle = await o.trigger("dpr")
        await wait_ti(o, "dpr", handle.run_id, "wait", lambda t: t.state is TaskState.DEFERRED)
        assert o.pool_slots_in_use() == {"dp": 2}
    # a new process adopts the run and finds `wait` deferred in the store
    async with Orchestrator([dag], home=home, schedule=False, parallelism=1) as o:
        with anyio.fail_after(30):
            while o.pool_slots_in_use() != {"dp": 2}:  # noqa: ASYNC110 - polls the engine
                await anyio.sleep(0.01)
        after = await ti_of(o, "dpr", handle.run_id, "after")
        assert after.state is TaskState.NONE  # it waits: the pool is held by `wait`
        flag.touch()
        final = await (await o.get_run("dpr", handle.run_id)).wait(timeout=30)
        assert final.state.value == "success"
        assert o.pool_slots_in_use() == {}


# -- priority_weight and weight_rule --------------------------------------------------------------


async def test_waiting_tries_start_highest_effective_weight_first(home: Path) -> None:
    """One slot: after `start`, its downstream tasks all wait; they start in order of
    effective weight (downstream rule: own weight plus every task below)."""
    from tests.conftest import run_dag

    spans = Spans()
    with DAG("prio", start_date=START) as dag:
        start = PythonOperator(task_id="start", python_callable=spans.task("start"))
        chain_a = [PythonOperator(task_id=f"a{i}", python_callable=spans.task(f"a{i}"))
                   for i in range(3)]  # a0 weighs 3
        b = PythonOperator(task_id="b", python_callable=spans.task("b"))  # 1
        c0 = PythonOperator(task_id="c0", python_callable=spans.task("c0"))  # 2
        c1 = PythonOperator(task_id="c1", python_callable=spans.task("c1"))
        heavy = PythonOperator(task_id="heavy", python_callable=spans.task("heavy"),
                               priority_weight=10, weight_rule="absolute")  # 10
        up = PythonOperator(task_id="up", python_callable=spans.task("up"), priority_weight=4,
                            weight_rule="upstream")  # 4 + start's 1
        start >> [chain_a[0], b, c0, heavy, up]
        chain_a[0] >> chain_a[1] >> chain_a[2]
        c0 >> c1
    assert dag.priority_weights() == {
        "start": 1 + 3 + 1 + 2 + 10 + 4, "a0": 3, "a1": 2, "a2": 1, "b": 1, "c0": 2, "c1": 1,
        "heavy": 10, "up": 5,
    }
    result = await run_dag(dag, home, parallelism=1)
    assert result.state == "success"
    # a1 and c0 weigh 2 alike: c0 has waited longer
    assert spans.order == ["start", "heavy", "up", "a0", "c0", "a1", "b", "c1", "a2"]
    assert result.tis["a0"].priority_weight == 3  # the effective weight is on the row


@pytest.mark.postgres
async def test_on_postgresql_a_pool_change_arrives_by_notification(
    orchestrator_factory: Any, pg_schema_url: str
) -> None:
    """The periodic re-reads are an hour apart: only the NOTIFY of the change can start it."""
    from aflow.store.postgres import PostgresStore

    spans = Spans()
    with DAG("pgpool", start_date=START) as dag:
        PythonOperator(task_id="t", python_callable=spans.task("t"), pool="later")
    o = await orchestrator_factory([dag], store=pg_schema_url, poll_s=3600, sweep_s=3600)
    handle = await o.trigger("pgpool")
    await wait_ti(o, "pgpool", handle.run_id, "t", lambda t: t.error)
    with anyio.fail_after(30):
        while not o.store.notifications_live:  # noqa: ASYNC110 - the listener connects
            await anyio.sleep(0.01)
    async with PostgresStore(pg_schema_url) as elsewhere:
        await elsewhere.set_pool(PoolRecord("later", 1))
    final = await handle.wait(timeout=30)
    assert final.state.value == "success"
