"""Test-data builders for the customer API: publish a show straight into Redis.

`publish_show` writes the catalog records (theatre, screen, movie, show) and the show
actor's config (`actors.store.put_config`), exactly what the partner feed stores, and lets a
test choose the hold rules (e.g. a short hold TTL) that the feed does not expose.

`wait_for_status` waits for seats to reach a status by reading the show's log stream with
XREAD BLOCK: an event is awaited, never a sleep.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
import redis.asyncio as aioredis

from actors.layout import Layout, Rules, ShowConfig, grid_layout
from actors.store import log_key, put_config
from server.catalog.model import Money, Movie, Screen, ScreenLayout, Show, Theatre, catalog_key
from server.catalog.seat_status import read_seat_statuses

PRICES = {"gold": Money(45000, "INR"), "silver": Money(25000, "INR")}
GOOD_CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}
DECLINED_CARD = {**GOOD_CARD, "number": "4000000000000002"}


@dataclass
class PublishedShow:
    show_id: str
    movie: Movie
    theatre: Theatre
    screen: Screen
    show: Show
    config: ShowConfig

    def price(self, seat_id: str) -> int:
        seat = next(s for s in self.config.layout.seats if s.id == seat_id)
        return self.show.prices[seat.category].amount


async def publish_show(
    redis: aioredis.Redis,
    *,
    layout: Layout | None = None,
    rules: Rules | None = None,
    prices: dict[str, Money] | None = None,
    starts_in: timedelta = timedelta(days=1),
    status: str = "scheduled",
) -> PublishedShow:
    """A fresh show (uuid ids) on a 5x10 screen: rows A-B gold, C-E silver by default."""
    tag = uuid.uuid4().hex[:10]
    layout = layout or grid_layout(5, 10, bands=[("gold", 2), ("silver", 3)], aisles=(5,))
    theatre = Theatre(f"th-{tag}", "Test Cinema", "Testville", "1 Test Road", "partner-test")
    screen = Screen(f"sc-{tag}", theatre.theatre_id, "Screen 1",
                    ScreenLayout(layout.seats, layout.focal_x, layout.focal_y), "partner-test")
    movie = Movie(f"mv-{tag}", "The Test Movie", ["en"], ["drama"], 120, "U",
                  partner_id="partner-test")
    starts = datetime.now(UTC).replace(microsecond=0) + starts_in
    show = Show(f"sh-{tag}", movie.movie_id, screen.screen_id, starts, "en", "2D",
                prices if prices is not None else PRICES, "partner-test", theatre.theatre_id,
                theatre.city, starts + timedelta(minutes=movie.runtime_min), status)
    config = ShowConfig(show.show_id, layout, rules or Rules())
    # The records share the `{catalog}` slot: one MSET. The config is in the show's slot,
    # written after the record as the partner feed does.
    await redis.mset({catalog_key(kind, getattr(item, f"{kind}_id")): msgspec.json.encode(item)
                      for kind, item in (("theatre", theatre), ("screen", screen),
                                         ("movie", movie), ("show", show))})
    await put_config(redis, config)
    return PublishedShow(show.show_id, movie, theatre, screen, show, config)


async def wait_for_status(
    redis: aioredis.Redis, show_id: str, seats: list[str], status: str, timeout: float = 15.0
) -> int:
    """Block until every seat in `seats` has `status`; return the log sequence it happened at."""
    deadline = time.monotonic() + timeout
    while True:
        view = await read_seat_statuses(redis, show_id)
        assert view is not None
        if all(view.status[s] == status for s in seats):
            return view.seq
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            raise TimeoutError(f"seats {seats} did not become {status}: "
                               f"{ {s: view.status[s] for s in seats} }")
        # Wait for the next log entry after the one we read (no polling, no sleep).
        await redis.xread({log_key(show_id): f"{view.seq}-0"}, block=left_ms, count=1)


async def publish_show_via_feed(api, hours: float = 24) -> tuple[str, object]:
    """A show published the way partners do it: through the partner feed's HTTP API.
    Returns (show_id, partner) (see catalog_helpers.Partner)."""
    from .catalog_helpers import new_partner, uid

    partner = await (await new_partner(api)).setup()
    show_id = uid("sh")
    status, body = await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(hours))
    assert status == 201, body
    return show_id, partner
