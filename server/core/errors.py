"""One error shape for every 4xx: `{"error": {"code": ..., "message": ..., ...}}`; a
`Refused` from a use case gets its status from `core.refusals.REFUSAL_STATUS`."""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from redis.exceptions import RedisClusterException, RedisError

from actors import redis_conn
from actors.context import request_id

from server.core.refusals import Refused

log = logging.getLogger(__name__)


class ApiError(Refused):
    """A refusal decided at the HTTP edge, with its status named there (bad headers,
    credentials, request shapes). The use cases raise `Refused` and let the table decide."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(code, message, status=status, **details)


def error_response(status: int, code: str, message: str, **details: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **details}}
    rid = request_id.get()  # set by the request-id middleware (server/ops/observability.py)
    if rid:
        body["error"]["request_id"] = rid
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type="application/json"
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as exc:  # ApiError too
        resp = error_response(exc.status, exc.code, exc.message, **exc.details)
        if exc.status == 503:  # an outage: say when to come back
            resp.headers.setdefault("Retry-After", str(exc.details.get("retry_after_s", 1)))
        return resp
    except msgspec.ValidationError as exc:
        return error_response(422, "invalid", str(exc))
    except msgspec.DecodeError as exc:
        return error_response(400, "bad_json", f"request body is not valid JSON: {exc}")
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "http_error"
        )
        return error_response(exc.status, code, exc.reason)
    except (RedisError, RedisClusterException) as exc:
        if not redis_conn.is_outage(exc):
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, "internal", "something went wrong on our side")
        # Redis is down, restarting or failing over, or a master refuses writes it cannot
        # replicate (its clients already retried for a couple of seconds): a temporary
        # outage, not a bug. 503 + Retry-After tells the client, and a load balancer, to
        # try again.
        log.warning("Redis unavailable on %s %s: %r", request.method, request.path, exc)
        resp = error_response(503, "unavailable", "temporarily unavailable; try again shortly")
        resp.headers["Retry-After"] = "1"
        return resp
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "something went wrong on our side")
