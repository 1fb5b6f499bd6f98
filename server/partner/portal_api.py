"""Partner onboarding and the partner portal.

    POST   /api/partner-requests                      public: ask to become a partner
    GET    /admin/v1/partner-requests?status=pending&limit=&cursor=
                                                      admin key or an admin user, newest first
    POST   /admin/v1/partner-requests/{id}/approve    -> partner + its portal user
    POST   /admin/v1/partner-requests/{id}/reject
    POST   /admin/v1/users                            an admin user (admin key or admin)
    GET    /api/partner/account                       portal: the partner and me
    GET    /api/partner/keys                          portal: the partner's API keys
    POST   /api/partner/keys                          {name, scope, allowed_ips} -> the key, once
    DELETE /api/partner/keys/{key_id}                 revoke
    GET    /api/partner/keys/{key_id}/usage?days=7    requests, errors, p95 per day
    GET    /api/partner/shows?date=YYYY-MM-DD         the partner's own shows

Portal endpoints need a logged-in partner user with MFA on (accounts.require_role). The
request carries the applicant's password as an argon2 hash only; approval turns it into
the partner's portal log-in.

Keys: the requests are one small family in one slot `{pr}` (`partnerreq:{pr}:<id>` the
record, `partnerreq:{pr}:email:<email>` the pending request of an address,
`partnerreqs:{pr}` ids by creation time), so a request and its indexes change in one
transaction; `partnerreq:quota:<client>` counts a client's requests. Approval also writes
the partner (`{p:<pid>}`) and its user (the accounts' keys): other slots, so it is ordered
single-slot steps, each safe to repeat: (1) the request is marked as being approved,
naming the partner and user ids it becomes (it still reads as pending, and can no longer
be rejected); (2) the partner record; (3) the user, which claims the e-mail address;
(4) the request approved. Approving again after a stop in between finishes the same ids;
an address taken meanwhile by someone else undoes (1) and (2): 409, nothing made.

Abuse (security review L18): a client address may file `REQUEST_QUOTA` requests per
`REQUEST_WINDOW_S` (counted before the argon2 hash is computed; the address is the rate
limiter's, i.e. seen through the trusted proxies), then 429 `too_many_requests` with
Retry-After. Not counted: a loopback peer that came through no proxy (the machine itself,
as for /metrics) and a server with rate limits off (BMM_RATE_LIMITS=0). The admin list is
cursor-paginated (`limit`, `cursor` -> `next_cursor`), so no application is out of reach.
"""
from __future__ import annotations

import ipaddress
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal

import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import WatchError

from server.appkeys import services
from server.accounts import users as accounts
from server.accounts import api_keys as auth
from server.accounts import key_usage
from server.catalog import service as catalog
from server.accounts.api import Email, Me, Name, Password, me_view
from server.accounts.users import User
from server.catalog.model import PartnerShowList
from server.core.errors import ApiError
from server.core.openapi import Query, operation
from server.core.pagination import Page, decode_cursor, encode_cursor, limit_of
from server.onsale import ratelimit
from server.core.wire import json_response, read_json

routes = web.RouteTableDef()
ADMIN_TAGS = ("admin",)
PORTAL_TAGS = ("partner portal",)

RequestStatus = Literal["pending", "approved", "rejected"]
KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
Network = Annotated[str, msgspec.Meta(min_length=2, max_length=64)]


# --- wire -------------------------------------------------------------------------------

class PartnerRequestIn(msgspec.Struct, forbid_unknown_fields=True):
    company: Name
    contact_name: Name
    email: Email
    password: Password  # the portal password, if approved (stored as an argon2 hash)
    message: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class PartnerRequestRecord(msgspec.Struct, kw_only=True):
    request_id: str
    company: str
    contact_name: str
    email: str
    password_hash: str
    message: str = ""
    status: RequestStatus = "pending"
    created_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    reason: str = ""
    partner_id: str | None = None
    user_id: str | None = None


class PartnerRequestView(msgspec.Struct):
    request_id: str
    company: str
    contact_name: str
    email: str
    message: str
    status: RequestStatus
    created_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    reason: str = ""
    partner_id: str | None = None
    user_id: str | None = None


class PartnerRequestList(Page[PartnerRequestView]):
    """`items` + `next_cursor` (the API's pagination); `requests`: the same items, the
    field this list always had."""

    requests: list[PartnerRequestView] = []


class RejectIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class AdminUserIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    name: Name


class PartnerAccount(msgspec.Struct):
    partner_id: str
    name: str
    user: Me


class KeyIn(msgspec.Struct, forbid_unknown_fields=True):
    name: KeyName
    scope: auth.Scope = "read"
    allowed_ips: Annotated[list[Network], msgspec.Meta(max_length=32)] = []


class KeyCreated(msgspec.Struct):
    api_key: str  # shown once; only its SHA-256 is stored
    key: auth.KeyInfo


class KeyList(msgspec.Struct):
    keys: list[auth.KeyInfo]


class Revoked(msgspec.Struct):
    key_id: str
    revoked: bool = True


REQUEST_TAG = "{pr}"  # every request key in one slot (a few per day; one transaction each)


def request_key(request_id: str) -> str:
    return f"partnerreq:{REQUEST_TAG}:{request_id}"


def pending_email_key(email: str) -> str:
    return f"partnerreq:{REQUEST_TAG}:email:{accounts.normalise_email(email)}"


REQUESTS = f"partnerreqs:{REQUEST_TAG}"  # sorted set: request id by creation time
REQUEST_QUOTA = 3         # requests per client address ...
REQUEST_WINDOW_S = 3600   # ... per this window
SCAN_BATCH = 200          # admin list: ids read per round trip while filtering by status
SCAN_MAX = 5000           # ... and at most this many per page (then a shorter page + cursor)


def quota_key(client: str) -> str:
    return f"partnerreq:quota:{client}"


# KEYS: the counter. ARGV: window ms. Returns {count, ms until the window ends}.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""

_record_decoder = msgspec.json.Decoder(PartnerRequestRecord)


def _view(r: PartnerRequestRecord) -> PartnerRequestView:
    # A pending request being approved names its partner and user already: not shown
    # until the approval is done.
    done = r.status == "approved"
    return PartnerRequestView(r.request_id, r.company, r.contact_name, r.email, r.message,
                              r.status, r.created_at, r.decided_at, r.decided_by, r.reason,
                              r.partner_id if done else None, r.user_id if done else None)


# --- onboarding -------------------------------------------------------------------------

@routes.post("/api/partner-requests")
@operation("POST", "/api/partner-requests", summary="Ask to become a partner",
           request=PartnerRequestIn, response=PartnerRequestView, status=201,
           errors=(409, 429), tags=("partner onboarding",))
async def request_partnership(request: web.Request) -> web.Response:
    """Public. A platform admin approves or rejects it. 409 if the address has an account
    or a pending request already."""
    accounts.same_origin(request)
    body = await read_json(request, PartnerRequestIn)
    redis = services(request).redis
    refused = await _over_quota(request, redis)
    if refused is not None:
        return refused
    email = accounts.normalise_email(body.email)
    if await accounts.email_taken(redis, email):
        raise ApiError(409, "email_taken", "an account with this e-mail exists")
    record = PartnerRequestRecord(
        request_id=f"pr_{secrets.token_hex(8)}", company=body.company.strip(),
        contact_name=body.contact_name.strip(), email=email,
        password_hash=await accounts.hash_password(body.password), message=body.message,
        created_at=accounts.now())
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(pending_email_key(email))
                # (GET, not EXISTS: a cluster pipeline queues EXISTS even while watching)
                if await pipe.get(pending_email_key(email)) is not None:
                    raise ApiError(409, "request_pending",
                                   "a request from this address is waiting for review")
                pipe.multi()
                pipe.set(request_key(record.request_id), msgspec.json.encode(record))
                pipe.set(pending_email_key(email), record.request_id)
                pipe.zadd(REQUESTS, {record.request_id: time.time_ns() // 1_000_000})
                await pipe.execute()
                break
            except WatchError:
                continue
    return json_response(_view(record), status=201)


async def _over_quota(request: web.Request, redis: aioredis.Redis) -> web.Response | None:
    """Count this request against its client address; the 429 answer past the quota."""
    limiter = request.app[ratelimit.LIMITER]
    if not limiter.settings.rate_limits:
        return None
    forwarded = request.headers.get("X-Forwarded-For")
    if not forwarded and _loopback(request.remote):
        return None  # the machine itself (no proxy in between)
    client = limiter.client(request.remote, forwarded)
    count, ttl_ms = await redis.eval(_COUNT, 1, quota_key(client), REQUEST_WINDOW_S * 1000)
    if int(count) <= REQUEST_QUOTA:
        return None
    return ratelimit.too_many("too_many_requests",
                              f"at most {REQUEST_QUOTA} partner requests per hour from one "
                              "address; try again later", max(1, int(ttl_ms)))


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


@routes.get("/admin/v1/partner-requests")
@operation("GET", "/admin/v1/partner-requests", summary="Partner requests",
           response=PartnerRequestList, errors=(403, 422), tags=ADMIN_TAGS,
           security="adminKey",
           params=(Query("status", description="pending | approved | rejected"),
                   Query("limit", description="1-200 (default 50)"),
                   Query("cursor", description="`next_cursor` of the previous page")),
           description="The admin key, or a logged-in admin user (session cookie). Newest "
           "first, cursor-paginated.")
async def list_partner_requests(request: web.Request) -> web.Response:
    await accounts.require_admin(request)
    status = request.query.get("status")
    if status is not None and status not in ("pending", "approved", "rejected"):
        raise ApiError(422, "invalid", "status is pending, approved or rejected",
                       field="status")
    secret = services(request).settings.secret
    limit = limit_of(request)
    position = decode_cursor(secret, request)  # [created ms, request id] of the last one sent
    if position is not None and not (
            isinstance(position, list) and len(position) == 2
            and isinstance(position[0], int) and isinstance(position[1], str)):
        raise ApiError(422, "invalid_cursor", "this cursor is not one of this list",
                       field="cursor")
    redis = services(request).redis
    views: list[PartnerRequestView] = []
    scanned, exhausted = 0, False
    while len(views) < limit and scanned < SCAN_MAX and not exhausted:
        batch = await _ids_after(redis, position, SCAN_BATCH)
        exhausted = len(batch) < SCAN_BATCH
        raws = await redis.mget([request_key(i) for i, _ in batch]) if batch else []
        for n, ((request_id, score), raw) in enumerate(zip(batch, raws, strict=True), 1):
            scanned += 1
            position = [score, request_id]
            record = _record_decoder.decode(raw) if raw is not None else None
            if record is not None and (status is None or record.status == status):
                views.append(_view(record))
            if len(views) >= limit:
                exhausted = exhausted and n == len(batch)
                break
    cursor = None if exhausted or position is None else encode_cursor(secret, position)
    return json_response(PartnerRequestList(views, cursor, views))


async def _ids_after(redis: aioredis.Redis, position: list | None, count: int
                     ) -> list[tuple[str, int]]:
    """Up to `count` (request id, created ms) after `position`, newest first (ZREVRANGE
    order: score descending, then id descending)."""
    if position is None:
        rows = await redis.zrevrange(REQUESTS, 0, count - 1, withscores=True)
        return [(r.decode(), int(s)) for r, s in rows]
    score, last = position
    out: list[tuple[str, int]] = []
    # The same millisecond as the last one sent: the ids below it.
    same = await redis.zrevrangebyscore(REQUESTS, score, score)
    out += [(r.decode(), score) for r in same if r.decode() < last][:count]
    if len(out) < count:
        rows = await redis.zrevrangebyscore(REQUESTS, f"({score}", "-inf", start=0,
                                            num=count - len(out), withscores=True)
        out += [(r.decode(), int(s)) for r, s in rows]
    return out


async def _change_request(
        redis: aioredis.Redis, request_id: str,
        change: Callable[[PartnerRequestRecord], tuple[PartnerRequestRecord, bool]],
) -> PartnerRequestRecord:
    """Read-modify-write the request under WATCH (its slot only): `change(record)` returns
    the record to store, and whether its address's pending entry goes (or raises ApiError:
    nothing written). 404 if there is no such request."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(request_key(request_id))
                raw = await pipe.get(request_key(request_id))
                if raw is None:
                    raise ApiError(404, "not_found", f"no partner request {request_id!r}")
                record, decided = change(_record_decoder.decode(raw))
                pipe.multi()
                pipe.set(request_key(request_id), msgspec.json.encode(record))
                if decided:
                    pipe.delete(pending_email_key(record.email))
                await pipe.execute()
                return record
            except WatchError:
                continue


def _pending(record: PartnerRequestRecord) -> None:
    if record.status != "pending":
        raise ApiError(409, "already_decided", f"this request was {record.status} already",
                       decision=record.status)


@routes.post("/admin/v1/partner-requests/{request_id}/approve")
@operation("POST", "/admin/v1/partner-requests/{request_id}/approve",
           summary="Approve: make the partner and its portal user", response=PartnerRequestView,
           errors=(403, 404, 409), tags=ADMIN_TAGS, security="adminKey",
           description="The partner logs in to the portal with the request's e-mail and "
                       "password, sets up MFA, then creates its API keys.")
async def approve_partner_request(request: web.Request) -> web.Response:
    who = await accounts.require_admin(request)
    redis = services(request).redis
    request_id = request.match_info["request_id"]

    def begin(record: PartnerRequestRecord) -> tuple[PartnerRequestRecord, bool]:
        _pending(record)
        if record.partner_id is None:  # else an approval under way: finish its ids
            record.partner_id = f"p_{secrets.token_hex(8)}"
            record.user_id = accounts.new_user_id()
        return record, False

    record = await _change_request(redis, request_id, begin)
    assert record.partner_id is not None and record.user_id is not None
    try:
        await _make_partner(redis, record)
        await _make_user(redis, record)
    except ApiError as exc:
        if exc.code == "email_taken":  # cannot finish: undone (anything else: approve again)
            await _abandon_approval(redis, record)
        raise

    def finish(current: PartnerRequestRecord) -> tuple[PartnerRequestRecord, bool]:
        if current.status == "approved" and current.user_id == record.user_id:
            return current, True  # another approver of the same ids finished first
        _pending(current)
        current.status, current.decided_at, current.decided_by = "approved", accounts.now(), who
        return current, True

    return json_response(_view(await _change_request(redis, request_id, finish)))


async def _make_partner(redis: aioredis.Redis, record: PartnerRequestRecord) -> None:
    """The partner record (step 2), unless a repeat of this step made it already."""
    assert record.partner_id is not None
    key = auth.partner_key(record.partner_id)
    if not await redis.exists(key):
        await redis.hset(key, mapping={"name": record.company,
                                       "created_ms": str(time.time_ns() // 1_000_000),
                                       "request_id": record.request_id})


async def _make_user(redis: aioredis.Redis, record: PartnerRequestRecord) -> None:
    """The portal user (step 3): it claims the e-mail address. Ours already (a repeat):
    done; someone else's: 409."""
    assert record.partner_id is not None and record.user_id is not None
    user = User(user_id=record.user_id, email=record.email, name=record.contact_name,
                role="partner", password_hash=record.password_hash,
                created_at=record.created_at, partner_id=record.partner_id)
    try:
        await accounts.create_user(redis, user)
    except ApiError as exc:
        if exc.code != "email_taken":
            raise
        existing = await accounts.user_by_email(redis, record.email)
        if existing is None or existing.user_id != record.user_id:
            raise ApiError(409, "email_taken",
                           "an account with this e-mail exists now") from None


async def _abandon_approval(redis: aioredis.Redis, record: PartnerRequestRecord) -> None:
    """Undo steps 1-2 of an approval that cannot finish: the request is plainly pending
    again and the partner it was to become is gone (it had no user and no key)."""
    def back(current: PartnerRequestRecord) -> tuple[PartnerRequestRecord, bool]:
        if current.status == "pending" and current.partner_id == record.partner_id:
            current.partner_id = current.user_id = None
        return current, False

    await _change_request(redis, record.request_id, back)
    assert record.partner_id is not None
    key = auth.partner_key(record.partner_id)
    if await redis.hget(key, "request_id") == record.request_id.encode():
        await redis.delete(key)


@routes.post("/admin/v1/partner-requests/{request_id}/reject")
@operation("POST", "/admin/v1/partner-requests/{request_id}/reject",
           summary="Reject a partner request", request=RejectIn, response=PartnerRequestView,
           errors=(403, 404, 409), tags=ADMIN_TAGS, security="adminKey")
async def reject_partner_request(request: web.Request) -> web.Response:
    """409 `approval_in_progress` if an approval has begun (approve it again to finish)."""
    who = await accounts.require_admin(request)
    body = await read_json(request, RejectIn) if request.can_read_body else RejectIn()

    def reject(record: PartnerRequestRecord) -> tuple[PartnerRequestRecord, bool]:
        _pending(record)
        if record.partner_id is not None:
            raise ApiError(409, "approval_in_progress",
                           "this request is being approved (approve it again to finish)")
        record.status, record.decided_at, record.decided_by = "rejected", accounts.now(), who
        record.reason, record.password_hash = body.reason, ""
        return record, True

    record = await _change_request(services(request).redis, request.match_info["request_id"],
                                   reject)
    return json_response(_view(record))


@routes.post("/admin/v1/users")
@operation("POST", "/admin/v1/users", summary="Create a platform admin user",
           request=AdminUserIn, response=Me, status=201, errors=(403, 409),
           tags=ADMIN_TAGS, security="adminKey",
           description="The new admin must set up MFA before admin endpoints answer it.")
async def create_admin_user(request: web.Request) -> web.Response:
    await accounts.require_admin(request)
    body = await read_json(request, AdminUserIn)
    user = await accounts.new_user(body.email, body.name, "admin", body.password)
    await accounts.create_user(services(request).redis, user)
    return json_response(me_view(user), status=201)


# --- the portal ---------------------------------------------------------------------------

async def _partner_user(request: web.Request) -> User:
    user = await accounts.require_role(request, "partner")
    if not user.partner_id:
        raise ApiError(403, "forbidden", "this account acts for no partner")
    return user


@routes.get("/api/partner/account")
@operation("GET", "/api/partner/account", summary="The partner I act for",
           response=PartnerAccount, errors=(403,), tags=PORTAL_TAGS,
           security="sessionCookie")
async def portal_account(request: web.Request) -> web.Response:
    user = await _partner_user(request)
    name = await services(request).redis.hget(auth.partner_key(user.partner_id), "name")
    return json_response(PartnerAccount(user.partner_id, (name or b"").decode(),
                                        me_view(user)))


@routes.get("/api/partner/keys")
@operation("GET", "/api/partner/keys", summary="The partner's API keys", response=KeyList,
           errors=(403,), tags=PORTAL_TAGS, security="sessionCookie")
async def portal_keys(request: web.Request) -> web.Response:
    user = await _partner_user(request)
    return json_response(KeyList(await auth.list_keys(services(request).redis,
                                                      user.partner_id)))


@routes.post("/api/partner/keys")
@operation("POST", "/api/partner/keys", summary="Create an API key", request=KeyIn,
           response=KeyCreated, status=201, errors=(403,), tags=PORTAL_TAGS,
           security="sessionCookie",
           description="`scope`: read (GET endpoints only) or write. `allowed_ips`: "
                       "addresses or CIDR networks the key may be used from (empty: any). "
                       "The key is in this response only.")
async def portal_create_key(request: web.Request) -> web.Response:
    user = await _partner_user(request)
    body = await read_json(request, KeyIn)
    redis = services(request).redis
    ips = auth.normalise_networks(body.allowed_ips)
    api_key = await auth.issue_key(redis, user.partner_id, body.name.strip(), body.scope, ips)
    key_id = auth.key_id_of(auth.hash_key(api_key))
    info = next(k for k in await auth.list_keys(redis, user.partner_id) if k.key_id == key_id)
    return json_response(KeyCreated(api_key, info), status=201)


@routes.delete("/api/partner/keys/{key_id}")
@operation("DELETE", "/api/partner/keys/{key_id}", summary="Revoke an API key",
           response=Revoked, errors=(403, 404), tags=PORTAL_TAGS, security="sessionCookie")
async def portal_revoke_key(request: web.Request) -> web.Response:
    """The key stops working at once. 404 if the partner has no such key."""
    user = await _partner_user(request)
    key_id = request.match_info["key_id"]
    if not await auth.revoke_key(services(request).redis, user.partner_id, key_id):
        raise ApiError(404, "not_found", f"no API key {key_id!r}")
    return json_response(Revoked(key_id))


@routes.get("/api/partner/keys/{key_id}/usage")
@operation("GET", "/api/partner/keys/{key_id}/usage", summary="An API key's usage per day",
           response=key_usage.KeyUsage, errors=(403, 404, 422), tags=PORTAL_TAGS,
           security="sessionCookie", params=(key_usage.DAYS,))
async def portal_key_usage(request: web.Request) -> web.Response:
    """Per UTC day, oldest first: the requests made with this key or its access tokens,
    their 4xx and 5xx answers and the 95th percentile latency in ms. 404 if the partner
    has no such key (a revoked key's usage goes with it)."""
    user = await _partner_user(request)
    key_id = request.match_info["key_id"]
    days = key_usage.parse_days(request)
    redis = services(request).redis
    key = next((k for k in await auth.list_keys(redis, user.partner_id) if k.key_id == key_id),
               None)
    if key is None:
        raise ApiError(404, "not_found", f"no API key {key_id!r}")
    (found,) = await key_usage.usage(redis, [key], days)
    return json_response(found)


@routes.get("/api/partner/shows")
@operation("GET", "/api/partner/shows", summary="The partner's shows on a date",
           response=PartnerShowList, errors=(403, 422), tags=PORTAL_TAGS,
           security="sessionCookie",
           params=(Query("date", required=True, description="theatre-local YYYY-MM-DD"),))
async def portal_shows(request: web.Request) -> web.Response:
    user = await _partner_user(request)
    date = catalog.parse_date(request.query.get("date"))
    if date is None:
        raise ApiError(422, "invalid_date", "date (YYYY-MM-DD) is required", field="date")
    shows = await catalog.partner_shows(services(request).redis, user.partner_id, date)
    return json_response(PartnerShowList(date, shows))
