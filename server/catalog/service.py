"""The catalog service: what partners publish, validated and indexed in Redis.

Every catalog key carries the hash tag `{catalog}` (one Redis Cluster slot on purpose: see
catalog_model.CATALOG_TAG), so a write's WATCH/MULTI covers all of them. Records are JSON
under `{catalog}:<kind>:<id>` (catalog_model.catalog_key). Indexes (`{catalog}:idx:...`):

    idx:cities                      hash  casefolded city -> display name
    idx:city:<city>:theatres        set   theatre ids in that city
    idx:theatre:<id>:screens        set   screen ids of a theatre
    idx:shows:city:<city>:<date>    zset  scheduled show ids by start (ms); date = theatre-local
    idx:shows:movie:<movie_id>      zset  scheduled show ids by start (ms)
    idx:shows:screen:<screen_id>    zset  scheduled show ids by start (ms): the overlap check
    idx:partner:<pid>:shows:<date>  zset  all of a partner's shows (cancelled too) by start
    idx:partner:<pid>:shows-by-start zset the same over every date (pages of future shows;
                                          entries older than PARTNER_SHOWS_KEEP are trimmed)
    idx:partner:<pid>:theatres      zset  the partner's theatre ids, score 0 (pages by id:
    idx:partner:<pid>:screens       zset    ZRANGEBYLEX), retired ones too
    idx:partner:<pid>:movies        zset
    {catalog}:generation            int   bumped by every catalog write (in its MULTI): the
                                          search cache keys on it (server/discovery/search.py)
    {catalog}:outbox                stream change entries committed with their write, not yet
                                          forwarded to the partner's stream (field `partner`)
    {catalog}:outbox:done           str   the last outbox id forwarded
    {catalog}:outbox:lease          str   held by the one process forwarding (PX)
    changes:{p:<pid>}               stream  what changed for the partner (GET
                                          /partner/v1/changes), capped at ~CHANGES_MAXLEN:
                                          entries `type`, `at` (ISO 8601), `data` (JSON)

Every write reads under WATCH and writes all its catalog keys (record, indexes, generation
and its change entry, into the outbox) in one MULTI, retried if a watched key moved:
validation and write see the same state, and the catalog is never half-written. Validation
failures raise ApiError (4xx) before anything is queued. A write may carry a
`Precondition` (the feed's If-Match / If-None-Match): it is checked against the record
read under WATCH, so two writers holding the same ETag cannot both win.

What lives outside the `{catalog}` slot follows the MULTI in ordered, idempotent steps
(a cluster transaction cannot span slots):
1. the MULTI (the claim: a show's record passed the screen's clash check);
2. a show's seat layout, `show:{<id>}:config`, by a script over that show's slot that
   writes it only while the show's log is empty (the actor reads it only then). Until it
   lands, readers needing both (the hold path) find the record without a layout - not on
   sale - or for a replaced show the layout it had; a retried PUT writes it;
3. PUBLISH on SHOWS_CHANNEL: after the layout, so no web process keeps a record/layout pair
   read between 1 and 2 (its entry lives ttl_s at most if the process dies before this);
4. forwarding the outbox to `changes:{p:<pid>}` (forward_changes): in commit order, by
   whichever process holds the lease, marking each entry done after its XADD; an entry a
   crash left behind goes out with the next write's forwarding (at least once, in order).

A theatre, screen or movie is never deleted, only retired (`status: "retired"`), and only
while no future scheduled show uses it; a retired one gets no new shows.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from actors.layout import Layout, LayoutError, Rules, ShowConfig, validate_layout
from actors.store import config_key, seq_key

from server.core.clock import utcnow
from server.catalog.model import (
    Availability,
    City,
    Money,
    Movie,
    MovieIn,
    MovieInfo,
    MovieSummary,
    PartnerShow,
    Sales,
    Screen,
    ScreenIn,
    Show,
    HoldPolicy,
    ShowIn,
    ShowTime,
    Theatre,
    TheatreIn,
    TheatreShows,
    CATALOG_TAG,
    catalog_key,
)
from server.core.errors import ApiError
from server.catalog.show_cache import SHOWS_CHANNEL
from server.catalog.seat_status import read_seat_statuses

T = TypeVar("T")

MAX_RUNTIME = dt.timedelta(minutes=600)  # Movie.runtime_min's upper bound
MAX_SEATS = 5000
BROWSE_DAYS = 7  # "any date" in browse means the coming week

_enc = msgspec.json.Encoder()
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in (Theatre, Screen, Movie, Show)
}
_KIND = {Theatre: "theatre", Screen: "screen", Movie: "movie", Show: "show"}


# --- keys -----------------------------------------------------------------------------

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def city_slug(city: str) -> str:
    return " ".join(city.split()).casefold()


IDX = f"{CATALOG_TAG}:idx"  # the catalog's indexes share its slot: written in its MULTIs
CITIES = f"{IDX}:cities"


def city_theatres_key(city: str) -> str:
    return f"{IDX}:city:{city_slug(city)}:theatres"


def theatre_screens_key(theatre_id: str) -> str:
    return f"{IDX}:theatre:{theatre_id}:screens"


def city_shows_key(city: str, date: str) -> str:
    return f"{IDX}:shows:city:{city_slug(city)}:{date}"


def movie_shows_key(movie_id: str) -> str:
    return f"{IDX}:shows:movie:{movie_id}"


def screen_shows_key(screen_id: str) -> str:
    return f"{IDX}:shows:screen:{screen_id}"


def partner_shows_key(partner_id: str, date: str) -> str:
    return f"{IDX}:partner:{partner_id}:shows:{date}"


def partner_all_shows_key(partner_id: str) -> str:
    return f"{IDX}:partner:{partner_id}:shows-by-start"


def partner_items_key(partner_id: str, kind: str) -> str:
    """The partner's theatres, screens or movies (`kind`: theatre|screen|movie)."""
    return f"{IDX}:partner:{partner_id}:{kind}s"


def changes_key(partner_id: str) -> str:
    """The partner's change stream: in the partner's slot (`{p:<pid>}`), not the catalog's -
    bookings append to it too (server/partner/changes.py), and it is up to
    CHANGES_MAXLEN entries per partner."""
    return f"changes:{{p:{partner_id}}}"


CHANGES_MAXLEN = 100_000  # per partner, approximate (XADD MAXLEN ~)
PARTNER_SHOWS_KEEP = dt.timedelta(days=90)  # shows-by-start keeps shows this far back
IN_USE_MAX = 20  # blocking show ids named by a refused retire


GENERATION = f"{CATALOG_TAG}:generation"  # INCR'd in the MULTI of every catalog write
OUTBOX = f"{CATALOG_TAG}:outbox"            # change entries not yet in changes:{p:<pid>}
OUTBOX_DONE = f"{CATALOG_TAG}:outbox:done"  # the last outbox id forwarded
OUTBOX_LEASE = f"{CATALOG_TAG}:outbox:lease"
LEASE_MS = 30_000
FORWARD_WAIT_S = 5.0  # a write waits this long for its change entry to be forwarded


# --- helpers --------------------------------------------------------------------------

def to_ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def zone(name: str) -> dt.tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ApiError(422, "invalid_timezone", f"unknown time zone {name!r}",
                       field="timezone") from None


def local_date(t: dt.datetime, tz: str) -> str:
    try:
        return t.astimezone(ZoneInfo(tz)).date().isoformat()
    except (ZoneInfoNotFoundError, ValueError):
        return t.astimezone(dt.UTC).date().isoformat()


def parse_date(value: str | None, field: str = "date") -> str | None:
    if value is None or value == "":
        return None
    try:
        if len(value) != 10:
            raise ValueError(value)
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ApiError(422, "invalid_date", f"{field} must be a date as YYYY-MM-DD",
                       field=field) from None


def encode(record: msgspec.Struct) -> bytes:
    return _enc.encode(record)


def decode(kind: type[T], raw: bytes | None) -> T | None:
    return None if raw is None else _DECODERS[kind].decode(raw)


async def load(redis: aioredis.Redis | Pipeline, kind: type[T], item_id: str) -> T | None:
    return decode(kind, await redis.get(catalog_key(_KIND[kind], item_id)))


async def load_many(redis: aioredis.Redis, kind: type[T], ids: list[str]) -> list[T]:
    if not ids:
        return []
    raws = await redis.mget([catalog_key(_KIND[kind], i) for i in ids])
    return [r for r in (decode(kind, raw) for raw in raws) if r is not None]


def _owned(record: Any, partner_id: str, what: str, item_id: str) -> None:
    if record is not None and record.partner_id != partner_id:
        raise ApiError(403, "forbidden", f"{what} {item_id!r} belongs to another partner",
                       **{f"{what}_id": item_id})


# --- ETags, preconditions, the change stream ------------------------------------------

def etag_of(record: msgspec.Struct) -> str:
    """The record's entity tag: a hash of its stored (canonical JSON) form, quoted."""
    return '"' + hashlib.blake2b(encode(record), digest_size=16).hexdigest() + '"'


class Precondition(msgspec.Struct, frozen=True):
    """A write's conditions (HTTP If-Match / If-None-Match): ETags, or ["*"] = any."""

    if_match: tuple[str, ...] | None = None
    if_none_match: tuple[str, ...] | None = None

    def check(self, current: msgspec.Struct | None) -> None:
        tag = etag_of(current) if current is not None else None
        if self.if_match is not None:
            ok = tag is not None and ("*" in self.if_match or tag in self.if_match)
            if not ok:
                raise ApiError(412, "precondition_failed",
                               "If-Match: the record does not exist" if tag is None else
                               "If-Match: the record changed since that ETag was read",
                               etag=tag)
        if self.if_none_match is not None and tag is not None:
            if "*" in self.if_none_match or tag in self.if_none_match:
                raise ApiError(412, "precondition_failed",
                               "If-None-Match: the record exists already", etag=tag)


def _check(pre: Precondition | None, current: msgspec.Struct | None) -> None:
    if pre is not None:
        pre.check(current)


def change_fields(type_: str, data: Any, at: dt.datetime | None = None) -> dict[str, bytes]:
    """A change stream entry's fields."""
    when = (at or utcnow()).astimezone(dt.UTC)
    return {"type": type_.encode(),
            "at": when.isoformat(timespec="milliseconds").replace("+00:00", "Z").encode(),
            "data": _enc.encode(data)}


def _record_change(kind: str, record: msgspec.Struct) -> dict[str, Any]:
    data = msgspec.to_builtins(record)
    if kind == "screen":  # up to MAX_SEATS seats: GET the screen for its layout
        data["seat_count"] = len(data.pop("layout")["seats"])
    data["etag"] = etag_of(record)
    return data


def _queue_change(p: Pipeline, partner_id: str, type_: str, kind: str,
                  record: msgspec.Struct) -> None:
    # Into the catalog's outbox, in the write's MULTI: the partner's stream is in another
    # slot; forward_changes moves the entry there after the commit.
    p.xadd(OUTBOX, {"partner": partner_id.encode(),
                    **change_fields(type_, _record_change(kind, record))})


def _stream_id(raw: bytes | str | None) -> tuple[int, int]:
    if not raw:
        return (0, 0)
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return (int(ms), int(seq or 0))


# KEYS[1] the lease; ARGV[1] the holder's token, ARGV[2] "release" or a PX to extend by
_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then redis.call('DEL', KEYS[1])
else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


async def forward_changes(redis: aioredis.Redis, wait_s: float = FORWARD_WAIT_S) -> None:
    """Forward the outbox to the partners' change streams, in commit order: returns once
    everything committed before the call is forwarded (by this process, or by the one
    holding the lease), or after `wait_s` (then the next write's call forwards it)."""
    last = await redis.xrevrange(OUTBOX, "+", "-", count=1)
    if not last:
        return
    target = _stream_id(last[0][0])
    token = secrets.token_hex(8)
    lease = redis.register_script(_LEASE)
    deadline = time.monotonic() + wait_s
    while _stream_id(await redis.get(OUTBOX_DONE)) < target:
        if await redis.set(OUTBOX_LEASE, token, nx=True, px=LEASE_MS):
            try:
                await _drain(redis, lease, token)
            finally:
                await lease(keys=[OUTBOX_LEASE], args=[token, "release"])
        elif time.monotonic() > deadline:
            return
        else:
            await asyncio.sleep(0.01)


async def _drain(redis: aioredis.Redis, lease: Any, token: str) -> None:
    while True:
        done = (await redis.get(OUTBOX_DONE) or b"0-0").decode()
        rows = await redis.xrange(OUTBOX, f"({done}", "+", count=100)
        if not rows:
            return
        for entry_id, fields in rows:
            partner_id = fields.pop(b"partner").decode()
            # XADD, then mark done: a crash in between forwards the entry twice (at least
            # once); only the lease holder forwards, so the order is the commit order.
            await redis.xadd(changes_key(partner_id), fields, maxlen=CHANGES_MAXLEN,
                             approximate=True)
            await redis.set(OUTBOX_DONE, entry_id)
        await redis.xtrim(OUTBOX, minid=rows[-1][0])  # keeps the last one: `done` names it
        if not await lease(keys=[OUTBOX_LEASE], args=[token, LEASE_MS]):
            return  # lost the lease (expired): its new holder goes on


def _retired(record: Any, what: str, field: str) -> None:
    if record is not None and getattr(record, "status", "active") == "retired":
        item_id = getattr(record, f"{what}_id")
        raise ApiError(422, f"{what}_retired", f"{what} {item_id!r} is retired; PUT it "
                       "again to use it", field=field, **{f"{what}_id": item_id})


Commit = Callable[[Pipeline], None]


async def transact(redis: aioredis.Redis, watch: list[str],
                   body: Callable[[Pipeline], Awaitable[tuple[T, Commit]]],
                   replies: list[Any] | None = None) -> T:
    """Run `body` (reads and validation) under WATCH of `watch`, then its writes in one
    MULTI; start over if a watched key changed meanwhile. `body` returns (result, commit),
    where `commit` queues the writes on the pipeline; an ApiError from it writes nothing.
    `replies`, if given, receives the MULTI's replies. Every key must be the catalog's
    (one slot)."""
    async with redis.pipeline(transaction=True) as pipe:
        for _ in range(50):
            try:
                await pipe.watch(*watch)
                result, commit = await body(pipe)
                pipe.multi()
                commit(pipe)
                out = await pipe.execute()
                if replies is not None:
                    replies[:] = out
                return result
            except WatchError:
                continue
            finally:
                await pipe.reset()
    raise ApiError(409, "busy", "the catalog changed repeatedly while writing; retry")


# --- theatres, screens, movies -------------------------------------------------------

async def put_theatre(redis: aioredis.Redis, partner_id: str, theatre_id: str,
                      body: TheatreIn, pre: Precondition | None = None
                      ) -> tuple[Theatre, bool]:
    zone(body.timezone)
    key = catalog_key("theatre", theatre_id)

    async def run(pipe: Pipeline) -> tuple[tuple[Theatre, bool], Commit]:
        old = await load(pipe, Theatre, theatre_id)
        _owned(old, partner_id, "theatre", theatre_id)
        _check(pre, old)
        new = Theatre(theatre_id, body.name, " ".join(body.city.split()), body.address,
                      partner_id, body.timezone)
        if old is not None and (city_slug(old.city) != city_slug(new.city)
                                or old.timezone != new.timezone):
            if await _theatre_has_future_shows(pipe, theatre_id):
                raise ApiError(409, "theatre_has_shows",
                               "cannot move a theatre to another city or time zone while it "
                               "has scheduled shows", theatre_id=theatre_id)

        def commit(p: Pipeline) -> None:
            p.set(key, encode(new))
            if old is not None and city_slug(old.city) != city_slug(new.city):
                p.srem(city_theatres_key(old.city), theatre_id)
            p.sadd(city_theatres_key(new.city), theatre_id)
            p.hsetnx(CITIES, city_slug(new.city), new.city)
            p.zadd(partner_items_key(partner_id, "theatre"), {theatre_id: 0})
            if old != new:
                _queue_change(p, partner_id, "theatre.upserted", "theatre", new)
            p.incr(GENERATION)

        return (new, old is None), commit

    out = await transact(redis, [key], run)
    await forward_changes(redis)
    return out


async def _theatre_has_future_shows(pipe: Pipeline, theatre_id: str) -> bool:
    now = to_ms(utcnow())
    for sid in await pipe.smembers(theatre_screens_key(theatre_id)):
        if await pipe.zcount(screen_shows_key(sid.decode()), now, "+inf"):
            return True
    return False


def _layout(screen_layout: Any) -> Layout:
    return Layout(seats=screen_layout.seats, focal_x=screen_layout.focal_x,
                  focal_y=screen_layout.focal_y)


async def put_screen(redis: aioredis.Redis, partner_id: str, screen_id: str,
                     body: ScreenIn, pre: Precondition | None = None) -> tuple[Screen, bool]:
    if len(body.layout.seats) > MAX_SEATS:
        raise ApiError(422, "invalid_layout", f"a screen has at most {MAX_SEATS} seats")
    try:
        validate_layout(_layout(body.layout))
    except LayoutError as exc:
        raise ApiError(422, "invalid_layout", str(exc), field="layout") from None
    key = catalog_key("screen", screen_id)
    tkey = catalog_key("theatre", body.theatre_id)

    async def run(pipe: Pipeline) -> tuple[tuple[Screen, bool], Commit]:
        old = await load(pipe, Screen, screen_id)
        _owned(old, partner_id, "screen", screen_id)
        _check(pre, old)
        theatre = await load(pipe, Theatre, body.theatre_id)
        if theatre is None:
            raise ApiError(422, "unknown_theatre", f"no theatre {body.theatre_id!r}; PUT it first",
                           theatre_id=body.theatre_id)
        _owned(theatre, partner_id, "theatre", body.theatre_id)
        _retired(theatre, "theatre", "theatre_id")
        if old is not None and old.theatre_id != body.theatre_id:
            if await pipe.zcount(screen_shows_key(screen_id), to_ms(utcnow()), "+inf"):
                raise ApiError(409, "screen_has_shows",
                               "cannot move a screen to another theatre while it has "
                               "scheduled shows", screen_id=screen_id)
        new = Screen(screen_id, body.theatre_id, body.name, body.layout, partner_id)

        def commit(p: Pipeline) -> None:
            p.set(key, encode(new))
            if old is not None and old.theatre_id != new.theatre_id:
                p.srem(theatre_screens_key(old.theatre_id), screen_id)
            p.sadd(theatre_screens_key(new.theatre_id), screen_id)
            p.zadd(partner_items_key(partner_id, "screen"), {screen_id: 0})
            if old != new:
                _queue_change(p, partner_id, "screen.upserted", "screen", new)
            p.incr(GENERATION)

        return (new, old is None), commit

    out = await transact(redis, [key, tkey, screen_shows_key(screen_id)], run)
    await forward_changes(redis)
    return out


async def put_movie(redis: aioredis.Redis, partner_id: str, movie_id: str,
                    body: MovieIn, pre: Precondition | None = None) -> tuple[Movie, bool]:
    key = catalog_key("movie", movie_id)

    async def run(pipe: Pipeline) -> tuple[tuple[Movie, bool], Commit]:
        old = await load(pipe, Movie, movie_id)
        _owned(old, partner_id, "movie", movie_id)
        _check(pre, old)
        new = Movie(movie_id, body.title, body.languages, body.genres, body.runtime_min,
                    body.certificate, body.synopsis, partner_id)

        def commit(p: Pipeline) -> None:
            p.set(key, encode(new))
            p.zadd(partner_items_key(partner_id, "movie"), {movie_id: 0})
            if old != new:
                _queue_change(p, partner_id, "movie.upserted", "movie", new)
            p.incr(GENERATION)

        return (new, old is None), commit

    out = await transact(redis, [key], run)
    await forward_changes(redis)
    return out


# --- reading, listing and retiring theatres, screens, movies -------------------------

Item = TypeVar("Item", Theatre, Screen, Movie)
ITEM_TYPES: dict[str, type] = {"theatre": Theatre, "screen": Screen, "movie": Movie}


async def owned(redis: aioredis.Redis, kind: type[T], partner_id: str, item_id: str) -> T:
    """One of the partner's records (any kind): 404 if there is none, 403 if not theirs."""
    what = _KIND[kind]
    record = await load(redis, kind, item_id)
    if record is None:
        raise ApiError(404, "not_found", f"no {what} {item_id!r}", **{f"{what}_id": item_id})
    _owned(record, partner_id, what, item_id)
    return record


async def partner_items(redis: aioredis.Redis, kind: type[Item], partner_id: str,
                        after: str | None, limit: int) -> tuple[list[Item], str | None]:
    """A page of the partner's theatres, screens or movies by id (retired ones too), after
    id `after`; returns (records, the id to continue after, or None on the last page)."""
    ids = [i.decode() for i in await redis.zrangebylex(
        partner_items_key(partner_id, _KIND[kind]), "-" if after is None else f"({after}",
        "+", start=0, num=limit + 1)]
    more = len(ids) > limit
    ids = ids[:limit]
    records = await load_many(redis, kind, ids)
    return records, (ids[-1] if more and ids else None)


async def _future_shows(pipe: Pipeline, index_keys: list[str], limit: int) -> list[str]:
    """Up to `limit` ids of scheduled shows not yet started in these listing indexes."""
    now = to_ms(utcnow())
    found: list[tuple[float, str]] = []
    for k in index_keys:
        rows = await pipe.zrangebyscore(k, now, "+inf", start=0, num=limit, withscores=True)
        found.extend((score, m.decode()) for m, score in rows)
    return [i for _, i in sorted(found)[:limit]]


async def retire(redis: aioredis.Redis, kind: type[Item], partner_id: str, item_id: str,
                 pre: Precondition | None = None) -> Item:
    """Retire a theatre, screen or movie: 409 `in_use` (naming up to IN_USE_MAX shows)
    while a future scheduled show uses it (a theatre: through its screens). Retiring a
    retired one changes nothing."""
    what = _KIND[kind]
    key = catalog_key(what, item_id)
    watch = [key]
    if kind is Theatre:
        watch.append(theatre_screens_key(item_id))
    elif kind is Screen:
        watch.append(screen_shows_key(item_id))
    else:
        watch.append(movie_shows_key(item_id))

    async def run(pipe: Pipeline) -> tuple[Item, Commit]:
        old = await load(pipe, kind, item_id)
        if old is None:
            raise ApiError(404, "not_found", f"no {what} {item_id!r}", **{f"{what}_id": item_id})
        _owned(old, partner_id, what, item_id)
        _check(pre, old)
        if old.status == "retired":
            return old, lambda p: None
        if kind is Theatre:
            screens = sorted(m.decode() for m in await pipe.smembers(watch[1]))
            indexes = [screen_shows_key(sid) for sid in screens]
            if indexes:  # a show put on one of them meanwhile moves one of these
                await pipe.watch(*indexes)
        else:
            indexes = [watch[1]]
        blocking = await _future_shows(pipe, indexes, IN_USE_MAX)
        if blocking:
            raise ApiError(409, "in_use", f"{what} {item_id!r} is used by "
                           f"{len(blocking)}{'+' if len(blocking) == IN_USE_MAX else ''} "
                           "future show(s); cancel them first", show_ids=blocking,
                           **{f"{what}_id": item_id})
        new = msgspec.structs.replace(old, status="retired")

        def commit(p: Pipeline) -> None:
            p.set(key, encode(new))
            if isinstance(new, Theatre):  # out of customer browse (the city's theatres)
                p.srem(city_theatres_key(new.city), item_id)
            p.zadd(partner_items_key(partner_id, what), {item_id: 0})
            _queue_change(p, partner_id, f"{what}.retired", what, new)
            p.incr(GENERATION)

        return new, commit

    out = await transact(redis, watch, run)
    await forward_changes(redis)
    return out


async def index_existing(redis: aioredis.Redis) -> int:
    """A one-off for records written before the per-partner list indexes existed: adds
    every theatre, screen, movie and show to its partner's index. Not for a request path
    (it SCANs the keyspace - on a cluster, every master's); safe to repeat. Returns how
    many records it indexed."""
    n = 0
    for what, kind in (*ITEM_TYPES.items(), ("show", Show)):
        async for key in redis.scan_iter(match=catalog_key(what, "*"), count=1000):
            try:
                record = decode(kind, await redis.get(key))
            except msgspec.DecodeError:
                continue
            if record is None or not record.partner_id:
                continue
            item_id = getattr(record, f"{what}_id")
            if isinstance(record, Show):
                await redis.zadd(partner_all_shows_key(record.partner_id),
                                 {item_id: to_ms(record.starts_at_utc)})
            else:
                await redis.zadd(partner_items_key(record.partner_id, what), {item_id: 0})
            n += 1
    return n


# --- shows ----------------------------------------------------------------------------

def _show_indexes(show: Show, tz: str) -> tuple[str, list[str]]:
    """(partner index key, listing index keys) for a show as stored."""
    date = local_date(show.starts_at, tz)
    listings = [city_shows_key(show.city, date), movie_shows_key(show.movie_id),
                screen_shows_key(show.screen_id)]
    return partner_shows_key(show.partner_id, date), listings


async def put_show(redis: aioredis.Redis, partner_id: str, show_id: str, body: ShowIn,
                   now: dt.datetime | None = None, pre: Precondition | None = None
                   ) -> tuple[Show, bool]:
    now = now or utcnow()
    starts_at = body.starts_at.astimezone(dt.UTC)
    if starts_at <= now:
        raise ApiError(422, "starts_in_past", "a show must start in the future",
                       field="starts_at")
    policy = body.hold_policy or HoldPolicy()
    if policy.max_hold_minutes < policy.hold_minutes:
        raise ApiError(422, "invalid_hold_policy", "max_hold_minutes (a hold's whole "
                       "lifetime) must be at least hold_minutes", field="hold_policy")
    if policy.seats_per_network < max(policy.seats_per_device, policy.seats_per_customer):
        raise ApiError(422, "invalid_hold_policy", "seats_per_network must be at least the "
                       "per-device and per-customer caps", field="hold_policy")
    currencies = {m.currency for m in body.prices.values()}
    if len(currencies) > 1:
        raise ApiError(422, "mixed_currencies", "all prices of a show need one currency",
                       field="prices")
    key = catalog_key("show", show_id)
    # The catalog's keys only (one slot): the show's own keys (its log's seq, its layout)
    # are in its slot, read outside the MULTI and written after it (_put_config).
    watch = [key, catalog_key("screen", body.screen_id), catalog_key("movie", body.movie_id),
             screen_shows_key(body.screen_id)]

    async def run(pipe: Pipeline) -> tuple[_ShowWrite, Commit]:
        old = await load(pipe, Show, show_id)
        _owned(old, partner_id, "show", show_id)
        _check(pre, old)
        if old is not None:
            if old.status == "cancelled":
                raise ApiError(409, "show_cancelled", f"show {show_id!r} was cancelled; "
                               "publish it under a new id", show_id=show_id)
            if old.starts_at <= now:
                raise ApiError(409, "show_started", f"show {show_id!r} has started; "
                               "it can no longer be changed", show_id=show_id)
        screen = await load(pipe, Screen, body.screen_id)
        if screen is None:
            raise ApiError(422, "unknown_screen", f"no screen {body.screen_id!r}",
                           field="screen_id", screen_id=body.screen_id)
        _owned(screen, partner_id, "screen", body.screen_id)
        movie = await load(pipe, Movie, body.movie_id)
        if movie is None:
            raise ApiError(422, "unknown_movie", f"no movie {body.movie_id!r}",
                           field="movie_id", movie_id=body.movie_id)
        _owned(movie, partner_id, "movie", body.movie_id)
        # The screen's theatre, watched too: a retire of it must not pass this write by.
        await pipe.watch(catalog_key("theatre", screen.theatre_id))
        theatre = await load(pipe, Theatre, screen.theatre_id)
        if theatre is None:  # a screen is only written with its theatre present
            raise ApiError(422, "unknown_theatre", f"no theatre {screen.theatre_id!r}")
        _retired(screen, "screen", "screen_id")
        _retired(movie, "movie", "movie_id")
        _retired(theatre, "theatre", "screen_id")
        if body.language.casefold() not in {lang.casefold() for lang in movie.languages}:
            raise ApiError(422, "unknown_language",
                           f"{movie.title!r} is not available in {body.language!r}",
                           field="language", languages=movie.languages)
        categories = sorted({s.category for s in screen.layout.seats})
        missing = [c for c in categories if c not in body.prices]
        if missing:
            raise ApiError(422, "missing_prices",
                           f"no price for seat categories {', '.join(missing)}",
                           field="prices", categories=missing)
        ends_at = starts_at + dt.timedelta(minutes=movie.runtime_min)
        clash = await _overlapping(pipe, body.screen_id, show_id, starts_at, ends_at)
        if clash is not None:
            raise ApiError(409, "overlapping_show",
                           f"screen {body.screen_id!r} already has show {clash.show_id!r} "
                           f"from {clash.starts_at.isoformat()} to "
                           f"{(clash.ends_at or clash.starts_at).isoformat()}",
                           show_id=clash.show_id)
        seq = int(await redis.get(seq_key(show_id)) or 0)  # its slot: not under WATCH
        if old is not None and old.screen_id != body.screen_id and seq > 0:
            raise ApiError(409, "show_has_activity",
                           "cannot move a show to another screen once seats were held, "
                           "booked or blocked", show_id=show_id)
        if old is not None and seq > 0 and old.starts_at_utc != starts_at:
            # its customers bought tickets for that time: cancel it instead (refunds)
            view = await read_seat_statuses(redis, show_id)
            if view is not None and view.counts()["booked"] > 0:
                raise ApiError(409, "show_has_bookings", "a show with bookings cannot be "
                               "moved; cancel it (every booking is refunded) and publish "
                               "another", show_id=show_id)
        new = Show(show_id, body.movie_id, body.screen_id, starts_at, body.language,
                   body.format, body.prices, partner_id, theatre.theatre_id, theatre.city,
                   ends_at, "scheduled", body.hold_policy)
        old_tz = None
        if old is not None:
            old_theatre = await load(pipe, Theatre, old.theatre_id)
            old_tz = old_theatre.timezone if old_theatre else "UTC"
        # The actor reads only its config, and only before it has a log: a show that
        # already has activity keeps the seat map it started with.
        config = None
        if seq == 0:
            config = ShowConfig(show_id, _layout(screen.layout), Rules())

        def commit(p: Pipeline) -> None:
            _queue_show(p, old, old_tz, new, theatre.timezone, now)

        return (new, old is None, old, old_tz, theatre.timezone, config), commit

    replies: list[Any] = []
    new, created, old, old_tz, tz, config = await transact(redis, watch, run, replies)
    generation = int(replies[-1])  # _queue_show's last command: this write's stamp
    if config is not None and not await _put_config(redis, config, generation):
        # The show's first seat was held between the check above and now, on the layout it
        # had: put the record that goes with that layout back, and refuse as the check would.
        await _restore_show(redis, new, tz, old, old_tz, now)
        raise ApiError(409, "show_has_activity", "cannot change a show's seat layout once "
                       "seats were held, booked or blocked", show_id=show_id)
    await redis.publish(SHOWS_CHANNEL, show_id)  # after the layout: see the module docstring
    await forward_changes(redis)
    return new, created


def _queue_show(p: Pipeline, old: Show | None, old_tz: str | None, new: Show, tz: str,
                now: dt.datetime) -> None:
    """Queue the catalog writes replacing `old` (None: a new show) by `new`."""
    show_id, partner_id = new.show_id, new.partner_id
    if old is not None:
        old_partner_idx, old_listings = _show_indexes(old, old_tz or "UTC")
        p.zrem(old_partner_idx, show_id)
        for k in old_listings:
            p.zrem(k, show_id)
    partner_idx, listings = _show_indexes(new, tz)
    score = to_ms(new.starts_at_utc)
    p.set(catalog_key("show", show_id), encode(new))
    p.zadd(partner_idx, {show_id: score})
    every = partner_all_shows_key(partner_id)
    p.zadd(every, {show_id: score})
    p.zremrangebyscore(every, "-inf", f"({to_ms(now - PARTNER_SHOWS_KEEP)}")
    if new.status == "scheduled":
        for k in listings:
            p.zadd(k, {show_id: score})
    if old != new:
        _queue_change(p, partner_id, "show.created" if old is None else "show.updated",
                      "show", new)
    p.incr(GENERATION)  # search results cached before this write are not read again


_ShowWrite = tuple[Show, bool, Show | None, str | None, str, ShowConfig | None]


def config_gen_key(show_id: str) -> str:
    """The catalog generation of the write whose layout `config_key(show_id)` holds (in the
    show's slot, next to it): two PUTs of one show racing between their MULTI and their
    layout step leave the later MULTI's layout, the one its record goes with."""
    return f"show:{{{show_id}}}:config-gen"


# KEYS[1] the show's log seq, KEYS[2] its config, KEYS[3] config_gen_key (one slot); ARGV[1]
# the config, ARGV[2] the generation of the MULTI it goes with. Written only while the log is
# empty (the actor reads its config only then; its first append is fenced on the config's
# digest). 1: the layout is settled (this one, or a later write's); 0: the show has activity
# on another layout.
_PUT_CONFIG = """
if tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[2]) then return 1 end
if tonumber(redis.call('GET', KEYS[1]) or '0') == 0 then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('SET', KEYS[3], ARGV[2])
  return 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
return 0
"""


async def _put_config(redis: aioredis.Redis, config: ShowConfig, generation: int) -> bool:
    script = redis.register_script(_PUT_CONFIG)
    show_id = config.show_id
    return int(await script(keys=[seq_key(show_id), config_key(show_id),
                                  config_gen_key(show_id)],
                            args=[msgspec.json.encode(config), generation])) == 1


async def _restore_show(redis: aioredis.Redis, new: Show, tz: str, old: Show | None,
                        old_tz: str | None, now: dt.datetime) -> None:
    """Undo put_show's MULTI (`old` back in place of `new`) unless another write moved the
    record on meanwhile."""
    key = catalog_key("show", new.show_id)

    async def run(pipe: Pipeline) -> tuple[None, Commit]:
        if await load(pipe, Show, new.show_id) != new:
            return None, lambda p: None

        def commit(p: Pipeline) -> None:
            if old is None:  # cannot happen (a new show has no log), but never leave it listed
                p.delete(key)
                partner_idx, listings = _show_indexes(new, tz)
                for k in (partner_idx, partner_all_shows_key(new.partner_id), *listings):
                    p.zrem(k, new.show_id)
                p.incr(GENERATION)
            else:
                _queue_show(p, new, tz, old, old_tz, now)

        return None, commit

    await transact(redis, [key], run)
    await redis.publish(SHOWS_CHANNEL, new.show_id)
    await forward_changes(redis)


async def _overlapping(pipe: Pipeline, screen_id: str, show_id: str, starts_at: dt.datetime,
                       ends_at: dt.datetime) -> Show | None:
    lo = to_ms(starts_at - MAX_RUNTIME)
    ids = [i.decode() for i in await pipe.zrangebyscore(screen_shows_key(screen_id), lo,
                                                        f"({to_ms(ends_at)}")]
    ids = [i for i in ids if i != show_id]
    if not ids:
        return None
    # MGET by name: redis-py's cluster pipelines refuse `mget()`, though these keys share
    # one slot and the command runs at once here (under WATCH, before the MULTI).
    raws = await pipe.execute_command("MGET", *(catalog_key("show", i) for i in ids))
    for raw in raws:
        other = decode(Show, raw)
        if other is None or other.status != "scheduled":
            continue
        other_end = other.ends_at or other.starts_at
        if other.starts_at < ends_at and starts_at < other_end:
            return other
    return None


async def cancel_show(redis: aioredis.Redis, partner_id: str, show_id: str,
                      now: dt.datetime | None = None, pre: Precondition | None = None) -> Show:
    """Take a show off sale and out of the listings (only before it starts)."""
    now = now or utcnow()
    key = catalog_key("show", show_id)

    async def run(pipe: Pipeline) -> tuple[Show, Commit]:
        old = await load(pipe, Show, show_id)
        if old is None:
            raise ApiError(404, "not_found", f"no show {show_id!r}", show_id=show_id)
        _owned(old, partner_id, "show", show_id)
        _check(pre, old)
        if old.status == "cancelled":
            return old, lambda p: None
        if old.starts_at <= now:
            raise ApiError(409, "show_started", f"show {show_id!r} has started; it cannot "
                           "be cancelled any more", show_id=show_id)
        theatre = await load(pipe, Theatre, old.theatre_id)
        _, listings = _show_indexes(old, theatre.timezone if theatre else "UTC")
        new = msgspec.structs.replace(old, status="cancelled")

        def commit(p: Pipeline) -> None:
            p.set(key, encode(new))
            for k in listings:
                p.zrem(k, show_id)
            _queue_change(p, partner_id, "show.cancelled", "show", new)
            p.incr(GENERATION)  # search results cached before this write are not read again

        return new, commit

    out = await transact(redis, [key], run)
    # Outside the MULTI (PUBLISH has no key, so no slot); repeated on a retry of the cancel.
    await redis.publish(SHOWS_CHANNEL, show_id)  # web processes drop their cached copy
    await forward_changes(redis)
    return out


async def owned_show(redis: aioredis.Redis, partner_id: str, show_id: str) -> Show:
    show = await load(redis, Show, show_id)
    if show is None:
        raise ApiError(404, "not_found", f"no show {show_id!r}", show_id=show_id)
    _owned(show, partner_id, "show", show_id)
    return show


async def scheduled_show(redis: aioredis.Redis, show_id: str) -> Show | None:
    """A show customers may see and book: exists and is not cancelled (for other modules)."""
    show = await load(redis, Show, show_id)
    return show if show is not None and show.status == "scheduled" else None


# --- partner reporting ----------------------------------------------------------------

async def partner_shows(redis: aioredis.Redis, partner_id: str, date: str) -> list[PartnerShow]:
    ids = [i.decode() for i in await redis.zrange(partner_shows_key(partner_id, date), 0, -1)]
    return await _partner_show_rows(redis, await load_many(redis, Show, ids))


async def partner_show_page(redis: aioredis.Redis, partner_id: str, date: str | None,
                            after: tuple[int, str] | None, limit: int,
                            now: dt.datetime | None = None
                            ) -> tuple[list[PartnerShow], tuple[int, str] | None]:
    """A page of the partner's shows by (start, id): on a theatre-local `date` (cancelled
    too), or without one every show not yet started. `after` is the (start ms, id) of the
    previous page's last show; returns the rows and the position to continue after (None
    on the last page)."""
    if date is not None:
        key, lo = partner_shows_key(partner_id, date), "-inf"
    else:
        key, lo = partner_all_shows_key(partner_id), str(to_ms(now or utcnow()))
    page: list[tuple[int, str]] = []
    if after is not None:
        score, last = after
        # Shows starting at the same ms as the last one: those after it by id (Redis orders
        # equal scores by member), then the later starts.
        ties = [m.decode() for m in await redis.zrangebyscore(key, score, score)]
        page = [(score, m) for m in ties if m > last]
        lo = f"({score}"
    if len(page) <= limit:
        rows = await redis.zrangebyscore(key, lo, "+inf", start=0, num=limit + 1 - len(page),
                                         withscores=True)
        page += [(int(s), m.decode()) for m, s in rows]
    more = len(page) > limit
    page = page[:limit]
    shows = await load_many(redis, Show, [i for _, i in page])
    nxt = page[-1] if more and page else None
    return await _partner_show_rows(redis, shows), nxt


async def _partner_show_rows(redis: aioredis.Redis, shows: list[Show]) -> list[PartnerShow]:
    all_statuses = await asyncio.gather(*(read_seat_statuses(redis, s.show_id) for s in shows))
    out: list[PartnerShow] = []
    for show, statuses in zip(shows, all_statuses, strict=True):
        if statuses is None:
            continue
        counts = statuses.counts()
        category = {s.id: s.category for s in statuses.config.layout.seats}
        booked = [s for s, st in statuses.status.items() if st == "booked"]
        gross = None
        if booked and show.prices:
            currency = next(iter(show.prices.values())).currency
            amount = sum(show.prices[category[s]].amount for s in booked
                         if category.get(s) in show.prices)
            gross = Money(amount, currency)
        out.append(PartnerShow(
            show, Availability(counts["free"], counts["held"], counts["booked"],
                               counts["blocked"], statuses.seq),
            Sales(len(booked), gross)))
    return out


# --- browse ---------------------------------------------------------------------------

def movie_info(m: Movie) -> MovieInfo:
    return MovieInfo(m.movie_id, m.title, m.languages, m.genres, m.runtime_min, m.certificate,
                     m.synopsis)


async def cities(redis: aioredis.Redis) -> list[City]:
    names = {k.decode(): v.decode() for k, v in (await redis.hgetall(CITIES)).items()}
    async with redis.pipeline(transaction=False) as pipe:
        for slug in names:
            pipe.scard(city_theatres_key(slug))
        counts = await pipe.execute()
    found = [City(name, n) for (_, name), n in zip(names.items(), counts, strict=True) if n]
    return sorted(found, key=lambda c: c.name.casefold())


def _dates(date: str | None, now: dt.datetime) -> list[str]:
    if date is not None:
        return [date]
    # Local dates run up to a day either side of the UTC date.
    start = now.date() - dt.timedelta(days=1)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(BROWSE_DAYS + 2)]


async def _listed_shows(redis: aioredis.Redis, city: str | None, date: str | None,
                        now: dt.datetime) -> list[Show]:
    slugs = [city_slug(city)] if city else [k.decode() for k in await redis.hkeys(CITIES)]
    now_ms = to_ms(now)
    async with redis.pipeline(transaction=False) as pipe:
        for slug in slugs:
            for d in _dates(date, now):
                pipe.zrangebyscore(city_shows_key(slug, d), now_ms, "+inf")
        chunks = await pipe.execute()
    ids = sorted({i.decode() for chunk in chunks for i in chunk})
    shows = await load_many(redis, Show, ids)
    return [s for s in shows if s.status == "scheduled" and s.starts_at > now]


async def browse_movies(redis: aioredis.Redis, city: str | None, language: str | None,
                        genre: str | None, date: str | None,
                        now: dt.datetime | None = None) -> list[MovieSummary]:
    now = now or utcnow()
    shows = await _listed_shows(redis, city, date, now)
    if language:
        shows = [s for s in shows if s.language.casefold() == language.casefold()]
    by_movie: dict[str, list[Show]] = {}
    for s in shows:
        by_movie.setdefault(s.movie_id, []).append(s)
    movies = [m for m in await load_many(redis, Movie, sorted(by_movie))
              if m.status != "retired"]
    if genre:
        movies = [m for m in movies if genre.casefold() in {g.casefold() for g in m.genres}]
    first = {m.movie_id: min(by_movie[m.movie_id], key=lambda s: s.starts_at) for m in movies}
    zones = {t.theatre_id: t.timezone for t in await load_many(
        redis, Theatre, sorted({s.theatre_id for s in first.values()}))}
    out = []
    for m in movies:
        its, nxt = by_movie[m.movie_id], first[m.movie_id]
        out.append(MovieSummary(movie_info(m), len(its), nxt.starts_at,
                                sorted({s.language for s in its}),
                                zones.get(nxt.theatre_id, "UTC")))
    out.sort(key=lambda s: (-s.show_count, s.movie.title.casefold()))
    return out


async def movie(redis: aioredis.Redis, movie_id: str) -> MovieInfo:
    m = await load(redis, Movie, movie_id)
    if m is None or m.status == "retired":  # a retired movie has left browse
        raise ApiError(404, "not_found", f"no movie {movie_id!r}", movie_id=movie_id)
    return movie_info(m)


async def movie_shows(redis: aioredis.Redis, movie_id: str, city: str | None, date: str | None,
                      now: dt.datetime | None = None, language: str | None = None,
                      show_format: str | None = None) -> tuple[MovieInfo, list[TheatreShows]]:
    now = now or utcnow()
    info = await movie(redis, movie_id)
    ids = [i.decode() for i in await redis.zrangebyscore(
        movie_shows_key(movie_id), f"({to_ms(now)}", "+inf")]
    shows = [s for s in await load_many(redis, Show, ids) if s.status == "scheduled"]
    if city:
        shows = [s for s in shows if city_slug(s.city) == city_slug(city)]
    if language:
        shows = [s for s in shows if s.language.casefold() == language.casefold()]
    if show_format:
        shows = [s for s in shows if s.format.casefold() == show_format.casefold()]
    theatres = {t.theatre_id: t for t in await load_many(
        redis, Theatre, sorted({s.theatre_id for s in shows}))}
    if date:
        shows = [s for s in shows if s.theatre_id in theatres
                 and local_date(s.starts_at, theatres[s.theatre_id].timezone) == date]
    screens = {s.screen_id: s for s in await load_many(
        redis, Screen, sorted({s.screen_id for s in shows}))}
    return info, theatre_show_times(shows, theatres, screens)


def theatre_show_times(shows: list[Show], theatres: dict[str, Theatre],
                       screens: dict[str, Screen]) -> list[TheatreShows]:
    """Shows grouped by theatre, by start time; theatres sorted by city and name."""
    grouped: dict[str, list[ShowTime]] = {}
    for s in sorted(shows, key=lambda s: s.starts_at):
        if s.theatre_id not in theatres or not s.prices:
            continue
        prices = sorted(s.prices.values(), key=lambda m: m.amount)
        screen = screens.get(s.screen_id)
        grouped.setdefault(s.theatre_id, []).append(ShowTime(
            s.show_id, s.starts_at, s.ends_at, s.language, s.format, s.screen_id,
            screen.name if screen else "", prices[0], prices[-1]))
    out = [TheatreShows(t.theatre_id, t.name, t.city, t.address, grouped[tid], t.timezone)
           for tid, t in theatres.items() if tid in grouped and t.status != "retired"]
    out.sort(key=lambda t: (t.city.casefold(), t.name.casefold()))
    return out
