"""The aiohttp application: wiring only. Handlers live in modules named for what they serve."""
from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from actors import redis_conn
from actors.client import ShowDirectory
from actors.host import ActorSettings

from server import appkeys
from server.accounts import api as account_api
from server.accounts import key_usage, oauth
from server.accounts import users as accounts
from server.appkeys import SERVICES, Services
from server.booking import api as customer_api
from server.booking import lifecycle_api
from server.booking import mine_api
from server.booking import reconciler
from server.catalog.show_cache import ShowCache
from server.commerce import api as offers_api
from server.commerce.gateway_client import HttpGateway
from server.commerce.payments import GatewayGuard
from server.core import openapi
from server.core.errors import error_middleware
from server.core.redis_retry import redis_retry
from server.core.settings import Settings
from server.core.wire import json_response
from server.discovery import browse_api, recommend_api, recommend_store, reviews, reviews_api
from server.discovery import search, search_api
from server.live import hub as live
from server.notify import notifications
from server.onsale import ratelimit, waiting_room
from server.ops import observability, security
from server.partner import analytics, reports_api, webhooks, webhooks_api
from server.partner import feed_api as partner_api
from server.partner import portal_api as partner_portal_api

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
REDIS_POOL_SIZE = 64      # request-path connections per web process
REDIS_POOL_WAIT_S = 10.0  # how long a request waits for one before failing


def create_app(settings: Settings, redis_url: str) -> web.Application:
    # Sessions: an encrypted cookie keyed from settings.secret (HKDF; see accounts.py),
    # inside the error middleware so a failed request does not change the session.
    sessions = accounts.middleware(settings.secret, secure=settings.cookie_secure)
    # Outermost first: request id and metrics see every answer, security headers go on
    # every page and error, rate limits run inside the session (per-customer limits).
    # Partner API key usage (and the WWW-Authenticate challenge) sees the answer as sent.
    app = web.Application(middlewares=[observability.request_id_middleware,
                                       observability.metrics_middleware,
                                       security.security_headers_middleware,
                                       key_usage.middleware,
                                       error_middleware, sessions,
                                       ratelimit.rate_limit_middleware],
                          client_max_size=1 << 20)

    async def core(app: web.Application) -> AsyncIterator[None]:
        # Requests wait for a pooled connection rather than fail with "Too many
        # connections" (redis-py's default pool raises past 100: a 500 under a rush).
        redis = redis_conn.async_client(redis_url, blocking=True, max_connections=REDIS_POOL_SIZE,
                                        timeout=REDIS_POOL_WAIT_S, retry=redis_retry())
        shows = ShowDirectory(redis_url, ActorSettings(
            passivate_after_s=settings.passivate_after_s, snapshot_min_interval_s=1.0,
            # the hosts log at this process's level (DEBUG: every batch with its rids)
            log_level=logging.getLevelName(logging.getLogger("actors").getEffectiveLevel())),
            hosts_per_node=settings.hosts_per_node)
        # Warm the pool up now (its hosts start or are found), without making the web
        # process's start depend on Ray: reads work meanwhile, /readyz reports Ray, and
        # the first command waits for (or retries) the same start.
        warm_up = asyncio.create_task(_warm_up(shows))
        show_cache = ShowCache(redis, listen_url=redis_url)
        show_cache.start()
        # `python -m server` fills these in (the sandbox gateway it started); an app made
        # some other way (tests, an embedding) may name them in the environment.
        url = settings.gateway_url or os.environ.get("BMM_GATEWAY_URL")
        secret = settings.gateway_webhook_secret or os.environ.get(
            "BMM_GATEWAY_WEBHOOK_SECRET", "")
        if not url:
            raise RuntimeError("no payment gateway: set BMM_GATEWAY_URL (python -m server "
                               "starts the sandbox gateway when it is unset)")
        gateway = HttpGateway(url, secret)
        app[SERVICES] = Services(settings, redis, shows, gateway, GatewayGuard(), show_cache)
        yield
        await gateway.close()
        warm_up.cancel()
        await show_cache.close()
        await shows.close()
        await redis.aclose()

    # Teardown runs in reverse: the workers stop first, the request pool closes last.
    app.cleanup_ctx.append(core)
    observability.setup(app)  # readiness (503 from shutdown on), metrics hooks
    ratelimit.setup(app, settings)
    live.setup(app, redis_url)
    waiting_room.setup(app)
    search.set_rating_source(reviews.movie_ratings)  # sort=rating and each hit's rating
    if settings.reconcile:
        reconciler.setup(app)  # payment intents left open by a crash or an outage
    if settings.workers:
        notifications.setup(app, settings, redis_url)
        webhooks.setup(app, settings, redis_url)
        recommend_store.setup(app, redis_url)
        analytics.setup(app, redis_url, Path(settings.data_dir) / "analytics")
        partner_api.changes.setup(app, redis_url)  # bookings into partners' change feeds
    app.add_routes(customer_api.routes)
    app.add_routes(partner_api.routes)
    app.add_routes(lifecycle_api.routes)
    app.add_routes(webhooks_api.routes)
    app.add_routes(offers_api.routes)
    app.add_routes(live.routes)
    app.add_routes(browse_api.routes)
    app.add_routes(recommend_api.routes)
    app.add_routes(search_api.routes)
    app.add_routes(openapi.routes)
    app.add_routes(account_api.routes)
    app.add_routes(mine_api.routes)  # my bookings, export, delete my account
    app.add_routes(partner_portal_api.routes)
    app.add_routes(reviews_api.routes)
    app.add_routes(reports_api.routes)
    app.add_routes(observability.routes)
    app.add_routes(waiting_room.routes)
    app.add_routes(oauth.routes)       # /oauth/token, /.well-known/jwks.json, key rotation
    app.add_routes(key_usage.routes)   # /partner/v1/usage
    app.router.add_get("/", _index)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/_stats", _stats)
    app.router.add_static("/static/", WEB_DIR, name="static")
    return app


async def _warm_up(shows: ShowDirectory) -> None:
    try:
        await shows.start()
    except Exception:  # Ray not there yet: the first command starts the pool instead
        logging.getLogger(__name__).warning("show hosts not started yet", exc_info=True)


_HEALTHZ = b'{"ok": true}'


async def _healthz(request: web.Request) -> web.Response:
    """Liveness, and the no-op baseline the benchmark compares the hold path with."""
    return web.Response(body=_HEALTHZ, content_type="application/json")


async def _stats(request: web.Request) -> web.Response:
    """This web process's group-commit counters (loadtest/bench.py reads them):
    `{"pid", "hosts", "calls", "commands", "fanout_lag_ms"}`; calls are host
    calls, so commands / calls is the mean batch size across shows; `fanout_lag_ms` lists,
    per live frame since the previous call, the ms from its oldest event's apply to the
    frame written to every in-sync socket."""
    observability.require_operator(request)
    shows = appkeys.services(request).shows
    clients = shows.clients()
    return json_response({
        "pid": os.getpid(), "hosts": len(clients),
        "calls": sum(c.calls for c in clients), "commands": sum(c.commands for c in clients),
        "fanout_lag_ms": _drain_lags(request.app[live.HUB].fanout_lag_ms),
    })


def _drain_lags(lags: deque[float]) -> list[float]:
    """Server-side fan-out lags (ms per frame) since the last reading; the bench merges
    them over every web process."""
    values = [round(v, 1) for v in lags]
    lags.clear()
    return values


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")
