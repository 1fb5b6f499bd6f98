"""The aiohttp application: wiring only. Handlers live in modules named for what they serve."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from aiohttp import web

from actors.client import ShowDirectory
from actors.show_actor import ActorSettings

from . import browse_api, customer_api, live, openapi, partner_api
from .errors import error_middleware
from .payments import PaymentGateway, SandboxGateway
from .settings import Settings

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@dataclass
class Services:
    settings: Settings
    redis: aioredis.Redis
    shows: ShowDirectory   # the show actors, through the coalescing clients
    hub: live.Hub          # live seat-map fan-out for this process
    payments: PaymentGateway = field(default_factory=SandboxGateway)  # checkout's gateway


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def create_app(settings: Settings, redis_url: str) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=1 << 20)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        redis = aioredis.Redis.from_url(redis_url)
        shows = ShowDirectory(redis_url, ActorSettings(passivate_after_s=settings.passivate_after_s))
        hub = live.Hub(redis)
        app[SERVICES] = Services(settings, redis, shows, hub)
        yield
        await hub.close()
        await redis.aclose()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(_close_live_sockets)  # before the server waits for handlers
    app.add_routes(customer_api.routes)
    app.add_routes(partner_api.routes)
    app.add_routes(live.routes)
    app.add_routes(browse_api.routes)
    app.add_routes(openapi.routes)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", WEB_DIR, name="static")
    return app


async def _close_live_sockets(app: web.Application) -> None:
    await app[SERVICES].hub.close()


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")
