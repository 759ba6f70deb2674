"""Task concurrency limits end to end, on a real Orchestrator over a real SQLite file:
`max_active_tis_per_dagrun` on a mapped task's instances, `max_active_tis_per_dag`
across two runs, and a deferred try, which holds no slot, does not count.

The tries record how many of them run at once. The first ones wait (with a time limit)
until as many as the limit run together, so the test sees that the limit was reached,
not only that it was not passed, without asserting anything about timing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, BaseOperator, Orchestrator, task
from triggers.file import FileTrigger

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


class Probe:
    """Counts the tries running at once; the first wait until `goal` of them do (or 10 s:
    then `peak` is short of the goal and the test fails), the later ones go straight on."""

    def __init__(self, goal: int) -> None:
        self.goal = goal
        self.now = 0
        self.peak = 0
        self.runs: set[str] = set()
        self.together = anyio.Event()

    async def hold(self, run_id: str = "") -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.runs.add(run_id)
        try:
            if self.now >= self.goal:
                self.together.set()
            with anyio.move_on_after(10):
                await self.together.wait()
            self.together.set()  # (after a time-out too: the others need not wait as long)
            await anyio.sleep(0.02)  # room for a try past the limit to start, if one could
        finally:
            self.now -= 1


PROBE = Probe(1)  # replaced by each test; tasks find it here


class Hold(BaseOperator):
    def __init__(self, *, n: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = n

    async def execute(self, context: dict[str, Any]) -> int:
        await PROBE.hold(context["ti"].run_id)
        return self.n


async def test_a_mapped_task_runs_at_most_its_limit_of_instances_per_run(home: Path) -> None:
    global PROBE
    PROBE = Probe(3)
    with DAG("per_run", start_date=START) as dag:

        @task(max_active_tis_per_dagrun=3)
        async def each(x: int) -> int:
            await PROBE.hold()
            return x

        @task
        def total(values: list[int]) -> int:
            return sum(values)

        total(each.expand(x=list(range(20))))
    async with Orchestrator([dag], home=home, schedule=False) as o:
        final = await (await o.trigger("per_run")).wait(timeout=120)
        rows = await o.store.get_tis("per_run", final.run_id)
        xcoms = {x.task_id: x.value for x in await o.store.get_xcoms("per_run", final.run_id)
                 if x.key == "return_value" and x.map_index < 0}
    assert final.state.value == "success"
    assert PROBE.peak == 3  # never more than 3 at once, and 3 did run at once
    assert len([r for r in rows if r.task_id == "each" and r.map_index >= 0]) == 20
    assert xcoms["total"] == sum(range(20))


async def test_a_task_runs_at_most_its_limit_of_tries_across_the_runs_of_its_dag(
    home: Path,
) -> None:
    global PROBE
    PROBE = Probe(2)
    with DAG("per_dag", start_date=START) as dag:
        Hold.partial(task_id="work", max_active_tis_per_dag=2).expand(n=list(range(6)))
    async with Orchestrator([dag], home=home, schedule=False) as o:
        handles = [await o.trigger("per_dag", run_id=f"r{i}") for i in range(2)]
        finals = [await h.wait(timeout=120) for h in handles]
    assert [f.state.value for f in finals] == ["success", "success"]
    assert PROBE.peak == 2 and PROBE.runs == {"r0", "r1"}


async def test_default_args_limit_an_unmapped_task_across_runs(home: Path) -> None:
    global PROBE
    PROBE = Probe(1)
    with DAG("from_defaults", start_date=START, default_args={"max_active_tis_per_dag": 1}) as dag:
        Hold(task_id="work", n=0)
    async with Orchestrator([dag], home=home, schedule=False) as o:
        handles = [await o.trigger("from_defaults", run_id=f"r{i}") for i in range(3)]
        finals = [await h.wait(timeout=120) for h in handles]
    assert [f.state.value for f in finals] == ["success"] * 3
    assert PROBE.peak == 1 and PROBE.runs == {"r0", "r1", "r2"}


DEFERRED: list[int] = []


class DeferOnFlag(BaseOperator):
    """Defers until `flag` exists; the third instance to defer creates it."""

    def __init__(self, *, n: int, flag: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = n
        self.flag = flag

    async def execute(self, context: dict[str, Any]) -> None:
        DEFERRED.append(self.n)
        if len(DEFERRED) == 3:
            await anyio.Path(self.flag).touch()
        self.defer(trigger=FileTrigger(self.flag, poke_interval=0.05), method_name="resume")

    async def resume(self, context: dict[str, Any], event: Any = None) -> int:
        await PROBE.hold()
        return self.n


async def test_deferred_instances_do_not_count_against_the_limit(home: Path, tmp_path: Path) -> None:
    """One instance at a time: all three still defer together (the flag they wait for is
    made by the third), and their resumed tries run one at a time."""
    global PROBE
    PROBE = Probe(1)
    DEFERRED.clear()
    flag = tmp_path / "flag"
    with DAG("deferring", start_date=START) as dag:
        DeferOnFlag.partial(task_id="wait", flag=str(flag), max_active_tis_per_dagrun=1).expand(
            n=[0, 1, 2])
    async with Orchestrator([dag], home=home, schedule=False) as o:
        final = await (await o.trigger("deferring")).wait(timeout=120)
    assert final.state.value == "success"
    assert sorted(DEFERRED) == [0, 1, 2]
    assert PROBE.peak == 1
