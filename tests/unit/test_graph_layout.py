"""The graph view's layout: upstream left of downstream, no overlaps, few crossings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aflow import DAG, EmptyOperator
from aflow.web import graph
from aflow.web.graph import NODE_H, NODE_W, crossings, layout


def structure(edges: list[tuple[str, str]], extra: tuple[str, ...] = ()) -> list[dict]:
    with DAG("g", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        ops = {}
        for name in [*dict.fromkeys([n for e in edges for n in e]), *extra]:
            ops[name] = EmptyOperator(task_id=name)
        for a, b in edges:
            ops[a] >> ops[b]
    return dag.structure()["tasks"]


def test_every_task_is_right_of_its_upstream_and_nothing_overlaps() -> None:
    tasks = structure([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("a", "d"), ("d", "e")],
                      extra=("lonely",))
    lay = layout(tasks)
    at = {n.task_id: n for n in lay.nodes}
    assert set(at) == {"a", "b", "c", "d", "e", "lonely"}
    for t in tasks:
        for up in t["upstream"]:
            assert at[up].x + NODE_W < at[t["task_id"]].x
    boxes = [(n.x, n.y) for n in lay.nodes]
    for i, (x1, y1) in enumerate(boxes):
        for x2, y2 in boxes[i + 1:]:
            assert abs(x1 - x2) >= NODE_W or abs(y1 - y2) >= NODE_H
    assert all(0 <= n.x and n.x + NODE_W <= lay.width and n.y + NODE_H <= lay.height for n in lay.nodes)
    assert {(e.source, e.target) for e in lay.edges} == {
        ("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("a", "d"), ("d", "e")}
    assert all(e.path.startswith("M") for e in lay.edges)


def test_ordering_removes_crossings_the_dag_order_has(monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = structure([("a1", "b1"), ("a2", "b2"), ("a3", "b3"), ("a1", "b3"), ("a3", "b1")])
    ordered = crossings(layout(tasks))
    monkeypatch.setattr(graph, "SWEEPS", 0)  # columns left in the DAG's topological order
    assert crossings(layout(tasks)) == 3
    assert ordered == 1  # the least this graph can have


def test_an_empty_dag_draws_nothing() -> None:
    lay = layout([])
    assert lay.nodes == [] and lay.edges == []
