"""The API's errors: one JSON shape, stable codes, never a bare 500 for bad input.

    {"error": {"code": "validation_error", "message": "...", "details": [...]}}

`code` is stable (clients branch on it); `message` is for people; `details` lists every
problem of a request body or query, each with the place (`loc`) it was found.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from aflow.exceptions import (
    ConnectionNotFound,
    DagNotFound,
    InvalidConfError,
    PoolError,
    PoolNotFound,
    RunAlreadyExists,
    RunBusy,
    RunNotFound,
    SecretsError,
    StoreError,
    TaskNotFound,
    VariableNotFound,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer: HTTP status, stable code, message, optional details."""

    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", what)


def error_response(error: ApiError) -> web.Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details:
        body["details"] = error.details
    return web.json_response({"error": body}, status=error.status)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def translate(exc: BaseException) -> ApiError | None:
    """The API error of an aflow exception raised below a handler, if it is one."""
    if isinstance(exc, InvalidConfError):
        details = [{"loc": "conf", "message": p} for p in exc.problems] or [
            {"loc": "conf", "message": str(exc)}
        ]
        return ApiError(422, "invalid_conf", str(exc), details)
    if isinstance(exc, DagNotFound | RunNotFound | TaskNotFound):
        return not_found(str(exc))
    if isinstance(exc, RunAlreadyExists):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, RunBusy):
        return ApiError(409, "run_busy", str(exc))
    if isinstance(exc, VariableNotFound | ConnectionNotFound):
        return not_found(str(exc))
    if isinstance(exc, SecretsError):
        return ApiError(422, "secrets_error", str(exc))
    if isinstance(exc, PoolNotFound):
        return not_found(str(exc))
    if isinstance(exc, PoolError):
        return ApiError(409, "pool_refused", str(exc))
    if isinstance(exc, StoreError):
        return ApiError(503, "store_unavailable", f"the store cannot be used now: {exc}")
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors for the API's paths (the UI's pages have their own, in HTML)."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 404 else f"no such route: {request.method} {request.path}"
        return error_response(ApiError(exc.status, code, message))
    except Exception as exc:  # noqa: BLE001 - the answer must stay JSON
        translated = translate(exc)
        if translated is not None:
            return error_response(translated)
        log.exception("internal error answering %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal_error", "internal error (see the server log)"))
