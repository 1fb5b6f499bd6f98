"""Payment intents: the durable log of a checkout, one per Idempotency-Key.

An intent is written before the gateway is called and moves through explicit states, each
a durable step that can be re-run (every external call it makes is idempotent: the gateway
by the intent's key, the show by the command id):

    created -> authorised -> confirmed -> captured -> done          (booked: 201)
            \\-> pending (an asynchronous payment; its webhook settles it)
    final without a booking: declined (402), voided (authorised, seats lost: the
    authorisation voided), refunded (captured or confirmed, then undone), abandoned (the
    gateway never took the payment)

`checkout.drive` is the state machine; the web request that made the intent runs it, and
the reconciler (booking/reconciler.py) runs it for every intent that stopped short of a
final state (a crash, an outage). Keys (all with the show's hash tag but the index):

- `idem:{<show>}:<hold>:<sha256(key)>`   the intent (JSON); kept 7 days once final
- `checkout:{<show>}:<hold>`             which intent is checking this hold out: one at a
                                         time, so two keys cannot both use a promo code
- `lease:{<show>}:<hold>:<sha256(key)>`  who is driving it now (the request, or a reconciler)
- `intents:open`                          sorted set of open intents' keys by last update

The index is one global key (the reconciler must find every open intent), so it is never
in a script or MULTI with the show-tagged keys: it is written in its own step, ordered so
no open intent is ever missing from it (indexed before it is claimed, unindexed only after
it is saved final); an entry whose intent is gone or final is dropped by the reconciler.
"""
from __future__ import annotations

from typing import Literal

import msgspec
import redis.asyncio as aioredis

from server.booking.records import PaymentInfo, Quote

IntentState = Literal["created", "authorised", "confirmed", "captured", "pending",
                      "done", "declined", "voided", "refunded", "abandoned"]
OPEN: frozenset[str] = frozenset({"created", "authorised", "confirmed", "captured", "pending"})
FINAL_TTL_S = 7 * 24 * 3600   # a final intent answers its key's retries this long
HOLD_LOCK_TTL_S = 3 * 3600    # past any hold's lifetime: no checkout of that hold is left
# A driver's lease, renewed at every step it records: a crashed driver's intent is free
# again this soon. A step that outlasts it (an actor call retried for 30 s) may meet a
# second driver: harmless, every step is idempotent and decided by the same answers.
LEASE_MS = 15_000
OPEN_INDEX = "intents:open"


class BookingFacts(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the Confirm command carries into the show's log: with the hold's seats and
    quote it is the whole booking (booking records are projections of it)."""

    email: str
    name: str
    payment: PaymentInfo
    created_ms: int
    customer_id: str | None = None
    phone: str | None = None       # sealed (server/core/pii.py)
    id_number: str | None = None   # sealed


facts_encoder = msgspec.msgpack.Encoder()
facts_decoder = msgspec.msgpack.Decoder(BookingFacts)


class PaymentIntent(msgspec.Struct, kw_only=True):
    key: str               # its own Redis key
    state: IntentState
    fingerprint: str       # what makes a retry with the key the same checkout
    show_id: str
    hold_id: str
    booking_id: str        # chosen up front: the Confirm's and the booking's id
    token_hash: str        # the hold's holder token hash (the actor checks it)
    quote: Quote
    seats: list[str]
    email: str
    name: str
    customer_id: str | None = None
    phone: str | None = None
    id_number: str | None = None
    # The promo code use this checkout consumes (who it counts for); given back when the
    # intent ends without a booking (giving back is idempotent).
    promo_who: str | None = None
    payment: PaymentInfo | None = None
    async_payment: bool = False  # the gateway settles it later (state "pending")
    status: int = 0        # final: the HTTP answer
    body: msgspec.Raw = msgspec.Raw(b"null")
    created_ms: int = 0
    updated_ms: int = 0

    @property
    def open(self) -> bool:
        return self.state in OPEN

    def facts(self) -> BookingFacts:
        assert self.payment is not None
        return BookingFacts(self.email, self.name, self.payment, self.created_ms,
                            self.customer_id, self.phone, self.id_number)


_decoder = msgspec.json.Decoder(PaymentIntent)


def hold_lock_key(show_id: str, hold_id: str) -> str:
    return f"checkout:{{{show_id}}}:{hold_id}"


def lease_key(intent_key: str) -> str:
    return "lease:" + intent_key.removeprefix("idem:")


# KEYS: intent, hold lock, lease. ARGV: intent JSON, lease ms, hold lock s.
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur then return {'exists', cur} end
local other = redis.call('GET', KEYS[2])
if other and other ~= KEYS[1] then return {'busy', other} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], KEYS[1], 'EX', ARGV[3])
redis.call('SET', KEYS[3], 'live', 'PX', ARGV[2])
return {'claimed'}
"""

# KEYS: intent, hold lock, lease. ARGV: intent JSON, final (1/0), final TTL s, lease ms.
_SAVE = """
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], ARGV[4]) end
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  if redis.call('GET', KEYS[2]) == KEYS[1] then redis.call('DEL', KEYS[2]) end
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""


class Busy(Exception):
    """Another checkout of the same hold is open: `str(exc)` is its intent key."""


async def claim(redis: aioredis.Redis, intent: PaymentIntent) -> PaymentIntent | None:
    """Write a new intent, its hold lock and its lease: None, or the intent that already
    has the key; raises Busy while another key checks the hold out."""
    # Indexed first: a crash right after the claim still leaves it where the
    # reconciler looks (an index entry without an intent is dropped there).
    await redis.zadd(OPEN_INDEX, {intent.key: intent.updated_ms})
    got = await redis.eval(_CLAIM, 3, intent.key, hold_lock_key(intent.show_id, intent.hold_id),
                           lease_key(intent.key), msgspec.json.encode(intent), LEASE_MS,
                           HOLD_LOCK_TTL_S)
    verdict = got[0].decode() if isinstance(got[0], bytes) else got[0]
    if verdict == "claimed":
        return None
    if verdict == "busy":
        other = await load(redis, got[1].decode())
        if other is None or not other.open:  # it ended meanwhile: the lock is stale
            await redis.delete(hold_lock_key(intent.show_id, intent.hold_id))
            return await claim(redis, intent)
        raise Busy(other.key)
    return _decoder.decode(got[1])


async def load(redis: aioredis.Redis, key: str) -> PaymentIntent | None:
    raw = await redis.get(key)
    return _decoder.decode(raw) if raw else None


async def save(redis: aioredis.Redis, intent: PaymentIntent) -> None:
    """Record a step. A final intent frees its hold's lock and leaves the open index."""
    final = not intent.open
    # The intent first, the index after (two slots): a crash between them leaves a final
    # intent indexed (the reconciler re-saves it) or an open one at its older score (due
    # sooner), never an open intent unindexed.
    await redis.eval(_SAVE, 3, intent.key, hold_lock_key(intent.show_id, intent.hold_id),
                     lease_key(intent.key), msgspec.json.encode(intent),
                     "1" if final else "0", FINAL_TTL_S, LEASE_MS)
    if final:
        await redis.zrem(OPEN_INDEX, intent.key)
    else:
        await redis.zadd(OPEN_INDEX, {intent.key: intent.updated_ms})


async def forget(redis: aioredis.Redis, intent: PaymentIntent) -> None:
    """Nothing happened under this key (refused before paying): the key is free again.
    The intent goes before its index entry (a stale entry is dropped by the reconciler)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(intent.key, lease_key(intent.key))
        await pipe.execute()
    await redis.eval(_SAVE_FREE_LOCK, 1, hold_lock_key(intent.show_id, intent.hold_id),
                     intent.key)
    await redis.zrem(OPEN_INDEX, intent.key)


_SAVE_FREE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


async def take_lease(redis: aioredis.Redis, key: str, owner: str) -> bool:
    return bool(await redis.set(lease_key(key), owner, nx=True, px=LEASE_MS))


async def drop_lease(redis: aioredis.Redis, key: str) -> None:
    await redis.delete(lease_key(key))


async def due(redis: aioredis.Redis, before_ms: int, limit: int = 100) -> list[str]:
    """Open intents last touched before `before_ms`, oldest first."""
    keys = await redis.zrangebyscore(OPEN_INDEX, "-inf", before_ms, start=0, num=limit)
    return [k.decode() if isinstance(k, bytes) else k for k in keys]


async def unindex(redis: aioredis.Redis, key: str) -> None:
    await redis.zrem(OPEN_INDEX, key)
