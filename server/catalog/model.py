"""What partners publish, as stored and served: the catalog's records (msgspec Structs).

Stored in Redis as JSON under `{catalog}:<kind>:<id>`; the show's seat layout and hold rules
also go to `actors.store.config_key(show_id)` (an `actors.layout.ShowConfig`), which is all
the show actor reads. Ids are `[A-Za-z0-9_-]{1,64}` so they can be composed with '.'
(hold id = `<show_id>.<random>`), which lets any web process route a hold to its show.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from actors.layout import Seat

from server.core.clock import as_utc

Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]


class Money(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: Annotated[int, msgspec.Meta(ge=0)]  # integer minor units (paise, cents)
    currency: Currency


# A theatre, screen or movie is "active" until its partner retires it (DELETE): a retired
# one gets no new shows and leaves customer browse; a PUT of it makes it active again.
ItemStatus = Literal["active", "retired"]


class Theatre(msgspec.Struct, forbid_unknown_fields=True):
    theatre_id: Id
    name: str
    city: str
    address: str
    partner_id: str = ""  # set by the server from the API key, never by the body
    timezone: str = "UTC"
    status: ItemStatus = "active"


class ScreenLayout(msgspec.Struct, forbid_unknown_fields=True):
    seats: list[Seat]
    focal_x: float
    focal_y: float


class Screen(msgspec.Struct, forbid_unknown_fields=True):
    screen_id: Id
    theatre_id: Id
    name: str
    layout: ScreenLayout
    partner_id: str = ""
    status: ItemStatus = "active"


class Movie(msgspec.Struct, forbid_unknown_fields=True):
    movie_id: Id
    title: str
    languages: list[str]
    genres: list[str]
    runtime_min: Annotated[int, msgspec.Meta(ge=1, le=600)]
    certificate: str
    synopsis: str = ""
    partner_id: str = ""
    status: ItemStatus = "active"


ShowStatus = Literal["scheduled", "cancelled"]


class HoldPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a show's seats may be held: set by the partner per show (and for an on-sale).
    The seats one holder may hold at once count per customer (an account or a queued
    visitor), per device (a browser's signed cookie) and per network (an address; an IPv6
    /64): a client that drops its cookies is still one network."""

    hold_minutes: Annotated[int, msgspec.Meta(ge=2, le=30)] = 10
    max_hold_minutes: Annotated[int, msgspec.Meta(ge=2, le=60)] = 30  # with extensions
    seats_per_customer: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    seats_per_device: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    seats_per_network: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 40


class Show(msgspec.Struct, forbid_unknown_fields=True):
    show_id: Id
    movie_id: Id
    screen_id: Id
    starts_at: datetime  # UTC on the wire
    language: str
    format: str  # "2D", "3D", "IMAX", ...
    prices: dict[str, Money]  # seat category -> price
    partner_id: str = ""
    theatre_id: str = ""  # derived from the screen
    city: str = ""        # derived from the theatre
    ends_at: datetime | None = None  # derived from the movie's runtime
    status: ShowStatus = "scheduled"
    # None: the platform's defaults (HoldPolicy()), and the hold period of the show's rules
    hold_policy: HoldPolicy | None = None

    @property
    def starts_at_utc(self) -> datetime:
        """`starts_at` as an aware UTC datetime (older records decode naive)."""
        return as_utc(self.starts_at)


# Every catalog key carries the hash tag `{catalog}`: one Redis Cluster slot on purpose. The
# catalog is small (tens of MB nationally), written rarely (the partner feed) and read through
# in-process caches, and its writes are WATCH/MULTI transactions over many of its keys (a
# screen's schedule for the clash check, the indexes, the generation).
CATALOG_TAG = "{catalog}"


def catalog_key(kind: str, item_id: str) -> str:
    return f"{CATALOG_TAG}:{kind}:{item_id}"


# --- partner feed: request and response bodies ----------------------------------------
# The id of a PUT comes from the path, the partner from the API key; derived fields
# (theatre, city, ends_at, status) are computed by the server, so bodies carry neither.

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Date = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]  # must carry an offset (Z)


class TheatreIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    city: Name
    address: Annotated[str, msgspec.Meta(max_length=500)]
    timezone: str = "UTC"  # IANA name, e.g. "Asia/Kolkata"; show dates are local dates


class ScreenIn(msgspec.Struct, forbid_unknown_fields=True):
    theatre_id: Id
    name: Name
    layout: ScreenLayout  # seats with id/row/number/category/x/y/flags; aisles are x gaps


class MovieIn(msgspec.Struct, forbid_unknown_fields=True):
    title: Name
    languages: Annotated[list[Name], msgspec.Meta(min_length=1)]
    genres: list[Name]
    runtime_min: Annotated[int, msgspec.Meta(ge=1, le=600)]
    certificate: Annotated[str, msgspec.Meta(max_length=20)]
    synopsis: Annotated[str, msgspec.Meta(max_length=5000)] = ""


class ShowIn(msgspec.Struct, forbid_unknown_fields=True):
    movie_id: Id
    screen_id: Id
    starts_at: AwareDatetime
    language: Name
    format: Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
    prices: dict[str, Money]  # every seat category of the screen's layout needs a price
    hold_policy: HoldPolicy | None = None


class BulkShow(ShowIn, forbid_unknown_fields=True, kw_only=True):
    show_id: Id


class BulkShowsRequest(msgspec.Struct, forbid_unknown_fields=True):
    shows: Annotated[list[BulkShow], msgspec.Meta(min_length=1, max_length=500)]


class ItemError(msgspec.Struct):
    code: str
    message: str


class BulkItemResult(msgspec.Struct):
    show_id: str
    status: int  # what a PUT of this show alone would have answered: 201, 200 or a 4xx
    show: Show | None = None
    error: ItemError | None = None


class BulkShowsResponse(msgspec.Struct):
    created: int
    replaced: int
    failed: int
    results: list[BulkItemResult]


class SeatsRequest(msgspec.Struct, forbid_unknown_fields=True):
    seats: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]],
                     msgspec.Meta(min_length=1, max_length=1000)]


class SeatsResponse(msgspec.Struct):
    show_id: str
    seats: list[str]  # the seats whose status this request changed


class Availability(msgspec.Struct):
    free: int
    held: int
    booked: int
    blocked: int
    seq: int  # the show's log sequence these counts are as of


class Sales(msgspec.Struct):
    seats_sold: int
    gross: Money | None  # sum of the booked seats' category prices (None: nothing sold)


class PartnerShow(msgspec.Struct):
    show: Show
    availability: Availability
    sales: Sales


class PartnerShowList(msgspec.Struct):
    date: str
    shows: list[PartnerShow]


class PartnerShowPage(msgspec.Struct):
    """GET /partner/v1/shows: a page of the partner's shows by start time (one local date,
    or every future show). `shows` repeats `items` when a date was asked for: the answer's
    shape before it had pages."""

    items: list[PartnerShow]
    next_cursor: str | None = None
    date: str | None = None
    shows: list[PartnerShow] | msgspec.UnsetType = msgspec.UNSET


CHANGE_TYPES = ("show.created", "show.updated", "show.cancelled",
                "theatre.upserted", "theatre.retired", "screen.upserted", "screen.retired",
                "movie.upserted", "movie.retired", "booking.confirmed", "booking.cancelled")
# A string, not an enum in the document: a client generated today must still read a feed
# that later gains a type.
ChangeType = Annotated[str, msgspec.Meta(
    description="one of " + ", ".join(CHANGE_TYPES) + " (more may be added: skip others)")]


class Change(msgspec.Struct):
    """One entry of GET /partner/v1/changes. `data` is the record as stored (plus its
    `etag`; a screen without its seat layout, with `seat_count`) for catalog changes, the
    booking (no customer contact data) plus the show's `availability` for bookings."""

    id: str            # the change's position in the partner's change stream
    type: ChangeType
    at: datetime       # when it happened (UTC)
    data: dict[str, Any]


class ChangesPage(msgspec.Struct):
    items: list[Change]
    next_cursor: str   # always given: poll again with ?since=<next_cursor>


class PartnerCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    partner_id: Id | None = None  # chosen by the server when left out


class PartnerCreated(msgspec.Struct):
    partner_id: str
    name: str
    api_key: str  # shown once; only its hash is stored


# --- browse (customers) ---------------------------------------------------------------

class City(msgspec.Struct):
    name: str
    theatres: int


class CityList(msgspec.Struct):
    cities: list[City]


class MovieInfo(msgspec.Struct):
    movie_id: str
    title: str
    languages: list[str]
    genres: list[str]
    runtime_min: int
    certificate: str
    synopsis: str = ""


class RatingSummary(msgspec.Struct):
    """Customers' ratings of a movie or theatre (server/discovery/reviews.py): the mean of the
    visible ratings (1-5, two decimals; None when there are none) and how many."""

    average: float | None
    count: int


class MovieSummary(msgspec.Struct):
    movie: MovieInfo
    show_count: int           # matching scheduled shows
    next_show_at: datetime    # the earliest of them
    languages_showing: list[str]
    next_show_timezone: str = "UTC"  # IANA zone of the theatre of that earliest show
    rating: RatingSummary | None = None  # customers' ratings (reviews)


class MovieList(msgspec.Struct):
    movies: list[MovieSummary]


class ShowTime(msgspec.Struct):
    show_id: str
    starts_at: datetime
    ends_at: datetime | None
    language: str
    format: str
    screen_id: str
    screen_name: str
    price_from: Money
    price_to: Money


class TheatreShows(msgspec.Struct):
    theatre_id: str
    name: str
    city: str
    address: str
    shows: list[ShowTime]
    timezone: str = "UTC"  # IANA name (e.g. "Asia/Kolkata"): show times are local to it
    rating: RatingSummary | None = None  # customers' ratings of the theatre (reviews)


class MovieShows(msgspec.Struct):
    movie: MovieInfo
    theatres: list[TheatreShows]
    rating: RatingSummary | None = None  # customers' ratings of the movie (reviews)
