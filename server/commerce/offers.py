"""Offers and promo codes in Redis, and promo-code usage counting.

Records (JSON of `server.pricing.Offer` / `PromoCode`):

- `offers:platform` / `offers:{p:<partner_id>}`: hashes offer id -> offer. A quote reads
  the platform's hash and the show's partner's hash in one round trip (a non-transactional
  pipeline: on a Redis Cluster they may live on different nodes).
- `promo:{<CODE>}`: one promo code; `promos:platform` / `promos:{p:<id>}`: sets of codes
  (for listing). Codes are upper-case and unique across the platform. A code and its
  owner's list are in different slots (the code's tag is the code: it is found by the code
  alone, and its usage scripts run in its slot), so creating one is two steps: the code is
  added to the owner's list, then claimed (SET NX). The list is only a hint: a listed code
  counts only if its record exists and names that owner, so a half-made one is not shown,
  and a code lost to another owner is taken off the list again.

Usage of a promo code with limits (`max_uses` in total, `max_uses_per_customer`), all keys
under the code's hash tag `{<CODE>}` and changed only by the Lua scripts below, so the limits
hold under any concurrency (one script runs at a time, atomically):

- a **reservation** is taken when seats are held with the code: `...:res` (sorted set hold
  id -> until ms), `...:res_who` (hold id -> customer), `...:res_by` (customer -> count).
  It lasts as long as the hold (+ a grace for a checkout in flight) and moves with PATCH
  (extend). A released hold drops it; an expired one lapses: expired reservations are
  purged at the start of every script, so they stop counting once the hold is over.
- checkout **consumes** it: `...:used` (count), `...:used_by` (customer -> count),
  `...:consumed` (hold ids: a retried consume is a no-op). If the reservation lapsed
  meanwhile, the consume re-checks the limits itself. A checkout that fails after consuming
  gives the use back (`unconsume`).

  reserved + used never exceeds `max_uses`; a customer's reserved + used never exceeds
  `max_uses_per_customer`. The customer is the logged-in customer's id, or the e-mail
  address given (lower-cased) for a guest; checkout must be by the same customer.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis

from server.commerce.pricing import Offer, PromoCode
from server.catalog.model import catalog_key
from server.catalog.show_cache import ALL_SHOWS, SHOWS_CHANNEL

RESERVATION_GRACE_MS = 120_000  # a checkout that started before the hold ran out finishes


def offers_key(partner_id: str | None) -> str:
    return f"offers:{{p:{partner_id}}}" if partner_id else "offers:platform"


def promos_key(partner_id: str | None) -> str:
    return f"promos:{{p:{partner_id}}}" if partner_id else "promos:platform"


def promo_key(code: str) -> str:
    return f"promo:{{{code}}}"


def usage_keys(code: str) -> list[str]:
    base = promo_key(code)
    return [f"{base}:used", f"{base}:used_by", f"{base}:res", f"{base}:res_who",
            f"{base}:res_by", f"{base}:consumed"]


def normalise_code(code: str) -> str:
    return code.strip().upper()


def new_offer_id() -> str:
    return f"of_{secrets.token_hex(6)}"


_offer_decoder = msgspec.json.Decoder(Offer)
_promo_decoder = msgspec.json.Decoder(PromoCode)


# --- offers ----------------------------------------------------------------------------

async def save_offer(redis: aioredis.Redis, offer: Offer) -> None:
    """Save the offer, then tell every web process to drop its cached shows: their holds'
    pricing inputs carry the offers (booking/holding.py). Not one MULTI: PUBLISH has no key
    and a cluster transaction is bound to one slot; a publish lost to a crash in between
    only leaves caches as they are until their entries expire (seconds)."""
    await redis.hset(offers_key(offer.partner_id), offer.offer_id, msgspec.json.encode(offer))
    await redis.publish(SHOWS_CHANNEL, ALL_SHOWS)


async def list_offers(redis: aioredis.Redis, partner_id: str | None) -> list[Offer]:
    """The offers made by one owner (a partner, or the platform for None), by id."""
    raw = await redis.hvals(offers_key(partner_id))
    return sorted((_offer_decoder.decode(r) for r in raw), key=lambda o: o.offer_id)


async def get_offer(redis: aioredis.Redis, partner_id: str | None, offer_id: str
                    ) -> Offer | None:
    raw = await redis.hget(offers_key(partner_id), offer_id)
    return _offer_decoder.decode(raw) if raw else None


async def offers_for(redis: aioredis.Redis, partner_id: str) -> list[Offer]:
    """Every offer that could apply to a show of `partner_id` (pricing filters the rest)."""
    if not partner_id:
        return [_offer_decoder.decode(r) for r in await redis.hvals(offers_key(None))]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hvals(offers_key(None))
        pipe.hvals(offers_key(partner_id))
        platform, own = await pipe.execute()
    return [_offer_decoder.decode(r) for r in (*platform, *own)]


# --- promo codes -----------------------------------------------------------------------

async def create_promo(redis: aioredis.Redis, promo: PromoCode) -> bool:
    """Store a new promo code; False if the code exists already (anyone's).

    Listed first, then claimed (the two keys are in different slots): listing readers
    check the record, so a code listed but not (or not yet) claimed is not shown."""
    listing = promos_key(promo.partner_id)
    await redis.sadd(listing, promo.code)
    if await redis.set(promo_key(promo.code), msgspec.json.encode(promo), nx=True):
        return True
    existing = await get_promo(redis, promo.code)
    if existing is None or existing.partner_id != promo.partner_id:
        await redis.srem(listing, promo.code)  # someone else's code: not ours to list
    return False


async def save_promo(redis: aioredis.Redis, promo: PromoCode) -> None:
    await redis.set(promo_key(promo.code), msgspec.json.encode(promo))


async def get_promo(redis: aioredis.Redis, code: str) -> PromoCode | None:
    raw = await redis.get(promo_key(normalise_code(code)))
    return _promo_decoder.decode(raw) if raw else None


async def list_promos(redis: aioredis.Redis, partner_id: str | None) -> list[PromoCode]:
    """The codes of one owner, by code: those listed whose record exists and is theirs."""
    codes = sorted(c.decode() for c in await redis.smembers(promos_key(partner_id)))
    if not codes:
        return []
    # Each code is in its own slot: one GET each, in one round trip (not MGET, which a
    # cluster refuses across slots).
    async with redis.pipeline(transaction=False) as pipe:
        for code in codes:
            pipe.get(promo_key(code))
        raws = await pipe.execute()
    promos = [_promo_decoder.decode(r) for r in raws if r]
    return [p for p in promos if (p.partner_id or None) == (partner_id or None)]


# --- usage -----------------------------------------------------------------------------

# KEYS: used, used_by, res, res_who, res_by, consumed
_PURGE = """
local function purge(now)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  for _, hold in ipairs(gone) do
    local who = redis.call('HGET', KEYS[4], hold)
    if who then
      if redis.call('HINCRBY', KEYS[5], who, -1) <= 0 then redis.call('HDEL', KEYS[5], who) end
      redis.call('HDEL', KEYS[4], hold)
    end
    redis.call('ZREM', KEYS[3], hold)
  end
end
local function room(who, max_total, max_per)
  local used = tonumber(redis.call('GET', KEYS[1]) or '0')
  if max_total >= 0 and used + redis.call('ZCARD', KEYS[3]) >= max_total then
    return 'exhausted'
  end
  local mine = tonumber(redis.call('HGET', KEYS[2], who) or '0')
             + tonumber(redis.call('HGET', KEYS[5], who) or '0')
  if max_per >= 0 and mine >= max_per then return 'customer_limit' end
  return 'ok'
end
"""

# ARGV: hold, who, now_ms, until_ms, max_total (-1: none), max_per (-1: none)
_RESERVE = _PURGE + """
local hold, who = ARGV[1], ARGV[2]
purge(tonumber(ARGV[3]))
if redis.call('ZSCORE', KEYS[3], hold) then return 'ok' end
local verdict = room(who, tonumber(ARGV[5]), tonumber(ARGV[6]))
if verdict ~= 'ok' then return verdict end
redis.call('ZADD', KEYS[3], tonumber(ARGV[4]), hold)
redis.call('HSET', KEYS[4], hold, who)
redis.call('HINCRBY', KEYS[5], who, 1)
return 'ok'
"""

# ARGV: hold, now_ms
_RELEASE = _PURGE + """
purge(tonumber(ARGV[2]))
local hold = ARGV[1]
local who = redis.call('HGET', KEYS[4], hold)
if not who then return 0 end
if redis.call('HINCRBY', KEYS[5], who, -1) <= 0 then redis.call('HDEL', KEYS[5], who) end
redis.call('HDEL', KEYS[4], hold)
redis.call('ZREM', KEYS[3], hold)
return 1
"""

# ARGV: hold, until_ms
_EXTEND = """
return redis.call('ZADD', KEYS[3], 'XX', 'CH', tonumber(ARGV[2]), ARGV[1])
"""

# ARGV: hold, who, now_ms, max_total, max_per
_CONSUME = _PURGE + """
local hold, who = ARGV[1], ARGV[2]
if redis.call('SISMEMBER', KEYS[6], hold) == 1 then return 'repeat' end
purge(tonumber(ARGV[3]))
local holder = redis.call('HGET', KEYS[4], hold)
if holder then
  if holder ~= who then return 'wrong_customer' end
  if redis.call('HINCRBY', KEYS[5], who, -1) <= 0 then redis.call('HDEL', KEYS[5], who) end
  redis.call('HDEL', KEYS[4], hold)
  redis.call('ZREM', KEYS[3], hold)
else
  local verdict = room(who, tonumber(ARGV[4]), tonumber(ARGV[5]))
  if verdict ~= 'ok' then return verdict end
end
redis.call('INCR', KEYS[1])
redis.call('HINCRBY', KEYS[2], who, 1)
redis.call('SADD', KEYS[6], hold)
return 'ok'
"""

# ARGV: hold, who, until_ms (0: do not restore the reservation)
_UNCONSUME = """
if redis.call('SREM', KEYS[6], ARGV[1]) == 0 then return 0 end
redis.call('DECR', KEYS[1])
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
if tonumber(ARGV[3]) > 0 then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[3]), ARGV[1])
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
  redis.call('HINCRBY', KEYS[5], ARGV[2], 1)
end
return 1
"""


def _limit(value: int | None) -> int:
    return -1 if value is None else value


async def _run(redis: aioredis.Redis, script: str, code: str, *args: object) -> object:
    result = await redis.eval(script, 6, *usage_keys(code), *args)
    return result.decode() if isinstance(result, bytes) else result


async def reserve(redis: aioredis.Redis, promo: PromoCode, hold_id: str, who: str,
                  now_ms: int, until_ms: int) -> str:
    """'ok', 'exhausted' (no uses left) or 'customer_limit' (this customer's are used)."""
    return await _run(redis, _RESERVE, promo.code, hold_id, who, now_ms,
                      until_ms + RESERVATION_GRACE_MS, _limit(promo.max_uses),
                      _limit(promo.max_uses_per_customer))


async def release(redis: aioredis.Redis, code: str, hold_id: str, now_ms: int) -> bool:
    return bool(await _run(redis, _RELEASE, code, hold_id, now_ms))


async def extend(redis: aioredis.Redis, code: str, hold_id: str, until_ms: int) -> None:
    await _run(redis, _EXTEND, code, hold_id, until_ms + RESERVATION_GRACE_MS)


async def consume(redis: aioredis.Redis, promo: PromoCode, hold_id: str, who: str,
                  now_ms: int) -> str:
    """'ok' (consumed now), 'repeat' (consumed before, by this hold), 'wrong_customer' (the
    hold's reservation is another customer's), 'exhausted' or 'customer_limit'."""
    return await _run(redis, _CONSUME, promo.code, hold_id, who, now_ms,
                      _limit(promo.max_uses), _limit(promo.max_uses_per_customer))


async def unconsume(redis: aioredis.Redis, code: str, hold_id: str, who: str,
                    restore_until_ms: int | None = None) -> bool:
    """Give back a use a failed checkout consumed; with `restore_until_ms` (the hold is
    still live) the hold's reservation comes back too."""
    until = restore_until_ms + RESERVATION_GRACE_MS if restore_until_ms else 0
    return bool(await _run(redis, _UNCONSUME, code, hold_id, who, until))


@dataclass
class Usage:
    used: int
    reserved: int


async def usage(redis: aioredis.Redis, code: str, now_ms: int) -> Usage:
    used_key, _, res_key, *_ = usage_keys(code)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(used_key)
        pipe.zcount(res_key, f"({now_ms}", "+inf")
        used, reserved = await pipe.execute()
    return Usage(int(used or 0), int(reserved))


# --- what a quote needs, in one round trip ---------------------------------------------

_tz_decoder = msgspec.json.Decoder(dict)


async def pricing_inputs(redis: aioredis.Redis, theatre_id: str, partner_id: str
                         ) -> tuple[str, list[Offer]]:
    """(theatre time zone, offers that may apply): what every quote of a show needs."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(catalog_key("theatre", theatre_id or "-"))
        pipe.hvals(offers_key(None))
        pipe.hvals(offers_key(partner_id or "-"))
        raw_theatre, platform, own = await pipe.execute()
    timezone = "UTC"
    if raw_theatre:
        timezone = _tz_decoder.decode(raw_theatre).get("timezone") or "UTC"
    return timezone, [_offer_decoder.decode(r) for r in (*platform, *(own if partner_id else ()))]
