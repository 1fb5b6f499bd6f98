"""Partner webhooks: registered endpoints, the fan-out from the outbox, and delivery.

Two stages, both durable in Redis:

1. Fan-out — the outbox consumer group `webhooks`. For each event it finds the partner
   (the event's `partner_id`, else the owner of `data.show_id` in the catalog) and, for
   each of that partner's endpoints subscribed to the event type, creates one delivery
   (id derived from event id + endpoint id, so a redelivered event creates nothing new)
   and schedules it in `webhooks:due`. The event is acknowledged after that.
2. Delivery — a loop takes due deliveries (a lease: the delivery's due time is pushed
   forward while it is being attempted, so a crashed worker's delivery is retried) and
   POSTs the JSON body with
       X-BMM-Event-Id:   the event id (receivers dedupe on it)
       X-BMM-Timestamp:  Unix seconds of this attempt
       X-BMM-Signature:  sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
   A 2xx is success. Anything else (or a timeout / refused connection) is retried with
   exponential backoff (`webhook_retry_s` doubled per attempt, capped at
   `webhook_retry_max_s`) up to `webhook_max_attempts`, then marked failed. Every attempt
   is recorded in the delivery log the partner reads (webhooks_api.py).

Keys:
    webhook:<id>                  JSON Endpoint (the secret is kept: HMAC needs it)
    partner:<pid>:webhooks        set of endpoint ids
    whdelivery:<id>               JSON Delivery (body, attempts, status, next retry)
    webhook:<id>:deliveries       zset delivery id -> created ms (the endpoint's log)
    webhooks:due                  zset delivery id -> due ms
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import msgspec
from aiohttp import web
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError


from server.core.clock import from_ms, now_ms
from server.catalog.model import Show, catalog_key
from server.core.outbox import Event, GroupConsumer, cancel_and_wait, run_with_app
from server.core.settings import Settings
from server.partner.ssrf import PublicResolver, check_delivery

log = logging.getLogger(__name__)

GROUP = "webhooks"
DUE = "webhooks:due"
LOG_LIMIT = 1000            # deliveries kept per endpoint log
DELIVERY_TTL_S = 30 * 24 * 3600
LEASE_MS = 60_000           # a delivery being attempted is not taken by another worker
MAX_ENDPOINTS = 10          # per partner
MAX_CONCURRENT = 16
PARTNER_EVENTS = ("booking.confirmed", "booking.cancelled", "show.sold_out", "show.cancelled")
# What a partner sees of a booking: no customer contact details.
PRIVATE_FIELDS = ("email", "name", "phone", "customer_id")


class Endpoint(msgspec.Struct):
    webhook_id: str
    partner_id: str
    url: str
    secret: str
    events: list[str]
    created_at: datetime
    description: str = ""


class Attempt(msgspec.Struct):
    at: datetime
    status_code: int | None   # None: no HTTP answer (refused, timeout)
    error: str | None
    duration_ms: int


class Delivery(msgspec.Struct):
    delivery_id: str
    webhook_id: str
    event_id: str
    event_type: str
    created_at: datetime
    body: str
    status: Literal["pending", "delivered", "failed"] = "pending"
    attempts: list[Attempt] = []
    next_retry_at: datetime | None = None


def endpoint_key(webhook_id: str) -> str:
    return f"webhook:{webhook_id}"


def partner_webhooks_key(partner_id: str) -> str:
    return f"partner:{partner_id}:webhooks"


def delivery_key(delivery_id: str) -> str:
    return f"whdelivery:{delivery_id}"


def endpoint_log_key(webhook_id: str) -> str:
    return f"webhook:{webhook_id}:deliveries"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *,
           tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """What a receiver does: check the signature and that the timestamp is recent."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode())


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


_endpoint_decoder = msgspec.json.Decoder(Endpoint)
_delivery_decoder = msgspec.json.Decoder(Delivery)
_encoder = msgspec.json.Encoder()


# --- endpoints (used by webhooks_api.py) -------------------------------------------------

async def create_endpoint(redis: aioredis.Redis, partner_id: str, url: str, events: list[str],
                          description: str = "") -> Endpoint | None:
    """A new endpoint with a fresh secret; None if the partner has MAX_ENDPOINTS already."""
    endpoint = Endpoint("wh_" + secrets.token_hex(10), partner_id, url, new_secret(),
                        events, datetime.now(UTC).replace(microsecond=0), description)
    ok = await _CREATE(keys=[partner_webhooks_key(partner_id),
                             endpoint_key(endpoint.webhook_id)],
                       args=[endpoint.webhook_id, _encoder.encode(endpoint), MAX_ENDPOINTS],
                       client=redis)
    return endpoint if ok else None


async def load_endpoint(redis: aioredis.Redis, webhook_id: str) -> Endpoint | None:
    raw = await redis.get(endpoint_key(webhook_id))
    return _endpoint_decoder.decode(raw) if raw else None


async def partner_endpoints(redis: aioredis.Redis, partner_id: str) -> list[Endpoint]:
    ids = sorted(m.decode() for m in await redis.smembers(partner_webhooks_key(partner_id)))
    if not ids:
        return []
    raws = await redis.mget([endpoint_key(i) for i in ids])
    out = [_endpoint_decoder.decode(r) for r in raws if r]
    return sorted(out, key=lambda e: (e.created_at, e.webhook_id))


async def delete_endpoint(redis: aioredis.Redis, endpoint: Endpoint) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.srem(partner_webhooks_key(endpoint.partner_id), endpoint.webhook_id)
        pipe.delete(endpoint_key(endpoint.webhook_id))
        pipe.expire(endpoint_log_key(endpoint.webhook_id), DELIVERY_TTL_S)
        await pipe.execute()


async def endpoint_deliveries(redis: aioredis.Redis, webhook_id: str, limit: int = 50
                              ) -> list[Delivery]:
    ids = await redis.zrevrange(endpoint_log_key(webhook_id), 0, limit - 1)
    if not ids:
        return []
    raws = await redis.mget([delivery_key(i.decode()) for i in ids])
    return [_delivery_decoder.decode(r) for r in raws if r]


async def load_delivery(redis: aioredis.Redis, delivery_id: str) -> Delivery | None:
    raw = await redis.get(delivery_key(delivery_id))
    return _delivery_decoder.decode(raw) if raw else None


# --- Lua: multi-key writes in one step ---------------------------------------------------

class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, *, keys: list[str], args: list[Any], client: aioredis.Redis
                       ) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


# KEYS: partner set, endpoint key. ARGV: id, json, max
_CREATE = _Script("""
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
return 1
""")

# KEYS: delivery key, endpoint log, due zset. ARGV: id, json, now ms, ttl s, log limit
_SCHEDULE = _Script("""
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
local n = redis.call('ZCARD', KEYS[2])
if n > tonumber(ARGV[5]) then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - tonumber(ARGV[5]) - 1) end
return 1
""")

# KEYS: due zset. ARGV: now ms, lease until ms, count. Takes due ids and leases them.
_TAKE = _Script("""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
""")


# --- the worker ---------------------------------------------------------------------------

def partner_body(event: Event) -> bytes:
    data = {k: v for k, v in event.data.items() if k not in PRIVATE_FIELDS}
    if isinstance(data.get("bookings"), list):
        data["bookings"] = [{k: v for k, v in b.items() if k not in PRIVATE_FIELDS}
                            if isinstance(b, dict) else b for b in data["bookings"]]
    return _encoder.encode({"id": event.id, "type": event.type,
                            "created_at": event.time, "data": data})


def delivery_id_for(event_id: str, webhook_id: str) -> str:
    return "dlv_" + hashlib.sha256(f"{event_id}\n{webhook_id}".encode()).hexdigest()[:24]


class WebhookWorker:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.retry_ms = max(1, int(settings.webhook_retry_s * 1000))
        self.retry_max_ms = max(self.retry_ms, int(settings.webhook_retry_max_s * 1000))
        self.consumer = GroupConsumer(redis, GROUP, self.fan_out,
                                      retry_s=min(settings.webhook_retry_s, 5.0),
                                      retry_max_s=settings.webhook_retry_max_s,
                                      claim_idle_s=settings.outbox_claim_idle_s)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(MAX_CONCURRENT)

    def start(self) -> None:
        # Public addresses only (server/partner/ssrf.py): partners choose these URLs.
        allow_private = self.settings.webhook_private_targets
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s),
            connector=aiohttp.TCPConnector(resolver=PublicResolver(allow_private)))
        self.consumer.start()
        self._task = asyncio.create_task(self._deliver_loop(), name="webhooks:deliver")

    async def stop(self) -> None:
        await self.consumer.stop()
        if self._task is not None:
            await cancel_and_wait(self._task)
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- stage 1: fan-out --

    async def _partner_of(self, event: Event) -> str | None:
        if event.partner_id:
            return event.partner_id
        show_id = event.data.get("show_id")
        if not show_id:
            return None
        raw = await self.redis.get(catalog_key("show", str(show_id)))
        if not raw:
            return None
        try:
            return msgspec.json.decode(raw, type=Show).partner_id or None
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def fan_out(self, event: Event) -> bool:
        if event.type not in PARTNER_EVENTS:
            return True
        partner_id = await self._partner_of(event)
        if not partner_id:
            return True
        endpoints = [e for e in await partner_endpoints(self.redis, partner_id)
                     if event.type in e.events]
        if not endpoints:
            return True
        body = partner_body(event).decode()
        now = now_ms()
        for endpoint in endpoints:
            delivery = Delivery(delivery_id_for(event.id, endpoint.webhook_id),
                                endpoint.webhook_id, event.id, event.type, from_ms(now), body,
                                next_retry_at=from_ms(now))
            await _SCHEDULE(keys=[delivery_key(delivery.delivery_id),
                                  endpoint_log_key(endpoint.webhook_id), DUE],
                            args=[delivery.delivery_id, _encoder.encode(delivery), now,
                                  DELIVERY_TTL_S, LOG_LIMIT], client=self.redis)
        self._wake.set()
        return True

    # -- stage 2: delivery --

    async def _deliver_loop(self) -> None:
        while True:
            try:
                await self.deliver_due()
                wait = await self._next_wait()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("webhooks: redis error %s; retrying", exc)
                wait = 1.0
            except Exception:
                log.exception("webhooks: unexpected error")
                wait = 1.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except TimeoutError:
                pass

    async def _next_wait(self) -> float:
        """Seconds until the next delivery is due (other processes may schedule some too:
        never sleep longer than a second)."""
        first = await self.redis.zrange(DUE, 0, 0, withscores=True)
        if not first:
            return 1.0
        return max(0.0, min(1.0, (first[0][1] - now_ms()) / 1000))

    async def deliver_due(self) -> int:
        now = now_ms()
        ids = await _TAKE(keys=[DUE], args=[now, now + LEASE_MS, MAX_CONCURRENT],
                          client=self.redis)
        for raw in ids:
            task = asyncio.create_task(self._attempt(raw.decode()))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        return len(ids)

    async def _attempt(self, delivery_id: str) -> None:
        async with self._limit:
            delivery = await load_delivery(self.redis, delivery_id)
            if delivery is None or delivery.status != "pending":
                await self.redis.zrem(DUE, delivery_id)
                return
            endpoint = await load_endpoint(self.redis, delivery.webhook_id)
            if endpoint is None:  # deleted meanwhile
                delivery.status, delivery.next_retry_at = "failed", None
                delivery.attempts.append(Attempt(datetime.now(UTC), None,
                                                 "webhook deleted", 0))
                await self._save(delivery, done=True)
                return
            status, error, took = await self._post(endpoint, delivery)
            delivery.attempts.append(Attempt(datetime.now(UTC), status, error, took))
            if status is not None and 200 <= status < 300:
                delivery.status, delivery.next_retry_at = "delivered", None
                await self._save(delivery, done=True)
            elif len(delivery.attempts) >= self.settings.webhook_max_attempts:
                delivery.status, delivery.next_retry_at = "failed", None
                await self._save(delivery, done=True)
            else:
                n = len(delivery.attempts)
                delay = min(self.retry_max_ms, self.retry_ms * 2 ** min(n - 1, 30))
                due = now_ms() + delay
                delivery.next_retry_at = from_ms(due)
                await self._save(delivery, done=False, due_ms=due)

    async def _post(self, endpoint: Endpoint, delivery: Delivery
                    ) -> tuple[int | None, str | None, int]:
        assert self._session is not None
        body = delivery.body.encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "BookMyMovie-Webhooks/1",
            "X-BMM-Event-Id": delivery.event_id,
            "X-BMM-Event-Type": delivery.event_type,
            "X-BMM-Delivery-Id": delivery.delivery_id,
            "X-BMM-Timestamp": timestamp,
            "X-BMM-Signature": sign(endpoint.secret, timestamp, body),
        }
        started = time.monotonic()
        try:
            await check_delivery(endpoint.url, self.settings.webhook_private_targets)
            async with self._session.post(endpoint.url, data=body, headers=headers,
                                          allow_redirects=False) as resp:
                await resp.read()
                status, error = resp.status, None if resp.status < 300 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"[:300]
        return status, error, int((time.monotonic() - started) * 1000)

    async def _save(self, delivery: Delivery, *, done: bool, due_ms: int = 0) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(delivery_key(delivery.delivery_id), _encoder.encode(delivery),
                     ex=DELIVERY_TTL_S)
            if done:
                pipe.zrem(DUE, delivery.delivery_id)
            else:
                pipe.zadd(DUE, {delivery.delivery_id: due_ms})
            await pipe.execute()


WEBHOOKS = web.AppKey("webhook_worker", WebhookWorker)


def setup(app: web.Application, settings: Settings, redis_url: str) -> None:
    """Runs this process's webhook delivery while the app runs."""
    run_with_app(app, WEBHOOKS, redis_url, lambda redis: WebhookWorker(redis, settings))
