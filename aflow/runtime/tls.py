"""One default TLS context for the HTTP clients tasks and notifiers make.

Building one loads the CA bundle, 30–65 ms of blocking work: a new httpx client per
request would stall the event loop that long each time. It is built once, in a worker
thread, and shared (an SSLContext is safe to share between connections).
"""

from __future__ import annotations

import ssl

import anyio.to_thread

_context: ssl.SSLContext | None = None


async def client_ssl_context() -> ssl.SSLContext:
    """(Two first callers at once may both build one: the last one kept, no harm.)"""
    global _context
    if _context is None:
        _context = await anyio.to_thread.run_sync(ssl.create_default_context)
    return _context
