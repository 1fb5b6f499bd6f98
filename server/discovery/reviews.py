"""Ratings and reviews of movies and theatres: storage, eligibility and moderation.

One review per customer and item (a movie or a theatre), rating 1-5 and a bounded text.
Only a logged-in customer with a confirmed booking for a show of that movie / at that
theatre may write one (`eligible`); a cancelled booking does not count.

Storage (Redis). An item's keys share the hash tag `{rv:<kind>:<item_id>}`, and a review
id is `<kind>.<item_id>.<random>`, so any review id routes to its item's keys:

- `rv:{rv:<kind>:<item>}:r:<review_id>` -> hash: the review (rating, text, author, times,
  hidden flag).
- `rv:{rv:<kind>:<item>}:by` -> hash: customer id -> review id (one per customer).
- `rv:{rv:<kind>:<item>}:list` -> sorted set: visible review ids by creation time.
- `rv:{rv:<kind>:<item>}:stats` -> hash: `sum` and `count` of the visible ratings.
- `rv:{rv:<kind>:<item>}:reports:<review_id>` -> hash: partner id -> report (JSON).
- `rv:{rv}:reported` / `rv:{rv}:hidden` -> sorted sets of review ids waiting for / hidden by
  moderation (one tag: a moderation decision moves an id between them in one transaction).
- `rv:{u:<customer_id>}:mine` -> set: the customer's review ids (their export and erasure),
  in the customer's slot. It is written before the review (see `upsert`), so every review of
  theirs is in it; an id there whose review is gone or is not theirs is skipped.

Every script gets every key it touches in KEYS (a review's key is found first, then the
script checks it is still the one the item's `:by` hash names), so each runs in one Redis
Cluster slot.

When a customer deletes their account (`server.booking.mine_api`), their reviews stay (the
rating stays in the average, the text stays) but are no longer theirs: the author becomes
`FORMER_CUSTOMER` and the customer id is removed (security review L15).

Every change to a review and its item's sum and count is one Lua script, so the average is
exact whatever runs concurrently, and a hidden review leaves the average (and the list).
"""
from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
import redis.asyncio as aioredis

from server.core.clock import now_ms
from server.accounts import users as accounts
from server.booking import records as bookings
from server.catalog import service as catalog
from server.catalog.model import RatingSummary, Show, Theatre, Movie, catalog_key
from server.booking import mine_api
from server.core.errors import ApiError

Kind = Literal["movie", "theatre"]
KINDS: tuple[str, ...] = ("movie", "theatre")
MAX_TEXT = 2000
MAX_REASON = 500
MAX_PAGE = 50

REPORTED = "rv:{rv}:reported"
HIDDEN = "rv:{rv}:hidden"
FORMER_CUSTOMER = "a former customer"


# --- wire -------------------------------------------------------------------------------

class ReviewIn(msgspec.Struct, forbid_unknown_fields=True):
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)]
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)] = ""


class ReviewView(msgspec.Struct):
    review_id: str
    kind: str
    item_id: str
    rating: int
    text: str
    author: str
    created_at: datetime
    edited_at: datetime | None = None


class MyReview(msgspec.Struct):
    review: ReviewView
    hidden: bool  # removed from the public listing by moderation
    rating_summary: RatingSummary


class ReviewList(msgspec.Struct):
    kind: str
    item_id: str
    rating: RatingSummary
    total: int      # visible reviews
    offset: int
    limit: int
    reviews: list[ReviewView]


class ReportIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REASON)]


class Report(msgspec.Struct):
    partner_id: str
    reason: str
    reported_at: datetime


class ReportAck(msgspec.Struct):
    review_id: str
    reports: int  # partners that have reported this review


class ModeratedReview(msgspec.Struct):
    review: ReviewView
    customer_id: str
    hidden: bool
    reports: list[Report]
    moderated_at: datetime | None = None
    moderated_by: str | None = None


class ModerationList(msgspec.Struct):
    status: str
    total: int
    reviews: list[ModeratedReview]


# --- keys -------------------------------------------------------------------------------

def _tag(kind: str, item_id: str) -> str:
    return f"rv:{{rv:{kind}:{item_id}}}"


def review_key(kind: str, item_id: str, review_id: str) -> str:
    return f"{_tag(kind, item_id)}:r:{review_id}"


def by_key(kind: str, item_id: str) -> str:
    return f"{_tag(kind, item_id)}:by"


def list_key(kind: str, item_id: str) -> str:
    return f"{_tag(kind, item_id)}:list"


def stats_key(kind: str, item_id: str) -> str:
    return f"{_tag(kind, item_id)}:stats"


def reports_key(kind: str, item_id: str, review_id: str) -> str:
    return f"{_tag(kind, item_id)}:reports:{review_id}"


def mine_key(customer_id: str) -> str:
    return f"rv:{{u:{customer_id}}}:mine"


def parse_review_id(review_id: str) -> tuple[str, str] | None:
    """(kind, item_id) of `<kind>.<item_id>.<random>`, or None if it is not one."""
    parts = review_id.split(".")
    if len(parts) != 3 or parts[0] not in KINDS or not catalog.valid_id(parts[1]) \
            or not parts[2].isalnum():
        return None
    return parts[0], parts[1]


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def summary(raw_sum: object, raw_count: object) -> RatingSummary:
    count = int(raw_count or 0)
    total = int(raw_sum or 0)
    return RatingSummary(round(total / count, 2) if count else None, count)


# --- scripts ----------------------------------------------------------------------------

# KEYS: by, list, stats, review. ARGV: customer, review id, rating, text, author, now_ms,
# kind, item, the review id `by` must name now ('' = none: a new review). Returns
# {review id, created (1/0)}, or {what `by` names, -1} when that changed since it was read.
_UPSERT = """
local rid = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if rid ~= ARGV[9] then return {rid, -1} end
local rating = tonumber(ARGV[3])
local rkey = KEYS[4]
if rid == '' then
  rid = ARGV[2]
  redis.call('HSET', KEYS[1], ARGV[1], rid)
  redis.call('HSET', rkey, 'review_id', rid, 'kind', ARGV[7], 'item_id', ARGV[8],
             'customer_id', ARGV[1], 'author', ARGV[5], 'rating', rating, 'text', ARGV[4],
             'created_ms', ARGV[6], 'edited_ms', '', 'hidden', '0')
  redis.call('ZADD', KEYS[2], ARGV[6], rid)
  redis.call('HINCRBY', KEYS[3], 'sum', rating)
  redis.call('HINCRBY', KEYS[3], 'count', 1)
  return {rid, 1}
end
local old = tonumber(redis.call('HGET', rkey, 'rating'))
redis.call('HSET', rkey, 'rating', rating, 'text', ARGV[4], 'author', ARGV[5],
           'edited_ms', ARGV[6])
if redis.call('HGET', rkey, 'hidden') == '0' then
  redis.call('HINCRBY', KEYS[3], 'sum', rating - old)
end
return {rid, 0}
"""

# KEYS: by, list, stats, review, reports. ARGV: customer, the review id `by` must name now.
# Returns 1 (deleted), 0 (the customer has no review) or -1 (`by` changed since it was read).
_DELETE = """
local rid = redis.call('HGET', KEYS[1], ARGV[1])
if not rid then return 0 end
if rid ~= ARGV[2] then return -1 end
if redis.call('HGET', KEYS[4], 'hidden') == '0' then
  redis.call('HINCRBY', KEYS[3], 'sum', -tonumber(redis.call('HGET', KEYS[4], 'rating')))
  redis.call('HINCRBY', KEYS[3], 'count', -1)
end
redis.call('ZREM', KEYS[2], rid)
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[4], KEYS[5])
return 1
"""

# KEYS: review, list, stats. ARGV: hide ('1'/'0'), review id, now_ms, who.
# Returns -1 (no such review), 0 (already so), 1 (changed).
_MODERATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'hidden') == ARGV[1] then return 0 end
local rating = tonumber(redis.call('HGET', KEYS[1], 'rating'))
redis.call('HSET', KEYS[1], 'hidden', ARGV[1], 'moderated_ms', ARGV[3], 'moderated_by', ARGV[4])
if ARGV[1] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'sum', -rating)
  redis.call('HINCRBY', KEYS[3], 'count', -1)
else
  redis.call('ZADD', KEYS[2], tonumber(redis.call('HGET', KEYS[1], 'created_ms')), ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'sum', rating)
  redis.call('HINCRBY', KEYS[3], 'count', 1)
end
return 1
"""


# KEYS: by, review. ARGV: customer, review id, anonymous author. Returns 1 if anonymised.
_ANONYMISE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
if redis.call('HGET', KEYS[2], 'customer_id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'author', ARGV[3], 'customer_id', '')
return 1
"""


# --- records ----------------------------------------------------------------------------

def _s(record: dict, name: str) -> str:
    value = record.get(name.encode(), b"")
    return value.decode() if isinstance(value, bytes) else str(value)


def view(record: dict) -> ReviewView:
    edited = _s(record, "edited_ms")
    return ReviewView(_s(record, "review_id"), _s(record, "kind"), _s(record, "item_id"),
                      int(_s(record, "rating")), _s(record, "text"), _s(record, "author"),
                      _dt(int(_s(record, "created_ms"))), _dt(int(edited)) if edited else None)


async def item_exists(redis: aioredis.Redis, kind: str, item_id: str) -> bool:
    if not catalog.valid_id(item_id):
        raise ApiError(422, "invalid_id", f"{kind}_id must match [A-Za-z0-9_-]{{1,64}}")
    return bool(await redis.exists(catalog_key(kind, item_id)))


async def require_item(redis: aioredis.Redis, kind: str, item_id: str) -> None:
    if not await item_exists(redis, kind, item_id):
        raise ApiError(404, "not_found", f"no {kind} {item_id}")


async def rating_of(redis: aioredis.Redis, kind: str, item_id: str) -> RatingSummary:
    raw_sum, raw_count = await redis.hmget(stats_key(kind, item_id), "sum", "count")
    return summary(raw_sum, raw_count)


async def ratings_of(redis: aioredis.Redis, kind: str, item_ids: list[str]
                     ) -> dict[str, RatingSummary]:
    """Average and count for several items at once (one round trip), for listings."""
    if not item_ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for item_id in item_ids:
            pipe.hmget(stats_key(kind, item_id), "sum", "count")
        rows = await pipe.execute()
    return {i: summary(s, c) for i, (s, c) in zip(item_ids, rows)}


async def movie_ratings(redis: aioredis.Redis, movie_ids: list[str]
                        ) -> dict[str, tuple[float, int]]:
    """(average, count) of the rated movies among `movie_ids`: the shape
    `search.set_rating_source` takes (unrated movies are left out)."""
    return {i: (r.average, r.count) for i, r in (await ratings_of(redis, "movie", movie_ids)
                                                 ).items() if r.average is not None}


# --- eligibility ------------------------------------------------------------------------

async def eligible(redis: aioredis.Redis, customer_id: str, kind: str, item_id: str) -> bool:
    """Has the customer a confirmed booking for a show of this movie / at this theatre?"""
    ids = await accounts.booking_ids(redis, customer_id)
    keys = [bookings.booking_key(show, b) for b in ids if (show := bookings.show_of(b))]
    if not keys:
        return False
    decoder = msgspec.json.Decoder(bookings.BookingRecord)
    async with redis.pipeline(transaction=False) as pipe:  # one slot per show: no MGET
        for key in keys:
            pipe.get(key)
        raws = await pipe.execute()
    show_ids = {
        rec.show_id for raw in raws
        if raw and (rec := decoder.decode(raw)).status == "confirmed"
        and rec.customer_id == customer_id
    }
    if not show_ids:
        return False
    shows = await catalog.load_many(redis, Show, sorted(show_ids))
    field = "movie_id" if kind == "movie" else "theatre_id"
    return any(getattr(s, field) == item_id for s in shows)


async def partner_concerned(redis: aioredis.Redis, partner_id: str, kind: str,
                            item_id: str) -> bool:
    """A theatre of the partner's, or a movie the partner published or shows."""
    if kind == "theatre":
        theatre = await catalog.load(redis, Theatre, item_id)
        return theatre is not None and theatre.partner_id == partner_id
    movie = await catalog.load(redis, Movie, item_id)
    if movie is not None and movie.partner_id == partner_id:
        return True
    show_ids = [s.decode() for s in await redis.zrange(catalog.movie_shows_key(item_id), 0, -1)]
    shows = await catalog.load_many(redis, Show, show_ids)
    return any(s.partner_id == partner_id for s in shows)


# --- customer writes --------------------------------------------------------------------

async def upsert(redis: aioredis.Redis, user: accounts.User, kind: str, item_id: str,
                 body: ReviewIn) -> tuple[ReviewView, bool]:
    """Create or edit the customer's review; (review, created)."""
    new_rid = f"{kind}.{item_id}.{secrets.token_hex(8)}"
    # The customer's index first (their slot, not the item's): a review is never left out
    # of their export or erasure; an indexed id whose review was not written is skipped.
    await redis.sadd(mine_key(user.user_id), new_rid)
    bkey = by_key(kind, item_id)
    current = await redis.hget(bkey, user.user_id)
    for _ in range(8):  # `by` changes only by this customer's own concurrent requests
        expect = current.decode() if current else ""
        rid = expect or new_rid
        got_rid, created = await redis.eval(
            _UPSERT, 4, bkey, list_key(kind, item_id), stats_key(kind, item_id),
            review_key(kind, item_id, rid), user.user_id, rid, body.rating, body.text,
            user.name, now_ms(), kind, item_id, expect)
        if created != -1:
            break
        current = got_rid or None
    else:
        raise ApiError(409, "conflict", "this review is being changed; retry")
    if got_rid.decode() != new_rid:
        await redis.srem(mine_key(user.user_id), new_rid)
    record = await redis.hgetall(review_key(kind, item_id, got_rid.decode()))
    return view(record), bool(created)


async def mine(redis: aioredis.Redis, customer_id: str, kind: str, item_id: str
               ) -> tuple[ReviewView, bool] | None:
    rid = await redis.hget(by_key(kind, item_id), customer_id)
    if rid is None:
        return None
    record = await redis.hgetall(review_key(kind, item_id, rid.decode()))
    if not record:
        return None
    return view(record), _s(record, "hidden") == "1"


async def delete(redis: aioredis.Redis, customer_id: str, kind: str, item_id: str) -> bool:
    bkey = by_key(kind, item_id)
    for _ in range(8):  # `by` changes only by this customer's own concurrent requests
        raw = await redis.hget(bkey, customer_id)
        if raw is None:
            return False
        rid = raw.decode()
        done = await redis.eval(_DELETE, 5, bkey, list_key(kind, item_id),
                                stats_key(kind, item_id), review_key(kind, item_id, rid),
                                reports_key(kind, item_id, rid), customer_id, rid)
        if done == 0:
            return False
        if done == 1:
            break
    else:
        raise ApiError(409, "conflict", "this review is being changed; retry")
    # Other slots: the moderation queues, then the customer's index (an id left there by a
    # crash names no review any more and is skipped).
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(REPORTED, rid)
        pipe.zrem(HIDDEN, rid)
        await pipe.execute()
    await redis.srem(mine_key(customer_id), rid)
    return True


# --- public listing ---------------------------------------------------------------------

async def listing(redis: aioredis.Redis, kind: str, item_id: str, offset: int, limit: int
                  ) -> ReviewList:
    lkey = list_key(kind, item_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zcard(lkey)
        pipe.zrevrange(lkey, offset, offset + limit - 1)
        pipe.hmget(stats_key(kind, item_id), "sum", "count")
        total, rids, (raw_sum, raw_count) = await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for rid in rids:
            pipe.hgetall(review_key(kind, item_id, rid.decode()))
        records = await pipe.execute() if rids else []
    # A review deleted between the two reads is simply left out.
    reviews = [view(r) for r in records if r and _s(r, "hidden") == "0"]
    return ReviewList(kind, item_id, summary(raw_sum, raw_count), total, offset, limit,
                      reviews)


# --- partner reports and moderation -----------------------------------------------------

async def load_by_id(redis: aioredis.Redis, review_id: str) -> dict | None:
    where = parse_review_id(review_id)
    if where is None:
        return None
    record = await redis.hgetall(review_key(*where, review_id))
    return record or None


async def report(redis: aioredis.Redis, partner_id: str, review_id: str, reason: str
                 ) -> ReportAck:
    record = await load_by_id(redis, review_id)
    if record is None:
        raise ApiError(404, "not_found", f"no review {review_id}")
    kind, item_id = _s(record, "kind"), _s(record, "item_id")
    if not await partner_concerned(redis, partner_id, kind, item_id):
        raise ApiError(403, "forbidden",
                       "you can report reviews of your own theatres and the movies you show")
    at = now_ms()
    rkey = reports_key(kind, item_id, review_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(rkey, partner_id, msgspec.json.encode(
            Report(partner_id, reason, _dt(at))))
        pipe.hlen(rkey)
        _, count = await pipe.execute()
    # Waits for an admin (a hidden review is already decided on: it stays in `rv:hidden`).
    if _s(record, "hidden") == "0":
        await redis.zadd(REPORTED, {review_id: at}, nx=True)
    return ReportAck(review_id, int(count))


async def moderate(redis: aioredis.Redis, review_id: str, hide: bool, who: str
                   ) -> ModeratedReview:
    where = parse_review_id(review_id)
    if where is None:
        raise ApiError(404, "not_found", f"no review {review_id}")
    kind, item_id = where
    changed = await redis.eval(
        _MODERATE, 3, review_key(kind, item_id, review_id), list_key(kind, item_id),
        stats_key(kind, item_id), "1" if hide else "0", review_id, now_ms(), who)
    if changed == -1:
        raise ApiError(404, "not_found", f"no review {review_id}")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(REPORTED, review_id)
        if hide:
            pipe.zadd(HIDDEN, {review_id: now_ms()})
        else:
            pipe.zrem(HIDDEN, review_id)
        await pipe.execute()
    found = await moderated(redis, [review_id])
    return found[0]


_report_decoder = msgspec.json.Decoder(Report)


async def moderated(redis: aioredis.Redis, review_ids: list[str]) -> list[ModeratedReview]:
    async with redis.pipeline(transaction=False) as pipe:
        for rid in review_ids:
            kind, item_id = parse_review_id(rid) or ("movie", "x")
            pipe.hgetall(review_key(kind, item_id, rid))
            pipe.hvals(reports_key(kind, item_id, rid))
        rows = await pipe.execute() if review_ids else []
    out = []
    for record, reports in zip(rows[0::2], rows[1::2]):
        if not record:
            continue
        mod_ms = _s(record, "moderated_ms")
        out.append(ModeratedReview(
            view(record), _s(record, "customer_id"), _s(record, "hidden") == "1",
            sorted((_report_decoder.decode(r) for r in reports), key=lambda r: r.reported_at),
            _dt(int(mod_ms)) if mod_ms else None, _s(record, "moderated_by") or None))
    return out


async def moderation_queue(redis: aioredis.Redis, status: str, offset: int, limit: int
                           ) -> ModerationList:
    key = REPORTED if status == "reported" else HIDDEN
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zcard(key)
        pipe.zrevrange(key, offset, offset + limit - 1)
        total, rids = await pipe.execute()
    return ModerationList(status, total, await moderated(redis, [r.decode() for r in rids]))


# --- a customer's reviews: export and erasure (account deletion) ------------------------

async def review_ids_of(redis: aioredis.Redis, customer_id: str) -> list[str]:
    """The customer's review ids, from their `mine` index (no keyspace scan: this runs on
    a request)."""
    return sorted(r.decode() for r in await redis.smembers(mine_key(customer_id)))


async def export_of(redis: aioredis.Redis, customer_id: str) -> list[dict]:
    """The customer's reviews for their data export (hidden ones too, flagged)."""
    out = []
    for rid in await review_ids_of(redis, customer_id):
        record = await load_by_id(redis, rid)
        if record is None or _s(record, "customer_id") != customer_id:
            continue
        out.append({**msgspec.to_builtins(view(record)), "hidden": _s(record, "hidden") == "1"})
    return out


async def anonymise_author(redis: aioredis.Redis, customer_id: str) -> int:
    """Detach the customer's reviews from them: author `FORMER_CUSTOMER`, no customer id,
    no `:by` entry (so it counts as nobody's). Text, rating and moderation state stay."""
    count = 0
    for rid in await review_ids_of(redis, customer_id):
        where = parse_review_id(rid)
        if where is None:
            continue
        count += int(await redis.eval(_ANONYMISE, 2, by_key(*where), review_key(*where, rid),
                                      customer_id, rid, FORMER_CUSTOMER))
    await redis.delete(mine_key(customer_id))
    return count


mine_api.register_personal_data("reviews", mine_api.PersonalData(export_of, anonymise_author))
