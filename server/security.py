"""Security headers, Content-Security-Policy and related guards (issue 7; stub)."""
from __future__ import annotations

from aiohttp import web

from .errors import Handler


@web.middleware
async def security_headers_middleware(request: web.Request,
                                      handler: Handler) -> web.StreamResponse:
    return await handler(request)
