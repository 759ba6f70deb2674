"""State colours as Airflow users know them (graph nodes, grid cells, Gantt bars)."""

from __future__ import annotations

from aflow.states import DagRunState, TaskState

TASK_COLOURS: dict[str, str] = {
    TaskState.NONE: "#ffffff",
    TaskState.SCHEDULED: "#d2b48c",  # tan
    TaskState.QUEUED: "#808080",  # gray
    TaskState.RUNNING: "#32cd32",  # lime
    TaskState.SUCCESS: "#008000",  # green
    TaskState.FAILED: "#ff0000",  # red
    TaskState.UP_FOR_RETRY: "#ffd700",  # gold
    TaskState.UP_FOR_RESCHEDULE: "#40e0d0",  # turquoise
    TaskState.DEFERRED: "#9370db",  # mediumpurple
    TaskState.SKIPPED: "#ff69b4",  # hotpink
    TaskState.UPSTREAM_FAILED: "#ffa500",  # orange
    TaskState.REMOVED: "#d3d3d3",  # lightgrey
}

RUN_COLOURS: dict[str, str] = {
    DagRunState.QUEUED: "#808080",
    DagRunState.RUNNING: "#32cd32",
    DagRunState.SUCCESS: "#008000",
    DagRunState.FAILED: "#ff0000",
}


def stylesheet() -> str:
    """CSS classes `state-<name>` for every state (served with the static CSS)."""
    rules = [f".state-{s} {{ --state: {c}; }}" for s, c in {**TASK_COLOURS, **RUN_COLOURS}.items()]
    return "\n".join(rules) + "\n"
