"""A booking as the customer sees it (show details, signed e-ticket), and the booking-token
check that opens it."""
from __future__ import annotations

from datetime import datetime

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
from server.booking.tickets import TicketPayload, booking_token, check_booking_token, sign_ticket

show_decoder = msgspec.json.Decoder(Show)


async def describe_show(request: web.Request, show: Show) -> ShowInfo:
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


async def booking_view(request: web.Request, booking: BookingRecord) -> BookingResponse:
    secret = services(request).settings.secret
    token = booking_token(secret, booking.booking_id)
    show_info: ShowInfo | None = None
    starts_at: datetime | None = None
    raw = await services(request).redis.get(catalog_key("show", booking.show_id))
    if raw is not None:
        show = show_decoder.decode(raw)
        show_info = await describe_show(request, show)
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
        phone=pii.masked_booking_field(services(request).settings, booking.phone,
                                       booking.booking_id, "phone"),
        id_number=pii.masked_booking_field(services(request).settings, booking.id_number,
                                           booking.booking_id, "id_number"),
    )


async def authorised_booking(request: web.Request) -> BookingRecord:
    booking_id = request.match_info["booking_id"]
    token = request.query.get("token") or bearer(request, "X-Booking-Token")
    if not token:
        raise ApiError(401, "token_required", "send the booking token (X-Booking-Token, "
                       "Authorization: Bearer or ?token=)")
    if not check_booking_token(services(request).settings.secret, booking_id, token):
        raise ApiError(403, "not_owner", "this token does not open that booking")
    booking = await store.load_booking(services(request).redis, booking_id)
    if booking is None:
        raise ApiError(404, "not_found", f"no booking {booking_id!r}")
    return booking
