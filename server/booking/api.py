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
    GET    /api/bookings/{booking_id}/ticket.svg?t=...       the e-ticket's QR code

Holds need the holder token (returned once by POST .../holds) in `X-Holder-Token: <token>`
or `Authorization: Bearer <token>`. Bookings need the booking token (returned by checkout)
in `X-Booking-Token`, `Authorization: Bearer` or `?token=`.

The bodies are in wire.py; the hold use cases in holding.py (the quote is made by the
show's host: commerce/quoting.py); paying and booking in checkout.py; the booking view
and its e-ticket in views.py.
"""
from __future__ import annotations

from aiohttp import web

from server.appkeys import services
from server.booking import holding, lifecycle
from server.booking.adapters import NEW_DEVICE, RequestCustomer, booking_ports
from server.booking.checkout import Answered, CheckoutAsk
from server.booking.checkout import checkout as checkout_hold
from server.booking.holding import BestSeats, HoldAsk
from server.booking.bearer import holder_token
from server.booking.ports import Booking
from server.booking.views import authorised_booking, booking_view, describe_show
from server.booking.wire import (
    DEFAULT_EXTEND_S, BookingResponse, CategoryView, CheckoutRequest, ExtendRequest, HoldRequest,
    HoldResponse, HoldView, Released, SeatMapResponse, SeatView,
)
from server.catalog.model import HoldPolicy
from server.catalog.seat_status import read_seat_statuses
from server.booking.tickets import qr_svg
from server.commerce.payments import CardDetails
from server.core.clock import from_ms
from server.core.errors import ApiError
from server.core.openapi import Header, Query, link, operation
from server.core.wire import json_response, read_json
from server.onsale import identity

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
    policy = show.hold_policy
    ttl_s = policy.hold_minutes * 60 if policy else rules.hold_ttl_ms // 1000
    max_s = policy.max_hold_minutes * 60 if policy else rules.hold_max_lifetime_ms // 1000
    caps = policy or HoldPolicy()
    body = SeatMapResponse(
        show=await describe_show(request, show), seq=view.seq, seats=seats, categories=categories,
        counts=view.counts(), focal_x=layout.focal_x, focal_y=layout.focal_y,
        max_seats_per_hold=rules.max_seats_per_hold, hold_ttl_seconds=ttl_s,
        hold_max_seconds=max_s, seats_per_device=caps.seats_per_device,
        seats_per_network=caps.seats_per_network,
    )
    resp = json_response(body)
    settings = services(request).settings
    if identity.DEVICE_COOKIE not in request.cookies:  # the page's first visit
        new = identity.device(request, settings.secret).new_cookie
        if new:
            identity.set_device_cookie(resp, new, settings.cookie_secure)
    return resp


# --- holds -----------------------------------------------------------------------------

@routes.post("/api/shows/{show_id}/holds")
@operation("POST", "/api/shows/{show_id}/holds", summary="Hold seats (explicit or best available)",
           request=HoldRequest, response=HoldResponse, status=201,
           errors=(403, 404, 409, 410, 429, 503), tags=TAGS)
async def create_hold(request: web.Request) -> web.Response:
    """Body `{"seats": ["F11", "F12"]}` or `{"best": {"count": 2, "category": "gold",
    "accessible": false}}`. 201 with the hold id, the holder token (only returned here),
    the seats, `expires_at` and the itemised price quote (per seat: base, discount,
    fee, tax, total; `server/commerce/pricing.py`), which is what checkout charges, unchanged. With
    `promo_code` (and a guest's `email`): 422 `promo_unknown` / `promo_not_applicable`,
    409 `promo_exhausted` / `promo_limit_reached`, `email_required`. 409 `seats_unavailable` names the seats
    someone else has (`error.seats`); 409 `not_enough_seats` when best-available finds too
    few; 422 for unknown seats (`error.seats`), too many seats or a bad body; 404 for an
    unknown or cancelled show; 410 `show_started` once the show has begun. 409
    `customer_limit` past the seats one customer may hold on a show at once. A show in its
    waiting room (server/onsale/waiting_room.py) needs the visitor's admission token
    (`X-Admission-Token` or the cookie the queue sets): 403 `admission_required` /
    `admission_invalid`. 429 `rate_limited` / `overloaded` with `Retry-After`."""
    body = await read_json(request, HoldRequest)
    best = body.best and BestSeats(body.best.count, body.best.category, body.best.accessible)
    ask = HoldAsk(request.match_info["show_id"], body.seats, best, body.promo_code, body.email)
    hold, token = await holding.place_hold(_booking(request), ask, RequestCustomer(request))
    resp = json_response(HoldResponse(hold.hold_id, token, hold.show_id, hold.seats,
                                      from_ms(hold.expires_ms), hold.quote), status=201)
    if cookie := request.get(NEW_DEVICE):
        identity.set_device_cookie(resp, cookie, services(request).settings.cookie_secure)
    return resp


@routes.patch("/api/holds/{hold_id}")
@operation("PATCH", "/api/holds/{hold_id}", summary="Extend a hold",
           request=ExtendRequest, response=HoldView,
           errors=(401, 403, 404, 409, 410, 503), tags=TAGS,
           params=(Header("X-Holder-Token", description="the hold's holder token"),))
async def extend_hold(request: web.Request) -> web.Response:
    """Body `{"extra_seconds": 300}` (optional; 5 minutes by default). Needs the holder
    token. 200 with the new `expires_at`; 409 `lifetime_exceeded` past the hold's maximum
    lifetime; 403 not the holder; 404 no such hold (or released); 410 expired."""
    extra = DEFAULT_EXTEND_S
    if await request.read():
        extra = (await read_json(request, ExtendRequest)).extra_seconds
    hold = await holding.extend_hold(_booking(request), request.match_info["hold_id"],
                                     holder_token(request), extra)
    return json_response(HoldView(hold.hold_id, hold.show_id, hold.seats,
                                  from_ms(hold.expires_ms)))


@routes.delete("/api/holds/{hold_id}")
@operation("DELETE", "/api/holds/{hold_id}", summary="Release a hold", response=Released,
           errors=(401, 403, 404, 409, 410, 503), tags=TAGS,
           params=(Header("X-Holder-Token", description="the hold's holder token"),))
async def release_hold(request: web.Request) -> web.Response:
    """Frees the held seats at once. Needs the holder token. 403 not the holder; 404 no
    such hold (or released already); 410 expired (the seats are free already)."""
    hold_id = request.match_info["hold_id"]
    seats = await holding.release_hold(_booking(request), hold_id, holder_token(request))
    return json_response(Released(hold_id, seats))


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
    the hold is extended and the webhook confirms the booking (server/booking/lifecycle.py). 503
    `payments_unavailable` / `payment_timeout` with `Retry-After` when the gateway is down
    or too slow (circuit breaker): the hold is extended (`error.hold_expires_at`) and the
    same Idempotency-Key may be retried."""
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key or len(key) > 255:
        raise ApiError(400, "idempotency_key_required",
                       "send an Idempotency-Key header (1-255 characters), one per attempt")
    body = await read_json(request, CheckoutRequest)
    card = CardDetails(body.card.number.replace(" ", "").replace("-", ""),
                       body.card.exp_month, body.card.exp_year, body.card.cvc)
    settings = services(request).settings
    ask = CheckoutAsk(card, body.email, body.name, body.phone, body.id_number,
                      source=identity.network(request, settings.secret))
    token = holder_token(request)
    try:
        outcome = await checkout_hold(_booking(request), request.match_info["hold_id"], token,
                                      key, ask, RequestCustomer(request))
    except lifecycle.RetryLater as exc:  # gateway down: 503 + Retry-After
        return exc.response()
    if isinstance(outcome, Answered):
        return web.Response(status=outcome.status, body=outcome.body,
                            content_type="application/json")
    return json_response(await booking_view(request, outcome.booking), status=201)


# The booking flow, for clients and for schemathesis' stateful mode: a hold's id and token
# feed its extension, release and checkout; a booking's id and token feed its reads and
# its cancellation.
_HOLD = {"hold_id": "$response.body#/hold_id",
         "header.X-Holder-Token": "$response.body#/holder_token"}
_BOOKING = {"booking_id": "$response.body#/booking_id",
            "header.X-Booking-Token": "$response.body#/booking_token"}
for _name, _op in (("extend", "extend_hold"), ("release", "release_hold"),
                   ("checkout", "checkout")):
    link("POST", "/api/shows/{show_id}/holds", 201, _name, _op, _HOLD)
link("PATCH", "/api/holds/{hold_id}", 200, "checkout", "checkout",
     {"hold_id": "$request.path.hold_id", "header.X-Holder-Token":
      "$request.header.X-Holder-Token"})
for _name, _op in (("read", "get_booking"), ("cancel", "cancel_my_booking")):
    link("POST", "/api/holds/{hold_id}/checkout", 201, _name, _op, _BOOKING)


def _booking(request: web.Request) -> Booking:
    return booking_ports(services(request))


# --- bookings --------------------------------------------------------------------------

_TOKEN_PARAMS = (Header("X-Booking-Token", description="the booking token"),)
_IMAGE_PARAMS = (Header("X-Booking-Token", description="the booking token"),
                 Query("t", description="the image's own short-lived token (ticket.svg_url)"))


@routes.get("/api/bookings/{booking_id}")
@operation("GET", "/api/bookings/{booking_id}", summary="A booking with its e-ticket",
           response=BookingResponse, errors=(401, 403, 404), tags=TAGS, params=_TOKEN_PARAMS)
async def get_booking(request: web.Request) -> web.Response:
    """Needs the booking token. The e-ticket (`ticket.code`) is signed with HMAC-SHA256;
    `ticket.svg_url` is its QR code."""
    return json_response(await booking_view(request, await authorised_booking(request)))


@routes.get("/api/bookings/{booking_id}/ticket.svg")
@operation("GET", "/api/bookings/{booking_id}/ticket.svg", summary="The e-ticket's QR code (SVG)",
           errors=(401, 403, 404, 409), tags=TAGS, params=_IMAGE_PARAMS)
async def get_ticket_svg(request: web.Request) -> web.Response:
    """An `image/svg+xml` QR code of the signed e-ticket (`ticket.code`)."""
    booking = await authorised_booking(request, image=True)
    view = await booking_view(request, booking)
    if view.ticket is None:
        raise ApiError(409, f"booking_{booking.status}", f"this booking is {booking.status}: "
                       "it has no e-ticket")
    return web.Response(body=qr_svg(view.ticket.code), content_type="image/svg+xml",
                        headers={"Cache-Control": "private, max-age=3600"})
