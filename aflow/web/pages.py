"""The web UI's pages: server-rendered (jinja2), live through server-sent events, and
loading nothing but this server's own CSS and script.

Pages: the DAG list (recent runs, schedule, next run, pause toggle, trigger), a DAG's
graph and grid, a run (task table and Gantt chart), a task instance (its tries' logs,
tailed live while it runs, and XComs), the trigger form built from the DAG's params,
import errors and parked triggers. Forms are protected from cross-site posts by a
double-submit token (a SameSite=Strict cookie that each form echoes).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from aflow.api.auth import (
    SESSION_COOKIE,
    SESSION_LIFETIME,
    principal_or_none,
    secret_hash,
    start_session,
    verify_password,
)
from aflow.api.deadlines import run_deadlines
from aflow.api.v1 import ORCHESTRATOR, run_tis
from aflow.exceptions import AflowError, InvalidConfError, RunAlreadyExists, StoreError
from aflow.orchestrator import Orchestrator
from aflow.runtime.stats import trigger_counts
from aflow.runtime.timetable import DagRunInfo, timetable_for
from aflow.secrets import mask_value
from aflow.states import DagRunState, RunType, TaskState, mapped_task_state
from aflow.store.records import DagRecord, DagRunRecord, TaskInstanceRecord
from aflow.web import graph
from aflow.web.rendered import rendered_fields
from aflow.web.states import RUN_COLOURS, TASK_COLOURS, stylesheet

DAGS_PER_PAGE = 50
RECENT_RUNS = 10  # dots per DAG on the list
GRID_RUNS = 25
MAX_INSTANCE_LINKS = 50  # a mapped task's page links this many of its instances
EVENT_POLL_S = 0.5  # how often a live page's stream looks at the store
EVENT_KEEPALIVE_S = 15.0
CSRF_COOKIE = "aflow_csrf"
CSRF_FIELD = "csrf_token"

_env = Environment(
    loader=PackageLoader("aflow.web", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["q"] = lambda s: quote(str(s), safe="")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


_env.filters["when"] = _when
_env.globals.update(task_colours=TASK_COLOURS, run_colours=RUN_COLOURS)

routes = web.RouteTableDef()


def _o(request: web.Request) -> Orchestrator:
    return request.app[ORCHESTRATOR]


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    html = _env.get_template(template).render(request=request, csrf_token=token,
                                              user=principal_or_none(request), **context)
    response = web.Response(text=html, status=status, content_type="text/html")
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", path="/")
    return response


class PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@web.middleware
async def page_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Errors of UI pages as an HTML page (the API answers JSON on its own paths)."""
    if request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except PageError as exc:
        return render(request, "error.html", status=exc.status, message=exc.message)
    except StoreError as exc:
        return render(request, "error.html", status=503,
                      message=f"The store cannot be used now: {exc}")
    except web.HTTPNotFound:
        return render(request, "error.html", status=404,
                      message=f"There is no page at {request.path}.")


async def check_csrf(request: web.Request) -> dict[str, str]:
    form = await request.post()
    cookie = request.cookies.get(CSRF_COOKIE)
    sent = form.get(CSRF_FIELD)
    if (not cookie or not isinstance(sent, str)
            or not secrets.compare_digest(cookie.encode(), sent.encode("utf-8", "replace"))):
        raise PageError(403, "This form was not sent from an aflow page (missing or wrong "
                             "CSRF token). Reload the page and try again.")
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def dag_or_404(request: web.Request, dag_id: str) -> DagRecord:
    record = await _o(request).store.get_dag(dag_id)
    if record is None:
        raise PageError(404, f"There is no DAG {dag_id!r}.")
    return record


async def run_or_404(request: web.Request, dag_id: str, run_id: str) -> DagRunRecord:
    run = await _o(request).store.get_run(dag_id, run_id)
    if run is None:
        raise PageError(404, f"DAG {dag_id!r} has no run {run_id!r}.")
    return run


async def next_run_of(o: Orchestrator, dag_id: str) -> datetime | None:
    """When the DAG's next scheduled run is due (known for DAGs loaded here)."""
    dag = o.dagbag.dags.get(dag_id)
    if dag is None or dag.schedule is None:
        return None
    timetable = timetable_for(dag)
    if timetable is None:
        return None
    latest = await o.store.latest_run(dag_id, RunType.SCHEDULED.value)
    last = None
    if latest is not None:
        last = DagRunInfo(
            logical_date=latest.logical_date,
            data_interval_start=latest.data_interval_start or latest.logical_date,
            data_interval_end=latest.data_interval_end or latest.logical_date,
            run_after=latest.data_interval_end or latest.logical_date,
        )
    info = timetable.next_run(last, now=o.clock.now(), catchup=dag.catchup)
    return info.run_after if info else None


# -- logging in and out ---------------------------------------------------------------------------
@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", next=local_path(request.query.get("next")), problem=None)


@routes.post("/login")
async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await check_csrf(request)
    o = _o(request)
    username = form.get("username", "").strip()
    user = await o.store.get_user(username) if username else None
    password = form.get("password", "")
    ok = user is not None and await anyio.to_thread.run_sync(
        verify_password, password, user.password_hash)
    if not ok or user is None:
        # the same answer for an unknown user and a wrong password
        return render(request, "login.html", status=401, next=local_path(form.get("next")),
                      problem="Wrong username or password.", username=username)
    sid = await start_session(o.store, user.username, o.clock.now())
    response = web.HTTPSeeOther(local_path(form.get("next")))
    response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Lax", path="/",
                        secure=request.secure, max_age=int(SESSION_LIFETIME.total_seconds()))
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    await check_csrf(request)
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        await _o(request).store.delete_web_session(secret_hash(sid))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


# -- pages ---------------------------------------------------------------------------------------
@routes.get("/")
async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dags")


@routes.get("/dags")
async def dags_page(request: web.Request) -> web.Response:
    o = _o(request)
    try:
        page = max(1, int(request.query.get("page", "1")))
    except ValueError:
        page = 1
    search = request.query.get("search", "").strip()
    dags = [d for d in await o.store.list_dags() if d.is_active and search in d.dag_id]
    total = len(dags)
    shown = dags[(page - 1) * DAGS_PER_PAGE: page * DAGS_PER_PAGE]
    rows = []
    for d in shown:
        recent = await o.store.list_runs(d.dag_id, limit=RECENT_RUNS)
        rows.append({
            "dag": d,
            "recent": list(reversed(recent)),
            "next_run": None if d.is_paused else await next_run_of(o, d.dag_id),
        })
    pages = max(1, (total + DAGS_PER_PAGE - 1) // DAGS_PER_PAGE)
    return render(request, "dags.html", rows=rows, page=page, pages=pages, total=total,
                  search=search)


@routes.post("/dags/{dag_id}/pause")
async def pause_dag(request: web.Request) -> web.StreamResponse:
    form = await check_csrf(request)
    dag_id = request.match_info["dag_id"]
    await dag_or_404(request, dag_id)
    await _o(request).store.set_dag_paused(dag_id, form.get("paused") == "true")
    raise web.HTTPSeeOther(local_path(form.get("next")))


def local_path(target: str | None) -> str:
    """A redirect target of this site only (a path), else the DAG list: a form's `next`
    never sends the browser elsewhere."""
    if (not target or not target.startswith("/") or target.startswith(("//", "/\\"))
            or any(c in target for c in "\r\n\\")):
        return "/dags"
    return target


def by_task(rows: Iterable[TaskInstanceRecord]) -> dict[str, TaskInstanceRecord]:
    """One record per task, as the grid and graph show it: an expanded mapped task as its
    first instance in the state of all of them (see `states.mapped_task_state`)."""
    out: dict[str, TaskInstanceRecord] = {}
    groups: dict[str, list[TaskInstanceRecord]] = {}
    for r in rows:
        if r.map_index < 0:
            out.setdefault(r.task_id, r)
        elif r.state is not TaskState.REMOVED:
            groups.setdefault(r.task_id, []).append(r)
    for task_id, group in groups.items():
        first = min(group, key=lambda r: r.map_index)
        out[task_id] = dataclasses.replace(first, state=mapped_task_state(r.state for r in group))
    return out


def task_states(rows: Iterable[TaskInstanceRecord]) -> dict[str, str]:
    return {t: r.state.value for t, r in by_task(rows).items()}


async def grid_data(o: Orchestrator, dag: DagRecord) -> dict[str, Any]:
    runs = list(reversed(await o.store.list_runs(dag.dag_id, limit=GRID_RUNS)))
    tasks = [t["task_id"] for t in dag.structure.get("tasks", [])]
    states: dict[str, dict[str, str]] = {}
    for run in runs:
        rows = await o.store.get_tis(dag.dag_id, run.run_id)
        states[run.run_id] = task_states(rows)
    return {"runs": runs, "tasks": tasks, "states": states}


@routes.get("/dags/{dag_id}")
async def dag_page(request: web.Request) -> web.Response:
    o = _o(request)
    dag = await dag_or_404(request, request.match_info["dag_id"])
    grid = await grid_data(o, dag)
    selected_id = request.query.get("run_id") or (grid["runs"][-1].run_id if grid["runs"] else None)
    selected = await o.store.get_run(dag.dag_id, selected_id) if selected_id else None
    tis = by_task(await run_tis(request, dag.dag_id, selected.run_id)) if selected else {}
    lay = graph.layout(dag.structure.get("tasks", []))
    return render(request, "dag.html", dag=dag, grid=grid, layout=lay, selected=selected,
                  tis=tis, loaded=dag.dag_id in o.dagbag.dags)


@routes.get("/dags/{dag_id}/grid")
async def grid_fragment(request: web.Request) -> web.Response:
    """The grid alone, for a live page to swap in when new runs appear."""
    o = _o(request)
    dag = await dag_or_404(request, request.match_info["dag_id"])
    html = _env.get_template("grid.html").render(dag=dag, grid=await grid_data(o, dag),
                                                 selected=None)
    return web.Response(text=html, content_type="text/html")


def gantt(tis: list[TaskInstanceRecord], now: datetime) -> dict[str, Any]:
    """Bars (percent of the run's span) for the tries that started."""
    started = [t for t in tis if t.start_date is not None]
    if not started:
        return {"bars": [], "start": None, "end": None, "span_s": 0.0}
    start = min(t.start_date for t in started if t.start_date)
    end = max((t.end_date or now) for t in started)
    span = max((end - start).total_seconds(), 1e-3)
    bars = []
    for t in started:
        assert t.start_date is not None
        left = (t.start_date - start).total_seconds() / span * 100
        width = max(((t.end_date or now) - t.start_date).total_seconds() / span * 100, 0.4)
        bars.append({"ti": t, "left": round(left, 3), "width": round(min(width, 100 - left), 3)})
    return {"bars": bars, "start": start, "end": end, "span_s": span}


@routes.get("/dags/{dag_id}/runs/{run_id}")
async def run_page(request: web.Request) -> web.Response:
    o = _o(request)
    dag = await dag_or_404(request, request.match_info["dag_id"])
    run = await run_or_404(request, dag.dag_id, request.match_info["run_id"])
    tis = await run_tis(request, dag.dag_id, run.run_id)
    return render(request, "run.html", dag=dag, run=run, tis=tis,
                  gantt=gantt(tis, o.clock.now()), deadlines=await run_deadlines(o, run))


@routes.get("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}")
async def task_page(request: web.Request) -> web.Response:
    o = _o(request)
    dag = await dag_or_404(request, request.match_info["dag_id"])
    run = await run_or_404(request, dag.dag_id, request.match_info["run_id"])
    task_id = request.match_info["task_id"]
    rows = [t for t in await run_tis(request, dag.dag_id, run.run_id) if t.task_id == task_id]
    mapped = sorted((t for t in rows if t.map_index >= 0 and t.state is not TaskState.REMOVED),
                    key=lambda t: t.map_index)
    try:
        wanted = int(request.query.get("map_index", mapped[0].map_index if mapped else -1))
    except ValueError:
        wanted = -1
    ti = next((t for t in rows if t.map_index == wanted), None)
    if ti is None:
        raise PageError(404, f"Run {run.run_id!r} of {dag.dag_id!r} has no task {task_id!r}"
                             + (f" with map index {wanted}." if wanted >= 0 else "."))
    instances = None
    if mapped:  # the counts by state, and links to the first and the unsuccessful ones
        counts: dict[str, int] = {}
        for t in mapped:
            counts[t.state.value] = counts.get(t.state.value, 0) + 1
        shown = [t for t in mapped if t.state is not TaskState.SUCCESS][:MAX_INSTANCE_LINKS]
        shown += mapped[: max(0, MAX_INSTANCE_LINKS - len(shown))]
        instances = {"total": len(mapped), "counts": counts,
                     "links": sorted({(t.map_index, t.state.value) for t in shown})}
    xcoms = await o.store.get_xcoms(dag.dag_id, run.run_id, task_id)
    try:
        shown_try = int(request.query.get("try", ti.try_number))
    except ValueError:
        shown_try = ti.try_number
    shown_try = min(max(shown_try, 1), max(ti.try_number, 1))
    fields, why_not = await rendered_fields(o, run, ti)
    xcoms = [x for x in xcoms if x.map_index == ti.map_index]
    return render(request, "task.html", dag=dag, run=run, ti=ti, xcoms=xcoms, instances=instances,
                  shown_try=shown_try, rendered=fields, rendered_problem=why_not,
                  xcom_json={x.key: json.dumps(mask_value(x.value), indent=2, default=str)
                             for x in xcoms})


@routes.get("/dags/{dag_id}/trigger")
async def trigger_form(request: web.Request) -> web.Response:
    dag = await dag_or_404(request, request.match_info["dag_id"])
    return render(request, "trigger.html", dag=dag, params=dag.structure.get("params") or {},
                  problems=[], values={})


def conf_from_form(params: dict[str, Any], form: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The run's conf from the form: each param's field parsed by its declared type."""
    conf: dict[str, Any] = {}
    problems: list[str] = []
    raw_json = form.get("conf_json", "").strip()
    if raw_json:
        try:
            extra = json.loads(raw_json)
        except json.JSONDecodeError as exc:
            problems.append(f"conf (JSON): not valid JSON: {exc}")
            extra = {}
        if not isinstance(extra, dict):
            problems.append("conf (JSON): must be a JSON object")
        else:
            conf.update(extra)
    for name, spec in params.items():
        field = f"param_{name}"
        if field not in form:
            continue
        text = form[field]
        types = spec.get("type") or []
        types = [types] if isinstance(types, str) else types
        if text == "" and "string" not in types:
            continue  # left empty: the default applies
        if types and types[0] in ("integer", "number", "boolean", "array", "object") or not types:
            try:
                conf[name] = json.loads(text)
            except json.JSONDecodeError:
                if types:
                    problems.append(f"{name}: {text!r} is not a valid {types[0]}")
                else:
                    conf[name] = text
        else:
            conf[name] = text
    return conf, problems


@routes.post("/dags/{dag_id}/trigger")
async def trigger_submit(request: web.Request) -> web.StreamResponse:
    form = await check_csrf(request)
    o = _o(request)
    dag = await dag_or_404(request, request.match_info["dag_id"])
    params = dag.structure.get("params") or {}
    conf, problems = conf_from_form(params, form)
    if not problems:
        if dag.dag_id not in o.dagbag.dags:
            problems = [f"DAG {dag.dag_id!r} is not loaded by this server."]
        else:
            try:
                handle = await o.trigger(dag.dag_id, conf, triggered_by="ui")
            except InvalidConfError as exc:
                problems = list(exc.problems)
            except (RunAlreadyExists, AflowError) as exc:
                problems = [str(exc)]
            else:
                raise web.HTTPSeeOther(
                    f"/dags/{quote(dag.dag_id, safe='')}?run_id={quote(handle.run_id, safe='')}"
                )
    return render(request, "trigger.html", status=422, dag=dag, params=params,
                  problems=problems, values=form)


# -- changes by hand (admin; the auth middleware refuses them to viewers) -------------------------
def _back_to(dag_id: str, run_id: str, task_id: str | None = None) -> str:
    base = f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
    return f"{base}/tasks/{quote(task_id, safe='')}" if task_id else base


async def _by_hand(change: Any) -> Any:
    """Run a change by hand; what refuses it is shown as the page's error."""
    try:
        return await change
    except AflowError as exc:
        raise PageError(409, str(exc)) from None


@routes.post("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/clear")
async def clear_task(request: web.Request) -> web.StreamResponse:
    form = await check_csrf(request)
    dag_id, run_id, task_id = (request.match_info[k] for k in ("dag_id", "run_id", "task_id"))
    await run_or_404(request, dag_id, run_id)
    await _by_hand(_o(request).clear_tasks(
        dag_id, run_id, [task_id], downstream=form.get("downstream") == "on"))
    raise web.HTTPSeeOther(_back_to(dag_id, run_id, task_id))


@routes.post("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/mark")
async def mark_task(request: web.Request) -> web.StreamResponse:
    form = await check_csrf(request)
    dag_id, run_id, task_id = (request.match_info[k] for k in ("dag_id", "run_id", "task_id"))
    await run_or_404(request, dag_id, run_id)
    await _by_hand(_o(request).mark_task(dag_id, run_id, task_id, form.get("state", "")))
    raise web.HTTPSeeOther(_back_to(dag_id, run_id, task_id))


@routes.post("/dags/{dag_id}/runs/{run_id}/mark")
async def mark_run(request: web.Request) -> web.StreamResponse:
    form = await check_csrf(request)
    dag_id, run_id = request.match_info["dag_id"], request.match_info["run_id"]
    await run_or_404(request, dag_id, run_id)
    await _by_hand(_o(request).mark_run(dag_id, run_id, form.get("state", "")))
    raise web.HTTPSeeOther(_back_to(dag_id, run_id))


@routes.get("/pools")
async def pools_page(request: web.Request) -> web.Response:
    from aflow.api.v1 import pools_with_usage

    return render(request, "pools.html", pools=await pools_with_usage(request))


@routes.get("/variables")
async def variables_page(request: web.Request) -> web.Response:
    from aflow.api.v1 import variable_out

    records = await _o(request).store.list_variables()
    return render(request, "variables.html", variables=[variable_out(r) for r in records])


@routes.get("/connections")
async def connections_page(request: web.Request) -> web.Response:
    from aflow.api.v1 import connection_out

    records = await _o(request).store.list_connections()
    return render(request, "connections.html", connections=[connection_out(r) for r in records])


@routes.get("/import-errors")
async def import_errors_page(request: web.Request) -> web.Response:
    return render(request, "import_errors.html", errors=await _o(request).store.list_import_errors())


@routes.get("/triggers")
async def triggers_page(request: web.Request) -> web.Response:
    o = _o(request)
    rows = trigger_counts(await o.store.list_triggers(), o.clock.now())
    return render(request, "triggers.html", rows=rows)


# -- live updates -------------------------------------------------------------------------------
async def _snapshot(o: Orchestrator, dag_id: str, run_ids: list[str]) -> dict[str, Any]:
    runs = await o.store.list_runs(dag_id, limit=GRID_RUNS)
    shown = {r.run_id: r for r in runs}
    for run_id in run_ids:
        if run_id not in shown:
            run = await o.store.get_run(dag_id, run_id)
            if run is not None:
                shown[run_id] = run
    tis: dict[str, dict[str, str]] = {}
    for run in shown.values():
        if run.state in (DagRunState.QUEUED, DagRunState.RUNNING) or run.run_id in run_ids:
            tis[run.run_id] = task_states(await o.store.get_tis(dag_id, run.run_id))
    return {
        "runs": {r.run_id: r.state.value for r in shown.values()},
        "tis": tis,
    }


@routes.get("/dags/{dag_id}/events")
async def dag_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the states of the DAG's recent runs and of the TIs of runs that
    are not finished (and of `run_id`), each time they change."""
    o = _o(request)
    dag = await dag_or_404(request, request.match_info["dag_id"])
    run_ids = [r for r in request.query.getall("run_id", []) if r]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    last = None
    quiet = 0.0
    stopping = request.app[STREAMS_STOP]
    request.app[OPEN_STREAMS].add(response)
    try:
        # until the browser goes or the server stops
        while not stopping.is_set() and not _gone(request):
            try:
                snap = await _snapshot(o, dag.dag_id, run_ids)
            except StoreError:
                snap = None  # an outage: keep the page's last states and try again
            if snap is not None and snap != last:
                await response.write(f"event: states\ndata: {json.dumps(snap)}\n\n".encode())
                last = snap
                quiet = 0.0
            elif quiet >= EVENT_KEEPALIVE_S:
                await response.write(b": keepalive\n\n")
                quiet = 0.0
            with anyio.move_on_after(EVENT_POLL_S):
                await stopping.wait()
            quiet += EVENT_POLL_S
    except ConnectionResetError:
        pass  # the browser went between our check and the write
    finally:
        request.app[OPEN_STREAMS].discard(response)
    return response


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


STREAMS_STOP = web.AppKey("aflow_streams_stop", anyio.Event)
OPEN_STREAMS = web.AppKey("aflow_open_streams", set)  # live streams now (for tests, stats)


async def _stop_streams(app: web.Application) -> None:
    app[STREAMS_STOP].set()


def add_pages(app: web.Application) -> None:
    app.middlewares.append(page_errors)
    app[STREAMS_STOP] = anyio.Event()
    app[OPEN_STREAMS] = set()
    app.on_shutdown.append(_stop_streams)
    app.router.add_routes(routes)
    static = Path(__file__).parent / "static"
    app.router.add_get("/static/states.css", _states_css)
    app.router.add_static("/static", static, append_version=True)


async def _states_css(request: web.Request) -> web.Response:
    return web.Response(text=stylesheet(), content_type="text/css",
                        headers={"Cache-Control": "max-age=3600"})
