"""Booking lifecycle endpoints (the rules are in server/booking/lifecycle.py).

    POST   /api/payments/webhook                         the gateway's signed webhook
    GET    /api/bookings/{booking_id}/cancellation       what cancelling now would refund
    POST   /api/bookings/{booking_id}/cancel             the customer cancels (booking token)
    GET    /partner/v1/shows/{show_id}/cancellation-policy
    PUT    /partner/v1/shows/{show_id}/cancellation-policy
    POST   /partner/v1/shows/{show_id}/bulk-bookings     many seats, all or nothing
    GET    /partner/v1/shows/{show_id}/bulk-bookings/{bulk_id}
    DELETE /partner/v1/shows/{show_id}/bulk-bookings/{bulk_id}   bulk cancellation
    POST   /partner/v1/checkin                           verify an e-ticket and admit once
"""
from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

import msgspec
from aiohttp import web

from server.appkeys import services
from server.accounts import api_keys as auth
from server.catalog import service as catalog
from server.booking import lifecycle, views
from server.booking.adapters import booking_ports
from server.booking.bulk import BulkAsk, bulk_book
from server.booking.records import BulkRecord
from server.catalog.model import Money
from server.core.errors import ApiError
from server.booking.lifecycle import (
    Admission,
    Cancellation,
    CancellationPolicy,
    RetryLater,
)
from server.core.openapi import Header, Query, operation
from server.commerce.payments import WebhookError
from server.core.wire import json_response, read_json
from server.booking.views import authorised_booking
from server.booking import records as store

routes = web.RouteTableDef()

CUSTOMER = ("customer",)
PARTNER = ("partner",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def retry_after(handler: Handler) -> Handler:
    """A RetryLater becomes a 503 with a Retry-After header."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RetryLater as exc:
            return exc.response()

    return wrapped


# --- wire ---------------------------------------------------------------------------------

SeatId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Email = Annotated[str, msgspec.Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]


class WebhookAck(msgspec.Struct):
    received: bool
    outcome: str


class CancellationQuote(msgspec.Struct):
    booking_id: str
    refund_percent: int
    refund: Money
    policy: CancellationPolicy


class BulkBest(msgspec.Struct, forbid_unknown_fields=True):
    count: Annotated[int, msgspec.Meta(ge=1, le=1000)]
    category: str | None = None


class BulkBookingRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of `seats` or `best`. Paid by invoice to the partner."""

    email: Email
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    seats: Annotated[list[SeatId], msgspec.Meta(min_length=1, max_length=1000)] | None = None
    best: BulkBest | None = None
    reference: Annotated[str, msgspec.Meta(max_length=200)] | None = None  # e.g. PO number


class BulkTicket(msgspec.Struct):
    booking_id: str
    seats: list[str]
    code: str  # the signed e-ticket (QR payload)


class BulkBookingResponse(msgspec.Struct):
    bulk_id: str
    show_id: str
    status: str
    seats: list[str]
    amount: Money
    email: str
    name: str
    reference: str | None
    created_at: datetime
    bookings: list[BulkTicket]


class BulkCancelResponse(msgspec.Struct):
    bulk_id: str
    status: str
    cancelled: list[Cancellation]


class CheckinRequest(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]


# --- payments webhook ---------------------------------------------------------------------

@routes.post("/api/payments/webhook")
@operation("POST", "/api/payments/webhook", summary="Payment gateway webhook (signed)",
           response=WebhookAck, errors=(400, 401, 409), tags=("payments",),
           params=(Header("Sandbox-Signature", required=True,
                          description="t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.' + body>"),))
async def payment_webhook(request: web.Request) -> web.Response:
    """Settles a pending payment: `payment.succeeded` confirms the booking,
    `payment.failed` releases the hold. 401 for a missing, wrong or stale signature, 400
    for a malformed one or a malformed body; a repeat is answered 200 and changes nothing."""
    body = await request.read()
    svc = services(request)
    try:
        event = svc.payments.verify_webhook(body, request.headers)
    except WebhookError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    outcome = await lifecycle.settle_payment(svc, event)
    return json_response(WebhookAck(True, outcome))


# --- customer cancellation ----------------------------------------------------------------

_TOKEN = (Header("X-Booking-Token", description="the booking token"),
          Query("token", description="the booking token (alternative to the header)"))


@routes.get("/api/bookings/{booking_id}/cancellation")
@operation("GET", "/api/bookings/{booking_id}/cancellation",
           summary="What cancelling this booking now would refund",
           response=CancellationQuote, errors=(401, 403, 404), tags=CUSTOMER, params=_TOKEN)
async def get_cancellation_quote(request: web.Request) -> web.Response:
    booking = await authorised_booking(request)
    svc = services(request)
    show = await lifecycle.load_show(svc.redis, booking.show_id)
    pct, amount, policy = await lifecycle.quote_cancellation(svc, booking, show)
    return json_response(CancellationQuote(booking.booking_id, pct,
                                           Money(amount, booking.quote.currency), policy))


@routes.post("/api/bookings/{booking_id}/cancel")
@operation("POST", "/api/bookings/{booking_id}/cancel", summary="Cancel my booking",
           response=Cancellation, errors=(401, 403, 404, 409, 503), tags=CUSTOMER,
           params=_TOKEN)
@retry_after
async def cancel_my_booking(request: web.Request) -> web.Response:
    """Needs the booking token. Refund per the show's cancellation policy (platform
    default: 100% until 24 h before the start, 50% until 2 h, none after); the seats go
    back on sale. 409 if cancelled already, after the show started or once admitted; 503
    with Retry-After if the refund cannot be made right now (nothing changed: retry)."""
    booking = await authorised_booking(request)
    return json_response(await lifecycle.customer_cancel(services(request), booking))


# --- partner: policy, bulk bookings, check-in ---------------------------------------------

async def _partner(request: web.Request) -> str:
    return await auth.partner_of(request, services(request).redis)


async def _owned_show(request: web.Request, partner: str):  # noqa: ANN202
    show_id = request.match_info["show_id"]
    if not catalog.valid_id(show_id):
        raise ApiError(422, "invalid_id", "show_id must match [A-Za-z0-9_-]{1,64}")
    return await catalog.owned_show(services(request).redis, partner, show_id)


@routes.get("/partner/v1/shows/{show_id}/cancellation-policy")
@operation("GET", "/partner/v1/shows/{show_id}/cancellation-policy",
           summary="A show's cancellation policy", response=CancellationPolicy,
           errors=(401, 403, 404), tags=PARTNER, security="partnerKey")
async def get_policy(request: web.Request) -> web.Response:
    show = await _owned_show(request, await _partner(request))
    return json_response(await lifecycle.load_policy(services(request).redis, show.show_id))


@routes.put("/partner/v1/shows/{show_id}/cancellation-policy")
@operation("PUT", "/partner/v1/shows/{show_id}/cancellation-policy",
           summary="Set a show's cancellation policy", request=CancellationPolicy,
           response=CancellationPolicy, errors=(401, 403, 404, 422), tags=PARTNER,
           security="partnerKey",
           description="Tiers `{hours_before, refund_percent}`: the first tier (most hours "
                       "first) with at least that many hours left applies; none: no refund. "
                       "Refunds may not grow closer to the start.")
async def put_policy(request: web.Request) -> web.Response:
    show = await _owned_show(request, await _partner(request))
    policy = lifecycle.validate_policy(await read_json(request, CancellationPolicy))
    await lifecycle.save_policy(services(request).redis, show.show_id, policy)
    return json_response(policy)


def _bulk_view(request: web.Request, bulk: BulkRecord, bookings, show  # noqa: ANN001
               ) -> BulkBookingResponse:
    secret = services(request).settings.secret
    return BulkBookingResponse(
        bulk.bulk_id, bulk.show_id, bulk.status, bulk.seats, bulk.amount, bulk.email,
        bulk.name, bulk.reference, bulk.created_at,
        [BulkTicket(b.booking_id, b.seats, views.ticket_code(secret, b, show))
         for b in bookings])


@routes.post("/partner/v1/shows/{show_id}/bulk-bookings")
@operation("POST", "/partner/v1/shows/{show_id}/bulk-bookings",
           summary="Book many seats at once (all or nothing)", request=BulkBookingRequest,
           response=BulkBookingResponse, status=201, errors=(401, 403, 404, 409, 410, 422, 503),
           tags=PARTNER, security="partnerKey",
           description="`seats` (these seats) or `best` (the best N, optionally in one "
                       "category). Held and confirmed through the show actor together; if "
                       "any seat cannot be had, nothing is booked (409 names the seats). "
                       "Invoiced to the partner; one e-ticket per booking in `bookings`.")
async def create_bulk_booking(request: web.Request) -> web.Response:
    show = await _owned_show(request, await _partner(request))
    body = await read_json(request, BulkBookingRequest)
    ask = BulkAsk(body.email, body.name, body.seats, body.best.count if body.best else None,
                  body.best.category if body.best else None, body.reference)
    bulk, bookings = await bulk_book(booking_ports(services(request)), show, ask)
    return json_response(_bulk_view(request, bulk, bookings, show), status=201)


async def _bulk(request: web.Request):  # noqa: ANN202
    show = await _owned_show(request, await _partner(request))
    bulk = await store.load_bulk(services(request).redis, show.show_id,
                                     request.match_info["bulk_id"])
    if bulk is None:
        raise ApiError(404, "not_found", "no such bulk booking for this show")
    return show, bulk


@routes.get("/partner/v1/shows/{show_id}/bulk-bookings/{bulk_id}")
@operation("GET", "/partner/v1/shows/{show_id}/bulk-bookings/{bulk_id}",
           summary="A bulk booking with its e-tickets", response=BulkBookingResponse,
           errors=(401, 403, 404), tags=PARTNER, security="partnerKey")
async def get_bulk_booking(request: web.Request) -> web.Response:
    show, bulk = await _bulk(request)
    bookings = [b for b in [await store.load_booking(services(request).redis, i)
                            for i in bulk.booking_ids] if b is not None]
    return json_response(_bulk_view(request, bulk, bookings, show))


@routes.delete("/partner/v1/shows/{show_id}/bulk-bookings/{bulk_id}")
@operation("DELETE", "/partner/v1/shows/{show_id}/bulk-bookings/{bulk_id}",
           summary="Cancel a bulk booking (every seat in it)", response=BulkCancelResponse,
           errors=(401, 403, 404, 409, 503), tags=PARTNER, security="partnerKey",
           description="Every booking of the bulk booking is cancelled and credited in "
                       "full; the seats go back on sale; booking.cancelled per booking.")
@retry_after
async def cancel_bulk_booking(request: web.Request) -> web.Response:
    show, bulk = await _bulk(request)
    cancelled = await lifecycle.bulk_cancel(services(request), show, bulk)
    return json_response(BulkCancelResponse(bulk.bulk_id, "cancelled", cancelled))


@routes.post("/partner/v1/checkin")
@operation("POST", "/partner/v1/checkin", summary="Verify an e-ticket and admit it once",
           request=CheckinRequest, response=Admission, errors=(400, 401, 403, 404, 409),
           tags=PARTNER, security="partnerKey",
           description="`code` is the e-ticket (the QR payload). 400 `invalid_ticket` if its "
                       "signature does not verify; 403 if the show is another partner's; 409 "
                       "`booking_cancelled` or `already_admitted` (with `admitted_at`) on a "
                       "second scan, also under concurrent scans.")
async def checkin(request: web.Request) -> web.Response:
    partner = await _partner(request)
    body = await read_json(request, CheckinRequest)
    return json_response(await lifecycle.check_in(services(request), partner, body.code))

