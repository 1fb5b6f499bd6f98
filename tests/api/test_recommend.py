"""GET /api/recommendations against a real server: bookings flow through the outbox to the
recommendation consumer (group `recommend`), and change what customers are offered.

Each test publishes its catalog through the partner feed in fresh cities, so other tests'
bookings never show up in its "popular in <city>" sections."""
from __future__ import annotations

import time

import pytest

from server.discovery.recommend_store import GROUP, RecommendStore

from .account_helpers import hold_and_checkout
from .catalog_helpers import Partner, layout, new_partner, uid
from .outbox_helpers import acked, until


async def movie(partner: Partner, title: str, languages: list[str]) -> str:
    movie_id = uid("mv")
    status, body = await partner.call("PUT", f"/partner/v1/movies/{movie_id}", {
        "title": title, "languages": languages, "genres": ["Drama"], "runtime_min": 100,
        "certificate": "UA"})
    assert status == 201, body
    return movie_id


async def show(partner: Partner, movie_id: str, hours: float, screen: str | None = None,
               language: str = "Hindi") -> str:
    show_id = uid("sh")
    status, body = await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(
        hours, movie_id=movie_id, screen_id=screen or partner.screen, language=language))
    assert status == 201, body
    return show_id


async def second_city(partner: Partner) -> tuple[str, str]:
    """Another theatre (and screen) of the same partner in a fresh city: (city, screen)."""
    city, theatre, screen = uid("City"), uid("th"), uid("sc")
    status, body = await partner.call("PUT", f"/partner/v1/theatres/{theatre}", {
        "name": "Odeon", "city": city, "address": "2 High St", "timezone": "Asia/Kolkata"})
    assert status == 201, body
    status, body = await partner.call("PUT", f"/partner/v1/screens/{screen}", {
        "theatre_id": theatre, "name": "Screen 1", "layout": layout()})
    assert status == 201, body
    return city, screen


async def book(client, redis, show_id: str, seats: list[str]) -> None:
    """Check out as `client` and wait until the recommendation consumer has counted it."""
    booking = await hold_and_checkout(client, show_id, seats)
    event_id = f"booking.confirmed:{booking['booking_id']}"
    await until(lambda: acked(redis, GROUP, event_id), what=f"{GROUP} to count {event_id}")


async def recs(client, **query: str) -> dict:
    status, body = await client.call("GET", "/api/recommendations?" + "&".join(
        f"{k}={v}" for k, v in query.items()))
    assert status == 200, body
    return body


def section(body: dict, kind: str) -> dict | None:
    found = [s for s in body["sections"] if s["kind"] == kind]
    assert len(found) <= 1 or kind == "because_you_watched"
    return found[0] if found else None


def ids(sec: dict | None) -> list[str]:
    return [m["summary"]["movie"]["movie_id"] for m in sec["movies"]] if sec else []


async def test_because_you_watched_follows_other_customers_bookings(api, clients, redis) -> None:
    partner = await (await new_partner(api)).setup()
    a = await movie(partner, "Alpha", ["Hindi"])
    b = await movie(partner, "Beta", ["Hindi"])
    c = await movie(partner, "Gamma", ["Hindi"])
    show_a, show_b = await show(partner, a, 24), await show(partner, b, 28)
    await show(partner, c, 32)
    one, two = clients(), clients()
    await one.sign_up()
    await two.sign_up()

    await book(one, redis, show_a, ["A1"])
    first = await recs(one, city=partner.city)
    assert first["personalised"] is True
    assert section(first, "because_you_watched") is None  # nobody else booked Alpha yet
    assert a not in ids(section(first, "popular_in_city"))  # already booked: not offered

    await book(two, redis, show_a, ["A2"])
    await book(two, redis, show_b, ["A1"])
    after = await recs(one, city=partner.city)
    because = section(after, "because_you_watched")
    assert because is not None, after
    assert because["because_of"]["movie_id"] == a
    assert because["title"] == "Because you watched Alpha"
    assert ids(because) == [b]  # Gamma was co-booked by nobody; Alpha is one's own
    assert because["movies"][0]["score"] == 1.0

    # two booked both: nothing co-booked left that they have not seen
    assert section(await recs(two, city=partner.city), "because_you_watched") is None


async def test_popularity_is_per_city_and_anonymous_users_get_it(api, clients, redis) -> None:
    partner = await (await new_partner(api)).setup()
    other_city, other_screen = await second_city(partner)
    hot = await movie(partner, "Hot", ["Hindi"])
    warm = await movie(partner, "Warm", ["Hindi"])
    quiet = await movie(partner, "Quiet", ["Tamil"])
    show_hot, show_warm = await show(partner, hot, 24), await show(partner, warm, 28)
    await show(partner, quiet, 32, language="Tamil")
    await show(partner, hot, 24, screen=other_screen)  # Hot runs in the other city too
    buyer = clients()
    await book(buyer, redis, show_hot, ["A1"])
    await book(buyer, redis, show_hot, ["A2"])
    await book(buyer, redis, show_warm, ["A1"])

    anonymous = clients()
    here = await recs(anonymous, city=partner.city.upper())  # cities are case-insensitive
    assert here["personalised"] is False and here["city"] == partner.city
    popular = section(here, "popular_in_city")
    assert popular is not None and popular["title"] == f"Popular in {partner.city} now"
    assert ids(popular) == [hot, warm]  # Quiet: no bookings
    assert popular["movies"][0]["score"] == pytest.approx(2.0, rel=1e-3)  # two, just now
    assert popular["movies"][1]["score"] == pytest.approx(1.0, rel=1e-3)

    there = await recs(anonymous, city=other_city)
    assert section(there, "popular_in_city") is None  # no bookings in that city
    assert ids(section(there, "popular")) == [hot]  # cold start: popular overall, shown there

    tamil = await recs(anonymous, city=partner.city, language="tamil")
    assert ids(section(tamil, "in_your_languages")) == [quiet]
    assert section(tamil, "in_your_languages")["languages"] == ["tamil"]

    # the decay: a half-life on, the same bookings weigh half
    store = RecommendStore(redis)
    now = time.time()
    current = await store.popularity(partner.city, now)
    later = await store.popularity(partner.city, now + 24 * 3600)
    assert later[hot] == pytest.approx(current[hot] / 2)
    assert await store.refresh(now)  # the periodic refresh keeps today's values
    assert (await store.popularity(partner.city, now))[hot] == pytest.approx(current[hot])


async def test_cold_start_soonest_and_history_languages(api, clients, redis) -> None:
    partner = await (await new_partner(api)).setup()
    late = await movie(partner, "Late", ["Hindi"])
    early = await movie(partner, "Early", ["Hindi", "Tamil"])
    await show(partner, late, 40)
    await show(partner, early, 20, language="Tamil")
    anonymous = clients()
    body = await recs(anonymous, city=partner.city)
    assert [s["kind"] for s in body["sections"]] == ["soonest"]
    assert ids(body["sections"][0]) == [early, late]

    status, err = await anonymous.call("GET", "/api/recommendations?limit=0")
    assert status == 422 and err["error"]["code"] == "invalid_limit"

    # a customer who booked a Tamil show is offered the rest "in your languages"
    other = await movie(partner, "Other", ["Tamil"])
    tamil_show = await show(partner, other, 30, language="Tamil")
    fan = clients()
    await fan.sign_up()
    await book(fan, redis, tamil_show, ["A1"])
    langs = section(await recs(fan, city=partner.city), "in_your_languages")
    assert langs is not None and langs["languages"] == ["tamil"] and ids(langs) == [early]
