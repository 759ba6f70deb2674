"""The REST API, version 1: DAGs, runs, task instances, logs, XComs, import errors,
triggers and health, under /api/v1 (see aflow.api.registry for how a route is served
and documented)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Any

import anyio
from aiohttp import web

from aflow import __version__
from aflow.api import models as m
from aflow.api.errors import ApiError, not_found
from aflow.api.metrics import METRICS
from aflow.api.registry import Registry, parse_json, read_body
from aflow.authoring.webhooks import WebhookSecretMissing
from aflow.exceptions import AflowError, RunAlreadyExists, StoreError
from aflow.orchestrator import Orchestrator
from aflow.runtime.logs import log_path, read_log
from aflow.runtime.pools import check_pool
from aflow.runtime.run_factory import with_unstarted
from aflow.runtime.stats import pool_uses, trigger_counts
from aflow.secrets import Connection, connection_to_record, is_sensitive_key, mask_value
from aflow.secrets.variable import check_key
from aflow.states import RunType
from aflow.store.records import DagRecord, DagRunRecord, TaskInstanceRecord, VariableRecord

api = Registry("/api/v1", title="aflow REST API", version=__version__)
ORCHESTRATOR = web.AppKey("aflow_orchestrator", Orchestrator)

ALL_DAGS = "~"  # as in Airflow: /dags/~/runs lists the runs of every DAG
LOG_CHUNK_BYTES = 1024 * 1024
HEALTH_TIMEOUT_S = 5.0
IDEMPOTENCY_HEADER = "Idempotency-Key"


def orchestrator(request: web.Request) -> Orchestrator:
    return request.app[ORCHESTRATOR]


# -- conversions ------------------------------------------------------------------------------
def dag_out(d: DagRecord) -> m.Dag:
    s = d.structure
    return m.Dag(
        dag_id=d.dag_id,
        description=s.get("description"),
        fileloc=d.fileloc,
        schedule=s.get("schedule"),
        tags=list(s.get("tags") or []),
        is_paused=d.is_paused,
        is_active=d.is_active,
        max_active_runs=s.get("max_active_runs"),
        max_active_tasks=s.get("max_active_tasks"),
        last_parsed=d.updated_at,
    )


def run_out(r: DagRunRecord) -> m.DagRun:
    return m.DagRun(
        dag_id=r.dag_id,
        dag_run_id=r.run_id,
        run_type=r.run_type,
        state=r.state,
        logical_date=r.logical_date,
        data_interval_start=r.data_interval_start,
        data_interval_end=r.data_interval_end,
        conf=r.conf,
        queued_at=r.created_at,
        start_date=r.start_date,
        end_date=r.end_date,
        triggered_by=r.triggered_by,
        note=r.note,
    )


def ti_out(t: TaskInstanceRecord) -> m.TaskInstance:
    return m.TaskInstance(
        dag_id=t.dag_id,
        dag_run_id=t.run_id,
        task_id=t.task_id,
        map_index=t.map_index,
        state=t.state,
        try_number=t.try_number,
        max_tries=t.max_tries,
        start_date=t.start_date,
        end_date=t.end_date,
        duration=t.duration_s,
        hostname=t.hostname,
        operator=t.operator,
        pool=t.pool,
        priority_weight=t.priority_weight,
        error=t.error,
    )


# -- lookups that answer 404 -----------------------------------------------------------------
async def dag_record(request: web.Request, dag_id: str) -> DagRecord:
    record = await orchestrator(request).store.get_dag(dag_id)
    if record is None:
        raise not_found(f"no DAG {dag_id!r}")
    return record


async def run_record(request: web.Request, dag_id: str, run_id: str) -> DagRunRecord:
    record = await orchestrator(request).store.get_run(dag_id, run_id)
    if record is None:
        raise not_found(f"DAG {dag_id!r} has no run {run_id!r}")
    return record


async def run_tis(request: web.Request, dag_id: str, run_id: str) -> list[TaskInstanceRecord]:
    """Every task's instance in the run, those not yet decided in state `none`."""
    o = orchestrator(request)
    rows = await o.store.get_tis(dag_id, run_id)
    loaded = o.dagbag.dags.get(dag_id)
    if loaded is not None:
        task_ids = loaded.task_ids
    else:
        record = await o.store.get_dag(dag_id)
        task_ids = [t["task_id"] for t in record.structure.get("tasks", [])] if record else []
    order = {t: i for i, t in enumerate(task_ids)}
    tis = with_unstarted(dag_id, run_id, task_ids, rows)
    return sorted(tis, key=lambda t: (order.get(t.task_id, len(order)), t.task_id, t.map_index))


async def task_instance(
    request: web.Request, dag_id: str, run_id: str, task_id: str, map_index: int = -1
) -> TaskInstanceRecord:
    await run_record(request, dag_id, run_id)
    for t in await run_tis(request, dag_id, run_id):
        if t.task_id == task_id and t.map_index == map_index:
            return t
    which = f" with map index {map_index}" if map_index >= 0 else ""
    raise not_found(f"run {run_id!r} of DAG {dag_id!r} has no task {task_id!r}{which}")


def int_param(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ApiError(422, "validation_error", f"{name} must be an integer",
                       [{"loc": f"path.{name}", "message": f"not an integer: {text!r}"}]) from None


# -- health ---------------------------------------------------------------------------------
@api.route("GET", "/health", summary="Whether the store is reachable and the scheduler and "
           "triggerer heartbeat (503 when the store is not reachable)", tag="health",
           response=m.Health, same_body=(503,), public=True)
async def get_health(request: web.Request) -> web.StreamResponse:
    o = orchestrator(request)
    now = o.clock.now()
    store = m.ComponentHealth(status="healthy")
    processes: list[Any] = []
    try:
        with anyio.fail_after(HEALTH_TIMEOUT_S):
            await o.store.schema_version()
            processes = await o.store.list_processes()
    except (StoreError, TimeoutError) as exc:
        store = m.ComponentHealth(status="unhealthy", detail=str(exc) or "timed out")

    def component(kind: str) -> m.ComponentHealth:
        beats = [p.heartbeat_at for p in processes if p.kind == kind]
        if store.status != "healthy":
            return m.ComponentHealth(status="unknown", detail="the store is not reachable")
        if not beats:
            return m.ComponentHealth(status="unhealthy", detail=f"no {kind} is running")
        latest = max(beats)
        fresh = (now - latest).total_seconds() <= o.lease_s
        return m.ComponentHealth(status="healthy" if fresh else "unhealthy", latest_heartbeat=latest,
                                 detail=None if fresh else f"no heartbeat for over {o.lease_s:g}s")

    health = m.Health(
        status=store.status,
        store=store,
        scheduler=component("scheduler"),
        triggerer=component("triggerer"),
    )
    return web.Response(text=health.model_dump_json(), content_type="application/json",
                        status=200 if store.status == "healthy" else 503)


@api.route("GET", "/openapi.json", summary="This API's OpenAPI document", tag="meta",
           public=True)
async def get_openapi(request: web.Request) -> dict[str, Any]:
    return api.openapi()


# -- DAGs -------------------------------------------------------------------------------------
@api.route("GET", "/dags", summary="List DAGs", tag="dags", query=m.DagQuery,
           response=m.DagCollection)
async def list_dags(request: web.Request, query: m.DagQuery) -> m.DagCollection:
    dags = await orchestrator(request).store.list_dags()
    picked = [
        d for d in dags
        if (d.is_active or not query.only_active)
        and (query.paused is None or d.is_paused == query.paused)
        and (query.dag_id_pattern is None or query.dag_id_pattern in d.dag_id)
        and (not query.tags or set(query.tags) & set(d.structure.get("tags") or []))
    ]
    page = picked[query.offset: query.offset + query.limit]
    return m.DagCollection(dags=[dag_out(d) for d in page], total_entries=len(picked))


@api.route("GET", "/dags/{dag_id}", summary="One DAG, with its params and task structure",
           tag="dags", response=m.DagDetail)
async def get_dag(request: web.Request, dag_id: str) -> m.DagDetail:
    d = await dag_record(request, dag_id)
    s = d.structure
    return m.DagDetail(
        **dag_out(d).model_dump(),
        params=s.get("params") or {},
        tasks=[m.TaskNode.model_validate(t) for t in s.get("tasks", [])],
    )


@api.route("PATCH", "/dags/{dag_id}", summary="Pause or unpause a DAG", tag="dags",
           body=m.DagPatch, response=m.Dag)
async def patch_dag(request: web.Request, dag_id: str, body: m.DagPatch) -> m.Dag:
    o = orchestrator(request)
    await dag_record(request, dag_id)
    await o.store.set_dag_paused(dag_id, body.is_paused)
    return dag_out(await dag_record(request, dag_id))


# -- runs -------------------------------------------------------------------------------------
@api.route("GET", "/dags/{dag_id}/runs", summary="List a DAG's runs, newest logical date "
           "first (`~` as the DAG id: every DAG's)", tag="runs", query=m.RunQuery,
           response=m.DagRunCollection)
async def list_runs(request: web.Request, dag_id: str, query: m.RunQuery) -> m.DagRunCollection:
    if dag_id != ALL_DAGS:
        await dag_record(request, dag_id)
    store = orchestrator(request).store
    which = None if dag_id == ALL_DAGS else dag_id
    runs = await store.list_runs(which, states=query.state, limit=query.limit,
                                 offset=query.offset, logical_date=query.logical_date)
    total = await store.count_runs(which, states=query.state, logical_date=query.logical_date)
    return m.DagRunCollection(dag_runs=[run_out(r) for r in runs], total_entries=total)


@api.route("POST", "/dags/{dag_id}/runs", summary="Trigger a run (committed before the "
           "answer). With an Idempotency-Key, a retried request answers the run the first "
           "one created (200) instead of creating another", tag="runs", body=m.DagRunCreate,
           response=m.DagRun, status=201,
           headers=((IDEMPOTENCY_HEADER, "makes retries safe: one run per key and DAG"),),
           also=((409, "the run id is taken, or the DAG is not loaded by this server"),))
async def create_run(request: web.Request, dag_id: str, body: m.DagRunCreate) -> web.StreamResponse:
    o = orchestrator(request)
    if dag_id not in o.dagbag.dags:
        await dag_record(request, dag_id)  # 404 when no one knows it
        raise ApiError(409, "dag_not_loaded",
                       f"DAG {dag_id!r} is not loaded by this server (is its file failing to import?)")
    key = request.headers.get(IDEMPOTENCY_HEADER)
    run_id = body.dag_run_id
    if key is not None and run_id is None:
        digest = hashlib.sha256(f"{dag_id}\0{key}".encode()).hexdigest()[:32]
        run_id = f"manual__key_{digest}"
    try:
        handle = await o.trigger(dag_id, body.conf, run_id=run_id,
                                 logical_date=body.logical_date, triggered_by="api")
    except RunAlreadyExists:
        if key is None or run_id is None:
            raise
        existing = await run_record(request, dag_id, run_id)
        if existing.conf != body.conf:
            raise ApiError(422, "idempotency_key_reused",
                           f"{IDEMPOTENCY_HEADER} {key!r} was used for a run with another conf") from None
        return _json(run_out(existing), 200)
    return _json(run_out(handle.record), 201)


def _json(model: m.BaseModel, status: int) -> web.Response:
    return web.Response(text=model.model_dump_json(by_alias=True), status=status, content_type="application/json")


@api.route("GET", "/dags/{dag_id}/runs/{dag_run_id}", summary="One run", tag="runs",
           response=m.DagRun)
async def get_run(request: web.Request, dag_id: str, dag_run_id: str) -> m.DagRun:
    return run_out(await run_record(request, dag_id, dag_run_id))


# -- task instances ---------------------------------------------------------------------------
@api.route("GET", "/dags/{dag_id}/runs/{dag_run_id}/taskInstances",
           summary="Every task instance of a run (not yet decided ones in state none)",
           tag="task instances", response=m.TaskInstanceCollection)
async def list_task_instances(
    request: web.Request, dag_id: str, dag_run_id: str
) -> m.TaskInstanceCollection:
    await run_record(request, dag_id, dag_run_id)
    tis = await run_tis(request, dag_id, dag_run_id)
    return m.TaskInstanceCollection(task_instances=[ti_out(t) for t in tis],
                                    total_entries=len(tis))


@api.route("GET", "/dags/{dag_id}/runs/{dag_run_id}/taskInstances/{task_id}",
           summary="One task instance", tag="task instances", query=m.InstanceQuery,
           response=m.TaskInstance)
async def get_task_instance(
    request: web.Request, dag_id: str, dag_run_id: str, task_id: str, query: m.InstanceQuery,
) -> m.TaskInstance:
    return ti_out(await task_instance(request, dag_id, dag_run_id, task_id, query.map_index))


@api.route("GET", "/dags/{dag_id}/runs/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
           summary="A try's log from a byte offset (tail a running try by asking again "
           "from next_offset)", tag="task instances", query=m.LogQuery, response=m.LogChunk)
async def get_log(
    request: web.Request, dag_id: str, dag_run_id: str, task_id: str, try_number: str,
    query: m.LogQuery,
) -> m.LogChunk:
    number = int_param("try_number", try_number)
    ti = await task_instance(request, dag_id, dag_run_id, task_id, query.map_index)
    if not 1 <= number <= ti.try_number:
        raise not_found(f"task {task_id!r} of run {dag_run_id!r} has no try {number} "
                        f"(tries so far: {ti.try_number})")
    path = log_path(orchestrator(request).log_dir, dag_id, dag_run_id, task_id, number,
                    query.map_index)
    text, next_offset = await anyio.to_thread.run_sync(read_log, path, query.offset,
                                                        LOG_CHUNK_BYTES)
    return m.LogChunk(try_number=number, content=text, offset=query.offset,
                      next_offset=next_offset)


@api.route("GET", "/dags/{dag_id}/runs/{dag_run_id}/taskInstances/{task_id}/xcomEntries",
           summary="A task instance's XComs", tag="task instances", query=m.InstanceQuery,
           response=m.XComCollection)
async def list_xcoms(
    request: web.Request, dag_id: str, dag_run_id: str, task_id: str, query: m.InstanceQuery,
) -> m.XComCollection:
    await task_instance(request, dag_id, dag_run_id, task_id, query.map_index)
    xcoms = await orchestrator(request).store.get_xcoms(dag_id, dag_run_id, task_id)
    return m.XComCollection(xcom_entries=[
        m.XComEntry(task_id=x.task_id, map_index=x.map_index, key=x.key,
                    value=mask_value(x.value))  # (secrets this server has seen: ***)
        for x in xcoms if x.map_index == query.map_index
    ])


# -- import errors, triggers ---------------------------------------------------------------------
@api.route("GET", "/importErrors", summary="DAG files that failed to import, and why",
           tag="dags", response=m.ImportErrorCollection)
async def list_import_errors(request: web.Request) -> m.ImportErrorCollection:
    errors = await orchestrator(request).store.list_import_errors()
    return m.ImportErrorCollection(import_errors=[
        m.ImportErrorEntry(filename=e.filename, stack_trace=e.message, timestamp=e.created_at)
        for e in errors
    ])


@api.route("GET", "/triggers", summary="Parked triggers by type: how many wait, how many "
           "fired, the oldest wait", tag="triggers", response=m.TriggerCollection)
async def list_triggers(request: web.Request) -> m.TriggerCollection:
    o = orchestrator(request)
    rows = [m.TriggerCount.model_validate(c, from_attributes=True)
            for c in trigger_counts(await o.store.list_triggers(), o.clock.now())]
    return m.TriggerCollection(triggers=rows, total_waiting=sum(r.waiting for r in rows))


# -- webhooks ---------------------------------------------------------------------------------
@api.route("POST", "/webhooks/{name}", summary="A DAG's named webhook: the raw body must be "
           "signed with its secret (X-Hub-Signature-256: sha256=<HMAC-SHA256 hex>). Creates a "
           "run (201; a redelivery of the same delivery id answers that run, 200) or delivers "
           "the payload to WebhookSensors (202). Needs no other credentials.", tag="webhooks",
           response=m.WebhookResult, status=201, raw_body=True, public=True,
           headers=(("X-Hub-Signature-256", "sha256=<hex HMAC-SHA256 of the raw body>"),
                    ("X-GitHub-Delivery", "a delivery id: redeliveries create no second run")),
           also=((202, "delivered to the WebhookSensors waiting on its key"),
                 (401, "missing or wrong signature; nothing changed"),
                 (409, "several loaded DAGs define this webhook name")))
async def post_webhook(request: web.Request, name: str) -> web.StreamResponse:
    arrived = time.monotonic()
    o = orchestrator(request)
    found = [(d, w) for d in o.dagbag.dags.values() for w in d.webhooks if w.name == name]
    if not found:
        raise not_found(f"no webhook {name!r} (no loaded DAG defines it)")
    if len(found) > 1:
        owners = ", ".join(sorted(d.dag_id for d, _ in found))
        raise ApiError(409, "webhook_ambiguous", f"webhook {name!r} is defined by several DAGs: {owners}")
    dag, hook = found[0]
    raw = await read_body(request)
    try:
        signed = hook.signature_ok(raw, request.headers.get(hook.signature_header))
    except WebhookSecretMissing as exc:
        raise ApiError(503, "webhook_not_configured", str(exc)) from None
    if not signed:
        raise ApiError(401, "bad_signature", f"the {hook.signature_header} header does not sign "
                       f"this body with webhook {name!r}'s secret; nothing was done")
    payload = parse_json(raw)
    if hook.deliver_to is not None:
        key = _mapped(name, "deliver_to", hook.deliver_to, payload, request)
        if not isinstance(key, str) or not key:
            raise ApiError(422, "webhook_mapping_failed",
                           f"webhook {name!r}: deliver_to gave {key!r}, not a non-empty key")
        event_id = await o.deliver_webhook(key, payload)
        return _json(m.WebhookResult(action="delivered", dag_id=dag.dag_id, key=key,
                                     event_id=event_id), 202)
    conf = _mapped(name, "conf", hook.conf, payload, request) if hook.conf else {"payload": payload}
    if not isinstance(conf, dict):
        raise ApiError(422, "webhook_mapping_failed",
                       f"webhook {name!r}: conf gave a {type(conf).__name__}, not a dict")
    delivery = request.headers.get(hook.delivery_id_header) if hook.delivery_id_header else None
    # the run id is known before the run exists, so its first try is seen whenever it starts
    key = delivery or uuid.uuid4().hex
    run_id = "webhook__" + hashlib.sha256(f"{name}\0{key}".encode()).hexdigest()[:32]
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.webhook_run_created(dag.dag_id, run_id, arrived)
    try:
        handle = await o.trigger(dag.dag_id, conf, run_id=run_id, run_type=RunType.WEBHOOK,
                                 triggered_by=f"webhook {name}")
    except RunAlreadyExists:
        if metrics is not None:
            metrics.webhook_run_forgotten(dag.dag_id, run_id)
        if not delivery:
            raise
        existing = await run_record(request, dag.dag_id, run_id)
        return _json(m.WebhookResult(action="triggered", dag_id=dag.dag_id,
                                     dag_run_id=existing.run_id), 200)
    except BaseException:
        if metrics is not None:
            metrics.webhook_run_forgotten(dag.dag_id, run_id)
        raise
    return _json(m.WebhookResult(action="triggered", dag_id=dag.dag_id,
                                 dag_run_id=handle.run_id), 201)


def _mapped(name: str, what: str, mapper: Any, payload: Any, request: web.Request) -> Any:
    """Call a webhook's mapping (a plain value is returned as it is); its error is a 422."""
    if not callable(mapper):
        return mapper
    try:
        return mapper(payload, request.headers)
    except Exception as exc:  # noqa: BLE001 - user code, reported to the sender
        raise ApiError(422, "webhook_mapping_failed",
                       f"webhook {name!r}: its {what} mapping failed on this payload: "
                       f"{type(exc).__name__}: {exc}") from None


# -- changes by hand ----------------------------------------------------------------------------
BUSY = (409, "the run or task instance cannot be changed now (running, or driven by a "
             "process that cannot take the change)")


@api.route("POST", "/dags/{dag_id}/clearTaskInstances", summary="Make task instances of a "
           "run run again (as Airflow's clear): the chosen tasks, with their downstream and/or "
           "upstream if asked, or only the failed ones; dry_run says what would be cleared",
           tag="task instances", body=m.ClearRequest, response=m.ClearResult, also=(BUSY,))
async def clear_task_instances(request: web.Request, dag_id: str, body: m.ClearRequest) -> m.ClearResult:
    o = orchestrator(request)
    await run_record(request, dag_id, body.dag_run_id)
    kwargs: dict[str, Any] = {"downstream": body.include_downstream,
                              "upstream": body.include_upstream, "only_failed": body.only_failed}
    if body.dry_run:
        tis = await o.tasks_to_clear(dag_id, body.dag_run_id, body.task_ids, **kwargs)
        return m.ClearResult(task_ids=[t.task_id for t in tis], dry_run=True)
    cleared = await o.clear_tasks(dag_id, body.dag_run_id, body.task_ids, **kwargs)
    return m.ClearResult(task_ids=cleared, dry_run=False)


@api.route("PATCH", "/dags/{dag_id}/runs/{dag_run_id}", summary="Mark a run success or "
           "failed by hand", tag="runs", body=m.RunStatePatch, response=m.DagRun, also=(BUSY,))
async def mark_run(request: web.Request, dag_id: str, dag_run_id: str,
                   body: m.RunStatePatch) -> m.DagRun:
    await run_record(request, dag_id, dag_run_id)
    return run_out(await orchestrator(request).mark_run(dag_id, dag_run_id, body.state))


@api.route("PATCH", "/dags/{dag_id}/runs/{dag_run_id}/taskInstances/{task_id}",
           summary="Mark an ended task instance success or failed by hand; its failed "
           "downstream is cleared to be decided again", tag="task instances",
           body=m.TaskStatePatch, response=m.MarkResult, also=(BUSY,))
async def mark_task_instance(request: web.Request, dag_id: str, dag_run_id: str, task_id: str,
                             body: m.TaskStatePatch) -> m.MarkResult:
    await task_instance(request, dag_id, dag_run_id, task_id, body.map_index)
    changed = await orchestrator(request).mark_task(dag_id, dag_run_id, task_id, body.new_state,
                                                    map_index=body.map_index)
    return m.MarkResult(task_ids=changed)


@api.route("GET", "/dags/{dag_id}/runs/{dag_run_id}/taskInstances/{task_id}/tries",
           summary="A task instance's tries (those of runs before a clear too), each with "
           "the size of its log", tag="task instances", query=m.InstanceQuery,
           response=m.TryCollection)
async def list_tries(request: web.Request, dag_id: str, dag_run_id: str,
                     task_id: str, query: m.InstanceQuery) -> m.TryCollection:
    ti = await task_instance(request, dag_id, dag_run_id, task_id, query.map_index)
    base = orchestrator(request).log_dir

    def sizes() -> list[m.TryEntry]:
        out = []
        for n in range(1, ti.try_number + 1):
            path = log_path(base, dag_id, dag_run_id, task_id, n, ti.map_index)
            size = os.path.getsize(path) if os.path.exists(path) else 0
            out.append(m.TryEntry(try_number=n, log_size=size))
        return out

    return m.TryCollection(tries=await anyio.to_thread.run_sync(sizes))


# -- pools -----------------------------------------------------------------------------------------
async def pools_with_usage(request: web.Request) -> list[m.Pool]:
    return [m.Pool.model_validate(p, from_attributes=True)
            for p in await pool_uses(orchestrator(request).store)]


@api.route("GET", "/pools", summary="Pools, with the task instances in each", tag="pools",
           response=m.PoolCollection)
async def list_pools(request: web.Request) -> m.PoolCollection:
    return m.PoolCollection(pools=await pools_with_usage(request))


@api.route("GET", "/pools/{name}", summary="One pool", tag="pools", response=m.Pool)
async def get_pool(request: web.Request, name: str) -> m.Pool:
    for pool in await pools_with_usage(request):
        if pool.name == name:
            return pool
    raise not_found(f"no pool {name!r}")


@api.route("PUT", "/pools/{name}", summary="Create or replace a pool (running schedulers "
           "apply it live)", tag="pools", body=m.PoolPut, response=m.Pool)
async def put_pool(request: web.Request, name: str, body: m.PoolPut) -> m.Pool:
    try:
        pool = check_pool(name, body.slots, body.description, body.include_deferred)
    except AflowError as exc:
        raise ApiError(422, "validation_error", str(exc)) from None
    await orchestrator(request).store.set_pool(pool)
    return await get_pool(request, name)


@api.route("DELETE", "/pools/{name}", summary="Delete a pool (not default_pool, nor one "
           "with task instances in it)", tag="pools", status=204,
           also=((409, "default_pool, or task instances are in the pool"),))
async def delete_pool(request: web.Request, name: str) -> web.StreamResponse:
    await orchestrator(request).store.delete_pool(name)
    return web.Response(status=204)


# -- variables and connections (secrets never go out) --------------------------------------------
def variable_out(record: Any) -> m.VariableOut:
    value = "***" if is_sensitive_key(record.key) else record.value
    return m.VariableOut(key=record.key, value=value, description=record.description)


def connection_out(record: Any) -> m.ConnectionOut:
    return m.ConnectionOut(
        conn_id=record.conn_id, conn_type=record.conn_type, host=record.host, port=record.port,
        login=record.login, schema=record.schema,
        password="***" if record.password_enc is not None else None,
        has_extra=record.extra_enc is not None, description=record.description,
    )


@api.route("GET", "/variables", summary="Variables in the store (secret-looking values as "
           "***; AFLOW_VAR_ environment variables are not listed)", tag="variables",
           response=m.VariableCollection)
async def list_variables(request: web.Request) -> m.VariableCollection:
    records = await orchestrator(request).store.list_variables()
    return m.VariableCollection(variables=[variable_out(r) for r in records])


@api.route("GET", "/variables/{key}", summary="One stored variable", tag="variables",
           response=m.VariableOut)
async def get_variable(request: web.Request, key: str) -> m.VariableOut:
    record = await orchestrator(request).store.get_variable(key)
    if record is None:
        raise not_found(f"no variable {key!r} in the store")
    return variable_out(record)


@api.route("PUT", "/variables/{key}", summary="Create or replace a variable", tag="variables",
           body=m.VariablePut, response=m.VariableOut)
async def put_variable(request: web.Request, key: str, body: m.VariablePut) -> m.VariableOut:
    record = VariableRecord(check_key(key), body.value, body.description)
    await orchestrator(request).store.set_variables([record])
    return variable_out(record)


@api.route("DELETE", "/variables/{key}", summary="Delete a variable", tag="variables",
           status=204)
async def delete_variable(request: web.Request, key: str) -> web.StreamResponse:
    if not await orchestrator(request).store.delete_variable(key):
        raise not_found(f"no variable {key!r} in the store")
    return web.Response(status=204)


@api.route("GET", "/connections", summary="Connections in the store, never their secrets",
           tag="connections", response=m.ConnectionCollection)
async def list_connections(request: web.Request) -> m.ConnectionCollection:
    records = await orchestrator(request).store.list_connections()
    return m.ConnectionCollection(connections=[connection_out(r) for r in records])


@api.route("GET", "/connections/{conn_id}", summary="One stored connection, never its secrets",
           tag="connections", response=m.ConnectionOut)
async def get_connection(request: web.Request, conn_id: str) -> m.ConnectionOut:
    record = await orchestrator(request).store.get_connection(conn_id)
    if record is None:
        raise not_found(f"no connection {conn_id!r} in the store")
    return connection_out(record)


@api.route("PUT", "/connections/{conn_id}", summary="Create or replace a connection (its "
           "password and extra are encrypted with core.fernet_key)", tag="connections",
           body=m.ConnectionPut, response=m.ConnectionOut)
async def put_connection(request: web.Request, conn_id: str, body: m.ConnectionPut) -> m.ConnectionOut:
    conn = Connection(conn_id=conn_id, conn_type=body.conn_type, host=body.host, port=body.port,
                      login=body.login, password=body.password, schema=body.schema_,
                      extra=body.extra, description=body.description)
    record = connection_to_record(conn, secrets_settings().fernet_key)
    await orchestrator(request).store.set_connection(record)
    return connection_out(record)


@api.route("DELETE", "/connections/{conn_id}", summary="Delete a connection",
           tag="connections", status=204)
async def delete_connection(request: web.Request, conn_id: str) -> web.StreamResponse:
    if not await orchestrator(request).store.delete_connection(conn_id):
        raise not_found(f"no connection {conn_id!r} in the store")
    return web.Response(status=204)


def secrets_settings() -> Any:
    from aflow.secrets import backends

    return backends.settings
