"""Effective priority weights against a plain reference: the sum over the reached
tasks' sets, for random DAGs mixing the three rules."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from aflow import DAG, EmptyOperator


def reference(dag: DAG) -> dict[str, int]:
    def reach(task_id: str, downstream: bool) -> set[str]:
        seen: set[str] = set()
        todo = [task_id]
        while todo:
            task = dag.task_dict[todo.pop()]
            for other in task.downstream_task_ids if downstream else task.upstream_task_ids:
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        return seen

    out = {}
    for t in dag.task_dict.values():
        rule = str(t.weight_rule)
        extra = 0
        if rule in ("downstream", "upstream"):
            extra = sum(dag.task_dict[o].priority_weight for o in reach(t.task_id, rule == "downstream"))
        out[t.task_id] = t.priority_weight + extra
    return out


@pytest.mark.parametrize("seed", range(25))
def test_effective_weights_match_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    with DAG(f"w{seed}", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        tasks = [EmptyOperator(task_id=f"t{i}", priority_weight=rng.randint(1, 5),
                               weight_rule=rng.choice(["downstream", "upstream", "absolute"]))
                 for i in range(n)]
        for i in range(n):
            for j in range(i + 1, n):
                if rng.random() < 0.15:
                    tasks[i] >> tasks[j]
    assert dag.priority_weights() == reference(dag)
