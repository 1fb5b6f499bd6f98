"""Customer REST: seat map, holds, checkout, bookings.

Bodies are JSON; times are UTC ISO 8601; money is integer minor units plus a currency.
Every error is `{"error": {"code": ..., "message": ..., ...}}` with a 4xx (503 when the
show cannot be reached right now: retry).

    GET    /api/shows/{show_id}/seatmap       the seat map with every seat's status and `seq`
    POST   /api/shows/{show_id}/holds         {"seats": ["A1","A2"]}
                                              or {"best": {"count": 2, "category": "gold"}}
                                              -> 201 {hold_id, holder_token, seats, expires_at, quote}
    PATCH  /api/holds/{hold_id}               {"extra_seconds": 300} (body optional) -> 200
    DELETE /api/holds/{hold_id}               -> 200 {hold_id, seats, released: true}
    POST   /api/holds/{hold_id}/checkout      Idempotency-Key header; {card, email, name} -> 201 booking
    GET    /api/bookings/{booking_id}         the booking with its signed e-ticket
    GET    /api/bookings/{booking_id}/ticket.svg?token=...   the e-ticket's QR code

Holds need the holder token (returned once by POST .../holds) in `X-Holder-Token: <token>`
or `Authorization: Bearer <token>`. Bookings need the booking token (returned by checkout)
in `X-Booking-Token`, `Authorization: Bearer` or `?token=`.

The bodies are in customer_wire.py; hold checks, tokens and ids in holds.py; the quote and
promo-code use in hold_pricing.py; paying and booking in checkout.py; the booking view and
its e-ticket in booking_views.py.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import UTC

from aiohttp import web

from actors import commands as c

from server.onsale import admission
from server.booking import records as store
from server.booking import lifecycle
from server.commerce import offers as promos
from server.booking.views import authorised_booking, booking_view, describe_show
from server.booking.records import HoldRecord
from server.booking.checkout import pay_and_book, replay, respond
from server.booking.wire import (
    DEFAULT_EXTEND_S, BookingResponse, CategoryView, CheckoutRequest, ExtendRequest, HoldRequest,
    HoldResponse, HoldView, Released, SeatMapResponse, SeatView,
)
from server.core.errors import ApiError
from server.booking.quote import consume_promo, price_inputs, quote_seats, reserve_promo, unconsume_promo
from server.booking.holds import (
    cmd_id, from_ms, gone_or_expired, holder_token, live_hold, new_id, now_ms, rejected, services,
    utcnow,
)
from server.core.openapi import Header, Query, operation
from server.commerce.payments import CardDetails
from server.booking.seat_status import read_seat_statuses
from server.booking.tickets import qr_svg
from server.core.wire import json_response, read_json

routes = web.RouteTableDef()

TAGS = ("customer",)


# --- seat map --------------------------------------------------------------------------

@routes.get("/api/shows/{show_id}/seatmap")
@operation("GET", "/api/shows/{show_id}/seatmap", summary="A show's seat map with live statuses",
           response=SeatMapResponse, errors=(404,), tags=TAGS)
async def get_seatmap(request: web.Request) -> web.Response:
    """Layout (seats with id, row, number, category, grid x/y, flags), categories with
    prices, show details and every seat's status (`free`, `held`, `booked`, `blocked`) as of
    log sequence `seq`; the live socket (`/api/shows/{id}/live?since=seq`) continues from
    there. Read from Redis only: it never wakes the show's actor."""
    show_id = request.match_info["show_id"]
    # The show record from this process's cache, as the hold path reads it (invalidated
    # by the partner feed's writes).
    show = (await services(request).show_cache.get(show_id)).show
    if show is None:
        raise ApiError(404, "not_found", f"no show {show_id!r}")
    view = await read_seat_statuses(services(request).redis, show_id)
    if view is None:
        raise ApiError(404, "not_found", f"show {show_id!r} has no seat layout")
    layout = view.config.layout
    seats = [
        SeatView(s.id, s.row, s.number, s.category, s.x, s.y,
                 [f for f in ("accessible", "companion", "blocked") if getattr(s, f)],
                 view.status[s.id])
        for s in layout.seats
    ]
    totals: dict[str, list[int]] = {}
    for s in seats:
        t = totals.setdefault(s.category, [0, 0])
        t[0] += 1
        t[1] += s.status == "free"
    categories = [
        CategoryView(name, show.prices.get(name), n, free) for name, (n, free) in totals.items()
    ]
    categories.sort(key=lambda cat: (cat.price.amount if cat.price else -1, cat.name),
                    reverse=True)
    rules = view.config.rules
    body = SeatMapResponse(
        show=await describe_show(request, show), seq=view.seq, seats=seats, categories=categories,
        counts=view.counts(), focal_x=layout.focal_x, focal_y=layout.focal_y,
        max_seats_per_hold=rules.max_seats_per_hold, hold_ttl_seconds=rules.hold_ttl_ms // 1000,
    )
    return json_response(body)


# --- holds -----------------------------------------------------------------------------

@routes.post("/api/shows/{show_id}/holds")
@operation("POST", "/api/shows/{show_id}/holds", summary="Hold seats (explicit or best available)",
           request=HoldRequest, response=HoldResponse, status=201,
           errors=(403, 404, 409, 410, 429, 503), tags=TAGS)
async def create_hold(request: web.Request) -> web.Response:
    """Body `{"seats": ["F11", "F12"]}` or `{"best": {"count": 2, "category": "gold",
    "accessible": false}}`. 201 with the hold id, the holder token (only returned here),
    the seats, `expires_at` and the itemised price quote (per seat: base, discount,
    fee, tax, total; `server/pricing.py`), which is what checkout charges, unchanged. With
    `promo_code` (and a guest's `email`): 422 `promo_unknown` / `promo_not_applicable`,
    409 `promo_exhausted` / `promo_limit_reached`, `email_required`. 409 `seats_unavailable` names the seats
    someone else has (`error.seats`); 409 `not_enough_seats` when best-available finds too
    few; 422 for unknown seats (`error.seats`), too many seats or a bad body; 404 for an
    unknown or cancelled show; 410 `show_started` once the show has begun. 409
    `customer_limit` past the seats one customer may hold on a show at once. A show in its
    waiting room (server/waiting_room.py) needs the visitor's admission token
    (`X-Admission-Token` or the cookie the queue sets): 403 `admission_required` /
    `admission_invalid`. 429 `rate_limited` / `overloaded` with `Retry-After`."""
    show_id = request.match_info["show_id"]
    body = await read_json(request, HoldRequest)
    if (body.seats is None) == (body.best is None):
        raise ApiError(422, "invalid", 'give exactly one of "seats" or "best"')
    # Show record and seat layout from this process's cache (server/show_cache.py): the
    # partner feed's writes invalidate it, so this is what Redis has, without decoding it.
    cached = await services(request).show_cache.get(show_id)
    show, config, known = cached.show, cached.config, cached.category
    if show is None:
        raise ApiError(404, "not_found", f"no show {show_id!r}")
    if show.status == "cancelled":
        raise ApiError(404, "not_found", f"show {show_id!r} was cancelled")
    starts_at = show.starts_at if show.starts_at.tzinfo else show.starts_at.replace(tzinfo=UTC)
    if starts_at <= utcnow():
        raise ApiError(410, "show_started", "this show has started; seats can no longer be held")
    if config is None:
        raise ApiError(404, "not_found", f"show {show_id!r} has no seat layout")
    if body.seats is not None:
        seats = list(dict.fromkeys(body.seats))
        unknown = [s for s in seats if s not in known]
        if unknown:
            raise ApiError(422, "unknown_seats", "no such seats in this show", seats=unknown)
        unpriced = [s for s in seats if known[s] not in show.prices]
        if unpriced:
            raise ApiError(422, "not_for_sale", "these seats are not on sale", seats=unpriced)
    elif body.best.category is not None and body.best.category not in show.prices:
        raise ApiError(422, "invalid", f"no seat category {body.best.category!r} on sale")

    # On-sale shows: 403 without this visitor's admission token (server/admission.py).
    # The customer and their seat cap go to the actor, which enforces the cap in order.
    customer, cap = await admission.hold_gate(request, show_id)
    pricing = await price_inputs(request, show, body.promo_code, body.email)
    hold_id, token = new_id(show_id), secrets.token_urlsafe(24)
    digest = store.token_hash(token)
    cmd: c.Command
    if body.seats is not None:
        cmd = c.Hold(cmd_id(), hold_id, digest, seats, customer=customer,
                     customer_max_seats=cap)
    else:
        cmd = c.HoldBest(cmd_id(), hold_id, digest, body.best.count, body.best.category,
                         body.best.accessible, customer=customer, customer_max_seats=cap)
    shows = services(request).shows
    result = await shows.submit(show_id, cmd)
    if isinstance(result, c.Rejected):
        raise rejected(result)
    assert isinstance(result, c.Held)

    quote = quote_seats(show, config, result.seats, pricing)
    if quote is None:  # best-available picked a category without a price
        await shows.submit(show_id, c.Release(cmd_id(), hold_id, digest))
        raise ApiError(409, "not_for_sale", "some of the free seats are not on sale; pick seats")
    if pricing.promo is not None:
        await reserve_promo(request, pricing, quote, result, show_id, hold_id, digest)
    now = now_ms()
    record = HoldRecord(hold_id, show_id, digest, result.seats, quote, now, result.expires_at_ms,
                        now + config.rules.hold_max_lifetime_ms)
    try:
        await store.save_hold(services(request).redis, record)
    except Exception:
        await shows.submit(show_id, c.Release(cmd_id(), hold_id, digest))
        if quote.promo_code:
            await promos.release(services(request).redis, quote.promo_code, hold_id, now_ms())
        raise ApiError(503, "unavailable", "the hold could not be saved; try again") from None
    body_out = HoldResponse(hold_id, token, show_id, result.seats,
                            from_ms(result.expires_at_ms), quote)
    return json_response(body_out, status=201)


@routes.patch("/api/holds/{hold_id}")
@operation("PATCH", "/api/holds/{hold_id}", summary="Extend a hold",
           request=ExtendRequest, response=HoldView,
           errors=(401, 403, 404, 409, 410, 503), tags=TAGS,
           params=(Header("X-Holder-Token", description="the hold's holder token"),))
async def extend_hold(request: web.Request) -> web.Response:
    """Body `{"extra_seconds": 300}` (optional; 5 minutes by default). Needs the holder
    token. 200 with the new `expires_at`; 409 `lifetime_exceeded` past the hold's maximum
    lifetime; 403 not the holder; 404 no such hold (or released); 410 expired."""
    hold_id = request.match_info["hold_id"]
    extra = DEFAULT_EXTEND_S
    if await request.read():
        extra = (await read_json(request, ExtendRequest)).extra_seconds
    hold, _ = await live_hold(request, hold_id)
    result = await services(request).shows.submit(
        hold.show_id, c.Extend(cmd_id(), hold_id, hold.token_hash, extra * 1000)
    )
    if isinstance(result, c.Rejected):
        raise gone_or_expired(result, hold)
    assert isinstance(result, c.Extended)
    hold.expires_ms = result.expires_at_ms
    await store.save_hold(services(request).redis, hold)
    if hold.quote.promo_code:  # the promo code's reservation lasts as long as the hold
        await promos.extend(services(request).redis, hold.quote.promo_code, hold_id,
                            hold.expires_ms)
    return json_response(HoldView(hold_id, hold.show_id, hold.seats, from_ms(hold.expires_ms)))


@routes.delete("/api/holds/{hold_id}")
@operation("DELETE", "/api/holds/{hold_id}", summary="Release a hold", response=Released,
           errors=(401, 403, 404, 409, 410, 503), tags=TAGS,
           params=(Header("X-Holder-Token", description="the hold's holder token"),))
async def release_hold(request: web.Request) -> web.Response:
    """Frees the held seats at once. Needs the holder token. 403 not the holder; 404 no
    such hold (or released already); 410 expired (the seats are free already)."""
    hold_id = request.match_info["hold_id"]
    hold, _ = await live_hold(request, hold_id)
    result = await services(request).shows.submit(
        hold.show_id, c.Release(cmd_id(), hold_id, hold.token_hash)
    )
    if isinstance(result, c.Rejected):
        raise gone_or_expired(result, hold)
    assert isinstance(result, c.Released)
    hold.state = "released"
    await store.save_hold(services(request).redis, hold)
    if hold.quote.promo_code:  # the promo code's use is free for others again
        await promos.release(services(request).redis, hold.quote.promo_code, hold_id, now_ms())
    return json_response(Released(hold_id, result.seats))


# --- checkout --------------------------------------------------------------------------

@routes.post("/api/holds/{hold_id}/checkout")
@operation("POST", "/api/holds/{hold_id}/checkout", summary="Pay for a hold and book its seats",
           request=CheckoutRequest, response=BookingResponse, status=201,
           errors=(401, 402, 403, 404, 409, 410, 503), tags=TAGS,
           params=(Header("Idempotency-Key", required=True,
                          description="one per checkout attempt; a retry with the same key "
                                      "gets the first answer and is never charged twice"),
                   Header("X-Holder-Token", description="the hold's holder token")))
async def checkout(request: web.Request) -> web.Response:
    """Body `{"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030,
    "cvc": "123"}, "email": "a@b.co", "name": "A B"}`, header `Idempotency-Key` (required)
    and the holder token. 201 with the booking (its id, booking token and e-ticket). 402
    `card_declined` (the hold stays: try another card with a new key); 422 invalid card
    details; 410 `hold_expired` (if the hold ran out while paying, the payment is refunded
    and `error.refunded` is true); 409 `checkout_in_progress` while the same key is being
    processed, `hold_checked_out` if the hold was booked under another key. Card numbers
    are never stored: only the gateway's card token and the last four digits.
    202 `{"status": "pending", ...}` when the gateway settles the payment asynchronously:
    the hold is extended and the webhook confirms the booking (server/lifecycle.py). 503
    `payments_unavailable` / `payment_timeout` with `Retry-After` when the gateway is down
    or too slow (circuit breaker): the hold is extended (`error.hold_expires_at`) and the
    same Idempotency-Key may be retried."""
    hold_id = request.match_info["hold_id"]
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key or len(key) > 255:
        raise ApiError(400, "idempotency_key_required",
                       "send an Idempotency-Key header (1-255 characters), one per attempt")
    body = await read_json(request, CheckoutRequest)
    card = CardDetails(body.card.number.replace(" ", "").replace("-", ""),
                       body.card.exp_month, body.card.exp_year, body.card.cvc)
    svc = services(request)
    token = holder_token(request)
    hold = await store.load_hold(svc.redis, hold_id)
    if hold is None:
        raise ApiError(404, "not_found", f"no hold {hold_id!r}")
    if not secrets.compare_digest(hold.token_hash, store.token_hash(token)):
        raise ApiError(403, "not_owner", "this hold belongs to someone else")

    idem = store.idempotency_key(hold.show_id, hold_id, key)
    fingerprint = hashlib.sha256(
        f"{body.email}\n{body.name}\n{card.number[-4:]}".encode()
    ).hexdigest()
    attempt = store.CheckoutAttempt("pending", new_id(hold.show_id), fingerprint)
    earlier = await store.claim_attempt(svc.redis, idem, attempt)
    if earlier is not None:
        return await replay(request, earlier, fingerprint)
    try:
        # the promo code's reserved use is consumed first (409 if it cannot be), and given
        # back if this attempt does not book
        promo_who = await consume_promo(request, hold, body.email)
        try:
            status, payload = await pay_and_book(request, hold, card, body, attempt, idem)
        except ApiError:
            await unconsume_promo(request, hold, promo_who)
            raise
        if status >= 400:
            await unconsume_promo(request, hold, promo_who)
    except ApiError as exc:
        await store.drop_attempt(svc.redis, idem)  # nothing happened: the key is free again
        if isinstance(exc, lifecycle.RetryLater):  # gateway down: 503 + Retry-After
            return exc.response()
        raise
    except BaseException:
        # Unknown outcome (e.g. Redis failed after paying): keep the pending claim; it
        # lapses after a while and a retry with this key then resumes safely (the gateway
        # and the actor both answer a repeated key / command id with the first answer).
        raise
    return respond(status, payload)


# --- bookings --------------------------------------------------------------------------

_TOKEN_PARAMS = (Header("X-Booking-Token", description="the booking token"),
                 Query("token", description="the booking token (alternative to the header)"))


@routes.get("/api/bookings/{booking_id}")
@operation("GET", "/api/bookings/{booking_id}", summary="A booking with its e-ticket",
           response=BookingResponse, errors=(401, 403, 404), tags=TAGS, params=_TOKEN_PARAMS)
async def get_booking(request: web.Request) -> web.Response:
    """Needs the booking token. The e-ticket (`ticket.code`) is signed with HMAC-SHA256;
    `ticket.svg_url` is its QR code."""
    return json_response(await booking_view(request, await authorised_booking(request)))


@routes.get("/api/bookings/{booking_id}/ticket.svg")
@operation("GET", "/api/bookings/{booking_id}/ticket.svg", summary="The e-ticket's QR code (SVG)",
           errors=(401, 403, 404), tags=TAGS, params=_TOKEN_PARAMS)
async def get_ticket_svg(request: web.Request) -> web.Response:
    """An `image/svg+xml` QR code of the signed e-ticket (`ticket.code`)."""
    booking = await authorised_booking(request)
    view = await booking_view(request, booking)
    return web.Response(body=qr_svg(view.ticket.code), content_type="image/svg+xml",
                        headers={"Cache-Control": "private, max-age=3600"})
