"""Observability: request ids, Prometheus metrics, readiness, JSON logs (issue 7; stub)."""
from __future__ import annotations

from aiohttp import web

from .errors import Handler

routes = web.RouteTableDef()


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await handler(request)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await handler(request)
