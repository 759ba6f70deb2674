"""GET /api/v1/dags/{dag_id}/runs/{dag_run_id}/deadlines: a run's deadline alerts, those
it missed (recorded by aflow.runtime.deadlines) and, for a DAG this server has loaded,
those still pending or met. Registered on the v1 API (imported by aflow.api.app)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel

from aflow.api.v1 import api, orchestrator, run_record
from aflow.orchestrator import Orchestrator
from aflow.runtime.deadlines import alerts_of
from aflow.states import FINISHED_TASK_STATES
from aflow.store.records import DagRunRecord, DeadlineMissRecord, TaskInstanceRecord


class Deadline(BaseModel):
    dag_id: str
    dag_run_id: str
    task_id: str | None
    alert_index: int
    description: str
    deadline_at: datetime | None
    # late: it ended after its deadline, with no miss recorded (no scheduler drove it then)
    status: Literal["missed", "late", "met", "pending"]
    missed_at: datetime | None = None
    alert_state: str | None = None  # of a miss: none (no callback), sending, sent, failed
    alert_error: str | None = None


class DeadlineCollection(BaseModel):
    deadlines: list[Deadline]
    total_entries: int


def miss_out(m: DeadlineMissRecord) -> Deadline:
    return Deadline(dag_id=m.dag_id, dag_run_id=m.run_id, task_id=m.task_id,
                    alert_index=m.alert_index, description=m.description,
                    deadline_at=m.deadline_at, status="missed", missed_at=m.missed_at,
                    alert_state=m.alert_state, alert_error=m.alert_error)


async def run_deadlines(o: Orchestrator, run: DagRunRecord) -> list[Deadline]:
    """Missed ones as recorded; with the DAG loaded here, the others as pending or met."""
    store = o.store
    misses = await store.deadline_misses(run.dag_id, run.run_id)
    out = {(m.task_id, m.alert_index): miss_out(m) for m in misses}
    dag = o.dagbag.dags.get(run.dag_id)
    if dag is not None:
        alerts = [a for a in alerts_of(dag) if (a[0], a[1]) not in out]
        tis: list[TaskInstanceRecord] = (
            await store.get_tis(run.dag_id, run.run_id) if alerts else [])
        for task_id, index, alert in alerts:
            if task_id is None:
                done, ended = run.state.finished, run.end_date
            else:
                mine = [t for t in tis if t.task_id == task_id]
                done = bool(mine) and all(t.state in FINISHED_TASK_STATES for t in mine)
                ended = max((t.end_date for t in mine if t.end_date is not None), default=None)
            deadline_at = alert.deadline_for(run)
            status = "pending"
            if done:
                late = deadline_at is not None and ended is not None and ended > deadline_at
                status = "late" if late else "met"
            out[(task_id, index)] = Deadline(
                dag_id=run.dag_id, dag_run_id=run.run_id, task_id=task_id, alert_index=index,
                description=alert.describe(), deadline_at=deadline_at, status=status)
    return sorted(out.values(), key=lambda d: (d.task_id or "", d.alert_index))


@api.route("GET", "/dags/{dag_id}/runs/{dag_run_id}/deadlines",
           summary="A run's deadline alerts: missed (recorded, with how the alert went), "
           "met or pending", tag="runs", response=DeadlineCollection)
async def list_deadlines(request: web.Request, dag_id: str, dag_run_id: str) -> DeadlineCollection:
    run = await run_record(request, dag_id, dag_run_id)
    items = await run_deadlines(orchestrator(request), run)
    return DeadlineCollection(deadlines=items, total_entries=len(items))
