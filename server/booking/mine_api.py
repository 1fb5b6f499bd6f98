"""What a customer's account holds of the booking side, over HTTP: my bookings, the export
of my data (account + bookings), and deleting the account (its bookings stay, anonymised).
Here, not in `accounts`, because they read and rewrite booking records: accounts sit below
bookings (checkout links a booking to its customer), so these look down at both.

    GET    /api/me/bookings            my bookings (with their e-tickets)
    GET    /api/me/bookings/{id}       one of them (404 for anyone else's)
    GET    /api/me/export              everything we hold about me, as JSON
    DELETE /api/me                     {password, code?} -> bookings kept, anonymised

Features above this layer that keep personal data of their own (reviews, recommendation
history: `server.discovery`) cannot be imported from here; they register a
`PersonalData` section (`register_personal_data`) when their module is imported, and the
export includes it and the deletion erases it (security review L15).
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web
from redis.exceptions import WatchError

from server.accounts import users as accounts
from server.accounts.api import SESSION, TAGS, Code, Me, me_view
from server.accounts.profile_api import Profile, profile_of
from server.accounts.users import User
from server.appkeys import services
from server.booking import records as booking_store
from server.booking.views import booking_view
from server.booking.wire import BookingResponse
from server.core.errors import ApiError
from server.core.openapi import operation
from server.core.wire import json_response, read_json

routes = web.RouteTableDef()
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PersonalData:
    """What another feature holds about a customer: `export(redis, user_id)` returns it as
    JSON-able data, `erase(redis, user_id)` deletes or anonymises it (idempotent)."""

    export: Callable[[Any, str], Awaitable[Any]]
    erase: Callable[[Any, str], Awaitable[object]]


_SECTIONS: dict[str, PersonalData] = {}
SECTIONS = ("reviews", "recommendation_history")  # the export's fields they fill


def register_personal_data(section: str, data: PersonalData) -> None:
    """Called at import time by the feature holding the data (one entry per section)."""
    if section not in SECTIONS:
        raise ValueError(f"unknown personal-data section {section!r}")
    _SECTIONS[section] = data


class DeleteAccount(msgspec.Struct, forbid_unknown_fields=True):
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    code: Code | None = None  # needed when MFA is on


class MyBookings(msgspec.Struct):
    bookings: list[BookingResponse]


class Export(msgspec.Struct):
    exported_at: datetime
    account: Me
    bookings: list[BookingResponse]
    profile: Profile | None = None  # phone and identity numbers, decrypted for their owner
    reviews: list[dict[str, Any]] = []              # the reviews I wrote (hidden ones too)
    recommendation_history: dict[str, Any] | None = None  # movies booked, languages


class Deleted(msgspec.Struct):
    deleted: bool
    bookings_anonymised: int


async def _booking_views(request: web.Request, user: User) -> list[BookingResponse]:
    redis = services(request).redis
    views = []
    for booking_id in await accounts.booking_ids(redis, user.user_id):
        booking = await booking_store.load_booking(redis, booking_id)
        if booking is None or booking.customer_id != user.user_id:
            continue
        views.append(await booking_view(request, booking))
    return views


@routes.get("/api/me/bookings")
@operation("GET", "/api/me/bookings", summary="My bookings, newest first",
           response=MyBookings, errors=(403,), tags=TAGS, security=SESSION)
async def my_bookings(request: web.Request) -> web.Response:
    """Bookings made while logged in (guest checkouts are not linked to an account). Each
    is the same object `GET /api/bookings/{id}` returns, with its booking token."""
    user = await accounts.require_role(request, "customer")
    return json_response(MyBookings(await _booking_views(request, user)))


@routes.get("/api/me/bookings/{booking_id}")
@operation("GET", "/api/me/bookings/{booking_id}", summary="One of my bookings",
           response=BookingResponse, errors=(403, 404), tags=TAGS, security=SESSION)
async def my_booking(request: web.Request) -> web.Response:
    """404 for a booking that is not mine (whether or not it exists)."""
    user = await accounts.require_role(request, "customer")
    booking_id = request.match_info["booking_id"]
    booking = await booking_store.load_booking(services(request).redis, booking_id)
    if booking is None or booking.customer_id != user.user_id:
        raise ApiError(404, "not_found", f"you have no booking {booking_id!r}")
    return json_response(await booking_view(request, booking))


@routes.get("/api/me/export")
@operation("GET", "/api/me/export", summary="Export my data (JSON)", response=Export,
           tags=TAGS, security=SESSION)
async def export_me(request: web.Request) -> web.Response:
    """`{"exported_at", "account", "bookings": [...], "reviews": [...],
    "recommendation_history": {...}}`: the account (never the password hash, MFA secret or
    recovery codes), every booking linked to it, the reviews it wrote and what the
    recommendations learnt from its bookings."""
    user = await accounts.require_user(request)
    redis = services(request).redis
    views = await _booking_views(request, user) if user.role == "customer" else []
    profile = profile_of(services(request).settings, user)
    extra = {name: await data.export(redis, user.user_id) for name, data in _SECTIONS.items()}
    return json_response(Export(accounts.now(), me_view(user), views, profile, **extra), headers={
        "Content-Disposition": 'attachment; filename="book-my-movie-export.json"',
        "Cache-Control": "no-store"})


_ANONYMOUS = "(deleted account)"


@routes.delete("/api/me")
@operation("DELETE", "/api/me", summary="Delete my account (bookings kept, anonymised)",
           request=DeleteAccount, response=Deleted, errors=(401, 403), tags=TAGS,
           security=SESSION)
async def delete_me(request: web.Request) -> web.Response:
    """Needs the password again (and a TOTP code when MFA is on). The account, its log-in
    and its links are deleted; its bookings stay (seats stay sold, tickets stay valid)
    with name, e-mail, card digits and the account link removed."""
    user = await accounts.require_role(request, "customer")
    body = await read_json(request, DeleteAccount)
    redis = services(request).redis
    await accounts.check_throttle(redis, user.email)
    if not await accounts.verify_password(user.password_hash, body.password):
        await accounts.record_failure(redis, user.email)
        raise ApiError(401, "invalid_credentials", "wrong password")
    if user.mfa_enabled and not (body.code and await accounts.use_totp(
            redis, services(request).settings.secret, user, body.code)):
        await accounts.record_failure(redis, user.email)
        raise ApiError(401, "invalid_code", "a valid authenticator code is needed")
    # Reviews and recommendation history first: if that fails the account is still there
    # and the customer can try again. Again after the account is gone, for a review
    # written by a request that was already past its log-in check.
    await _erase_sections(redis, user.user_id)
    count = await _delete_account(redis, user)
    await accounts.end_session(request)
    try:
        await _erase_sections(redis, user.user_id)
    except Exception:  # the first pass did the work; this one only closes a race
        log.exception("account %s: second erasure pass failed", user.user_id)
    return json_response(Deleted(True, count))


async def _erase_sections(redis, user_id: str) -> None:  # noqa: ANN001
    for data in _SECTIONS.values():
        await data.erase(redis, user_id)


async def _anonymise(redis, uid: str, booking_id: str) -> bool:  # noqa: ANN001
    """Strip the customer from one of their bookings (its show's slot, one WATCHed
    read-modify-write); True if it was theirs. Idempotent: an anonymised booking is no
    longer theirs."""
    show_id = booking_store.show_of(booking_id)
    if show_id is None:
        return False
    key = booking_store.booking_key(show_id, booking_id)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                raw = await pipe.get(key)
                if raw is None:
                    return False
                booking = msgspec.json.decode(raw, type=booking_store.BookingRecord)
                if booking.customer_id != uid:
                    return False
                booking.email, booking.name, booking.customer_id = "", _ANONYMOUS, None
                booking.phone = booking.id_number = None
                booking.payment = msgspec.structs.replace(booking.payment, last4="")
                pipe.multi()
                pipe.set(key, msgspec.json.encode(booking), keepttl=True)
                await pipe.execute()
                return True
            except WatchError:
                continue


async def _delete_account(redis, user: User) -> int:  # noqa: ANN001
    """Three ordered steps, because the keys live in three kinds of slot (each booking in
    its show's, the account in the customer's, the e-mail index entry in its own):
    (1) anonymise every linked booking while the account still exists (a failure leaves
    the account, and the customer can try again); (2) delete the account's keys in one
    transaction, provided no booking was linked since (1); (3) release the e-mail index
    entry if it still names this account. A crash before (3) leaves a stale entry, which
    reads as no account and which a later sign-up takes over."""
    uid = user.user_id
    bookings_key, record_key = accounts.user_bookings_key(uid), accounts.user_key(uid)
    done: set[str] = set()
    count = 0
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(record_key, bookings_key)
                ids = {b.decode() for b in await pipe.zrange(bookings_key, 0, -1)}
                if ids - done:  # (1), for what step (2) would otherwise orphan
                    await pipe.reset()
                    for booking_id in sorted(ids - done):
                        count += await _anonymise(redis, uid, booking_id)
                        done.add(booking_id)
                    continue
                pipe.multi()  # (2): the customer's slot only
                pipe.delete(record_key, bookings_key, accounts.sessions_key(uid))
                await pipe.execute()
                break
            except WatchError:
                continue
    await accounts.release_email(redis, user.email, uid)  # (3)
    await accounts.clear_failures(redis, user.email)
    return count
