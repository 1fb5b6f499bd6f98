"""The customer REST API's request and response bodies (msgspec Structs; server/core/openapi.py
derives their JSON schemas)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from actors import commands as c

from server.booking.records import Quote
from server.catalog.model import Money
from server.core.pii import IdNumber, Phone

DEFAULT_EXTEND_S = 300

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
    # The show's hold policy (catalog.model.HoldPolicy): how long a hold may live with its
    # extensions, and the seats one holder may hold at once (per device, per network).
    hold_max_seconds: int = 0
    seats_per_device: int = 0
    seats_per_network: int = 0


class BestRequest(msgspec.Struct, forbid_unknown_fields=True):
    count: Annotated[int, msgspec.Meta(ge=1, le=100)]
    category: str | None = None
    accessible: bool = False  # include wheelchair and companion seats


class HoldRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of `seats` (these seat ids) or `best` (the best N free seats)."""

    seats: Annotated[list[SeatId], msgspec.Meta(min_length=1, max_length=100)] | None = None
    best: BestRequest | None = None
    # A promo code (server/commerce/pricing.py): its use is reserved for this hold and consumed at
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
    phone: Phone | None = None  # contact for the show day; stored encrypted (server/core/pii.py)
    id_number: IdNumber | None = None  # where the venue asks for ID; stored encrypted


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
    ticket: Ticket | None  # confirmed bookings only
    # Masked (last three digits): this view is also cached for idempotent retries and
    # sent in e-mails, so the full number never leaves the encrypted record here.
    phone: str | None = None
    id_number: str | None = None  # masked the same way
