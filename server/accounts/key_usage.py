"""Per API key usage: requests, 4xx and 5xx answers and the p95 latency, per UTC day.

Recorded by `middleware` (server/app.py puts it just outside the error middleware, so it
sees every answer as sent, errors included, and the time they took) for every request
that an API key authenticated, directly or through one of its access tokens
(`bearer_auth.AUTH_KEY_ID`, set by api_keys.partner_of and the token endpoint). Any other
path costs one `str.startswith`. The same middleware puts the RFC 6750 `WWW-Authenticate`
challenge on a partner authentication failure (`bearer_auth.CHALLENGE`).

Redis, per key and day: a hash `keyusage:<key id>:<YYYYMMDD>` with `n` (requests), `4xx`,
`5xx` and `b<i>`, a latency histogram over the fixed bounds `BUCKETS_MS` (`b<len>` is
everything slower), kept `RETENTION_DAYS`. One pipelined round trip per request (HINCRBY
x3, EXPIRE), sent after the answer is made, from a task of its own: the request never
waits for it and never fails because of it (a failed write is logged and lost). The p95 is
read from the histogram, interpolated inside its bucket: within a bucket's width (5-50 %
of its value) of the true one.

    GET /partner/v1/usage?days=7               the partner's keys (a key, token or portal session)
    GET /api/partner/keys/{key_id}/usage?days=7    one key (the portal, server/partner/portal_api.py)
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import time
import weakref
from datetime import UTC, date, datetime, timedelta

import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from server.accounts import api_keys
from server.accounts.bearer_auth import AUTH_KEY_ID, CHALLENGE
from server.appkeys import services
from server.core.errors import ApiError, Handler
from server.core.openapi import Query, operation
from server.core.wire import json_response

log = logging.getLogger(__name__)

PREFIXES = ("/partner/", "/oauth/")
BUCKETS_MS = (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
              1000, 1500, 2000, 3000, 5000, 10000)
RETENTION_DAYS = 40
MAX_DAYS = 31
MAX_PENDING = 4096          # usage writes in flight per process; past it samples are dropped


def usage_key(key_id: str, day: str) -> str:
    return f"keyusage:{key_id}:{day}"


def bucket(ms: float) -> int:
    """The histogram bucket of a latency: the first bound it does not exceed."""
    return bisect.bisect_left(BUCKETS_MS, ms)


def p95(counts: list[int]) -> float | None:
    """The 95th percentile from bucket counts (linear inside the bucket; the open last
    bucket answers its lower bound)."""
    total = sum(counts)
    if not total:
        return None
    rank = 0.95 * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            low = BUCKETS_MS[i - 1] if i else 0.0
            high = BUCKETS_MS[i] if i < len(BUCKETS_MS) else low
            return round(low + (high - low) * (rank - seen) / count, 1)
        seen += count
    return float(BUCKETS_MS[-1])


# --- recording ------------------------------------------------------------------------

@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(PREFIXES):
        return await handler(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        challenge = request.get(CHALLENGE)
        if challenge and status in (401, 403) and not response.prepared:
            response.headers.setdefault("WWW-Authenticate", challenge)
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    finally:
        key_id = request.get(AUTH_KEY_ID)
        if key_id:
            record(services(request).redis, key_id, status,
                   (time.perf_counter() - started) * 1000)


class _Writes:
    def __init__(self) -> None:
        self.pending: set[asyncio.Task[None]] = set()
        self.dropped = 0
        self.failed_logged = 0.0


# Per Redis client (one per app and event loop).
_WRITES: weakref.WeakKeyDictionary[aioredis.Redis, _Writes] = weakref.WeakKeyDictionary()


def _writes(redis: aioredis.Redis) -> _Writes:
    found = _WRITES.get(redis)
    if found is None:
        found = _WRITES[redis] = _Writes()
    return found


_day_cache: tuple[int, str] = (-1, "")


def _today() -> str:
    global _day_cache
    n = int(time.time() // 86400)
    if _day_cache[0] != n:
        _day_cache = (n, (date(1970, 1, 1) + timedelta(days=n)).strftime("%Y%m%d"))
    return _day_cache[1]


def record(redis: aioredis.Redis, key_id: str, status: int, ms: float) -> None:
    """Count one request of this key (never raises, never waits)."""
    writes = _writes(redis)
    if len(writes.pending) >= MAX_PENDING:
        writes.dropped += 1
        return
    task = asyncio.get_running_loop().create_task(
        _write(redis, writes, usage_key(key_id, _today()), status, ms))
    writes.pending.add(task)
    task.add_done_callback(writes.pending.discard)


async def _write(redis: aioredis.Redis, writes: _Writes, key: str, status: int,
                 ms: float) -> None:
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, "n", 1)
            if status >= 400:
                pipe.hincrby(key, "5xx" if status >= 500 else "4xx", 1)
            pipe.hincrby(key, f"b{bucket(ms)}", 1)
            pipe.expire(key, RETENTION_DAYS * 86400)
            await pipe.execute()
    except Exception as exc:  # usage is best effort: never the request's problem
        now = time.monotonic()
        if now - writes.failed_logged > 60:
            writes.failed_logged = now
            log.warning("API key usage not recorded: %r", exc)


async def flush(redis: aioredis.Redis, timeout_s: float = 1.0) -> None:
    """Wait (briefly) for this process's usage writes in flight, so a read sees them."""
    pending = list(_writes(redis).pending)
    if pending:
        await asyncio.wait(pending, timeout=timeout_s)


# --- reading --------------------------------------------------------------------------

class UsageDay(msgspec.Struct):
    date: str                 # YYYY-MM-DD, UTC
    requests: int
    errors: int               # errors_4xx + errors_5xx
    errors_4xx: int
    errors_5xx: int
    p95_ms: float | None      # None: no requests that day


class KeyUsage(msgspec.Struct):
    key_id: str
    name: str
    days: list[UsageDay]      # oldest first, today last


class PartnerUsage(msgspec.Struct):
    partner_id: str
    keys: list[KeyUsage]


def parse_days(request: web.Request) -> int:
    raw = request.query.get("days", "7")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_DAYS:
        raise ApiError(422, "invalid", f"days must be 1..{MAX_DAYS}", field="days")
    return int(raw)


def _int(raw: dict[bytes, bytes], field: str) -> int:
    try:
        return int(raw.get(field.encode(), b"0"))
    except ValueError:
        return 0


async def usage(redis: aioredis.Redis, keys: list[api_keys.KeyInfo], days: int,
                today: date | None = None) -> list[KeyUsage]:
    """The last `days` UTC days (today included) of each key, one round trip."""
    await flush(redis)
    today = today or datetime.now(UTC).date()
    dates = [today - timedelta(days=i) for i in range(days - 1, -1, -1)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            for d in dates:
                pipe.hgetall(usage_key(key.key_id, d.strftime("%Y%m%d")))
        raws = await pipe.execute()
    out, i = [], 0
    for key in keys:
        rows = []
        for d in dates:
            raw = raws[i]
            i += 1
            e4, e5 = _int(raw, "4xx"), _int(raw, "5xx")
            counts = [_int(raw, f"b{b}") for b in range(len(BUCKETS_MS) + 1)]
            rows.append(UsageDay(d.isoformat(), _int(raw, "n"), e4 + e5, e4, e5, p95(counts)))
        out.append(KeyUsage(key.key_id, key.name, rows))
    return out


# --- the API ----------------------------------------------------------------------------

routes = web.RouteTableDef()

DAYS = Query("days", int, description=f"how many UTC days back, today included (1..{MAX_DAYS}; "
                                      "default 7)")


@routes.get("/partner/v1/usage")
@operation("GET", "/partner/v1/usage", summary="Your API keys' usage per day",
           response=PartnerUsage, errors=(403, 422), tags=("partner",), security="partnerKey",
           params=(DAYS,))
async def partner_usage(request: web.Request) -> web.Response:
    """Per API key of the partner and per UTC day: requests, 4xx and 5xx answers, and the
    95th percentile latency in ms (from a histogram: within its bucket's width). Requests
    made with an access token count for the key the token was issued for; requests the
    rate limiter refused before authentication are not counted."""
    redis = services(request).redis
    partner = await api_keys.partner_of(request, redis, write=False)
    days = parse_days(request)
    keys = await api_keys.list_keys(redis, partner)
    return json_response(PartnerUsage(partner, await usage(redis, keys, days)))
