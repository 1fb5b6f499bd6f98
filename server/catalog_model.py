"""What partners publish, as stored and served: the catalog's records (msgspec Structs).

Stored in Redis as JSON under `catalog:<kind>:<id>`; the show's seat layout and hold rules
also go to `actors.store.config_key(show_id)` (an `actors.layout.ShowConfig`), which is all
the show actor reads. Ids are `[A-Za-z0-9_-]{1,64}` so they can be composed with '.'
(hold id = `<show_id>.<random>`), which lets any web process route a hold to its show.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from actors.layout import Seat

Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]


class Money(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: Annotated[int, msgspec.Meta(ge=0)]  # integer minor units (paise, cents)
    currency: Currency


class Theatre(msgspec.Struct, forbid_unknown_fields=True):
    theatre_id: Id
    name: str
    city: str
    address: str
    partner_id: str = ""  # set by the server from the API key, never by the body
    timezone: str = "UTC"


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


class Movie(msgspec.Struct, forbid_unknown_fields=True):
    movie_id: Id
    title: str
    languages: list[str]
    genres: list[str]
    runtime_min: Annotated[int, msgspec.Meta(ge=1, le=600)]
    certificate: str
    synopsis: str = ""
    partner_id: str = ""


ShowStatus = Literal["scheduled", "cancelled"]


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


def catalog_key(kind: str, item_id: str) -> str:
    return f"catalog:{kind}:{item_id}"
