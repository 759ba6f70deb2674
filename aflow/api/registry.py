"""Routes declared once, served and documented from the same declaration.

Each route names its handler, its query model, its body model and its answer model
(pydantic). The registry parses and validates what comes in (a malformed body is a 400,
a body or query that does not fit its model a 422 listing every problem), serializes
what goes out, and builds the OpenAPI document from the very same declarations, so the
document cannot drift from the implementation.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from aflow.api.errors import ApiError

MAX_BODY_BYTES = 1024 * 1024
_PATH_PARAM = re.compile(r"{(\w+)}")

HandlerFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # below the prefix, with {params}
    handler: HandlerFn
    operation_id: str
    summary: str
    tag: str
    query: type[BaseModel] | None
    body: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    content_type: str  # of a successful answer
    headers: tuple[tuple[str, str], ...]  # request headers it reads: (name, description)
    raw_body: bool  # the handler reads the body itself (a signed webhook's raw bytes)
    also: tuple[tuple[int, str], ...]  # other answers it gives: (status, description)
    same_body: tuple[int, ...]  # statuses (e.g. health's 503) whose body is `response`
    public: bool  # needs no credentials (health, the document, signed webhooks)


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def problems_of(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    """pydantic's errors as the API's details: where (dotted) and what."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        details.append({"loc": loc, "message": err["msg"]})
    return details


class Registry:
    def __init__(self, prefix: str, *, title: str, version: str) -> None:
        self.prefix = prefix
        self.title = title
        self.version = version
        self.routes: list[Route] = []
        self._doc: dict[str, Any] | None = None
        self._doc_routes = 0

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        query: type[BaseModel] | None = None,
        body: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        content_type: str = "application/json",
        headers: tuple[tuple[str, str], ...] = (),
        raw_body: bool = False,
        also: tuple[tuple[int, str], ...] = (),
        same_body: tuple[int, ...] = (),
        public: bool = False,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Declare a route. The handler is called as `handler(request, **path_params,
        query=..., body=...)` (the last two only when declared) and returns a model of
        `response` (serialized as JSON with `status`), or any aiohttp response."""

        def add(handler: HandlerFn) -> HandlerFn:
            self.routes.append(
                Route(method.upper(), path, handler, handler.__name__, summary, tag, query,
                      body, response, status, content_type, headers, raw_body, also, same_body,
                      public)
            )
            return handler

        return add

    # -- serving --------------------------------------------------------------------------
    def add_to(self, app: web.Application) -> None:
        for route in self.routes:
            app.router.add_route(route.method, self.prefix + route.path, self._serve(route))

    def _serve(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            kwargs: dict[str, Any] = dict(request.match_info)
            if route.query is not None:
                kwargs["query"] = _validate(route.query, _query_data(route.query, request), "query")
            if route.body is not None:
                # JSON only: a form or text/plain POST is what another site's page can send
                # without asking the browser first (CORS), so it never reaches a handler
                if request.content_type != "application/json":
                    raise ApiError(415, "unsupported_media_type",
                                   "send the body as JSON, with Content-Type: application/json")
                kwargs["body"] = _validate(route.body, parse_json(await read_body(request)), "body")
            result = await route.handler(request, **kwargs)
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, BaseModel):
                text = result.model_dump_json(by_alias=True)
            else:
                text = json.dumps(result)
            return web.Response(text=text, status=route.status, content_type="application/json")

        return serve

    # -- documenting -------------------------------------------------------------------------
    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document (built once: the routes do not change once declared)."""
        if self._doc is None or self._doc_routes != len(self.routes):
            self._doc = self._build_openapi()
            self._doc_routes = len(self.routes)
        return self._doc

    def _build_openapi(self) -> dict[str, Any]:
        models: set[type[BaseModel]] = {ErrorResponse}
        for r in self.routes:
            models.update(m for m in (r.body, r.response) if m is not None)
        ordered = sorted(models, key=lambda m: m.__name__)
        refs, defs = models_json_schema(
            [(m, "serialization") for m in ordered], ref_template="#/components/schemas/{model}"
        )
        schemas = dict(defs.get("$defs", {}))
        ref_of = {m: refs[(m, "serialization")]["$ref"] for m in ordered}
        body_refs, body_defs = models_json_schema(
            [(m, "validation") for m in ordered if any(r.body is m for r in self.routes)],
            ref_template="#/components/schemas/{model}",
        )
        schemas.update(body_defs.get("$defs", {}))
        paths: dict[str, dict[str, Any]] = {}
        for r in self.routes:
            op: dict[str, Any] = {
                "operationId": r.operation_id,
                "summary": r.summary,
                "tags": [r.tag],
                "parameters": self._parameters(r, schemas),
                "responses": self._responses(r, ref_of),
            }
            if r.public:
                op["security"] = []
            if r.body is not None:
                ref = body_refs[(r.body, "validation")]["$ref"]
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": ref}}},
                }
            elif r.raw_body:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {}}}}
            paths.setdefault(self.prefix + r.path, {})[r.method.lower()] = op
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer",
                               "description": "a token from `aflow tokens create`"},
                    "session": {"type": "apiKey", "in": "cookie", "name": "aflow_session",
                                "description": "the UI's login; changes also need the "
                                               "X-CSRF-Token header"},
                },
            },
            "security": [{"bearer": []}, {"session": []}],
        }

    def _parameters(self, r: Route, schemas: dict[str, Any]) -> list[dict[str, Any]]:
        """Path, query and header parameters; models a query refers to join `schemas`."""
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(r.path)
        ]
        if r.query is not None:
            schema = r.query.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.get("$defs", {}))
            required = set(schema.get("required", []))
            for name, prop in schema.get("properties", {}).items():
                prop = {k: v for k, v in prop.items() if k != "title"}
                param: dict[str, Any] = {
                    "name": name, "in": "query", "required": name in required, "schema": prop,
                }
                if "description" in prop:
                    param["description"] = prop["description"]
                params.append(param)
        for name, description in r.headers:
            params.append({"name": name, "in": "header", "required": False,
                           "description": description, "schema": {"type": "string"}})
        return params

    def _responses(self, r: Route, ref_of: dict[type[BaseModel], str]) -> dict[str, Any]:
        error = {"content": {"application/json": {"schema": {"$ref": ref_of[ErrorResponse]}}}}
        ok: dict[str, Any] = {"description": "success"}
        if r.response is not None:
            ok["content"] = {r.content_type: {"schema": {"$ref": ref_of[r.response]}}}
        responses: dict[str, Any] = {str(r.status): ok}
        if r.status == 201:  # a replayed Idempotency-Key answers the existing resource
            responses["200"] = ok
        for status, description in r.also:
            answer = ok if status < 400 else error
            responses[str(status)] = {**answer, "description": description}
        if r.body is not None or r.query is not None or r.raw_body:
            responses["400"] = {"description": "malformed request", **error}
            responses["422"] = {"description": "the request does not validate", **error}
        if r.body is not None or r.raw_body:
            responses["413"] = {"description": f"the body is over {MAX_BODY_BYTES} bytes", **error}
        if r.body is not None:
            responses["415"] = {"description": "the body is not sent as application/json", **error}
        if not r.public:
            responses["401"] = {"description": "no valid credentials", **error}
            responses["403"] = {"description": "the role may not (changes need admin)", **error}
        if _PATH_PARAM.search(r.path):
            responses["404"] = {"description": "not found", **error}
        responses["503"] = {"description": "the store is unavailable", **error}
        for status in r.same_body:
            responses[str(status)] = {**ok, "description": "see the body"}
        return responses


def _is_list(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is list:
        return True
    if origin in (Union, types.UnionType):
        return any(_is_list(a) for a in get_args(annotation))
    return False


def _query_data(model: type[BaseModel], request: web.Request) -> dict[str, Any]:
    """The query string as the model's input: a list field takes every value of its
    name (`?state=failed&state=success`), any other field its one value."""
    data: dict[str, Any] = {}
    for name in request.query:
        field = model.model_fields.get(name)
        if field is not None and _is_list(field.annotation):
            data[name] = request.query.getall(name)
        else:
            data[name] = request.query[name]
    return data


def _validate(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "validation_error", f"the request's {where} does not validate",
                       problems_of(exc, where)) from None


async def read_body(request: web.Request) -> bytes:
    """The whole raw body, however many reads it arrives in; at most the application's
    client_max_size (MAX_BODY_BYTES), else a 413."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes") from None


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise ApiError(400, "malformed_body", "the request needs a JSON body")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # (JSON and Unicode errors are ValueErrors;
        # a number of over 4,300 digits too, and nesting past the recursion limit recurses)
        raise ApiError(400, "malformed_body", f"the body is not valid JSON: {exc}") from None
