"""Recommendation data in Redis, fed by the outbox's booking.confirmed events.

Keys (all with the one hash tag `{rec}`: a booking's update spans the customer's history,
the movies' co-occurrences and the popularity sums in one script, and every rec read is a
small pipeline; one Redis Cluster slot for the family, on purpose):

    rec:{rec}:applied:<booking_id>   string  the booking was counted (idempotency; 90-day TTL)
    rec:{rec}:hist:<customer_id>     zset    movie id -> last booked (ms); newest 200 kept
    rec:{rec}:lang:<customer_id>     zset    show language (casefolded) -> bookings
    rec:{rec}:cooc:<movie_id>        zset    other movie id -> customers who booked both
    rec:{rec}:pop:city:<city slug>   zset    movie id -> bookings, time-decayed, relative to
                                             the epoch
    rec:{rec}:pop:all                zset    the same over every city
    rec:{rec}:pop:epoch              string  the epoch (ms) the popularity sums are relative to
    rec:{rec}:pop:keys               set     every rec pop zset (for the refresh)

`RecommendWorker` runs a `GroupConsumer` of its own group (`recommend`) on the outbox:
each booking.confirmed is applied by one Lua script (all of a booking's updates, or none;
a redelivered event is skipped by its `rec:applied` marker). Its refresh task moves the
popularity epoch to now every `refresh_s` (the sums become today's decayed values) and
drops movies whose weight decayed below `MIN_WEIGHT`. Guest bookings (no customer id)
count for popularity only. A script gets every key it touches in KEYS: the keys that
depend on data (the co-occurrence zsets of the customer's history, the pop zsets) are read
first and the script checks they are still the ones (else it changes nothing and the
caller reads again).

A customer's history and languages are theirs: the data export includes them and deleting
the account deletes them (registered with `server.booking.mine_api`; security review L15).
A booking event of an account deleted before the worker reached it counts as a guest's.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from actors import redis_conn

from server.accounts.users import user_key
from server.booking import mine_api
from server.discovery import recommend
from server.booking.records import load_booking
from server.catalog.service import city_slug, load
from server.catalog.model import Show
from server.core.outbox import Event, GroupConsumer

log = logging.getLogger(__name__)

GROUP = "recommend"
APPLIED_TTL_S = 90 * 24 * 3600
HISTORY_MAX = 200
MIN_WEIGHT = 0.01   # below this (about 7 half-lives for one booking) a movie is dropped
POPULAR_TOP = 200   # how many of a city's most popular movies a request looks at
TAG = "rec:{rec}:"
EPOCH = TAG + "pop:epoch"
POP_KEYS = TAG + "pop:keys"
POP_ALL = TAG + "pop:all"
RETRIES = 16  # a script refused because its data-dependent keys changed: read them again


def applied_key(booking_id: str) -> str:
    return f"{TAG}applied:{booking_id}"


def history_key(customer_id: str) -> str:
    return f"{TAG}hist:{customer_id}"


def languages_key(customer_id: str) -> str:
    return f"{TAG}lang:{customer_id}"


def cooc_key(movie_id: str) -> str:
    return f"{TAG}cooc:{movie_id}"


def city_key(city: str) -> str:
    return f"{TAG}pop:city:{city_slug(city)}"


# KEYS: applied, history, languages, pop city, pop all, epoch, pop keys, the movie's cooc,
# then the cooc zset of each movie in the history as the caller read it (ARGV[9..]).
# ARGV: movie, language, t_ms, half_life_ms, applied ttl, (unused), has customer, hist max,
# then the history's movies in ZRANGE order. Returns 1 applied, 0 applied before, -1 the
# history is no longer what the caller read (nothing done: read it again).
_APPLY = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local movie = ARGV[1]
local t = tonumber(ARGV[3])
local hist = {}
if ARGV[7] == '1' then
  hist = redis.call('ZRANGE', KEYS[2], 0, -1)
  if #hist ~= #ARGV - 8 then return -1 end
  for i = 1, #hist do
    if hist[i] ~= ARGV[8 + i] then return -1 end
  end
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[5])
local epoch = tonumber(redis.call('GET', KEYS[6]) or '')
if not epoch then
  epoch = t
  redis.call('SET', KEYS[6], ARGV[3])
end
local w = math.pow(2, (t - epoch) / tonumber(ARGV[4]))
redis.call('ZINCRBY', KEYS[4], w, movie)
redis.call('ZINCRBY', KEYS[5], w, movie)
redis.call('SADD', KEYS[7], KEYS[4], KEYS[5])
if ARGV[7] == '1' then
  if not redis.call('ZSCORE', KEYS[2], movie) then
    for i = 1, #hist do
      redis.call('ZINCRBY', KEYS[8 + i], 1, movie)
      redis.call('ZINCRBY', KEYS[8], 1, hist[i])
    end
  end
  local last = tonumber(redis.call('ZSCORE', KEYS[2], movie) or '0')
  if t > last then redis.call('ZADD', KEYS[2], t, movie) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[8]))
  if ARGV[2] ~= '' then redis.call('ZINCRBY', KEYS[3], 1, ARGV[2]) end
end
return 1
"""

# KEYS: epoch, pop keys, then every member of pop keys as the caller read it.
# ARGV: now_ms, half_life_ms, min weight. Returns 1 moved, 0 nothing to do, -1 pop keys
# changed since the caller read them (nothing done: read them again).
_REBASE = """
local epoch = tonumber(redis.call('GET', KEYS[1]) or '')
if not epoch then return 0 end
local now = tonumber(ARGV[1])
if now <= epoch then return 0 end
if redis.call('SCARD', KEYS[2]) ~= #KEYS - 2 then return -1 end
for i = 3, #KEYS do
  if redis.call('SISMEMBER', KEYS[2], KEYS[i]) == 0 then return -1 end
end
local f = math.pow(2, -(now - epoch) / tonumber(ARGV[2]))
local minw = tonumber(ARGV[3])
for i = 3, #KEYS do
  local key = KEYS[i]
  local items = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for j = 1, #items, 2 do
    local s = tonumber(items[j + 1]) * f
    if s < minw then
      redis.call('ZREM', key, items[j])
    else
      redis.call('ZADD', key, s, items[j])
    end
  end
  if redis.call('ZCARD', key) == 0 then redis.call('SREM', KEYS[2], key) end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class RecommendStore:
    def __init__(self, redis: aioredis.Redis,
                 half_life_s: float = recommend.HALF_LIFE_S) -> None:
        self.redis = redis
        self.half_life_s = half_life_s
        self._apply = redis.register_script(_APPLY)
        self._rebase = redis.register_script(_REBASE)

    # --- writes -----------------------------------------------------------------------

    async def apply_booking(self, booking_id: str, movie_id: str, city: str,
                            language: str, customer_id: str | None, t_ms: int) -> bool:
        """Count one confirmed booking (once per booking id). True if it was new."""
        cust = customer_id or ""
        for _ in range(RETRIES):
            hist = ([m.decode() for m in await self.redis.zrange(history_key(cust), 0, -1)]
                    if customer_id else [])
            done = await self._apply(
                keys=[applied_key(booking_id), history_key(cust), languages_key(cust),
                      city_key(city), POP_ALL, EPOCH, POP_KEYS, cooc_key(movie_id),
                      *(cooc_key(m) for m in hist)],
                args=[movie_id, language.strip().casefold(), t_ms, _ms(self.half_life_s),
                      APPLIED_TTL_S, "", "1" if customer_id else "0", HISTORY_MAX, *hist])
            if done != -1:
                return bool(done)
        raise RuntimeError(f"recommend: the history of {cust} keeps changing")

    async def refresh(self, now_s: float | None = None) -> bool:
        """Move the popularity epoch to now (sums become decayed values) and drop the
        movies that decayed below MIN_WEIGHT."""
        now_ms = _ms(time.time() if now_s is None else now_s)
        for _ in range(RETRIES):
            pop = sorted(k.decode() for k in await self.redis.smembers(POP_KEYS))
            done = await self._rebase(keys=[EPOCH, POP_KEYS, *pop],
                                      args=[now_ms, _ms(self.half_life_s), MIN_WEIGHT])
            if done != -1:
                return bool(done)
        raise RuntimeError("recommend: the popularity keys keep changing")

    # --- reads ------------------------------------------------------------------------

    async def history(self, customer_id: str) -> tuple[list[str], dict[str, float]]:
        """(booked movies, most recent first; languages -> bookings)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(history_key(customer_id), 0, -1)
            pipe.zrange(languages_key(customer_id), 0, -1, withscores=True)
            movies, langs = await pipe.execute()
        return [m.decode() for m in movies], {k.decode(): float(v) for k, v in langs}

    async def cooccurrences(self, movie_ids: Iterable[str]) -> dict[str, dict[str, float]]:
        ids = list(movie_ids)
        if not ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in ids:
                pipe.zrevrange(cooc_key(m), 0, POPULAR_TOP - 1, withscores=True)
            rows = await pipe.execute()
        return {m: {k.decode(): float(v) for k, v in row} for m, row in zip(ids, rows, strict=True)}

    async def popularity(self, city: str | None, now_s: float | None = None
                         ) -> dict[str, float]:
        """Movie -> decayed bookings at `now_s` in `city` (every city when None)."""
        now_s = time.time() if now_s is None else now_s
        key = city_key(city) if city else POP_ALL
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(EPOCH)
            pipe.zrevrange(key, 0, POPULAR_TOP - 1, withscores=True)
            epoch, rows = await pipe.execute()
        if epoch is None:
            return {}
        epoch_s = int(epoch) / 1000
        return {k.decode(): recommend.decayed(float(v), epoch_s, now_s, self.half_life_s)
                for k, v in rows}


async def export_history(redis: aioredis.Redis, customer_id: str) -> dict:
    """For the customer's data export: the movies their bookings taught us (newest first,
    with when) and the show languages they booked (with how often)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrevrange(history_key(customer_id), 0, -1, withscores=True)
        pipe.zrange(languages_key(customer_id), 0, -1, withscores=True)
        movies, langs = await pipe.execute()
    return {"movies": [{"movie_id": m.decode(), "last_booked_ms": int(t)} for m, t in movies],
            "languages": {k.decode(): int(v) for k, v in langs}}


async def erase_history(redis: aioredis.Redis, customer_id: str) -> int:
    """Account deletion: forget the customer's history and languages."""
    return int(await redis.delete(history_key(customer_id), languages_key(customer_id)))


mine_api.register_personal_data("recommendation_history",
                                mine_api.PersonalData(export_history, erase_history))


class RecommendWorker:
    """The outbox consumer (group `recommend`) and the periodic refresh, per web process,
    on its own Redis connections (the consumer's blocking reads must not take the pool's)."""

    def __init__(self, redis_url: str, *, refresh_s: float = 600.0,
                 half_life_s: float = recommend.HALF_LIFE_S) -> None:
        self.redis = redis_conn.async_client(redis_url)
        self.store = RecommendStore(self.redis, half_life_s)
        self.consumer = GroupConsumer(self.redis, GROUP, self.handle)
        self.refresh_s = refresh_s
        self._refresh: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.consumer.start()
        self._refresh = asyncio.create_task(self._refresh_loop(), name="recommend:refresh")

    async def stop(self) -> None:
        await self.consumer.stop()
        if self._refresh is not None:
            self._refresh.cancel()
            try:
                await self._refresh
            except asyncio.CancelledError:
                pass
            self._refresh = None
        await self.redis.aclose()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.store.refresh()
            except (RedisError, OSError) as exc:
                log.warning("recommend refresh: redis error %s", exc)

    async def handle(self, event: Event) -> bool:
        """Apply a booking.confirmed event; every other event needs nothing."""
        if event.type != "booking.confirmed":
            return True
        data = event.data
        booking_id, show_id = data.get("booking_id"), data.get("show_id")
        if not isinstance(booking_id, str) or not isinstance(show_id, str):
            return True  # malformed: nothing to count
        customer_id = data.get("customer_id")
        if "customer_id" not in data:  # older producers: the booking record has it
            record = await load_booking(self.redis, booking_id)
            customer_id = record.customer_id if record is not None else None
        if isinstance(customer_id, str) and not await self.redis.exists(user_key(customer_id)):
            customer_id = None  # the account was deleted since: no history to rebuild
        show = await load(self.redis, Show, show_id)
        if show is None:
            return True  # the show is gone: nothing to recommend from it
        t_ms = int(event.time.timestamp() * 1000)
        await self.store.apply_booking(booking_id, show.movie_id, show.city, show.language,
                                       customer_id if isinstance(customer_id, str) else None,
                                       t_ms)
        return True


RECOMMEND = web.AppKey("recommend_worker", RecommendWorker)


def setup(app: web.Application, redis_url: str) -> None:
    """Runs this process's recommendation consumer and refresh while the app runs."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        app[RECOMMEND] = worker = RecommendWorker(redis_url)
        worker.start()
        yield
        await worker.stop()

    app.cleanup_ctx.append(run)
