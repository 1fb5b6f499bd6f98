"""On-sale protection: Redis-backed rate limits with 429 + Retry-After (issue 7; stub)."""
from __future__ import annotations

from aiohttp import web

from .errors import Handler


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await handler(request)
