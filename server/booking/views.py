"""A booking as the customer sees it (show details, signed e-ticket), and the booking-token
check that opens it."""
from __future__ import annotations

import msgspec
from aiohttp import web

from server.appkeys import services
from server.booking import records as store
from server.booking.records import BookingRecord
from server.catalog.model import Money, Movie, Screen, Show, Theatre, catalog_key
from server.booking.wire import BookingResponse, PaymentView, ShowInfo, Ticket
from server.core import pii
from server.core.errors import ApiError
from server.booking.bearer import bearer
from server.booking.tickets import (
    TicketPayload, booking_token, check_booking_token, check_image_token, image_token,
    sign_ticket, ticket_expiry, token_expiry,
)
from server.core.clock import as_utc

show_decoder = msgspec.json.Decoder(Show)


async def describe_show(request: web.Request, show: Show) -> ShowInfo:
    redis = services(request).redis
    # Not one MGET: a missing theatre must not bring in a key of another slot.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(catalog_key("movie", show.movie_id))
        pipe.get(catalog_key("screen", show.screen_id))
        if show.theatre_id:
            pipe.get(catalog_key("theatre", show.theatre_id))
        raws = await pipe.execute()
    raw_movie, raw_screen = raws[0], raws[1]
    raw_theatre = raws[2] if show.theatre_id else None
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


async def booking_view(request: web.Request, booking: BookingRecord) -> BookingResponse:
    secret = services(request).settings.secret
    show_info: ShowInfo | None = None
    show: Show | None = None
    raw = await services(request).redis.get(catalog_key("show", booking.show_id))
    if raw is not None:
        show = show_decoder.decode(raw)
        show_info = await describe_show(request, show)
    token = booking_token(secret, booking.booking_id,
                          token_expiry(show.starts_at_utc if show else None,
                                       as_utc(booking.created_at)))
    url = f"/api/bookings/{booking.booking_id}"
    ticket = None
    if booking.status == "confirmed":  # a pending, failed or cancelled booking has none
        ticket = Ticket(ticket_code(secret, booking, show),
                        f"{url}/ticket.svg?t={image_token(secret, booking.booking_id)}")
    return BookingResponse(
        booking_id=booking.booking_id, booking_token=token, status=booking.status,
        show=show_info, seats=booking.seats, quote=booking.quote,
        amount=Money(booking.quote.total, booking.quote.currency),
        payment=PaymentView(booking.payment.ref, booking.payment.brand, booking.payment.last4),
        email=booking.email, name=booking.name, created_at=booking.created_at, url=url,
        ticket=ticket,
        phone=pii.masked_booking_field(services(request).settings, booking.phone,
                                       booking.booking_id, "phone"),
        id_number=pii.masked_booking_field(services(request).settings, booking.id_number,
                                           booking.booking_id, "id_number"),
    )


def ticket_code(secret: str, booking: BookingRecord, show: Show | None) -> str:
    starts = show.starts_at_utc if show else None
    ends = as_utc(show.ends_at) if show and show.ends_at else None
    return sign_ticket(secret, TicketPayload(2, booking.booking_id, booking.show_id,
                                             booking.seats, starts, booking.name,
                                             booking.status, ticket_expiry(starts, ends)))


async def authorised_booking(request: web.Request, *, image: bool = False) -> BookingRecord:
    """The booking the request's booking token opens (a header: tokens stay out of URLs);
    `image`: the QR code's own short-lived URL token opens it too."""
    booking_id = request.match_info["booking_id"]
    secret = services(request).settings.secret
    if image and check_image_token(secret, booking_id, request.query.get("t")):
        token_ok = True
    else:
        token = bearer(request, "X-Booking-Token")
        if not token:
            raise ApiError(401, "token_required", "send the booking token (X-Booking-Token "
                           "or Authorization: Bearer)")
        token_ok = check_booking_token(secret, booking_id, token)
    if not token_ok:
        raise ApiError(403, "not_owner", "this token does not open that booking (or it "
                       "has expired)")
    booking = await store.load_booking(services(request).redis, booking_id)
    if booking is None:
        raise ApiError(404, "not_found", f"no booking {booking_id!r}")
    return booking
