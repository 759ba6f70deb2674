"""A task instance's templated fields rendered as its try saw them, for the task page:
the run's context (dates, params, conf) and its XComs from the store. Computed when the
page is asked for, with the DAG as this process has it loaded."""

from __future__ import annotations

from typing import Any

from aflow.authoring.templating import render_template_fields
from aflow.orchestrator import Orchestrator
from aflow.runtime.task_runner import build_context
from aflow.runtime.ti import RuntimeTaskInstance
from aflow.runtime.xcom import XComView
from aflow.secrets import mask, mask_value
from aflow.secrets.templates import secret_refs, template_context
from aflow.states import TaskState
from aflow.store.records import DagRunRecord, TaskInstanceRecord


async def rendered_fields(
    o: Orchestrator, run: DagRunRecord, ti: TaskInstanceRecord
) -> tuple[dict[str, Any], str | None]:
    """(field -> rendered value, None), or ({}, why not)."""
    dag = o.dagbag.dags.get(run.dag_id)
    if dag is None or ti.task_id not in dag.task_dict:
        return {}, "the DAG is not loaded by this server"
    task = dag.task_dict[ti.task_id]
    if not task.template_fields and not task.is_mapped:
        return {}, None
    xcoms = XComView()
    for x in await o.store.get_xcoms(run.dag_id, run.run_id):
        xcoms.set_one(x.task_id, x.map_index, x.key, x.value)
    if task.is_mapped:  # the instance, built from its resolved input as its try built it
        if ti.map_index < 0:
            return {}, "the task is mapped: open one of its instances"
        lengths: dict[str, int] = {}
        for row in await o.store.get_tis(run.dag_id, run.run_id):
            if row.map_index >= 0 and row.state is not TaskState.REMOVED:
                lengths[row.task_id] = lengths.get(row.task_id, 0) + 1
        for task_id, n in lengths.items():
            xcoms.set_mapped(task_id, n)
        try:
            task = task.unmap(ti.map_index, task.resolve_input(xcoms))  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - why it cannot be shown is what the page shows
            return {}, mask(f"{type(exc).__name__}: {exc}")
    runtime = RuntimeTaskInstance(
        dag_id=run.dag_id, run_id=run.run_id, task_id=ti.task_id, map_index=ti.map_index,
        try_number=max(ti.try_number, 1), max_tries=ti.max_tries, start_date=ti.start_date,
        hostname=ti.hostname or "", xcoms=xcoms, upstream_task_ids=task.upstream_task_ids,
    )
    context = build_context(task, runtime, run)
    try:
        refs = secret_refs(task)
        if refs is not None:  # `{{ var... }}` / `{{ conn... }}`: looked up as a try does
            context.update(await template_context(refs, store=o.store))
        rendered = render_template_fields(task, context)
    except Exception as exc:  # noqa: BLE001 - a template's error is what the page shows
        return {}, mask(f"{type(exc).__name__}: {exc}")
    # a connection's password or a secret-looking variable shows as ***
    return {field: mask_value(value) for field, value in rendered.items()}, None
