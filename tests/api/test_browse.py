"""Browse (customers, no auth): cities, movie filters, a movie's theatres and show times."""
from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from .catalog_helpers import Partner, layout, new_partner, uid


async def get(api: aiohttp.ClientSession, path: str, **params: str) -> Any:
    async with api.get(path, params=params) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def titles(body: dict) -> list[str]:
    return sorted(m["movie"]["title"] for m in body["movies"])


def ist_date(hours: float) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    return t.astimezone(ZoneInfo("Asia/Kolkata")).date().isoformat()


async def test_browse_filters(api: aiohttp.ClientSession) -> None:
    p = await (await new_partner(api)).setup(languages=["Hindi", "English"],
                                             genres=["Drama", "Romance"], title="Alpha")
    alpha = p.movie
    beta = uid("mv")
    assert (await p.call("PUT", f"/partner/v1/movies/{beta}",
                         {"title": "Beta", "languages": ["Tamil"], "genres": ["Action"],
                          "runtime_min": 100, "certificate": "A"}))[0] == 201
    # another city, same partner, one more theatre and screen
    other_city = uid("City")
    theatre2, screen2 = uid("th"), uid("sc")
    assert (await p.call("PUT", f"/partner/v1/theatres/{theatre2}",
                         {"name": "Zeta Multiplex", "city": other_city, "address": "2 Road",
                          "timezone": "Asia/Kolkata"}))[0] == 201
    assert (await p.call("PUT", f"/partner/v1/screens/{screen2}",
                         {"theatre_id": theatre2, "name": "S", "layout": layout()}))[0] == 201

    shows = {
        "a_hindi_day1": p.show(30, language="Hindi"),
        "a_english_day1": p.show(33, language="English"),
        "b_tamil_day3": p.show(80, movie_id=beta, language="Tamil"),
        "a_other_city": p.show(30, screen_id=screen2, language="English"),
    }
    ids = {}
    for name, body in shows.items():
        ids[name] = uid("sh")
        status, out = await p.call("PUT", f"/partner/v1/shows/{ids[name]}", body)
        assert status == 201, out

    city = {"city": p.city.upper()}  # city matching ignores case
    assert titles(await get(api, "/api/movies", **city)) == ["Alpha", "Beta"]
    assert titles(await get(api, "/api/movies", **city, language="tamil")) == ["Beta"]
    assert titles(await get(api, "/api/movies", **city, language="English")) == ["Alpha"]
    assert titles(await get(api, "/api/movies", **city, genre="Romance")) == ["Alpha"]
    assert titles(await get(api, "/api/movies", **city, genre="Horror")) == []
    assert titles(await get(api, "/api/movies", **city, date=ist_date(80))) == ["Beta"]
    assert titles(await get(api, "/api/movies", city=other_city)) == ["Alpha"]
    (alpha_row,) = [m for m in (await get(api, "/api/movies", **city))["movies"]
                    if m["movie"]["movie_id"] == alpha]
    assert alpha_row["show_count"] == 2
    assert alpha_row["languages_showing"] == ["English", "Hindi"]

    cities = {c["name"]: c["theatres"] for c in (await get(api, "/api/cities"))["cities"]}
    assert cities[p.city] == 1 and cities[other_city] == 1

    movie = await get(api, f"/api/movies/{alpha}")
    assert movie["title"] == "Alpha" and "partner_id" not in movie

    all_shows = await get(api, f"/api/movies/{alpha}/shows")
    by_theatre = {t["theatre_id"]: [s["show_id"] for s in t["shows"]]
                  for t in all_shows["theatres"]}
    assert by_theatre == {p.theatre: [ids["a_hindi_day1"], ids["a_english_day1"]],
                          theatre2: [ids["a_other_city"]]}
    in_city = await get(api, f"/api/movies/{alpha}/shows", city=other_city)
    (theatre,) = in_city["theatres"]
    assert theatre["name"] == "Zeta Multiplex"
    (show,) = theatre["shows"]
    assert show["price_from"] == {"amount": 20000, "currency": "INR"}
    assert show["price_to"] == {"amount": 35000, "currency": "INR"}
    assert show["language"] == "English" and show["format"] == "2D"
    assert (await get(api, f"/api/movies/{beta}/shows", date=ist_date(30)))["theatres"] == []

    # Cancelled shows leave every listing.
    assert (await p.call("DELETE", f"/partner/v1/shows/{ids['b_tamil_day3']}"))[0] == 200
    assert titles(await get(api, "/api/movies", **city)) == ["Alpha"]
    assert (await get(api, f"/api/movies/{beta}/shows"))["theatres"] == []


async def test_browse_errors(api: aiohttp.ClientSession) -> None:
    async with api.get(f"/api/movies/{uid('none')}") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"
    async with api.get(f"/api/movies/{uid('none')}/shows") as r:
        assert r.status == 404
    async with api.get("/api/movies", params={"date": "31-12-2030"}) as r:
        assert r.status == 422
        assert (await r.json())["error"]["code"] == "invalid_date"


async def test_unknown_city_lists_nothing(api: aiohttp.ClientSession) -> None:
    p: Partner = await (await new_partner(api)).setup()
    assert (await p.call("PUT", f"/partner/v1/shows/{uid('sh')}", p.show(30)))[0] == 201
    assert (await get(api, "/api/movies", city=uid("Atlantis")))["movies"] == []
    assert titles(await get(api, "/api/movies", city=p.city)) == ["A Movie"]


async def test_movie_shows_filters_by_language_and_format(api: aiohttp.ClientSession) -> None:
    p = await (await new_partner(api)).setup(languages=["Hindi", "English"])
    ids = {}
    for name, body in {"hindi_2d": p.show(30, language="Hindi"),
                       "english_2d": p.show(33, language="English"),
                       "english_imax": p.show(36, language="English", format="IMAX")}.items():
        ids[name] = uid("sh")
        status, out = await p.call("PUT", f"/partner/v1/shows/{ids[name]}", body)
        assert status == 201, out

    def shown(body: dict) -> list[str]:
        return [s["show_id"] for t in body["theatres"] for s in t["shows"]]

    path = f"/api/movies/{p.movie}/shows"
    assert shown(await get(api, path, city=p.city)) == [
        ids["hindi_2d"], ids["english_2d"], ids["english_imax"]]
    # case-insensitive, server-side
    assert shown(await get(api, path, city=p.city, language="english")) == [
        ids["english_2d"], ids["english_imax"]]
    assert shown(await get(api, path, city=p.city, language="HINDI")) == [ids["hindi_2d"]]
    assert shown(await get(api, path, city=p.city, language="English", format="imax")) == [
        ids["english_imax"]]
    assert shown(await get(api, path, city=p.city, format="2d")) == [
        ids["hindi_2d"], ids["english_2d"]]
    assert (await get(api, path, city=p.city, language="Tamil"))["theatres"] == []


async def test_show_times_carry_the_theatre_timezone(api: aiohttp.ClientSession) -> None:
    p = await (await new_partner(api)).setup()
    show_id = uid("sh")
    assert (await p.call("PUT", f"/partner/v1/shows/{show_id}", p.show(30)))[0] == 201

    (theatre,) = (await get(api, f"/api/movies/{p.movie}/shows", city=p.city))["theatres"]
    assert theatre["timezone"] == "Asia/Kolkata"
    seatmap = await get(api, f"/api/shows/{show_id}/seatmap")
    assert seatmap["show"]["timezone"] == "Asia/Kolkata"
