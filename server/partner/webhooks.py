"""Partner webhooks: registered endpoints, the fan-out from the outbox, and delivery.

Two stages, both durable in Redis:

1. Fan-out — the outbox consumer group `webhooks`. For each event it finds the partner
   (the event's `partner_id`, else the owner of `data.show_id` in the catalog) and, for
   each of that partner's endpoints subscribed to the event type, creates one delivery
   (id derived from event id + endpoint id, so a redelivered event creates nothing new)
   and schedules it in the queue (`webhooks:{wh}:due`). The event is acknowledged after that.
2. Delivery — a loop takes due deliveries and starts each as its own task, never waiting
   for one before taking the next: at most `MAX_INFLIGHT` in flight per process and
   `PER_ENDPOINT` per endpoint (counted in Redis, across processes), so an endpoint that
   hangs until the timeout holds its own few slots and nobody else's. Taking a delivery
   is a lease (its due time pushed forward while it is attempted, and a slot in the
   endpoint's in-flight set until then, so a crashed worker's delivery is retried and its
   slots come back). A due delivery whose endpoint has its slots in use is parked on that
   endpoint (out of the shared queue, so it does not hold up other receivers) and put
   back when one of the endpoint's attempts ends. Each attempt POSTs the JSON body with
       X-BMM-Event-Id:   the event id (receivers dedupe on it)
       X-BMM-Timestamp:  Unix seconds of this attempt
       X-BMM-Signature:  sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
   A 2xx is success. Anything else (or a timeout / refused connection) is retried with
   exponential backoff (`webhook_retry_s` doubled per attempt, capped at
   `webhook_retry_max_s`) up to `webhook_max_attempts`, then marked failed. Of the
   answer's body the first `RESPONSE_KEEP` bytes are kept for the log and the connection
   is then closed: the rest is never read. Every attempt is recorded in the delivery log
   the partner reads (webhooks_api.py), where a delivery can also be resent (a new
   delivery of the same event, same event id).

Signing secrets are encrypted at rest with the data key (server/core/pii.py, AES-256-GCM
bound to `webhook:<id>:secret`), decrypted only to sign. Records written before that
hold the secret in clear: they still sign, and are rewritten sealed on first use.

Keys (Redis Cluster: what one partner's writes touch together shares the partner's tag
`{p:<pid>}`; the delivery queue, whose scripts take due deliveries of every endpoint in one
atomic step, is one slot `{wh}`):
    partner:{p:<pid>}:webhooks          set of endpoint ids
    webhook:{p:<pid>}:<id>              JSON Endpoint (secret sealed: `pii1.…`; old: clear)
    webhook:{p:<pid>}:<id>:deliveries   zset delivery id -> created ms (the endpoint's log)
    whdelivery:{p:<pid>}:<id>           JSON Delivery (body, attempts, status, next retry)
    webhooks:{wh}:due                   zset "<pid>/<webhook id>/<delivery id>" -> due ms
    webhooks:{wh}:inflight:<webhook id> zset such members -> lease end ms (attempts under way)
    webhooks:{wh}:parked:<webhook id>   zset such members -> due ms (due, waiting for a slot)
    webhooks:{wh}:parked                set of endpoint ids with parked deliveries

Why one queue slot rather than a queue per partner: taking work must see, atomically, the
due order and each endpoint's in-flight count (the per-receiver cap, across processes)
and park what has no slot, for any mix of endpoints in one pass. In one slot that is one
script (`_TAKE`), exact under any number of workers, and a worker needs no index of which
partners have work. The queue holds only small members (the record lives in the partner's
slot), so its load grows with deliveries, never with a receiver's slowness: a slow
receiver's deliveries sit parked on its own zset, out of everybody else's way. A queue
entry names its partner and endpoint, so the worker finds the record without a lookup.
Writes that touch both sides are ordered single-slot steps: the record first (it is the
claim: SET NX), then the queue; a record that is not in the queue is put there again by a
redelivered event, and a queue entry whose record is not pending is dropped when taken.
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


from server.core import pii
from server.core.clock import from_ms, now_ms
from server.catalog.model import Show, catalog_key
from server.core.errors import ApiError
from server.core.outbox import Event, GroupConsumer, cancel_and_wait, run_with_app
from server.core.settings import Settings
from server.partner.ssrf import PublicResolver, check_delivery

log = logging.getLogger(__name__)

GROUP = "webhooks"
QUEUE_TAG = "{wh}"                      # the delivery queue's one slot (see the module doc)
DUE = f"webhooks:{QUEUE_TAG}:due"
PARKED = f"webhooks:{QUEUE_TAG}:parked"
LOG_LIMIT = 1000            # deliveries kept per endpoint log
DELIVERY_TTL_S = 30 * 24 * 3600
LEASE_MS = 60_000           # a delivery being attempted is not taken by another worker
MAX_ENDPOINTS = 10          # per partner
MAX_INFLIGHT = 64           # attempts under way in one process, all endpoints together
PER_ENDPOINT = 4            # attempts under way to one endpoint, all processes together
TAKE_AT_MOST = 256          # due deliveries looked at per pass
SWEEP_EVERY_S = 1.0         # parked deliveries of endpoints whose worker died: put back
RESPONSE_KEEP = 4096        # bytes of the receiver's answer kept in the log (newest attempt)
OLD_RESPONSE_KEEP = 256     # ... and of earlier attempts' answers
EXCERPT_WAIT_S = 2.0        # at most this long reading the excerpt once the status is in
PARTNER_EVENTS = ("booking.confirmed", "booking.cancelled", "show.sold_out", "show.cancelled")
# What a partner sees of a booking: no customer contact details.
PRIVATE_FIELDS = ("email", "name", "phone", "customer_id")


class Endpoint(msgspec.Struct):
    webhook_id: str
    partner_id: str
    url: str
    secret: str     # sealed with the data key (`pii1.…`); records from before: in clear
    events: list[str]
    created_at: datetime
    description: str = ""


class Attempt(msgspec.Struct):
    at: datetime
    status_code: int | None   # None: no HTTP answer (refused, timeout)
    error: str | None
    duration_ms: int
    response_excerpt: str | None = None  # the answer's first bytes (RESPONSE_KEEP at most)


class Delivery(msgspec.Struct):
    delivery_id: str
    webhook_id: str
    partner_id: str  # the endpoint's: its records live under the partner's hash tag
    event_id: str
    event_type: str
    created_at: datetime
    body: str
    status: Literal["pending", "delivered", "failed"] = "pending"
    attempts: list[Attempt] = []
    next_retry_at: datetime | None = None
    resend_of: str | None = None   # the delivery a partner asked to send again


def partner_tag(partner_id: str) -> str:
    """The hash tag of everything one partner's writes touch together."""
    return f"{{p:{partner_id}}}"


def endpoint_key(partner_id: str, webhook_id: str) -> str:
    return f"webhook:{partner_tag(partner_id)}:{webhook_id}"


def partner_webhooks_key(partner_id: str) -> str:
    return f"partner:{partner_tag(partner_id)}:webhooks"


def delivery_key(partner_id: str, delivery_id: str) -> str:
    return f"whdelivery:{partner_tag(partner_id)}:{delivery_id}"


def endpoint_log_key(partner_id: str, webhook_id: str) -> str:
    return f"{endpoint_key(partner_id, webhook_id)}:deliveries"


def inflight_key(webhook_id: str) -> str:
    return f"webhooks:{QUEUE_TAG}:inflight:{webhook_id}"


def parked_key(webhook_id: str) -> str:
    return f"webhooks:{QUEUE_TAG}:parked:{webhook_id}"


def queue_member(delivery: Delivery) -> str:
    """A delivery's entry in the queue: enough to find its record and its endpoint's slots
    (ids hold no "/": partner ids are [A-Za-z0-9_-], the others are made here)."""
    return f"{delivery.partner_id}/{delivery.webhook_id}/{delivery.delivery_id}"


def parse_member(member: bytes | str) -> tuple[str, str, str] | None:
    """(partner id, webhook id, delivery id) of a queue entry; None if it is not one."""
    parts = (member.decode() if isinstance(member, bytes) else member).split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


async def due_at(redis: aioredis.Redis, delivery: Delivery) -> int | None:
    """When the delivery is due (ms; a lease end while attempted), None if not queued."""
    score = await redis.zscore(DUE, queue_member(delivery))
    return None if score is None else int(score)


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


# --- the signing secret at rest ------------------------------------------------------------

def secret_context(webhook_id: str) -> str:
    """Associated data: a sealed secret copied onto another endpoint does not decrypt."""
    return f"webhook:{webhook_id}:secret"


def is_sealed(stored: str) -> bool:
    return stored.startswith(pii.PREFIX + ".")


def seal_secret(settings: Settings, webhook_id: str, secret: str) -> str:
    """503 `no_data_key` when the server has no data key (nothing is stored then)."""
    return pii.settings_cipher(settings).encrypt(secret, secret_context(webhook_id))


def signing_secret(settings: Settings, endpoint: Endpoint) -> str:
    """The secret in clear, to sign with. ValueError / KeyError if it cannot be decrypted
    (altered, or sealed with a key no longer configured); ApiError if there is no key."""
    if not is_sealed(endpoint.secret):
        return endpoint.secret  # written before secrets were sealed
    return pii.settings_cipher(settings).decrypt(endpoint.secret,
                                                 secret_context(endpoint.webhook_id))


def needs_sealing(settings: Settings, endpoint: Endpoint) -> bool:
    """In clear, or sealed with a retired key: rewrite it (with the current key)."""
    if not is_sealed(endpoint.secret):
        return True
    return bool(settings.data_key) and pii.settings_cipher(settings).needs_rotation(
        endpoint.secret)


_endpoint_decoder = msgspec.json.Decoder(Endpoint)
_delivery_decoder = msgspec.json.Decoder(Delivery)
_encoder = msgspec.json.Encoder()


# --- endpoints (used by webhooks_api.py) -------------------------------------------------

async def create_endpoint(redis: aioredis.Redis, settings: Settings, partner_id: str, url: str,
                          events: list[str], description: str = ""
                          ) -> tuple[Endpoint, str] | None:
    """A new endpoint and its fresh secret in clear (the endpoint holds it sealed); None if
    the partner has MAX_ENDPOINTS already."""
    webhook_id = "wh_" + secrets.token_hex(10)
    secret = new_secret()
    endpoint = Endpoint(webhook_id, partner_id, url, seal_secret(settings, webhook_id, secret),
                        events, datetime.now(UTC).replace(microsecond=0), description)
    ok = await _CREATE(keys=[partner_webhooks_key(partner_id),
                             endpoint_key(partner_id, endpoint.webhook_id)],
                       args=[endpoint.webhook_id, _encoder.encode(endpoint), MAX_ENDPOINTS],
                       client=redis)
    return (endpoint, secret) if ok else None


async def load_endpoint(redis: aioredis.Redis, partner_id: str, webhook_id: str
                        ) -> Endpoint | None:
    raw = await redis.get(endpoint_key(partner_id, webhook_id))
    return _endpoint_decoder.decode(raw) if raw else None


async def reseal_endpoint(redis: aioredis.Redis, settings: Settings, endpoint: Endpoint,
                          secret: str, stored: bytes) -> bool:
    """Save `endpoint` with `secret` sealed under the current key, if its record is still
    `stored` (nobody changed or deleted it meanwhile). True if rewritten."""
    sealed = msgspec.structs.replace(
        endpoint, secret=seal_secret(settings, endpoint.webhook_id, secret))
    return bool(await _REPLACE(keys=[endpoint_key(endpoint.partner_id, endpoint.webhook_id)],
                               args=[stored, _encoder.encode(sealed)], client=redis))


async def partner_endpoints(redis: aioredis.Redis, partner_id: str) -> list[Endpoint]:
    """A partner's endpoints, oldest first (by creation time, then id)."""
    ids = sorted(m.decode() for m in await redis.smembers(partner_webhooks_key(partner_id)))
    if not ids:
        return []
    raws = await redis.mget([endpoint_key(partner_id, i) for i in ids])  # one slot
    out = [_endpoint_decoder.decode(r) for r in raws if r]
    return sorted(out, key=lambda e: (e.created_at, e.webhook_id))


async def delete_endpoint(redis: aioredis.Redis, endpoint: Endpoint) -> None:
    pid, wid = endpoint.partner_id, endpoint.webhook_id
    async with redis.pipeline(transaction=True) as pipe:  # the partner's slot
        pipe.srem(partner_webhooks_key(pid), wid)
        pipe.delete(endpoint_key(pid, wid))
        pipe.expire(endpoint_log_key(pid, wid), DELIVERY_TTL_S)
        await pipe.execute()
    # Then the queue's slot: its parked deliveries go back to the queue, where the worker
    # marks them failed (the endpoint is gone). Should this step be lost, the periodic
    # sweep puts them back instead.
    await _UNPARK_ALL(keys=[DUE, PARKED, parked_key(wid), inflight_key(wid)],
                      args=[wid], client=redis)


async def endpoint_deliveries(redis: aioredis.Redis, partner_id: str, webhook_id: str,
                              limit: int = 50, after: tuple[int, str] | None = None
                              ) -> tuple[list[Delivery], tuple[int, str] | None]:
    """A page of the endpoint's log, newest first: the deliveries after position `after`
    (created ms, delivery id) and the position to continue from (None: no more)."""
    key = endpoint_log_key(partner_id, webhook_id)
    entries: list[tuple[bytes, float]] = []
    if after is None:
        entries = await redis.zrevrange(key, 0, limit, withscores=True)
    else:
        score, last = after[0], after[1].encode()
        # Same time as the last one shown: those that sort before it (newest first is
        # reverse order of (score, id)), then everything older.
        ties = await redis.zrevrangebyscore(key, score, score, withscores=True)
        entries = [(m, s) for m, s in ties if m < last][:limit + 1]
        if len(entries) <= limit:
            entries += await redis.zrevrangebyscore(key, f"({score}", "-inf", start=0,
                                                    num=limit + 1 - len(entries),
                                                    withscores=True)
    more = len(entries) > limit
    entries = entries[:limit]
    if not entries:
        return [], None
    raws = await redis.mget([delivery_key(partner_id, m.decode()) for m, _ in entries])
    found = [_delivery_decoder.decode(r) for r in raws if r]
    position = (int(entries[-1][1]), entries[-1][0].decode()) if more else None
    return found, position


async def load_delivery(redis: aioredis.Redis, partner_id: str, delivery_id: str
                        ) -> Delivery | None:
    raw = await redis.get(delivery_key(partner_id, delivery_id))
    return _delivery_decoder.decode(raw) if raw else None


async def resend(redis: aioredis.Redis, original: Delivery) -> Delivery:
    """Send `original`'s event to its endpoint again, now: a new delivery (its own
    attempts, at the top of the log) with the same event id and body."""
    now = now_ms()
    delivery = Delivery("dlv_" + secrets.token_hex(12), original.webhook_id,
                        original.partner_id, original.event_id, original.event_type,
                        from_ms(now), original.body, next_retry_at=from_ms(now),
                        resend_of=original.delivery_id)
    await schedule(redis, delivery, now)
    return delivery


async def schedule(redis: aioredis.Redis, delivery: Delivery, now: int) -> bool:
    """Store a new delivery, due at `now`; False if one with its id exists already.

    Two single-slot steps: the record and the endpoint's log (the partner's slot; SET NX
    is the claim), then the queue. A repeat (the outbox redelivers an event whose fan-out
    stopped between the two) finds the record and queues it if it is still pending."""
    pid, did = delivery.partner_id, delivery.delivery_id
    created = bool(await _SCHEDULE(
        keys=[delivery_key(pid, did), endpoint_log_key(pid, delivery.webhook_id)],
        args=[did, _encoder.encode(delivery), now, DELIVERY_TTL_S, LOG_LIMIT], client=redis))
    if not created:
        found = await load_delivery(redis, pid, did)
        if found is None or found.status != "pending":
            return False
    await _ENQUEUE(keys=[DUE, inflight_key(delivery.webhook_id),
                         parked_key(delivery.webhook_id)],
                   args=[queue_member(delivery), now], client=redis)
    return created


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

# KEYS: endpoint key. ARGV: the record as read, the new record. Compare and set.
_REPLACE = _Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
""")

# KEYS: delivery key, endpoint log (one partner's slot). ARGV: id, json, now ms, ttl s,
# log limit
_SCHEDULE = _Script("""
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local n = redis.call('ZCARD', KEYS[2])
if n > tonumber(ARGV[5]) then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - tonumber(ARGV[5]) - 1) end
return 1
""")

# Queue a delivery unless it is queued, being attempted or parked already (so a repeat
# never makes a second copy). KEYS: due zset, the endpoint's in-flight and parked zsets
# (the queue's slot). ARGV: queue member, due ms.
_ENQUEUE = _Script("""
if redis.call('ZSCORE', KEYS[2], ARGV[1]) or redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  return 0
end
return redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
""")

# Lease due deliveries, at most `cap` in flight per endpoint and `room` in all; park the
# due ones of endpoints with no slot free.
# KEYS: due zset, parked set, then per endpoint: its in-flight zset, its parked zset.
# ARGV: now ms, lease end ms, cap, room, then per endpoint: webhook id, n, n queue members.
# Returns {leased members, number parked}. All keys are in the queue's slot.
_TAKE = _Script("""
local now, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local cap, room = tonumber(ARGV[3]), tonumber(ARGV[4])
local taken, parked = {}, 0
local a, k = 5, 3
while a <= #ARGV do
  local wid, n = ARGV[a], tonumber(ARGV[a + 1])
  local inflight, park = KEYS[k], KEYS[k + 1]
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
  local free = cap - redis.call('ZCARD', inflight)
  for i = a + 2, a + 1 + n do
    local id = ARGV[i]
    local due = redis.call('ZSCORE', KEYS[1], id)
    if due and tonumber(due) <= now then
      if free <= 0 then
        redis.call('ZREM', KEYS[1], id)
        redis.call('ZADD', park, due, id)
        redis.call('SADD', KEYS[2], wid)
        parked = parked + 1
      elseif room > 0 then
        redis.call('ZADD', KEYS[1], lease, id)
        redis.call('ZADD', inflight, lease, id)
        taken[#taken + 1] = id
        free = free - 1
        room = room - 1
      end
    end
  end
  a = a + 2 + n
  k = k + 2
end
return {taken, parked}
""")

# An attempt is over (or, member "", a sweep): free its slot, and put back as many of the
# endpoint's parked deliveries as it has slots free.
# KEYS: due zset, parked set, the endpoint's in-flight zset, its parked zset.
# ARGV: queue member, webhook id, now ms, cap, due again at ms (0: leave its due time).
_RELEASE = _Script("""
redis.call('ZREM', KEYS[3], ARGV[1])
if tonumber(ARGV[5]) > 0 then redis.call('ZADD', KEYS[1], 'XX', ARGV[5], ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[3])
local free = tonumber(ARGV[4]) - redis.call('ZCARD', KEYS[3])
local moved = 0
if free > 0 then
  local ids = redis.call('ZRANGE', KEYS[4], 0, free - 1, 'WITHSCORES')
  for i = 1, #ids, 2 do
    redis.call('ZADD', KEYS[1], ids[i + 1], ids[i])
    redis.call('ZREM', KEYS[4], ids[i])
    moved = moved + 1
  end
end
if redis.call('EXISTS', KEYS[4]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return moved
""")

# The endpoint is gone: all its parked deliveries back to the queue.
# KEYS: due zset, parked set, its parked zset, its in-flight zset. ARGV: webhook id.
_UNPARK_ALL = _Script("""
local ids = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
for i = 1, #ids, 2 do redis.call('ZADD', KEYS[1], ids[i + 1], ids[i]) end
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('SREM', KEYS[2], ARGV[1])
return #ids / 2
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


async def read_excerpt(content: aiohttp.StreamReader, limit: int = RESPONSE_KEEP
                       ) -> tuple[bytes, bool]:
    """At most `limit` bytes of a body, and whether that was all of it. The reader holds
    at most its own small buffer: what is not asked for is never read into memory."""
    got = bytearray()
    while len(got) < limit:
        chunk = await content.read(limit - len(got))
        if not chunk:
            return bytes(got), True
        got += chunk
    return bytes(got), content.at_eof()


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8 (never inside a character)."""
    return text.encode()[:limit].decode("utf-8", "ignore")


def excerpt_text(raw: bytes) -> str | None:
    return clip(raw.decode("utf-8", "replace"), RESPONSE_KEEP) if raw else None


class WebhookWorker:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.retry_ms = max(1, int(settings.webhook_retry_s * 1000))
        self.retry_max_ms = max(self.retry_ms, int(settings.webhook_retry_max_s * 1000))
        # A lease outlives the attempt it covers (request timeout plus the Redis writes).
        self.lease_ms = max(LEASE_MS, int(settings.webhook_timeout_s * 1000) + 30_000)
        self.consumer = GroupConsumer(redis, GROUP, self.fan_out,
                                      retry_s=min(settings.webhook_retry_s, 5.0),
                                      retry_max_s=settings.webhook_retry_max_s,
                                      claim_idle_s=settings.outbox_claim_idle_s)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._swept = 0.0

    def start(self) -> None:
        # Public addresses only (server/partner/ssrf.py): partners choose these URLs.
        allow_private = self.settings.webhook_private_targets
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s),
            connector=aiohttp.TCPConnector(resolver=PublicResolver(allow_private),
                                           limit=MAX_INFLIGHT))
        self.consumer.start()
        self._task = asyncio.create_task(self._deliver_loop(), name="webhooks:deliver")

    def wake(self) -> None:
        """Something was scheduled (a resend): look at the queue now."""
        self._wake.set()

    async def stop(self) -> None:
        await self.consumer.stop()
        if self._task is not None:
            await cancel_and_wait(self._task)
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            # Bounded: a shutdown does not wait on a receiver (an interrupted delivery is
            # due again, and is made by whichever worker runs next).
            _, stuck = await asyncio.wait(set(self._inflight), timeout=5)
            if stuck:
                log.warning("webhooks: %d deliveries did not stop within 5 s", len(stuck))
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
            await schedule(self.redis, Delivery(
                delivery_id_for(event.id, endpoint.webhook_id), endpoint.webhook_id,
                partner_id, event.id, event.type, from_ms(now), body,
                next_retry_at=from_ms(now)), now)
        self._wake.set()
        return True

    # -- stage 2: delivery --

    async def _deliver_loop(self) -> None:
        while True:
            self._wake.clear()  # before looking: a wake-up from now on is not missed
            try:
                moved = await self.deliver_due()
                wait = await self._next_wait()
                if not moved:
                    wait = max(wait, 0.05)  # nothing could be done: no busy loop
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("webhooks: redis error %s; retrying", exc)
                wait = 1.0
            except Exception:
                log.exception("webhooks: unexpected error")
                wait = 1.0
            if wait > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except TimeoutError:
                    pass

    async def _next_wait(self) -> float:
        """Seconds until the next delivery is due (other processes may schedule some too:
        never sleep longer than a second); with every slot in use, until one is free."""
        if len(self._inflight) >= MAX_INFLIGHT:
            return 1.0  # an attempt ending sets _wake
        first = await self.redis.zrange(DUE, 0, 0, withscores=True)
        if not first:
            return 1.0
        return max(0.0, min(1.0, (first[0][1] - now_ms()) / 1000))

    async def deliver_due(self) -> int:
        """Start an attempt for each due delivery there is a slot for, and return without
        waiting for any. Returns how many due deliveries it acted on (started, parked,
        or dropped as no longer pending)."""
        acted = 0
        if time.monotonic() - self._swept >= SWEEP_EVERY_S:
            self._swept = time.monotonic()
            acted += await self._sweep_parked()
        room = MAX_INFLIGHT - len(self._inflight)
        if room <= 0:
            return acted
        now = now_ms()
        members = [m.decode() for m in await self.redis.zrangebyscore(
            DUE, "-inf", now, start=0, num=min(TAKE_AT_MOST, room * 2))]
        if not members:
            return acted
        # The entry names its endpoint: no record is read to take it (one that is no
        # longer pending is dropped by its attempt).
        by_endpoint: dict[str, list[str]] = {}
        names: dict[str, tuple[str, str, str]] = {}
        gone: list[str] = []
        for member in members:
            parsed = parse_member(member)
            if parsed is None:
                log.error("webhooks: unreadable queue entry %r dropped", member)
                gone.append(member)
            else:
                names[member] = parsed
                by_endpoint.setdefault(parsed[1], []).append(member)
        if gone:
            await self.redis.zrem(DUE, *gone)
        keys, args = [DUE, PARKED], [now, now + self.lease_ms, PER_ENDPOINT, room]
        for webhook_id, group in by_endpoint.items():
            keys += [inflight_key(webhook_id), parked_key(webhook_id)]
            args += [webhook_id, len(group), *group]
        taken, parked = (await _TAKE(keys=keys, args=args, client=self.redis)
                         if by_endpoint else ([], 0))
        for raw in taken:
            member = raw.decode()
            pid, wid, did = names[member]
            task = asyncio.create_task(self._attempt(member, pid, wid, did),
                                       name=f"webhooks:{did}")
            self._inflight.add(task)
            task.add_done_callback(self._done)
        return acted + len(gone) + len(taken) + int(parked)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def _sweep_parked(self) -> int:
        """Put back parked deliveries of endpoints with a slot free: normally done when an
        attempt ends; this covers a worker that died with its slots leased."""
        moved = 0
        now = now_ms()
        for raw in await self.redis.smembers(PARKED):
            webhook_id = raw.decode()
            moved += int(await _RELEASE(
                keys=[DUE, PARKED, inflight_key(webhook_id), parked_key(webhook_id)],
                args=["", webhook_id, now, PER_ENDPOINT, 0], client=self.redis))
        return moved

    async def _release(self, member: str, webhook_id: str, *, again: bool) -> None:
        """The attempt's slot is free (and, `again`, the delivery due now: an attempt cut
        short by shutdown is not left waiting for its lease to run out)."""
        now = now_ms()
        try:
            moved = await _RELEASE(
                keys=[DUE, PARKED, inflight_key(webhook_id), parked_key(webhook_id)],
                args=[member, webhook_id, now, PER_ENDPOINT, now if again else 0],
                client=self.redis)
        except (RedisError, OSError) as exc:  # the lease runs out: the sweep puts it back
            log.warning("webhooks: releasing %s: %s", member, exc)
            return
        if moved:
            self._wake.set()

    async def _attempt(self, member: str, partner_id: str, webhook_id: str,
                       delivery_id: str) -> None:
        cut_short = False
        try:
            await self._attempt_once(member, partner_id, delivery_id)
        except asyncio.CancelledError:  # shutting down: due again now, for another worker
            cut_short = True
            raise
        except Exception:  # Redis down, a broken record: tried again when the lease ends
            log.exception("webhooks: attempt of %s", delivery_id)
        finally:
            await asyncio.shield(self._release(member, webhook_id, again=cut_short))

    async def _attempt_once(self, member: str, partner_id: str, delivery_id: str) -> None:
        raw = await self.redis.get(delivery_key(partner_id, delivery_id))
        try:
            delivery = _delivery_decoder.decode(raw) if raw else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("webhooks: unreadable delivery %s dropped", delivery_id)
            delivery = None
        if delivery is None or delivery.status != "pending":
            await self.redis.zrem(DUE, member)  # expired, finished, or a stale repeat
            return
        stored = await self.redis.get(endpoint_key(partner_id, delivery.webhook_id))
        endpoint = _endpoint_decoder.decode(stored) if stored else None
        if endpoint is None:  # deleted meanwhile
            delivery.status, delivery.next_retry_at = "failed", None
            delivery.attempts.append(Attempt(datetime.now(UTC), None, "webhook deleted", 0))
            await self._save(delivery, done=True)
            return
        try:
            secret: str | None = signing_secret(self.settings, endpoint)
        except (ValueError, KeyError, ApiError) as exc:
            log.error("webhooks: cannot decrypt the secret of %s: %s", endpoint.webhook_id, exc)
            secret = None
        if secret is None:
            status, error, took, excerpt = None, "signing secret unavailable", 0, None
        else:
            status, error, took, excerpt = await self._post(endpoint, secret, delivery)
            if needs_sealing(self.settings, endpoint) and stored is not None:
                await self._reseal(endpoint, secret, stored)
        for old in delivery.attempts:  # the newest answer is kept whole, earlier ones short
            if old.response_excerpt:
                old.response_excerpt = clip(old.response_excerpt, OLD_RESPONSE_KEEP)
        delivery.attempts.append(Attempt(datetime.now(UTC), status, error, took, excerpt))
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

    async def _reseal(self, endpoint: Endpoint, secret: str, stored: bytes) -> None:
        """A record from before secrets were sealed (or sealed with a retired key):
        rewritten sealed with the current key."""
        try:
            if await reseal_endpoint(self.redis, self.settings, endpoint, secret, stored):
                log.info("webhooks: sealed the signing secret of %s", endpoint.webhook_id)
        except ApiError:  # no data key on this server: stays as it is
            pass

    async def _post(self, endpoint: Endpoint, secret: str, delivery: Delivery
                    ) -> tuple[int | None, str | None, int, str | None]:
        """(status, error, duration ms, the answer's first RESPONSE_KEEP bytes)."""
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
            "X-BMM-Signature": sign(secret, timestamp, body),
        }
        started = time.monotonic()
        excerpt: str | None = None
        try:
            await check_delivery(endpoint.url, self.settings.webhook_private_targets)
            async with self._session.post(endpoint.url, data=body, headers=headers,
                                          allow_redirects=False) as resp:
                status, error = resp.status, None if resp.status < 300 else f"HTTP {resp.status}"
                # The status is the answer; of the body only an excerpt, read briefly.
                raw, whole = b"", False
                try:
                    async with asyncio.timeout(EXCERPT_WAIT_S):
                        raw, whole = await read_excerpt(resp.content)
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass
                excerpt = excerpt_text(raw)
                if not whole:
                    resp.close()  # the rest is not read: the connection is dropped
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"[:300]
        return status, error, int((time.monotonic() - started) * 1000), excerpt

    async def _save(self, delivery: Delivery, *, done: bool, due_ms: int = 0) -> None:
        """The record (the partner's slot), then the queue (its own slot). Stopped between
        the two, the entry keeps its lease time: taken again then, and dropped if the
        record says it is finished (or attempted early if it was a retry)."""
        await self.redis.set(delivery_key(delivery.partner_id, delivery.delivery_id),
                             _encoder.encode(delivery), ex=DELIVERY_TTL_S)
        if done:
            await self.redis.zrem(DUE, queue_member(delivery))
        else:
            await self.redis.zadd(DUE, {queue_member(delivery): due_ms})


WEBHOOKS = web.AppKey("webhook_worker", WebhookWorker)


def setup(app: web.Application, settings: Settings, redis_url: str) -> None:
    """Runs this process's webhook delivery while the app runs."""
    run_with_app(app, WEBHOOKS, redis_url, lambda redis: WebhookWorker(redis, settings))
