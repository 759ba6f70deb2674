"""Property: under random DAGs, pools, limits and task durations, no concurrency limit
is ever exceeded and every run finishes.

Each example builds 1-2 random DAGs (random edges; tasks in random pools, some with
include_deferred, each taking up to its pool's size in `pool_slots`; short random
durations; some tasks run in threads, some fail once and retry, some defer on a short
timer and resume inline, as an ordinary try, or fail once after resuming and retry;
some are mapped over a few instances; some have task limits), triggers several runs of
each on a real Orchestrator over a real SQLite file, and checks what the tasks recorded
(monotonic start/end of each piece of work):

* parallelism: tries running at once (executions and resumed tries);
* max_active_tasks: the same, per DAG across its runs;
* max_active_tis_per_dag: the same, per task across its DAG's runs;
* max_active_tis_per_dagrun: the same, per task (its instances, when mapped) in one run;
* each pool: the slots its tries hold at once, counting a deferred try from its first
  start to the end of its resume when the pool has include_deferred;
* max_active_runs: runs of a DAG with work going at once;

and that every run succeeded and no pool slot is held at the end. A recorded span lies
within the span the engine holds its slot for, so a recorded excess is a real one.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aflow import DAG, BaseOperator
from aflow.authoring.baseoperator import loop_safe
from aflow.orchestrator import Orchestrator
from triggers.temporal import TimeDeltaTrigger

START = datetime(2024, 1, 1, tzinfo=UTC)
KINDS = ("async", "thread", "fail_once", "defer_inline", "defer_try", "defer_flaky")


@dataclass
class TaskSpec:
    kind: str
    pool: str
    pool_slots: int
    ms: int
    weight: int
    mapped: int = 0  # how many instances (0: not mapped)
    per_dag: int | None = None  # max_active_tis_per_dag
    per_run: int | None = None  # max_active_tis_per_dagrun


@dataclass
class DagSpec:
    tasks: list[TaskSpec]
    edges: list[tuple[int, int]]
    max_active_tasks: int
    max_active_runs: int
    runs: int


@dataclass
class Scenario:
    pools: dict[str, tuple[int, bool]]  # name -> (slots, include_deferred)
    dags: list[DagSpec]
    parallelism: int


@dataclass
class Recorder:
    """(dag_id, run_id, task_id, map_index, try, piece, start, end); piece: exec, resume,
    inline."""

    rows: list[tuple[str, str, str, int, int, str, float, float]] = field(default_factory=list)

    def add(self, context: dict[str, Any], piece: str, t0: float) -> None:
        ti = context["ti"]
        self.rows.append((ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.try_number, piece,
                          t0, time.monotonic()))


RECORDER = Recorder()  # tasks find it by module (a try in a thread sees the same one)


class Worker(BaseOperator):
    def __init__(self, *, kind: str, ms: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        self.ms = ms

    async def execute(self, context: dict[str, Any]) -> None:
        t0 = time.monotonic()
        await anyio.sleep(self.ms / 1000)
        RECORDER.add(context, "exec", t0)
        if self.kind == "fail_once" and context["ti"].try_number == 1:
            raise RuntimeError("first try fails")
        if self.kind.startswith("defer"):
            method = {"defer_inline": "inline", "defer_try": "resumed",
                      "defer_flaky": "resumed"}[self.kind]
            self.defer(trigger=TimeDeltaTrigger(self.ms / 1000), method_name=method)

    @loop_safe
    def inline(self, context: dict[str, Any], event: Any = None) -> None:
        RECORDER.add(context, "inline", time.monotonic())

    async def resumed(self, context: dict[str, Any], event: Any = None) -> None:
        t0 = time.monotonic()
        await anyio.sleep(self.ms / 2000)
        RECORDER.add(context, "resume", t0)
        if self.kind == "defer_flaky" and context["ti"].try_number == 1:
            raise RuntimeError("first resume fails")


class ThreadWorker(Worker):
    """A blocking task: aflow runs it in a worker thread."""

    def execute(self, context: dict[str, Any]) -> None:  # type: ignore[override]
        t0 = time.monotonic()
        time.sleep(self.ms / 1000)
        RECORDER.add(context, "exec", t0)


@st.composite
def scenarios(draw: Any) -> Scenario:
    pools = {"default_pool": (draw(st.integers(1, 4)), False)}
    for i in range(draw(st.integers(1, 3))):
        pools[f"p{i}"] = (draw(st.integers(1, 3)), draw(st.booleans()))
    names = sorted(pools)
    dags = []
    for _ in range(draw(st.integers(1, 2))):
        n = draw(st.integers(1, 7))
        tasks = []
        for _ in range(n):
            pool = draw(st.sampled_from(names))
            tasks.append(TaskSpec(
                kind=draw(st.sampled_from(KINDS)),
                pool=pool,
                pool_slots=draw(st.integers(1, pools[pool][0])),
                ms=draw(st.integers(0, 15)),
                weight=draw(st.integers(1, 3)),
                mapped=draw(st.sampled_from((0, 0, 2, 4))),
                per_dag=draw(st.sampled_from((None, None, 1, 2))),
                per_run=draw(st.sampled_from((None, None, 1, 2))),
            ))
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        edges = [p for p in pairs if draw(st.integers(0, 2)) == 0]
        dags.append(DagSpec(tasks, edges, draw(st.integers(1, 4)), draw(st.integers(1, 3)),
                            draw(st.integers(1, 4))))
    return Scenario(pools, dags, draw(st.integers(1, 4)))


def build(index: int, spec: DagSpec) -> DAG:
    with DAG(f"prop{index}", start_date=START, max_active_tasks=spec.max_active_tasks,
             max_active_runs=spec.max_active_runs) as dag:
        ops = []
        for i, t in enumerate(spec.tasks):
            cls = ThreadWorker if t.kind == "thread" else Worker
            args = dict(task_id=f"t{i}", kind=t.kind, pool=t.pool, pool_slots=t.pool_slots,
                        priority_weight=t.weight, retries=1, retry_delay=0,
                        max_active_tis_per_dag=t.per_dag, max_active_tis_per_dagrun=t.per_run)
            if t.mapped:
                ops.append(cls.partial(**args).expand(ms=[t.ms] * t.mapped))
            else:
                ops.append(cls(ms=t.ms, **args))
        for i, j in spec.edges:
            ops[i] >> ops[j]
    return dag


def peak(spans: list[tuple[float, float, int]]) -> int:
    """The most weight held at once by closed spans (an end before a start at a tie)."""
    events = sorted([(s, 1, w) for s, _, w in spans] + [(e, 0, -w) for _, e, w in spans])
    held = top = 0
    for _, _, w in events:
        held += w
        top = max(top, held)
    return top


def check(scenario: Scenario, dags: list[DAG], rows: list[Any]) -> None:
    specs = {d.dag_id: (d, s) for d, s in zip(dags, scenario.dags, strict=True)}
    running: list[tuple[float, float, int]] = []  # execution slots
    per_dag: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    per_pool: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    per_task: dict[tuple[str, ...], list[tuple[float, float, int]]] = defaultdict(list)
    run_spans: dict[tuple[str, str], list[float]] = {}
    tries: dict[tuple[str, str, str, int, int], dict[str, tuple[float, float]]] = defaultdict(dict)
    for dag_id, run_id, task_id, map_index, try_number, piece, t0, t1 in rows:
        tries[(dag_id, run_id, task_id, map_index, try_number)][piece] = (t0, t1)
        span = run_spans.setdefault((dag_id, run_id), [t0, t1])
        span[0], span[1] = min(span[0], t0), max(span[1], t1)
    for (dag_id, run_id, task_id, _, _), pieces in tries.items():
        dag, _spec = specs[dag_id]
        task = dag.task_dict[task_id]
        slots, include_deferred = scenario.pools[task.pool]
        held = [pieces[p] for p in ("exec", "resume") if p in pieces]
        for t0, t1 in held:
            running.append((t0, t1, 1))
            per_dag[dag_id].append((t0, t1, 1))
            per_task[(dag_id, task_id)].append((t0, t1, 1))
            per_task[(dag_id, run_id, task_id)].append((t0, t1, 1))
        end = pieces.get("resume", pieces.get("inline", (0.0, 0.0)))[1]
        if include_deferred and end:
            per_pool[task.pool].append((pieces["exec"][0], end, task.pool_slots))
        else:
            per_pool[task.pool].extend((t0, t1, task.pool_slots) for t0, t1 in held)
    assert peak(running) <= scenario.parallelism, "parallelism exceeded"
    for dag_id, spans in per_dag.items():
        limit = specs[dag_id][1].max_active_tasks
        assert peak(spans) <= limit, f"{dag_id}: max_active_tasks {limit} exceeded"
    for key, spans in per_task.items():
        task = specs[key[0]][0].task_dict[key[-1]]
        limit = task.max_active_tis_per_dag if len(key) == 2 else task.max_active_tis_per_dagrun
        if limit is not None:
            assert peak(spans) <= limit, f"{key}: task limit {limit} exceeded"
    for pool, spans in per_pool.items():
        limit = scenario.pools[pool][0]
        assert peak(spans) <= limit, f"pool {pool} ({limit} slots) exceeded"
    for dag_id, (_, spec) in specs.items():
        spans = [(s, e, 1) for (d, _), (s, e) in run_spans.items() if d == dag_id]
        assert peak(spans) <= spec.max_active_runs, f"{dag_id}: max_active_runs exceeded"


async def run_scenario(scenario: Scenario, home: Path) -> None:
    dags = [build(i, spec) for i, spec in enumerate(scenario.dags)]
    pools = {name: {"slots": s, "include_deferred": d} for name, (s, d) in scenario.pools.items()}
    RECORDER.rows.clear()
    async with Orchestrator(dags, home=home, schedule=False, parallelism=scenario.parallelism,
                            pools=pools, poll_s=0.05) as o:
        handles = []
        for dag, spec in zip(dags, scenario.dags, strict=True):
            for r in range(spec.runs):
                handles.append(await o.trigger(dag.dag_id, run_id=f"r{r}"))
        with anyio.fail_after(60):
            finals = [await h.wait() for h in handles]
        assert [f.state.value for f in finals] == ["success"] * len(finals)
        assert o.pool_slots_in_use() == {}, "a pool slot is still held after every run ended"
        assert o.slots_in_use == 0
    check(scenario, dags, list(RECORDER.rows))


@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=False, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario=scenarios())
def test_no_limit_is_ever_exceeded_and_every_run_finishes(scenario: Scenario) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(run_scenario, scenario, Path(tmp))
