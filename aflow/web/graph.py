"""A layered drawing of a DAG for the graph view: tasks in columns by their longest
path from a root (upstream left of downstream), ordered within a column to cross few
edges (barycenters, a few sweeps), with edge curves from each task to its downstream.
Computed on the server from the stored structure, so the page needs no layout library."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

NODE_W = 168
NODE_H = 34
GAP_X = 64
GAP_Y = 14
MARGIN = 12
SWEEPS = 4


@dataclass(frozen=True, slots=True)
class Node:
    task_id: str
    operator: str
    x: int
    y: int
    layer: int


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    path: str  # SVG path data


@dataclass(frozen=True, slots=True)
class Layout:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int
    node_w: int = NODE_W
    node_h: int = NODE_H


def layout(tasks: Sequence[dict[str, Any]]) -> Layout:
    """`tasks`: the DAG structure's task entries (task_id, operator, upstream), in
    topological order as `DAG.structure()` stores them."""
    ids = [t["task_id"] for t in tasks]
    known = set(ids)
    upstream = {t["task_id"]: [u for u in t.get("upstream", []) if u in known] for t in tasks}
    downstream: dict[str, list[str]] = {i: [] for i in ids}
    for task_id, ups in upstream.items():
        for u in ups:
            downstream[u].append(task_id)
    layer: dict[str, int] = {}
    for task_id in ids:  # topological order: every upstream is placed first
        layer[task_id] = 1 + max((layer[u] for u in upstream[task_id] if u in layer), default=-1)
    columns: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for task_id in ids:
        columns[layer[task_id]].append(task_id)
    _order(columns, upstream, downstream)

    tallest = max((len(c) for c in columns), default=0)
    height = 2 * MARGIN + max(tallest * (NODE_H + GAP_Y) - GAP_Y, 0)
    width = 2 * MARGIN + max(len(columns) * (NODE_W + GAP_X) - GAP_X, 0)
    operator = {t["task_id"]: t.get("operator", "") + (", mapped" if t.get("mapped") else "")
                for t in tasks}
    position: dict[str, tuple[int, int]] = {}
    nodes = []
    for col, members in enumerate(columns):
        used = len(members) * (NODE_H + GAP_Y) - GAP_Y
        top = MARGIN + (height - 2 * MARGIN - used) // 2
        for row, task_id in enumerate(members):
            x = MARGIN + col * (NODE_W + GAP_X)
            y = top + row * (NODE_H + GAP_Y)
            position[task_id] = (x, y)
            nodes.append(Node(task_id, operator[task_id], x, y, col))
    edges = []
    for task_id in ids:
        for down in downstream[task_id]:
            (x1, y1), (x2, y2) = position[task_id], position[down]
            sx, sy = x1 + NODE_W, y1 + NODE_H // 2
            tx, ty = x2, y2 + NODE_H // 2
            bend = max((tx - sx) // 2, 16)
            path = f"M{sx},{sy} C{sx + bend},{sy} {tx - bend},{ty} {tx},{ty}"
            edges.append(Edge(task_id, down, path))
    return Layout(nodes, edges, width, height)


def _order(
    columns: list[list[str]], upstream: dict[str, list[str]], downstream: dict[str, list[str]]
) -> None:
    """Reorder each column by the mean position of its neighbours in the column before
    (sweeping right) or after (sweeping left); stable, so ties keep DAG order."""
    for sweep in range(SWEEPS):
        rightward = sweep % 2 == 0
        indices = range(1, len(columns)) if rightward else range(len(columns) - 2, -1, -1)
        for c in indices:
            ref = columns[c - 1] if rightward else columns[c + 1]
            where = {task_id: i for i, task_id in enumerate(ref)}
            links = upstream if rightward else downstream

            def barycenter(task_id: str, fallback: int, where: dict[str, int] = where,
                           links: dict[str, list[str]] = links) -> float:
                seen = [where[n] for n in links[task_id] if n in where]
                return sum(seen) / len(seen) if seen else float(fallback)

            current = columns[c]
            columns[c] = [t for _, t in sorted(
                ((barycenter(t, i), t) for i, t in enumerate(current)), key=lambda p: p[0]
            )]


def crossings(lay: Layout) -> int:
    """How many pairs of edges between the same two columns cross (for tests)."""
    pos = {n.task_id: n for n in lay.nodes}
    spans = [(pos[e.source], pos[e.target]) for e in lay.edges]
    count = 0
    for i, (a1, b1) in enumerate(spans):
        for a2, b2 in spans[i + 1:]:
            if a1.layer == a2.layer and b1.layer == b2.layer and (a1.y - a2.y) * (b1.y - b2.y) < 0:
                count += 1
    return count
