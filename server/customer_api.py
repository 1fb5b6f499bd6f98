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
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from actors import commands as c
from actors.layout import ShowConfig

from . import bookings as store
from . import lifecycle
from .bookings import BookingRecord, HoldRecord, PaymentInfo, Quote, QuoteLine
from .catalog_model import Money, Movie, Screen, Show, Theatre, catalog_key
from .accounts import current_user, link_booking
from .errors import ApiError
from .openapi import Header, Query, operation
from .outbox import booking_data, publish
from . import offers as promos
from .payments import CardDeclined, CardDetails, CardInvalid, GatewayUnavailable, PaymentError
from .pricing import Offer, PricingConfig, PromoCode, SeatPrice, ShowFacts, make_quote, promo_problem
from .seat_status import read_seat_statuses
from .tickets import TicketPayload, booking_token, check_booking_token, qr_svg, sign_ticket
from .wire import json_response, read_json

routes = web.RouteTableDef()

TAGS = ("customer",)
DEFAULT_EXTEND_S = 300

# One table: what each booking-core rejection means over HTTP.
REJECTED_STATUS: dict[str, int] = {
    "invalid": 422,
    "unknown_seats": 422,
    "too_many_seats": 422,
    "seats_unavailable": 409,
    "not_enough_seats": 409,
    "not_found": 404,
    "not_owner": 403,
    "hold_expired": 410,
    "lifetime_exceeded": 409,
    "duplicate_id": 409,
    "unavailable": 503,
}


def rejected(result: c.Rejected) -> ApiError:
    details = {"seats": result.seats} if result.seats else {}
    return ApiError(REJECTED_STATUS.get(result.code, 409), result.code, result.message, **details)


# --- wire: the bodies ------------------------------------------------------------------

SeatId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
SeatFlag = Literal["accessible", "companion", "blocked"]


class ShowInfo(msgspec.Struct):
    show_id: str
    movie_id: str
    movie_title: str
    theatre_id: str
    theatre_name: str
    screen_id: str
    screen_name: str
    city: str
    starts_at: datetime
    language: str
    format: str
    status: str
    timezone: str = "UTC"  # the theatre's IANA time zone: show times are local to it


class SeatView(msgspec.Struct):
    id: str
    row: str
    number: int
    category: str
    x: int
    y: int
    flags: list[SeatFlag]
    status: c.SeatStatus


class CategoryView(msgspec.Struct):
    name: str
    price: Money | None  # None: not on sale in this show
    seats: int
    free: int


class SeatMapResponse(msgspec.Struct):
    """The seat map as of log sequence `seq` (the live socket continues from there)."""

    show: ShowInfo
    seq: int
    seats: list[SeatView]
    categories: list[CategoryView]
    counts: dict[str, int]  # free / held / booked / blocked
    focal_x: float
    focal_y: float
    max_seats_per_hold: int
    hold_ttl_seconds: int


class BestRequest(msgspec.Struct, forbid_unknown_fields=True):
    count: Annotated[int, msgspec.Meta(ge=1, le=100)]
    category: str | None = None
    accessible: bool = False  # include wheelchair and companion seats


class HoldRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of `seats` (these seat ids) or `best` (the best N free seats)."""

    seats: Annotated[list[SeatId], msgspec.Meta(min_length=1, max_length=100)] | None = None
    best: BestRequest | None = None
    # A promo code (server/pricing.py): its use is reserved for this hold and consumed at
    # checkout. A guest gives the e-mail it will check out with (per-customer limits).
    promo_code: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    email: Annotated[str, msgspec.Meta(max_length=254,
                                       pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = None


class HoldResponse(msgspec.Struct):
    hold_id: str
    holder_token: str  # returned only here: send it back to extend, release, check out
    show_id: str
    seats: list[str]
    expires_at: datetime
    quote: Quote


class ExtendRequest(msgspec.Struct, forbid_unknown_fields=True):
    extra_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = DEFAULT_EXTEND_S


class HoldView(msgspec.Struct):
    hold_id: str
    show_id: str
    seats: list[str]
    expires_at: datetime


class Released(msgspec.Struct):
    hold_id: str
    seats: list[str]
    released: bool = True


class CardIn(msgspec.Struct, forbid_unknown_fields=True):
    number: Annotated[str, msgspec.Meta(pattern=r"^[0-9][0-9 -]{10,24}[0-9]$")]
    exp_month: Annotated[int, msgspec.Meta(ge=1, le=12)]
    exp_year: Annotated[int, msgspec.Meta(ge=2000, le=2100)]
    cvc: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{3,4}$")]


class CheckoutRequest(msgspec.Struct, forbid_unknown_fields=True):
    card: CardIn
    email: Annotated[str, msgspec.Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Ticket(msgspec.Struct):
    code: str     # the signed e-ticket (what the QR code encodes)
    svg_url: str  # the QR code as SVG


class PaymentView(msgspec.Struct):
    ref: str
    brand: str
    last4: str


class BookingResponse(msgspec.Struct):
    booking_id: str
    booking_token: str  # send it back to view the booking and its e-ticket
    status: str
    show: ShowInfo | None
    seats: list[str]
    quote: Quote
    amount: Money
    payment: PaymentView
    email: str
    name: str
    created_at: datetime
    url: str
    ticket: Ticket


# --- helpers ---------------------------------------------------------------------------

def services(request: web.Request):  # noqa: ANN201 (the app module imports this one)
    from .app import services as get

    return get(request)


def _now() -> datetime:
    return datetime.now(UTC)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _now_ms() -> int:
    return int(_now().timestamp() * 1000)


def _new_id(show_id: str) -> str:
    return f"{show_id}.{secrets.token_urlsafe(9)}"


def _cmd_id() -> str:
    return secrets.token_hex(12)


def _bearer(request: web.Request, header: str) -> str | None:
    token = request.headers.get(header)
    if token:
        return token.strip()
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def _holder_token(request: web.Request) -> str:
    token = _bearer(request, "X-Holder-Token")
    if not token:
        raise ApiError(401, "token_required",
                       "send the holder token in X-Holder-Token or Authorization: Bearer")
    return token


_show_decoder = msgspec.json.Decoder(Show)


async def _load_show(request: web.Request, show_id: str) -> Show:
    raw = await services(request).redis.get(catalog_key("show", show_id))
    if raw is None:
        raise ApiError(404, "not_found", f"no show {show_id!r}")
    return _show_decoder.decode(raw)


async def _show_info(request: web.Request, show: Show) -> ShowInfo:
    redis = services(request).redis
    raw_movie, raw_screen, raw_theatre = await redis.mget(
        catalog_key("movie", show.movie_id), catalog_key("screen", show.screen_id),
        catalog_key("theatre", show.theatre_id) if show.theatre_id else "-",
    )
    movie = msgspec.json.decode(raw_movie, type=Movie) if raw_movie else None
    screen = msgspec.json.decode(raw_screen, type=Screen) if raw_screen else None
    theatre = msgspec.json.decode(raw_theatre, type=Theatre) if raw_theatre else None
    return ShowInfo(
        show_id=show.show_id, movie_id=show.movie_id,
        movie_title=movie.title if movie else show.movie_id,
        theatre_id=show.theatre_id, theatre_name=theatre.name if theatre else "",
        screen_id=show.screen_id, screen_name=screen.name if screen else "",
        city=show.city or (theatre.city if theatre else ""),
        starts_at=show.starts_at, language=show.language, format=show.format,
        status=show.status, timezone=theatre.timezone if theatre else "UTC",
    )


# --- pricing and promo codes (server/pricing.py, server/offers.py) ----------------------

class _Pricing(msgspec.Struct):
    facts: ShowFacts
    offers: list[Offer]
    promo: PromoCode | None
    who: str | None  # the customer a promo code's use counts against
    config: PricingConfig


def _customer_of(user: object, email: str | None) -> str | None:
    """Whom a promo code's per-customer limit counts: the logged-in customer, or a
    guest's e-mail address (lower-cased)."""
    user_id = getattr(user, "user_id", None)
    if user_id:
        return f"user:{user_id}"
    return f"email:{email.strip().lower()}" if email else None


async def _pricing(request: web.Request, show: Show, code: str | None, email: str | None
                   ) -> _Pricing:
    """Everything the quote needs (one Redis round trip); a bad promo code is a 4xx before
    any seat is held."""
    settings = services(request).settings
    timezone, offers, promo, found = await promos.pricing_inputs(
        services(request).redis, show.theatre_id, show.partner_id, code)
    starts_at = show.starts_at if show.starts_at.tzinfo else show.starts_at.replace(tzinfo=UTC)
    facts = ShowFacts(show.show_id, show.movie_id, show.theatre_id, show.city, show.partner_id,
                      starts_at, timezone)
    who = None
    if code is not None:
        if not found:
            raise ApiError(422, "promo_unknown", f"no promo code {code!r}")
        problem = promo_problem(promo, facts, None, _now())
        if problem:
            raise ApiError(422, "promo_not_applicable", problem)
        who = _customer_of(await current_user(request), email)
        if who is None:
            raise ApiError(422, "email_required",
                           "give the e-mail address you will check out with to use a promo code")
    config = PricingConfig(settings.fee_fixed, settings.fee_bp, settings.tax_bp)
    return _Pricing(facts, offers, promo, who, config)


def _quote(show: Show, config: ShowConfig, seats: list[str], pricing: _Pricing) -> Quote | None:
    """The itemised quote for the held seats; None if a seat's category has no price."""
    wanted = set(seats)
    category = {s.id: s.category for s in config.layout.seats if s.id in wanted}
    priced: list[SeatPrice] = []
    currency = None
    for seat in seats:
        price = show.prices.get(category[seat])
        if price is None or currency not in (None, price.currency):
            return None
        currency = price.currency
        priced.append(SeatPrice(seat, category[seat], price.amount))
    return make_quote(pricing.facts, priced, currency or "", offers=pricing.offers,
                      promo=pricing.promo, config=pricing.config, now=_now())


async def _reserve_promo(request: web.Request, pricing: _Pricing, quote: Quote, held: c.Held,
                         show_id: str, hold_id: str, digest: str) -> None:
    """Reserve one use of the promo code for this hold (atomic; limits never exceeded), or
    release the seats and refuse."""
    assert pricing.promo is not None and pricing.who is not None
    error = None
    if quote.promo_code is None:
        error = ApiError(422, "promo_not_applicable", "this promo code does not apply to these seats")
    else:
        verdict = await promos.reserve(services(request).redis, pricing.promo, hold_id,
                                       pricing.who, _now_ms(), held.expires_at_ms)
        if verdict == "exhausted":
            error = ApiError(409, "promo_exhausted", "this promo code has been used up")
        elif verdict != "ok":
            error = ApiError(409, "promo_limit_reached",
                             "you have used this promo code as often as it allows")
    if error is not None:
        await services(request).shows.submit(show_id, c.Release(_cmd_id(), hold_id, digest))
        raise error


async def _consume_promo(request: web.Request, hold: HoldRecord, email: str) -> str | None:
    """At checkout: turn the hold's promo reservation into a use. Returns the customer key
    if a use was consumed by this call (to give back if the checkout fails)."""
    code = hold.quote.promo_code
    if not code or hold.state != "active":
        return None
    redis = services(request).redis
    promo = await promos.get_promo(redis, code)
    if promo is None:  # deleted meanwhile: the quote stands, there is nothing to count
        return None
    who = _customer_of(await current_user(request), email) or ""
    verdict = await promos.consume(redis, promo, hold.hold_id, who, _now_ms())
    if verdict == "repeat":
        return None
    if verdict == "wrong_customer":
        raise ApiError(409, "promo_customer_mismatch",
                       "check out with the e-mail address (or account) the promo code was "
                       "applied for")
    if verdict != "ok":
        raise ApiError(409, "promo_exhausted", "this promo code has been used up meanwhile")
    return who


async def _unconsume_promo(request: web.Request, hold: HoldRecord, who: str | None) -> None:
    if who is None or not hold.quote.promo_code:
        return
    live = hold.state == "active" and hold.expires_ms > _now_ms()
    await promos.unconsume(services(request).redis, hold.quote.promo_code, hold.hold_id, who,
                           hold.expires_ms if live else None)


async def _live_hold(request: web.Request, hold_id: str) -> tuple[HoldRecord, str]:
    """The hold record for a holder-token request: 401/403/404/409/410 otherwise."""
    token = _holder_token(request)
    hold = await store.load_hold(services(request).redis, hold_id)
    if hold is None:
        raise ApiError(404, "not_found", f"no hold {hold_id!r}")
    if not secrets.compare_digest(hold.token_hash, store.token_hash(token)):
        raise ApiError(403, "not_owner", "this hold belongs to someone else")
    _require_active(hold)
    return hold, token


def _require_active(hold: HoldRecord) -> None:
    """409 if checked out or being paid for, 404 if released, 410 if its time is up."""
    if hold.state == "booked":
        raise ApiError(409, "hold_checked_out", "this hold was checked out already",
                       booking_id=hold.booking_id)
    if hold.state == "pending":
        raise ApiError(409, "payment_pending", "a payment for this hold is being processed",
                       booking_id=hold.booking_id)
    if hold.state == "released":
        raise ApiError(404, "not_found", f"hold {hold.hold_id!r} was released")
    if hold.expires_ms <= _now_ms():
        raise ApiError(410, "hold_expired", "the hold's time is up", seats=hold.seats)


def _gone_or_expired(result: c.Rejected, hold: HoldRecord) -> ApiError:
    # The record says the hold is ours and live; the actor no longer has it: the actor's
    # clock expired it a moment before ours did.
    if result.code == "not_found":
        return ApiError(410, "hold_expired", "the hold's time is up", seats=hold.seats)
    return rejected(result)


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
    show = await _load_show(request, show_id)
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
        show=await _show_info(request, show), seq=view.seq, seats=seats, categories=categories,
        counts=view.counts(), focal_x=layout.focal_x, focal_y=layout.focal_y,
        max_seats_per_hold=rules.max_seats_per_hold, hold_ttl_seconds=rules.hold_ttl_ms // 1000,
    )
    return json_response(body)


# --- holds -----------------------------------------------------------------------------

@routes.post("/api/shows/{show_id}/holds")
@operation("POST", "/api/shows/{show_id}/holds", summary="Hold seats (explicit or best available)",
           request=HoldRequest, response=HoldResponse, status=201,
           errors=(404, 409, 410, 503), tags=TAGS)
async def create_hold(request: web.Request) -> web.Response:
    """Body `{"seats": ["F11", "F12"]}` or `{"best": {"count": 2, "category": "gold",
    "accessible": false}}`. 201 with the hold id, the holder token (only returned here),
    the seats, `expires_at` and the itemised price quote (per seat: base, discount,
    fee, tax, total; `server/pricing.py`), which is what checkout charges, unchanged. With
    `promo_code` (and a guest's `email`): 422 `promo_unknown` / `promo_not_applicable`,
    409 `promo_exhausted` / `promo_limit_reached`, `email_required`. 409 `seats_unavailable` names the seats
    someone else has (`error.seats`); 409 `not_enough_seats` when best-available finds too
    few; 422 for unknown seats (`error.seats`), too many seats or a bad body; 404 for an
    unknown or cancelled show; 410 `show_started` once the show has begun."""
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
    if starts_at <= _now():
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

    pricing = await _pricing(request, show, body.promo_code, body.email)
    hold_id, token = _new_id(show_id), secrets.token_urlsafe(24)
    digest = store.token_hash(token)
    cmd: c.Command
    if body.seats is not None:
        cmd = c.Hold(_cmd_id(), hold_id, digest, seats)
    else:
        cmd = c.HoldBest(_cmd_id(), hold_id, digest, body.best.count, body.best.category,
                         body.best.accessible)
    shows = services(request).shows
    result = await shows.submit(show_id, cmd)
    if isinstance(result, c.Rejected):
        raise rejected(result)
    assert isinstance(result, c.Held)

    quote = _quote(show, config, result.seats, pricing)
    if quote is None:  # best-available picked a category without a price
        await shows.submit(show_id, c.Release(_cmd_id(), hold_id, digest))
        raise ApiError(409, "not_for_sale", "some of the free seats are not on sale; pick seats")
    if pricing.promo is not None:
        await _reserve_promo(request, pricing, quote, result, show_id, hold_id, digest)
    now = _now_ms()
    record = HoldRecord(hold_id, show_id, digest, result.seats, quote, now, result.expires_at_ms,
                        now + config.rules.hold_max_lifetime_ms)
    try:
        await store.save_hold(services(request).redis, record)
    except Exception:
        await shows.submit(show_id, c.Release(_cmd_id(), hold_id, digest))
        if quote.promo_code:
            await promos.release(services(request).redis, quote.promo_code, hold_id, _now_ms())
        raise ApiError(503, "unavailable", "the hold could not be saved; try again") from None
    body_out = HoldResponse(hold_id, token, show_id, result.seats,
                            _from_ms(result.expires_at_ms), quote)
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
    hold, _ = await _live_hold(request, hold_id)
    result = await services(request).shows.submit(
        hold.show_id, c.Extend(_cmd_id(), hold_id, hold.token_hash, extra * 1000)
    )
    if isinstance(result, c.Rejected):
        raise _gone_or_expired(result, hold)
    assert isinstance(result, c.Extended)
    hold.expires_ms = result.expires_at_ms
    await store.save_hold(services(request).redis, hold)
    if hold.quote.promo_code:  # the promo code's reservation lasts as long as the hold
        await promos.extend(services(request).redis, hold.quote.promo_code, hold_id,
                            hold.expires_ms)
    return json_response(HoldView(hold_id, hold.show_id, hold.seats, _from_ms(hold.expires_ms)))


@routes.delete("/api/holds/{hold_id}")
@operation("DELETE", "/api/holds/{hold_id}", summary="Release a hold", response=Released,
           errors=(401, 403, 404, 409, 410, 503), tags=TAGS,
           params=(Header("X-Holder-Token", description="the hold's holder token"),))
async def release_hold(request: web.Request) -> web.Response:
    """Frees the held seats at once. Needs the holder token. 403 not the holder; 404 no
    such hold (or released already); 410 expired (the seats are free already)."""
    hold_id = request.match_info["hold_id"]
    hold, _ = await _live_hold(request, hold_id)
    result = await services(request).shows.submit(
        hold.show_id, c.Release(_cmd_id(), hold_id, hold.token_hash)
    )
    if isinstance(result, c.Rejected):
        raise _gone_or_expired(result, hold)
    assert isinstance(result, c.Released)
    hold.state = "released"
    await store.save_hold(services(request).redis, hold)
    if hold.quote.promo_code:  # the promo code's use is free for others again
        await promos.release(services(request).redis, hold.quote.promo_code, hold_id, _now_ms())
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
    token = _holder_token(request)
    hold = await store.load_hold(svc.redis, hold_id)
    if hold is None:
        raise ApiError(404, "not_found", f"no hold {hold_id!r}")
    if not secrets.compare_digest(hold.token_hash, store.token_hash(token)):
        raise ApiError(403, "not_owner", "this hold belongs to someone else")

    idem = store.idempotency_key(hold.show_id, hold_id, key)
    fingerprint = hashlib.sha256(
        f"{body.email}\n{body.name}\n{card.number[-4:]}".encode()
    ).hexdigest()
    attempt = store.CheckoutAttempt("pending", _new_id(hold.show_id), fingerprint)
    earlier = await store.claim_attempt(svc.redis, idem, attempt)
    if earlier is not None:
        return await _replay(request, earlier, fingerprint)
    try:
        # the promo code's reserved use is consumed first (409 if it cannot be), and given
        # back if this attempt does not book
        promo_who = await _consume_promo(request, hold, body.email)
        try:
            status, payload = await _pay_and_book(request, hold, card, body, attempt, idem)
        except ApiError:
            await _unconsume_promo(request, hold, promo_who)
            raise
        if status >= 400:
            await _unconsume_promo(request, hold, promo_who)
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
    return _respond(status, payload)


def _respond(status: int, payload: bytes) -> web.Response:
    return web.Response(status=status, body=payload, content_type="application/json")


async def _replay(request: web.Request, earlier: store.CheckoutAttempt, fingerprint: str
                  ) -> web.Response:
    if earlier.fingerprint != fingerprint:
        raise ApiError(422, "idempotency_key_reused",
                       "this Idempotency-Key was used for a different checkout request")
    if earlier.state == "pending":
        raise ApiError(409, "checkout_in_progress",
                       "a checkout with this Idempotency-Key is in progress; retry shortly")
    if earlier.status == 201:
        booking = await store.load_booking(services(request).redis, earlier.booking_id)
        if booking is not None:
            return json_response(await _booking_view(request, booking), status=201)
    return _respond(earlier.status, bytes(earlier.body))


async def _pay_and_book(
    request: web.Request, hold: HoldRecord, card: CardDetails, body: CheckoutRequest,
    attempt: store.CheckoutAttempt, idem: str,
) -> tuple[int, bytes]:
    """Pay, confirm, capture. ApiError means nothing happened (the claim is dropped);
    a returned (status, body) is final and remembered under the idempotency key."""
    svc = services(request)
    _require_active(hold)

    async def final(status: int, code: str, message: str, **details: object) -> tuple[int, bytes]:
        payload = msgspec.json.encode({"error": {"code": code, "message": message, **details}})
        await store.finish_attempt(svc.redis, idem, msgspec.structs.replace(
            attempt, state="done", status=status, body=msgspec.Raw(payload)))
        return status, payload

    gateway = svc.payments
    try:  # timeout + circuit breaker (payments.GatewayGuard)
        auth = await svc.payment_guard.call(lambda: gateway.authorise(
            amount=hold.quote.total, currency=hold.quote.currency, card=card,
            idempotency_key=idem))
    except lifecycle.GATEWAY_FAILURES as exc:  # down or timed out: extend the hold, 503
        raise await lifecycle.gateway_down(svc, hold, exc) from None
    except CardInvalid as exc:
        raise ApiError(422, exc.code, exc.message) from None
    except CardDeclined as exc:
        return await final(402, exc.code, exc.message)
    except PaymentError as exc:
        return await final(402, exc.code, exc.message)
    if auth.status == "pending":  # settled later by the gateway's webhook (lifecycle.py)
        customer = await current_user(request)
        return await lifecycle.start_pending(
            svc, hold, auth, attempt, idem, email=body.email, name=body.name,
            customer_id=customer.user_id if customer and customer.role == "customer" else None)

    result = await svc.shows.submit(hold.show_id, c.Confirm(
        f"confirm:{idem}", hold.hold_id, hold.token_hash, attempt.booking_id, auth.ref))
    if isinstance(result, c.Rejected):
        await gateway.refund(auth.ref)
        err = _gone_or_expired(result, hold)
        return await final(err.status, err.code, err.message + "; the payment was refunded",
                           refunded=True, **err.details)
    assert isinstance(result, c.Confirmed)
    booking_id = result.booking_id  # a resumed attempt gets the first attempt's booking
    try:
        await gateway.capture(auth.ref)
    except (PaymentError, GatewayUnavailable) as exc:
        await svc.shows.submit(hold.show_id, c.Cancel(f"cancel:{idem}", booking_id,
                                                      hold.token_hash))
        await gateway.refund(auth.ref)
        return await final(402, getattr(exc, "code", "capture_failed"), str(exc))

    customer = await current_user(request)  # logged in: "my bookings"; else a guest
    customer_id = customer.user_id if customer and customer.role == "customer" else None
    booking = BookingRecord(
        booking_id=booking_id, show_id=hold.show_id, hold_id=hold.hold_id,
        seats=result.seats, quote=hold.quote,
        payment=PaymentInfo(auth.ref, auth.card_token, auth.last4, auth.brand),
        email=body.email, name=body.name, created_at=_now(), customer_id=customer_id,
        holder_hash=hold.token_hash,
    )
    await store.save_booking(svc.redis, booking)
    if customer_id is not None:
        await link_booking(svc.redis, customer_id, booking_id)
    await publish(svc.redis, "booking.confirmed", booking_data(booking),
                  event_id=f"booking.confirmed:{booking_id}")  # e-mail + partner webhooks
    hold.state, hold.booking_id = "booked", booking_id
    await store.save_hold(svc.redis, hold)
    await store.finish_attempt(svc.redis, idem, msgspec.structs.replace(
        attempt, state="done", booking_id=booking_id, status=201))
    await lifecycle.after_confirm(svc, booking, publish_confirmed=False)  # sold out? cancelled?
    return 201, msgspec.json.encode(await _booking_view(request, booking))


# --- bookings --------------------------------------------------------------------------

async def _booking_view(request: web.Request, booking: BookingRecord) -> BookingResponse:
    secret = services(request).settings.secret
    token = booking_token(secret, booking.booking_id)
    show_info: ShowInfo | None = None
    starts_at: datetime | None = None
    raw = await services(request).redis.get(catalog_key("show", booking.show_id))
    if raw is not None:
        show = _show_decoder.decode(raw)
        show_info = await _show_info(request, show)
        starts_at = show.starts_at
    code = sign_ticket(secret, TicketPayload(1, booking.booking_id, booking.show_id,
                                             booking.seats, starts_at, booking.name))
    url = f"/api/bookings/{booking.booking_id}"
    return BookingResponse(
        booking_id=booking.booking_id, booking_token=token, status=booking.status,
        show=show_info, seats=booking.seats, quote=booking.quote,
        amount=Money(booking.quote.total, booking.quote.currency),
        payment=PaymentView(booking.payment.ref, booking.payment.brand, booking.payment.last4),
        email=booking.email, name=booking.name, created_at=booking.created_at, url=url,
        ticket=Ticket(code, f"{url}/ticket.svg?token={token}"),
    )


async def _authorised_booking(request: web.Request) -> BookingRecord:
    booking_id = request.match_info["booking_id"]
    token = request.query.get("token") or _bearer(request, "X-Booking-Token")
    if not token:
        raise ApiError(401, "token_required", "send the booking token (X-Booking-Token, "
                       "Authorization: Bearer or ?token=)")
    if not check_booking_token(services(request).settings.secret, booking_id, token):
        raise ApiError(403, "not_owner", "this token does not open that booking")
    booking = await store.load_booking(services(request).redis, booking_id)
    if booking is None:
        raise ApiError(404, "not_found", f"no booking {booking_id!r}")
    return booking


_TOKEN_PARAMS = (Header("X-Booking-Token", description="the booking token"),
                 Query("token", description="the booking token (alternative to the header)"))


@routes.get("/api/bookings/{booking_id}")
@operation("GET", "/api/bookings/{booking_id}", summary="A booking with its e-ticket",
           response=BookingResponse, errors=(401, 403, 404), tags=TAGS, params=_TOKEN_PARAMS)
async def get_booking(request: web.Request) -> web.Response:
    """Needs the booking token. The e-ticket (`ticket.code`) is signed with HMAC-SHA256;
    `ticket.svg_url` is its QR code."""
    return json_response(await _booking_view(request, await _authorised_booking(request)))


@routes.get("/api/bookings/{booking_id}/ticket.svg")
@operation("GET", "/api/bookings/{booking_id}/ticket.svg", summary="The e-ticket's QR code (SVG)",
           errors=(401, 403, 404), tags=TAGS, params=_TOKEN_PARAMS)
async def get_ticket_svg(request: web.Request) -> web.Response:
    """An `image/svg+xml` QR code of the signed e-ticket (`ticket.code`)."""
    booking = await _authorised_booking(request)
    view = await _booking_view(request, booking)
    return web.Response(body=qr_svg(view.ticket.code), content_type="image/svg+xml",
                        headers={"Cache-Control": "private, max-age=3600"})
