"""The web application: the REST API (and, later, the UI) on one aiohttp app, served
from an Orchestrator's event loop.

    async with Orchestrator("dags/") as o, serve_api(o, port=8080) as url:
        ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from aflow.api import deadlines as _deadlines  # noqa: F401 - registers its route on v1
from aflow.api import v1
from aflow.api.auth import auth_middleware
from aflow.api.errors import error_middleware
from aflow.api.metrics import METRICS, Metrics, metrics_page, watch_loop_lag
from aflow.api.registry import MAX_BODY_BYTES
from aflow.orchestrator import Orchestrator

LISTEN_BACKLOG = 4096  # a burst of webhooks connects at once; 128 would drop SYNs


def create_app(orchestrator: Orchestrator) -> web.Application:
    """The REST API under /api/v1 and the web UI's pages, on one application."""
    from aflow.web.pages import add_pages

    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[v1.ORCHESTRATOR] = orchestrator
    app[METRICS] = Metrics(orchestrator)
    app.cleanup_ctx.append(watch_loop_lag)
    app.router.add_get("/metrics", metrics_page)
    v1.api.add_to(app)
    add_pages(app)
    app.middlewares.append(auth_middleware(  # innermost: its errors get the outer handling
        lambda request: request.app[v1.ORCHESTRATOR].store,
        lambda request: request.app[v1.ORCHESTRATOR].clock.now(),
        frozenset(v1.api.prefix + r.path for r in v1.api.routes if r.public),
    ))
    return app


@asynccontextmanager
async def serve_api(
    orchestrator: Orchestrator, *, host: str = "127.0.0.1", port: int = 0,
    app: web.Application | None = None,
) -> AsyncIterator[str]:
    """Serve the app (`create_app(orchestrator)` unless given) on `host:port` (0: any
    free port) until left; yields its base URL."""
    app = app if app is not None else create_app(orchestrator)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
        await site.start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound}"  # (no task group around the caller's block)
    finally:
        await runner.cleanup()
