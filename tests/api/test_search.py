"""GET /api/search: filters, free-text ranking, sorting, pages, bad parameters, and the
answer cache (hits are the same body; a partner feed write is visible at once)."""
from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import redis.asyncio as aioredis

from server.catalog import service as catalog
from server.discovery import search as search_module

from .catalog_helpers import Partner, layout, new_partner, uid


async def search(api: aiohttp.ClientSession, **params: str) -> tuple[dict[str, Any], str]:
    async with api.get("/api/search", params=params) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json(), resp.headers["X-Cache"]


def ids(body: dict) -> list[str]:
    return [h["movie"]["movie_id"] for h in body["results"]]


def titles(body: dict) -> list[str]:
    return [h["movie"]["title"] for h in body["results"]]


def ist_date(hours: float) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    return t.astimezone(ZoneInfo("Asia/Kolkata")).date().isoformat()


async def add_movie(p: Partner, title: str, synopsis: str = "", genres: list[str] | None = None,
                    languages: list[str] | None = None) -> str:
    movie_id = uid("mv")
    status, out = await p.call("PUT", f"/partner/v1/movies/{movie_id}", {
        "title": title, "languages": languages or ["Hindi"], "genres": genres or ["Drama"],
        "runtime_min": 90, "certificate": "U", "synopsis": synopsis})
    assert status == 201, out
    return movie_id


async def add_show(p: Partner, hours: float, **over: Any) -> str:
    show_id = uid("sh")
    status, out = await p.call("PUT", f"/partner/v1/shows/{show_id}", p.show(hours, **over))
    assert status == 201, out
    return show_id


async def test_filters_and_theatres_with_show_times(api: aiohttp.ClientSession) -> None:
    p = await (await new_partner(api)).setup(languages=["Hindi", "English"],
                                             genres=["Drama", "Romance"], title="Alpha")
    alpha = p.movie
    beta = await add_movie(p, "Beta", genres=["Action"], languages=["Tamil"])
    theatre2, screen2 = uid("th"), uid("sc")
    assert (await p.call("PUT", f"/partner/v1/theatres/{theatre2}",
                         {"name": "Elsewhere", "city": uid("City"), "address": "2 Road",
                          "timezone": "Asia/Kolkata"}))[0] == 201
    assert (await p.call("PUT", f"/partner/v1/screens/{screen2}",
                         {"theatre_id": theatre2, "name": "S", "layout": layout()}))[0] == 201
    hindi = await add_show(p, 30, language="Hindi")
    imax = await add_show(p, 33, language="English", format="IMAX")
    tamil = await add_show(p, 80, movie_id=beta, language="Tamil", format="3D")
    await add_show(p, 30, screen_id=screen2, language="English")  # another city

    city = p.city.upper()  # city matching ignores case
    body, _ = await search(api, city=city)
    assert sorted(ids(body)) == sorted([alpha, beta]) and body["total"] == 2
    hit = next(h for h in body["results"] if h["movie"]["movie_id"] == alpha)
    assert hit["show_count"] == 2 and hit["formats_showing"] == ["2D", "IMAX"]
    assert [t["theatre_id"] for t in hit["theatres"]] == [p.theatre]  # only this city's
    assert [s["show_id"] for s in hit["theatres"][0]["shows"]] == [hindi, imax]
    assert hit["theatres"][0]["timezone"] == "Asia/Kolkata"
    assert hit["theatres"][0]["shows"][0]["price_from"] == {"amount": 20000, "currency": "INR"}

    assert ids((await search(api, city=city, language="tamil"))[0]) == [beta]
    assert ids((await search(api, city=city, genre="ROMANCE"))[0]) == [alpha]
    assert ids((await search(api, city=city, genre="Horror"))[0]) == []
    only_imax, _ = await search(api, city=city, format="imax")
    assert ids(only_imax) == [alpha]
    assert [s["show_id"] for s in only_imax["results"][0]["theatres"][0]["shows"]] == [imax]

    day3, _ = await search(api, city=city, date=ist_date(80))
    assert ids(day3) == [beta]
    assert [s["show_id"] for s in day3["results"][0]["theatres"][0]["shows"]] == [tamil]
    day1, _ = await search(api, city=city, date=ist_date(30))
    assert alpha in ids(day1) and beta not in ids(day1)
    listed = [s["show_id"] for h in day1["results"] for t in h["theatres"] for s in t["shows"]]
    assert hindi in listed and tamil not in listed


async def test_free_text_is_case_and_accent_insensitive_and_titles_rank_first(
        api: aiohttp.ClientSession) -> None:
    p = await (await new_partner(api)).setup(title="Quiet Days")
    quiet = p.movie
    await p.put(f"/partner/v1/movies/{quiet}", {
        "title": "Quiet Days", "languages": ["Hindi"], "genres": ["Drama"], "runtime_min": 90,
        "certificate": "U", "synopsis": "A storm hits a small town."})
    storm = await add_movie(p, "Storm Rising", synopsis="Sailors at sea.", genres=["Action"])
    amelie = await add_movie(p, "Amélie", synopsis="A shy waitress in Paris.",
                             genres=["Comedy"])
    for i, movie_id in enumerate([quiet, storm, amelie]):
        await add_show(p, 10 + 3 * i, movie_id=movie_id)  # quiet is the soonest

    city = p.city
    ranked, _ = await search(api, city=city, q="STORM")
    assert ids(ranked) == [storm, quiet]  # title match above synopsis match, though later
    assert ranked["results"][0]["score"] > ranked["results"][1]["score"]
    assert ranked["sort"] == "relevance" and ranked["query"] == "STORM"
    assert ids((await search(api, city=city, q="amelie"))[0]) == [amelie]
    assert ids((await search(api, city=city, q="ÁMÉLIE paris"))[0]) == [amelie]
    assert ids((await search(api, city=city, q="comedy"))[0]) == [amelie]  # genres too
    assert ids((await search(api, city=city, q="storm town"))[0]) == [quiet]  # every word
    assert ids((await search(api, city=city, q="zebra"))[0]) == []


async def test_sorting_and_pages(api: aiohttp.ClientSession) -> None:
    p = await (await new_partner(api)).setup(title="delta")
    movies = {"delta": p.movie}
    for title in ["Echo", "alpha", "Charlie", "bravo"]:
        movies[title] = await add_movie(p, title)
    starts = {"Charlie": 5, "delta": 8, "alpha": 11, "Echo": 14, "bravo": 17}
    for title, hours in starts.items():
        await add_show(p, hours, movie_id=movies[title])

    by_time, _ = await search(api, city=p.city)  # default without q: soonest first
    assert by_time["sort"] == "next_show"
    assert titles(by_time) == ["Charlie", "delta", "alpha", "Echo", "bravo"]
    pages = []
    for page in (1, 2, 3):
        body, _ = await search(api, city=p.city, sort="title", per_page="2", page=str(page))
        assert body["total"] == 5 and body["page"] == page and body["per_page"] == 2
        pages.append(titles(body))
    assert pages == [["alpha", "bravo"], ["Charlie", "delta"], ["Echo"]]
    beyond, _ = await search(api, city=p.city, sort="title", per_page="2", page="4")
    assert beyond["results"] == [] and beyond["total"] == 5


async def test_bad_parameters_are_422(api: aiohttp.ClientSession) -> None:
    for params, code in [({"per_page": "0"}, "invalid_param"),
                         ({"per_page": "500"}, "invalid_param"),
                         ({"page": "first"}, "invalid_param"),
                         ({"sort": "price"}, "invalid_sort"),
                         ({"date": "tomorrow"}, "invalid_date")]:
        async with api.get("/api/search", params=params) as resp:
            body = await resp.json()
            assert resp.status == 422, (params, body)
            assert body["error"]["code"] == code, body


async def test_cache_hits_and_feed_writes_are_visible_at_once(
        api: aiohttp.ClientSession, redis: aioredis.Redis) -> None:
    p = await (await new_partner(api)).setup(title="Cached")
    show_id = await add_show(p, 20)
    first, state = await search(api, city=p.city, q="cached")
    same, state2 = await search(api, city=p.city.upper(), q=" cached ")  # same normalised query
    assert (state, state2) == ("miss", "hit") and same == first and ids(first) == [p.movie]

    # A hit is served from the cache: a change behind the feed's back is not seen...
    raw = await redis.get(catalog.catalog_key("movie", p.movie))
    await redis.set(catalog.catalog_key("movie", p.movie),
                    raw.replace(b'"title":"Cached"', b'"title":"Cached (edited)"'))
    stale, state = await search(api, city=p.city, q="cached")
    assert state == "hit" and titles(stale) == ["Cached"]

    # ...but a write through the partner feed is, at once: cached "no IMAX shows" is dropped.
    empty, _ = await search(api, city=p.city, format="IMAX")
    assert empty["total"] == 0
    status, out = await p.call("PUT", f"/partner/v1/shows/{show_id}",
                               p.show(20, format="IMAX"))
    assert status == 200, out
    now_imax, state = await search(api, city=p.city, format="IMAX")
    assert state == "miss" and ids(now_imax) == [p.movie]
    assert now_imax["results"][0]["theatres"][0]["shows"][0]["format"] == "IMAX"
    assert titles(now_imax) == ["Cached (edited)"]

    # Cancelling takes it out of the results at once, too.
    async with api.delete(f"/partner/v1/shows/{show_id}", headers=p.headers) as resp:
        assert resp.status == 200, await resp.text()
    gone, _ = await search(api, city=p.city, format="IMAX")
    assert gone["total"] == 0 and gone["results"] == []


async def test_rating_sort_through_the_rating_hook(api: aiohttp.ClientSession) -> None:
    p = await (await new_partner(api)).setup(title="Okay Film")
    okay = p.movie
    great, unrated = await add_movie(p, "Great Film"), await add_movie(p, "Unrated Film")
    for hours, movie_id in [(5, unrated), (8, okay), (11, great)]:
        await add_show(p, hours, movie_id=movie_id)
    scores = {okay: (3.5, 40), great: (4.75, 8)}

    async def source(_redis: Any, movie_ids: list[str]) -> dict[str, tuple[float, int]]:
        return {m: scores[m] for m in movie_ids if m in scores}

    previous = search_module.set_rating_source(source)
    try:
        body, _ = await search(api, city=p.city, sort="rating")
    finally:
        search_module.set_rating_source(previous)
    assert ids(body) == [great, okay, unrated]  # best average first, unrated last
    assert [h["rating"] for h in body["results"]] == [
        {"average": 4.75, "count": 8}, {"average": 3.5, "count": 40}, None]


async def test_rating_sort_uses_customer_reviews(api: aiohttp.ClientSession,
                                                redis: aioredis.Redis) -> None:
    """The reviews module's averages are wired in (reviews keep them in their stats hash)."""
    from server.discovery import reviews

    p = await (await new_partner(api)).setup(title="Rated Low")
    low = p.movie
    high = await add_movie(p, "Rated High")
    await add_show(p, 5, movie_id=low)
    await add_show(p, 8, movie_id=high)
    await redis.hset(reviews.stats_key("movie", low), mapping={"sum": 4, "count": 2})
    await redis.hset(reviews.stats_key("movie", high), mapping={"sum": 9, "count": 2})
    body, _ = await search(api, city=p.city, sort="rating")
    assert ids(body) == [high, low]
    assert body["results"][0]["rating"] == {"average": 4.5, "count": 2}
