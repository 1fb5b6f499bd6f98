"""The OpenAPI 3.1 document, generated from the msgspec Structs the handlers use.

Each handler module declares its operations next to its handlers with `operation(...)`:

    from .openapi import Query, operation

    @routes.post("/api/shows/{show_id}/holds")
    @operation("POST", "/api/shows/{show_id}/holds", summary="Hold seats",
               request=HoldRequest, response=HoldResponse, status=201,
               errors=(404, 409, 422), tags=("customer",))
    async def create_hold(request): ...

`operation` only records the declaration (the handler is returned unchanged), so the order
of the two decorators does not matter. Path parameters are taken from `{name}` in the path;
query parameters and headers are listed with `Query(...)` / `Header(...)`, the headers of a
success answer (e.g. `ETag`) with `response_headers=(Header(...),)`. The document
(`GET /api/openapi.json`) is built from every operation registered by the modules the app
imports; schemas come from `msgspec.json.schema_components`, so what the doc describes is
exactly what `wire.read_json` accepts.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from server.core.wire import json_response

F = TypeVar("F", bound=Callable[..., Any])

REF_TEMPLATE = "#/components/schemas/{name}"

STATUS_TEXT = {
    101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No content",
    400: "Malformed request (bad JSON)",
    401: "Missing or invalid credentials", 402: "Payment declined",
    403: "Not allowed for these credentials", 404: "Not found", 409: "Conflict",
    410: "Gone", 412: "Precondition failed", 413: "Request too large",
    422: "Validation failed", 429: "Too many requests", 503: "Temporarily unavailable",
}


class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    request_id: str | None = None  # the request's X-Request-Id, to quote when reporting it


class ErrorBody(msgspec.Struct):
    """Every 4xx: `{"error": {"code": ..., "message": ..., ...extra details}}`."""

    error: ErrorDetail


class Param(msgspec.Struct, frozen=True):
    name: str
    where: str = "query"          # "query" | "header" | "path"
    type: Any = str               # a Python type msgspec can describe
    required: bool = False
    description: str = ""


def Query(name: str, type: Any = str, required: bool = False, description: str = "") -> Param:  # noqa: N802
    return Param(name, "query", type, required, description)


def Header(name: str, type: Any = str, required: bool = False, description: str = "") -> Param:  # noqa: N802
    return Param(name, "header", type, required, description)


class Operation(msgspec.Struct, frozen=True):
    method: str
    path: str
    summary: str
    request: Any = None           # Struct type (or any msgspec type) of the JSON body
    response: Any = None          # type of the JSON success body (None: no body)
    status: int = 200
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    tags: tuple[str, ...] = ()
    security: str | None = None   # "partnerKey" | "adminKey" | None (public)
    description: str = ""
    operation_id: str = ""
    also: tuple[int, ...] = ()    # other success statuses with the same body (201 on upsert)
    response_headers: tuple[Param, ...] = ()  # headers of the success answers (ETag)


REGISTRY: dict[tuple[str, str], Operation] = {}

SECURITY_SCHEMES = {
    "partnerKey": {"type": "http", "scheme": "bearer",
                   "description": "A partner API key (created by the platform admin)."},
    "adminKey": {"type": "http", "scheme": "bearer",
                 "description": "The platform admin key (settings.admin_key)."},
    "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "bmm_session",
                      "description": "A logged-in user's session (POST /api/login)."},
}


def operation(
    method: str, path: str, *, summary: str, request: Any = None, response: Any = None,
    status: int = 200, errors: tuple[int, ...] = (), params: tuple[Param, ...] = (),
    tags: tuple[str, ...] = (), security: str | None = None, description: str = "",
    also: tuple[int, ...] = (), response_headers: tuple[Param, ...] = (),
) -> Callable[[F], F]:
    """Declare one operation for the OpenAPI document (returns the handler unchanged)."""

    def register(handler: F) -> F:
        name = getattr(handler, "__name__", "") or ""
        op = Operation(method.upper(), path, summary, request, response, status, tuple(errors),
                       tuple(params), tuple(tags), security, description or (handler.__doc__ or "").strip(),
                       name, tuple(also), tuple(response_headers))
        REGISTRY[(op.method, op.path)] = op
        return handler

    return register


# OpenAPI links (how one answer feeds the next call: the booking flow): added to the
# answers of `(method, path, status)`; schemathesis' stateful mode follows them.
LINKS: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}


def link(method: str, path: str, status: int, name: str, operation_id: str,
         parameters: dict[str, str], description: str = "") -> None:
    entry: dict[str, Any] = {"operationId": operation_id, "parameters": parameters}
    if description:
        entry["description"] = description
    LINKS.setdefault((method.upper(), path, status), {})[name] = entry


def declare(op: Operation) -> None:
    """Register an operation without a decorator (e.g. for routes added elsewhere)."""
    REGISTRY[(op.method.upper(), op.path)] = op


_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def build_document(title: str = "Book My Movie API", version: str = "1") -> dict[str, Any]:
    ops = sorted(REGISTRY.values(), key=lambda o: (o.path, o.method))
    types: list[Any] = [ErrorBody]
    for op in ops:
        if op.request is not None:
            types.append(op.request)
        if op.response is not None:
            types.append(op.response)
        types.extend(p.type for p in op.params)
        types.extend(h.type for h in op.response_headers)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    by_type = dict(zip(map(id, types), schemas, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for op in ops:
        oas_path = _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", op.path)
        parameters = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in _PATH_PARAM.findall(op.path)
        ]
        for p in op.params:
            entry: dict[str, Any] = {"name": p.name, "in": p.where, "required": p.required,
                                     "schema": by_type[id(p.type)]}
            if p.description:
                entry["description"] = p.description
            parameters.append(entry)
        op_id = op.operation_id or f"{op.method.lower()}_{oas_path}"
        while op_id in used_ids:
            op_id += "_"
        used_ids.add(op_id)
        body: dict[str, Any] = {"operationId": op_id, "summary": op.summary}
        if op.description:
            body["description"] = op.description
        if op.tags:
            body["tags"] = list(op.tags)
        if parameters:
            body["parameters"] = parameters
        if op.request is not None:
            body["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": by_type[id(op.request)]}},
            }
        ok: dict[str, Any] = {"description": STATUS_TEXT.get(op.status, "Success")}
        if op.response_headers:
            ok["headers"] = {
                h.name: {"schema": by_type[id(h.type)], "required": h.required,
                         **({"description": h.description} if h.description else {})}
                for h in op.response_headers}
        if op.response is not None:
            ok["content"] = {"application/json": {"schema": by_type[id(op.response)]}}
        responses: dict[str, Any] = {str(op.status): ok}
        for status in op.also:
            responses[str(status)] = {**ok, "description": STATUS_TEXT.get(status, "Success")}
        errors = set(op.errors)
        if "{" in op.path:
            errors |= {422}  # a path id that cannot be one (wrong shape) is refused as invalid
        if op.request is not None:
            errors |= {400, 415, 422}  # 415: a body not declared JSON (core/wire.read_json)
        if op.security:
            errors |= {401}
        errors |= {429}  # the rate-limit middleware (ratelimit.py) may answer any request
        for status in sorted(errors):
            responses[str(status)] = {
                "description": STATUS_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(name="ErrorBody")}}},
            }
        for (method, path, status), links in LINKS.items():
            if (method, path) == (op.method, op.path) and str(status) in responses:
                responses[str(status)] = {**responses[str(status)], "links": links}
        body["responses"] = responses
        if op.security:
            body["security"] = [{op.security: []}]
        paths.setdefault(oas_path, {})[op.method.lower()] = body

    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Times are UTC ISO 8601; money is integer minor units plus "
                                "an ISO 4217 currency code. Errors: "
                                '{"error": {"code": ..., "message": ...}}.'},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }


routes = web.RouteTableDef()


@routes.get("/api/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return json_response(build_document())
