"""One try of one task instance: context, templates, execution in the right place
(event loop, worker thread or child process), timeout, callbacks, XCom and the log."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from types import MappingProxyType, SimpleNamespace
from typing import Any

import anyio
import anyio.to_thread

from aflow.authoring.assets import OutletEventAccessors
from aflow.authoring.baseoperator import DEFAULT_MAX_RETRY_DELAY, BaseOperator, is_loop_safe
from aflow.authoring.templating import date_context, render_template_fields
from aflow.exceptions import (
    SkipTask,
    TaskDeferred,
    TaskFailure,
    TaskReschedule,
    TaskTimeout,
    TriggerFailed,
)
from aflow.runtime import logs, services
from aflow.runtime.ti import RuntimeTaskInstance
from aflow.runtime.xcom import RETURN_KEY, XComView, check_json
from aflow.secrets.masking import mask
from aflow.secrets.templates import secret_refs, template_context
from aflow.states import TaskState
from aflow.store.base import Store
from aflow.store.records import AssetEventRecord, DagRunRecord

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TryResult:
    state: TaskState  # SUCCESS, FAILED, SKIPPED or DEFERRED
    xcoms: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = True
    deferred: TaskDeferred | None = None
    reschedule_at: datetime | None = None
    outlet_extras: dict[str, dict[str, Any]] | None = None  # {uri: extra} set by the task


@dataclass(frozen=True, slots=True)
class Resume:
    """How a deferred task goes on: its method, kwargs and the trigger's event
    ({"kind": "event" | "error" | "timeout", ...})."""

    method_name: str
    kwargs: dict[str, Any]
    event: dict[str, Any]


@dataclass(slots=True)
class TryJob:
    """Everything one try needs; built by the run driver."""

    task: BaseOperator
    run: DagRunRecord
    map_index: int
    try_number: int
    max_tries: int
    start_date: datetime
    hostname: str
    xcoms: XComView
    log_path: str
    thread_limiter: anyio.CapacityLimiter | None = None
    store: Store | None = None
    resume: Resume | None = None
    create_run: services.RunCreator | None = None  # TriggerDagRunOperator's way in


def retry_delay_for(task: BaseOperator, try_number: int) -> timedelta:
    """The wait before the next try after try `try_number` failed (1-based)."""
    base = task.retry_delay
    if not task.retry_exponential_backoff:
        return base
    cap = task.max_retry_delay or DEFAULT_MAX_RETRY_DELAY
    exponent = min(try_number - 1, 62)
    seconds = base.total_seconds() * math.pow(2, exponent)
    return min(timedelta(seconds=seconds), cap)


def run_params(task: BaseOperator, run: DagRunRecord) -> dict[str, Any]:
    """Airflow's order: DAG param defaults, then task params, then the run's conf."""
    assert task.dag is not None
    params = dict(task.dag.params)
    params.update(task.params)
    params.update(run.conf or {})
    return params


def build_context(task: BaseOperator, ti: RuntimeTaskInstance, run: DagRunRecord) -> dict[str, Any]:
    logical_date = run.logical_date
    context: dict[str, Any] = {
        "dag": task.dag,
        "task": task,
        "ti": ti,
        "task_instance": ti,
        "run_id": run.run_id,
        "dag_run": run,
        "logical_date": logical_date,
        "data_interval_start": run.data_interval_start or logical_date,
        "data_interval_end": run.data_interval_end or logical_date,
        "params": run_params(task, run),
        "try_number": ti.try_number,
        "map_index": ti.map_index,
        "run_type": str(run.run_type),
        "macros": MACROS,
        "triggering_asset_events": (
            triggering_asset_events(run) if run.triggering_asset_events else NO_EVENTS
        ),
        "outlet_events": OutletEventAccessors(task.outlets) if task.outlets else NO_OUTLETS,
    }
    context.update(date_context(logical_date))  # copies: the cached dict stays intact
    return context


NO_OUTLETS = OutletEventAccessors()  # shared: a task without outlets has nothing to set
NO_EVENTS: Mapping[str, list[AssetEventRecord]] = MappingProxyType({})  # not an event run


def outlet_extras(task: BaseOperator, context: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The extras a successful task set on its outlets' events (JSON-checked)."""
    if not task.outlets:
        return None
    extras = context["outlet_events"].extras()
    for uri, extra in extras.items():
        check_json(extra, task_id=task.task_id, key=f"outlet_events[{uri!r}].extra")
    return extras or None


def triggering_asset_events(run: DagRunRecord) -> dict[str, list[AssetEventRecord]]:
    """The asset events that started an asset-triggered run, by asset URI (each list
    oldest first); empty for any other run."""
    out: dict[str, list[AssetEventRecord]] = {}
    for event in run.triggering_asset_events:
        out.setdefault(event.uri, []).append(event)
    return out


def _ds_add(ds: str, days: int) -> str:
    return (date.fromisoformat(ds) + timedelta(days=days)).isoformat()


MACROS = SimpleNamespace(
    datetime=datetime,
    timedelta=timedelta,
    json=json,
    time=time,
    uuid=uuid,
    random=random.random,
    ds_add=_ds_add,
)


def make_ti(job: TryJob) -> RuntimeTaskInstance:
    return RuntimeTaskInstance(
        dag_id=job.run.dag_id,
        run_id=job.run.run_id,
        task_id=job.task.task_id,
        map_index=job.map_index,
        try_number=job.try_number,
        max_tries=job.max_tries,
        start_date=job.start_date,
        hostname=job.hostname,
        xcoms=job.xcoms,
        upstream_task_ids=job.task.upstream_task_ids,
    )


async def run_try(job: TryJob) -> TryResult:
    """Run one try and classify its end. Never raises for the task's own failures;
    cancellation (shutdown) propagates."""
    task_log = logs.TaskLog(job.log_path)
    token = logs.set_task_log(task_log)
    store_token = services.set_store(job.store)
    creator_token = services.set_run_creator(job.create_run)
    try:
        ti = make_ti(job)
        task = job.task.prepare_for_run()
        context = build_context(task, ti, job.run)
        result = await _run_guarded(job, task, ti, context, task_log)
        await _run_callbacks(task, result, context, task_log, job)
        return result
    finally:
        services.reset_run_creator(creator_token)
        services.reset_store(store_token)
        logs.reset_task_log(token)
        task_log.close()


async def _run_guarded(
    job: TryJob,
    task: BaseOperator,
    ti: RuntimeTaskInstance,
    context: dict[str, Any],
    task_log: logs.TaskLog,
) -> TryResult:
    timeout = task.execution_timeout.total_seconds() if task.execution_timeout else None
    try:
        for cb in task.on_execute_callback:
            await call_callback(cb, context, job.thread_limiter)
        if task.run_in == "process":
            from aflow.runtime.task_process import run_in_child_process

            return await run_in_child_process(job, task_log, timeout)
        call = _resume_call(task, job.resume, task_log) if job.resume else None
        if task._aflow_templated:  # `{{ var... }}`/`{{ conn... }}`: looked up before rendering
            refs = secret_refs(job.task)
            if refs is not None:
                context.update(await template_context(refs))
        if timeout is None:
            render_template_fields(task, context)
            value = await execute_task(task, context, job.thread_limiter, call)
        else:
            with anyio.move_on_after(timeout) as deadline:
                render_template_fields(task, context)
                value = await execute_task(task, context, job.thread_limiter, call)
            if deadline.cancelled_caught:  # not a TimeoutError the task's own code raised
                raise TaskTimeout(
                    f"task {task.task_id!r} exceeded its execution_timeout of {timeout}s"
                )
        xcoms = dict(ti.pushed)
        if value is not None and task.do_xcom_push:
            xcoms[RETURN_KEY] = check_json(value, task_id=task.task_id, key=RETURN_KEY)
        return TryResult(TaskState.SUCCESS, xcoms, outlet_extras=outlet_extras(task, context))
    except SkipTask as exc:
        task_log.write_line(f"Task skipped: {exc}" if str(exc) else "Task skipped")
        return TryResult(TaskState.SKIPPED)
    except TaskReschedule as again:
        task_log.write_line(f"Poke done; rescheduled for {again.when}")
        return TryResult(TaskState.UP_FOR_RESCHEDULE, reschedule_at=again.when)
    except TaskDeferred as deferral:
        if task.run_in == "process":
            msg = "a task run in a child process (run_in='process') cannot defer"
            task_log.write_line(f"ERROR - {msg}")
            return TryResult(TaskState.FAILED, error=msg, retryable=False)
        task_log.write_line(f"Task deferred: {deferral}")
        return TryResult(TaskState.DEFERRED, deferred=deferral)
    except TaskTimeout as exc:
        task_log.write_line(f"ERROR - {exc}")
        return TryResult(TaskState.FAILED, error=str(exc))
    except TaskFailure as exc:
        task_log.exception(exc, "Task failed without retry")
        return TryResult(TaskState.FAILED, error=_describe(exc), retryable=False)
    except Exception as exc:  # noqa: BLE001 - any task error fails the task, never the loop
        task_log.exception(exc)
        return TryResult(TaskState.FAILED, error=_describe(exc))


def _describe(exc: BaseException) -> str:
    return mask(f"{type(exc).__name__}: {exc}")  # shown in the UI: no secret in it


def trigger_error_summary(detail: str, limit: int = 1000) -> str:
    """What a failed trigger's error says, for the TI's row: the final exception of its
    traceback text, its type and its whole message (which may span lines, e.g. an SQL
    error and its statement), or the text's last line when it holds no traceback."""
    lines = [line for line in detail.splitlines() if line.strip(" +-|")]
    if not lines:
        return "no detail"
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    if not frames:  # no plain traceback (an exception group's is drawn in a box)
        return lines[-1].strip(" |")[:limit]
    # after the last frame: its indented source line(s), then the exception, unindented
    start = next((i for i in range(frames[-1] + 1, len(lines))
                  if lines[i] and not lines[i][0].isspace()), len(lines) - 1)
    return "\n".join(lines[start:])[:limit]


def _resume_call(
    task: BaseOperator, resume: Resume, task_log: logs.TaskLog
) -> Callable[[dict[str, Any]], Any]:
    """The call that goes on with a deferred task, or the failure its trigger ended in."""
    event = resume.event
    kind = event.get("kind")
    if kind == "error":
        detail = str(event.get("error") or "").rstrip()
        task_log.write_line("Trigger failed:\n" + detail)
        raise TriggerFailed(f"the trigger failed: {trigger_error_summary(detail)}")
    if kind == "timeout":
        if getattr(task, "soft_fail", False):
            raise SkipTask("the wait timed out (soft_fail)")
        raise TaskTimeout(f"task {task.task_id!r} waited longer than its deferral timeout")
    method = task.resume_method(resume.method_name)
    return functools.partial(method, event=event.get("payload"), **resume.kwargs)


async def execute_task(
    task: BaseOperator,
    context: dict[str, Any],
    limiter: anyio.CapacityLimiter | None,
    call: Callable[[dict[str, Any]], Any] | None = None,
) -> Any:
    """Call `task.execute` (or `call`, a deferred task's resume method): on the loop if it
    is async, else in a worker thread that a timeout abandons (the thread keeps running
    detached; its slot is freed at once)."""
    if call is None:
        call, on_loop = task.execute, task.execute_on_loop()
    else:
        on_loop = inspect.iscoroutinefunction(call) or is_loop_safe(call)
    if task.run_in == "thread" or (task.run_in != "loop" and not on_loop):
        value = await anyio.to_thread.run_sync(
            _call_sync, call, context, abandon_on_cancel=True, limiter=limiter
        )
    else:
        value = call(context)
    if inspect.isawaitable(value):
        value = await value
    return value


def _call_sync(fn: Callable[[dict[str, Any]], Any], context: dict[str, Any]) -> Any:
    value = fn(context)
    if inspect.isawaitable(value):
        # An async callable under run_in="thread": give it its own loop in this thread.
        import asyncio

        async def wait() -> Any:
            return await value

        return asyncio.run(wait())
    return value


async def call_callback(
    cb: Callable[[dict[str, Any]], Any],
    context: dict[str, Any],
    limiter: anyio.CapacityLimiter | None = None,
) -> None:
    if inspect.iscoroutinefunction(cb) or inspect.iscoroutinefunction(
        inspect.getattr_static(type(cb), "__call__", None)  # a notifier: `async __call__`
    ):
        await cb(context)
    else:
        result = await anyio.to_thread.run_sync(cb, context, limiter=limiter)
        if inspect.isawaitable(result):
            await result


async def _run_callbacks(
    task: BaseOperator,
    result: TryResult,
    context: dict[str, Any],
    task_log: logs.TaskLog,
    job: TryJob,
) -> None:
    if result.state is TaskState.SUCCESS:
        callbacks = task.on_success_callback
        outcome = TaskState.SUCCESS
    elif result.state is TaskState.FAILED:
        will_retry = result.retryable and job.try_number <= job.max_tries
        callbacks = task.on_retry_callback if will_retry else task.on_failure_callback
        outcome = TaskState.UP_FOR_RETRY if will_retry else TaskState.FAILED
        context = {**context, "exception": result.error}
    else:
        return
    if callbacks:
        context["ti"].state = outcome.value  # what the callback (a notifier) reports
    for cb in callbacks:
        try:
            await call_callback(cb, context, job.thread_limiter)
        except Exception as exc:  # noqa: BLE001 - a callback never changes the task's state
            task_log.exception(exc, f"callback {getattr(cb, '__name__', cb)!r} failed")
