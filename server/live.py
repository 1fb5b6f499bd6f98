"""Live seat map over WebSockets: one Redis Stream reader per show per process."""
from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

routes = web.RouteTableDef()


class Hub:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def close(self) -> None:
        pass
