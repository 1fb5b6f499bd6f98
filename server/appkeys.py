"""The typed keys of what the app factory (`server/app.py`) puts on the application.

A leaf: handlers import `services` from here at the top of their module, and the factory
fills the key in, so no handler module imports the app module (that import, hidden inside
functions, once tied 26 modules into one cycle). The field types are only named here (under
TYPE_CHECKING), so this module depends on nothing of ours at run time. State that belongs
to one feature has its own key next to that feature's code (e.g. `live.hub.HUB`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from actors.client import ShowDirectory
    from server.catalog.show_cache import ShowCache
    from server.commerce.payments import GatewayGuard, PaymentGateway
    from server.core.settings import Settings


@dataclass
class Services:
    """What every request may use, built once per process by `create_app`."""

    settings: Settings
    redis: aioredis.Redis         # the request pool (blocking: a request waits for a connection)
    shows: ShowDirectory          # the shows on their hosts, through the coalescing clients
    payments: PaymentGateway      # checkout's gateway (the sandbox unless a test swaps it)
    payment_guard: GatewayGuard   # timeout + circuit breaker around `payments`, per process
    show_cache: ShowCache         # shows + layouts for the hold path


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
