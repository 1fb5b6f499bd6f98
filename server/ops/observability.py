"""Observability: request ids, Prometheus metrics, readiness, the JSON access log (issue 7).

- `request_id_middleware` (outermost): takes a valid incoming `X-Request-Id` (1-128 of
  `A-Z a-z 0-9 . _ ~ : -`) or makes one, keeps it in `actors.context.request_id` for the
  request (logs, error bodies, and the commands sent to the show actors carry it) and
  answers it in the `X-Request-Id` header of every response, WebSocket handshakes included.
- `metrics_middleware`: one histogram observation per request, labelled by the route's
  pattern, the method and the status class (server/ops/metrics.py).
- `GET /metrics`: Prometheus text format. `GET /readyz`: 200 when Redis answers, Ray is
  connected and the process is not shutting down; 503 with what is not ready otherwise.
  (`GET /healthz`, liveness, lives in app.py: it must stay a no-op.)
- `AccessLogger`: aiohttp's access log as one structured record per request.
"""
from __future__ import annotations

import asyncio
import hmac
import re
import random
import time
from typing import Any

import msgspec
import ray
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from actors.context import request_id

from server.appkeys import services
from server.ops import gc_pauses
from server.ops import metrics
from server.core.errors import Handler

routes = web.RouteTableDef()

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_KEY = web.RequestKey("request_id", str)  # request[REQUEST_ID_KEY]: its id
_VALID_ID = re.compile(r"[A-Za-z0-9._~:-]{1,128}")
READY_TIMEOUT_S = 2.0


def valid_request_id(value: str | None) -> bool:
    return value is not None and _VALID_ID.fullmatch(value) is not None


def new_request_id() -> str:
    # Ids only correlate log lines, they guard nothing: the Mersenne Twister is enough, and
    # unlike secrets.token_hex it makes no getrandom() syscall per request.
    return f"{random.getrandbits(64):016x}"


def route_label(request: web.BaseRequest) -> str:
    """The route's pattern (`/api/holds/{hold_id}`), never the raw path."""
    match_info = getattr(request, "_match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else metrics.UNMATCHED


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get(REQUEST_ID_HEADER)
    if not valid_request_id(rid):
        rid = new_request_id()
    request[REQUEST_ID_KEY] = rid  # the header goes on in _echo_request_id
    token = request_id.set(rid)
    try:
        return await handler(request)
    finally:
        request_id.reset(token)


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response gets the header, also those a handler prepares
    itself (WebSocket handshakes, streams) and HTTP exceptions that escape the middlewares."""
    rid = request.get(REQUEST_ID_KEY)
    if rid:
        response.headers[REQUEST_ID_HEADER] = rid


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's code): a 4xx, not a server fault
        raise
    finally:
        metrics.observe_request(route_label(request), request.method, status,
                                time.perf_counter() - started)


# --- /metrics and /readyz --------------------------------------------------------------------

def require_operator(request: web.Request) -> None:
    """The operators' endpoints answer a scraper with the metrics token, or one on this
    machine: a loopback peer whose request came through no proxy (the shipped edge does not
    proxy them either). Anyone else gets 404, as if they were not there."""
    token = services(request).settings.metrics_token
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if token and hmac.compare_digest(given.encode(), token.encode()):
        return
    peer = request.remote or ""
    local = peer.startswith("127.") or peer == "::1"
    if not local or "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        raise web.HTTPNotFound()


@routes.get("/metrics")
async def metrics_endpoint(request: web.Request) -> web.Response:
    require_operator(request)
    gc_pauses.flush()
    body = await metrics.exposition(services(request).redis)
    response = web.Response(body=body)
    response.headers["Content-Type"] = metrics.CONTENT_TYPE
    return response


class Readiness:
    """Per app: set once the app starts shutting down (readiness goes 503 at once)."""

    def __init__(self) -> None:
        self.shutting_down = False
        self._ray_check: asyncio.Future[bool] | None = None

    async def ray_connected(self) -> bool:
        # One check at a time: a hung Ray must not pile up threads, one per probe.
        if self._ray_check is None or self._ray_check.done():
            self._ray_check = asyncio.ensure_future(asyncio.to_thread(_ray_alive))
        return await asyncio.shield(self._ray_check)


def _ray_alive() -> bool:
    """Connected to a Ray cluster whose control store answers with a live node."""
    if not ray.is_initialized():
        return False
    return any(node.get("Alive") for node in ray.nodes())


READINESS = web.AppKey("readiness", Readiness)


async def _redis_problem(request: web.Request) -> str | None:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await services(request).redis.ping()
        return None
    except TimeoutError:
        return "no answer within %.0f s" % READY_TIMEOUT_S
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


async def _ray_problem(readiness: Readiness) -> str | None:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            if await readiness.ray_connected():
                return None
        return "not connected"
    except TimeoutError:
        return "no answer within %.0f s" % READY_TIMEOUT_S
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """`{"ready": true, "checks": {"redis": "ok", "ray": "ok", "hosts": "ok",
    "shutdown": "ok"}}`, or 503
    with `"ready": false` and each failing check's reason in place of "ok"."""
    readiness = request.app[READINESS]
    redis_problem, ray_problem = await asyncio.gather(
        _redis_problem(request), _ray_problem(readiness))
    checks = {
        "redis": redis_problem or "ok",
        "ray": ray_problem or "ok",
        # the show-host pool found (or started) and its hosts answering
        "hosts": "ok" if services(request).shows.started else "starting",
        "shutdown": "shutting down" if readiness.shutting_down else "ok",
    }
    ready = all(v == "ok" for v in checks.values())
    return web.Response(status=200 if ready else 503, content_type="application/json",
                        body=msgspec.json.encode({"ready": ready, "checks": checks}))


def setup(app: web.Application) -> None:
    """Readiness state and shutdown hook for `app`; metrics hooked into the show clients."""
    readiness = app[READINESS] = Readiness()

    async def shutting_down(app: web.Application) -> None:
        readiness.shutting_down = True

    app.on_shutdown.insert(0, shutting_down)
    app.on_response_prepare.append(_echo_request_id)
    metrics.install()


# --- the access log --------------------------------------------------------------------------

class AccessLogger(AbstractAccessLogger):
    """An `aiohttp.access` record: method, path (no query: it may carry tokens), route
    pattern, status, duration, size, remote, request id; as fields for the JSON log, and as
    a short line for the text one. Every error (status >= 400) and slow request is logged;
    of the others 1 in `every` per route, counting from the first (`sampled` says how many
    a line stands for)."""

    every = 100          # set from settings.access_log_every at start (server/__main__.py)
    SLOW_S = 0.5

    def __init__(self, logger: Any, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._seen: dict[str, int] = {}  # per route pattern: a bounded set of keys

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = route_label(request)
        sampled = 1
        if response.status < 400 and time < self.SLOW_S and self.every > 1:
            n = self._seen.get(route, 0)
            self._seen[route] = n + 1
            if n % self.every:
                return
            sampled = self.every
        fields: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": response.status,
            "duration_ms": round(time * 1000, 3),
            "size": response.body_length,
            "remote": request.remote,
        }
        rid = request.get(REQUEST_ID_KEY)
        if rid:
            fields["request_id"] = rid
        if sampled > 1:
            fields["sampled"] = sampled
        self.logger.info("%s %s %d %.1fms", request.method, request.path, response.status,
                         time * 1000, extra=fields)
