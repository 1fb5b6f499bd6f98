"""Partner show feed against a real server, Redis and Ray: auth, idempotent upserts,
every validation error (and that nothing was written), bulk, cancel, house seats; lists
with cursors, GET one, ETag / If-Match, retiring, the changes feed."""
from __future__ import annotations

import asyncio
import contextlib
import uuid
import datetime as dt
from zoneinfo import ZoneInfo

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from actors.layout import ShowConfig
from actors.store import config_key, seq_key
from server.accounts.api_keys import hash_key
from server.catalog import service as catalog_service
from server.catalog.model import MovieIn, catalog_key
from server.catalog.service import screen_shows_key

from .builders import GOOD_CARD
from .catalog_helpers import ADMIN, Partner, layout, new_partner, uid


def local_date(iso: str) -> str:
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return t.astimezone(ZoneInfo("Asia/Kolkata")).date().isoformat()


@pytest.fixture
async def partner(api: aiohttp.ClientSession) -> Partner:
    return await (await new_partner(api)).setup()


# --- auth -----------------------------------------------------------------------------

async def test_admin_key_required_to_create_partners(api: aiohttp.ClientSession) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        async with api.post("/admin/v1/partners", json={"name": "X"}, headers=headers) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "unauthorized"


async def test_partner_id_taken_is_409(api: aiohttp.ClientSession) -> None:
    pid = uid("p")
    async with api.post("/admin/v1/partners", json={"name": "A", "partner_id": pid},
                        headers=ADMIN) as r:
        assert r.status == 201
    async with api.post("/admin/v1/partners", json={"name": "B", "partner_id": pid},
                        headers=ADMIN) as r:
        assert r.status == 409


async def test_keys_are_stored_hashed(api: aiohttp.ClientSession, redis: aioredis.Redis) -> None:
    p = await new_partner(api)
    assert await redis.get(f"partnerkey:{hash_key(p.key)}") == p.partner_id.encode()
    # The plain key appears nowhere in Redis.
    async for key in redis.scan_iter(match=f"partner*{p.partner_id}*"):
        kind = (await redis.type(key)).decode()
        values = (await redis.hgetall(key)).values() if kind == "hash" else \
            await redis.smembers(key) if kind == "set" else [await redis.get(key)]
        assert all(p.key.encode() not in (v or b"") for v in values)


async def test_partner_endpoints_need_a_valid_key(api: aiohttp.ClientSession,
                                                  partner: Partner) -> None:
    for headers in ({}, {"Authorization": "Bearer bmm_nope"}):
        async with api.put(f"/partner/v1/theatres/{uid('th')}", headers=headers,
                           json={"name": "x", "city": "y", "address": "z"}) as r:
            assert r.status == 401
        async with api.get("/partner/v1/shows?date=2030-01-01", headers=headers) as r:
            assert r.status == 401


async def test_a_partner_cannot_touch_another_partners_data(
        api: aiohttp.ClientSession, partner: Partner) -> None:
    other = await (await new_partner(api)).setup()
    status, show = await partner.call("PUT", f"/partner/v1/shows/{uid('sh')}", partner.show(30))
    assert status == 201
    show_id = show["show_id"]
    theatre = {"name": "Mine now", "city": "X", "address": "Y"}
    status, err = await other.call("PUT", f"/partner/v1/theatres/{partner.theatre}", theatre)
    assert (status, err["error"]["code"]) == (403, "forbidden")
    status, _ = await other.call("PUT", f"/partner/v1/movies/{partner.movie}",
                                 {"title": "t", "languages": ["x"], "genres": [],
                                  "runtime_min": 90, "certificate": "U"})
    assert status == 403
    assert (await other.call("PUT", f"/partner/v1/shows/{show_id}", other.show(30)))[0] == 403
    assert (await other.call("GET", f"/partner/v1/shows/{show_id}"))[0] == 403
    assert (await other.call("DELETE", f"/partner/v1/shows/{show_id}"))[0] == 403
    assert (await other.call("POST", f"/partner/v1/shows/{show_id}/blocks",
                             {"seats": ["A1"]}))[0] == 403
    # A show on someone else's screen, or of someone else's movie.
    assert (await other.call("PUT", f"/partner/v1/shows/{uid('sh')}",
                             other.show(50, screen_id=partner.screen)))[0] == 403
    assert (await other.call("PUT", f"/partner/v1/shows/{uid('sh')}",
                             other.show(50, movie_id=partner.movie)))[0] == 403
    # A screen in someone else's theatre.
    assert (await other.call("PUT", f"/partner/v1/screens/{uid('sc')}",
                             {"theatre_id": partner.theatre, "name": "s",
                              "layout": layout()}))[0] == 403
    # Nothing changed; the owner's listing does not include the other's data and vice versa.
    status, mine = await partner.call("GET", f"/partner/v1/shows/{show_id}")
    assert status == 200 and mine == show
    date = local_date(show["starts_at"])
    _, listing = await other.call("GET", f"/partner/v1/shows?date={date}")
    assert show_id not in [s["show"]["show_id"] for s in listing["shows"]]


# --- upserts --------------------------------------------------------------------------

async def test_put_is_idempotent_201_then_200(partner: Partner, redis: aioredis.Redis) -> None:
    show_id = uid("sh")
    body = partner.show(24)
    s1, first = await partner.call("PUT", f"/partner/v1/shows/{show_id}", body)
    s2, second = await partner.call("PUT", f"/partner/v1/shows/{show_id}", body)
    assert (s1, s2) == (201, 200)
    assert first == second
    assert first["theatre_id"] == partner.theatre and first["city"] == partner.city
    assert first["partner_id"] == partner.partner_id and first["status"] == "scheduled"
    # ends_at from the movie's runtime (120 min)
    start = dt.datetime.fromisoformat(first["starts_at"])
    assert dt.datetime.fromisoformat(first["ends_at"]) - start == dt.timedelta(minutes=120)
    # the show actor's config was written, with the screen's layout
    config = msgspec.json.decode(await redis.get(config_key(show_id)), type=ShowConfig)
    assert len(config.layout.seats) == 24
    assert await redis.zcard(screen_shows_key(partner.screen)) == 1
    # theatre re-PUT is 200 too
    resp = await partner.put(f"/partner/v1/theatres/{partner.theatre}",
                             {"name": "Regal 2", "city": partner.city, "address": "1 Main St",
                              "timezone": "Asia/Kolkata"})
    assert resp.status == 200


async def test_replacing_a_show_moves_it_in_the_listings(partner: Partner) -> None:
    show_id = uid("sh")
    body = partner.show(24)
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", body))[0] == 201
    moved = partner.show(24 + 48)
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", moved))[0] == 200
    _, old_day = await partner.call("GET", f"/partner/v1/shows?date={local_date(body['starts_at'])}")
    _, new_day = await partner.call("GET", f"/partner/v1/shows?date={local_date(moved['starts_at'])}")
    assert show_id not in [s["show"]["show_id"] for s in old_day["shows"]]
    assert show_id in [s["show"]["show_id"] for s in new_day["shows"]]
    # the old slot is free again
    assert (await partner.call("PUT", f"/partner/v1/shows/{uid('sh')}", body))[0] == 201


async def _assert_rejected(partner: Partner, redis: aioredis.Redis, body: dict,
                           status: int, code: str) -> None:
    show_id = uid("sh")
    got, err = await partner.call("PUT", f"/partner/v1/shows/{show_id}", body)
    assert (got, err["error"]["code"]) == (status, code), err
    assert err["error"]["message"]
    # One key per EXISTS: the record is in the catalog's slot, the config in the show's.
    assert not await redis.exists(catalog_key("show", show_id))
    assert not await redis.exists(config_key(show_id))


async def test_show_validation_errors_write_nothing(partner: Partner,
                                                    redis: aioredis.Redis) -> None:
    await _assert_rejected(partner, redis, partner.show(-1), 422, "starts_in_past")
    await _assert_rejected(partner, redis, partner.show(5, screen_id=uid("nope")),
                           422, "unknown_screen")
    await _assert_rejected(partner, redis, partner.show(5, movie_id=uid("nope")),
                           422, "unknown_movie")
    await _assert_rejected(partner, redis,
                           partner.show(5, prices={"Silver": {"amount": 1, "currency": "INR"}}),
                           422, "missing_prices")
    await _assert_rejected(partner, redis, partner.show(5, language="Klingon"),
                           422, "unknown_language")
    await _assert_rejected(partner, redis, partner.show(5, starts_at="2030-01-01T10:00:00"),
                           422, "invalid")  # no time zone
    await _assert_rejected(partner, redis, {**partner.show(5), "extra": 1}, 422, "invalid")
    prices = {"Silver": {"amount": 1, "currency": "INR"}, "Gold": {"amount": 1, "currency": "USD"}}
    await _assert_rejected(partner, redis, partner.show(5, prices=prices), 422, "mixed_currencies")
    # overlap: 120 min movie at +10h; another at +11h on the same screen clashes
    assert (await partner.call("PUT", f"/partner/v1/shows/{uid('sh')}", partner.show(10)))[0] == 201
    await _assert_rejected(partner, redis, partner.show(11), 409, "overlapping_show")
    await _assert_rejected(partner, redis, partner.show(8.5), 409, "overlapping_show")
    # back to back is fine
    assert (await partner.call("PUT", f"/partner/v1/shows/{uid('sh')}", partner.show(12)))[0] == 201


async def test_bad_json_and_bad_ids(partner: Partner, api: aiohttp.ClientSession) -> None:
    async with api.put(f"/partner/v1/shows/{uid('sh')}", data=b"{nope",
                       headers={**partner.headers, "Content-Type": "application/json"}) as r:
        assert r.status == 400
    status, err = await partner.call("PUT", "/partner/v1/shows/bad.id", partner.show(5))
    assert (status, err["error"]["code"]) == (422, "invalid_id")
    status, err = await partner.call("GET", "/partner/v1/shows?date=tomorrow")
    assert (status, err["error"]["code"]) == (422, "invalid_date")


async def test_layout_validation(partner: Partner, redis: aioredis.Redis) -> None:
    lay = layout()
    lay["seats"][1]["id"] = lay["seats"][0]["id"]
    screen_id = uid("sc")
    status, err = await partner.call("PUT", f"/partner/v1/screens/{screen_id}",
                                     {"theatre_id": partner.theatre, "name": "s", "layout": lay})
    assert (status, err["error"]["code"]) == (422, "invalid_layout")
    assert "duplicate seat id" in err["error"]["message"]
    status, err = await partner.call("PUT", f"/partner/v1/screens/{screen_id}",
                                     {"theatre_id": uid("th"), "name": "s", "layout": layout()})
    assert (status, err["error"]["code"]) == (422, "unknown_theatre")
    assert not await redis.exists(catalog_key("screen", screen_id))
    status, err = await partner.call("PUT", f"/partner/v1/theatres/{uid('th')}",
                                     {"name": "x", "city": "y", "address": "z",
                                      "timezone": "Mars/Olympus"})
    assert (status, err["error"]["code"]) == (422, "invalid_timezone")


async def test_screen_change_refused_once_seats_were_taken(partner: Partner) -> None:
    second = uid("sc")
    assert (await partner.call("PUT", f"/partner/v1/screens/{second}",
                               {"theatre_id": partner.theatre, "name": "2",
                                "layout": layout()}))[0] == 201
    show_id = uid("sh")
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30)))[0] == 201
    # no activity yet: moving is fine
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}",
                               partner.show(30, screen_id=second)))[0] == 200
    assert (await partner.call("POST", f"/partner/v1/shows/{show_id}/blocks",
                               {"seats": ["A1"]}))[0] == 200
    status, err = await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30))
    assert (status, err["error"]["code"]) == (409, "show_has_activity")
    # same screen, new price: still fine
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}",
                               partner.show(30, screen_id=second, format="3D")))[0] == 200


# --- bulk -----------------------------------------------------------------------------

async def test_bulk_reports_each_item(partner: Partner, redis: aioredis.Redis) -> None:
    existing = uid("sh")
    assert (await partner.call("PUT", f"/partner/v1/shows/{existing}", partner.show(20)))[0] == 201
    good, past, clash = uid("sh"), uid("sh"), uid("sh")
    items = [
        {**partner.show(40), "show_id": good},
        {**partner.show(20), "show_id": existing},           # replace, unchanged
        {**partner.show(-2), "show_id": past},
        {**partner.show(41), "show_id": clash},              # overlaps `good`
        {**partner.show(60), "show_id": good},               # duplicate in the request
    ]
    status, out = await partner.call("POST", "/partner/v1/shows:bulk", {"shows": items})
    assert status == 200
    got = [(r["show_id"], r["status"], (r["error"] or {}).get("code")) for r in out["results"]]
    assert got == [(good, 201, None), (existing, 200, None), (past, 422, "starts_in_past"),
                   (clash, 409, "overlapping_show"), (good, 422, "duplicate_item")]
    assert (out["created"], out["replaced"], out["failed"]) == (1, 1, 3)
    assert out["results"][0]["show"]["show_id"] == good
    assert await redis.exists(config_key(good))
    assert not await redis.exists(catalog_key("show", past), catalog_key("show", clash))


async def test_bulk_body_is_validated_as_a_whole(partner: Partner) -> None:
    status, err = await partner.call("POST", "/partner/v1/shows:bulk", {"shows": []})
    assert (status, err["error"]["code"]) == (422, "invalid")


# --- cancel ---------------------------------------------------------------------------

async def test_delete_before_start_cancels_and_unlists(partner: Partner,
                                                       api: aiohttp.ClientSession) -> None:
    show_id = uid("sh")
    _, show = await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30))
    async with api.get(f"/api/movies/{partner.movie}/shows") as r:
        assert [s["show_id"] for t in (await r.json())["theatres"] for s in t["shows"]] == [show_id]
    status, out = await partner.call("DELETE", f"/partner/v1/shows/{show_id}")
    assert (status, out["status"]) == (200, "cancelled")
    # idempotent
    assert (await partner.call("DELETE", f"/partner/v1/shows/{show_id}"))[0] == 200
    async with api.get(f"/api/movies/{partner.movie}/shows") as r:
        assert (await r.json())["theatres"] == []
    # still in the partner's list, marked cancelled; its slot is free again
    _, listing = await partner.call("GET", f"/partner/v1/shows?date={local_date(show['starts_at'])}")
    assert [s["show"]["status"] for s in listing["shows"]] == ["cancelled"]
    assert (await partner.call("PUT", f"/partner/v1/shows/{uid('sh')}", partner.show(30)))[0] == 201
    # a cancelled show cannot be re-published under the same id, nor blocked
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(80)))[0] == 409
    assert (await partner.call("POST", f"/partner/v1/shows/{show_id}/blocks",
                               {"seats": ["A1"]}))[0] == 409
    assert (await partner.call("DELETE", f"/partner/v1/shows/{uid('sh')}"))[0] == 404


async def test_delete_after_start_is_refused(partner: Partner, redis: aioredis.Redis) -> None:
    show_id = uid("sh")
    _, show = await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30))
    # Time travel in the store: the show started an hour ago.
    show["starts_at"] = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    await redis.set(catalog_key("show", show_id), msgspec.json.encode(show))
    status, err = await partner.call("DELETE", f"/partner/v1/shows/{show_id}")
    assert (status, err["error"]["code"]) == (409, "show_started")
    status, err = await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30))
    assert (status, err["error"]["code"]) == (409, "show_started")


# --- house seats and live counts ------------------------------------------------------

async def test_block_and_unblock_go_through_the_actor_and_show_in_counts(
        partner: Partner) -> None:
    show_id = uid("sh")
    _, show = await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30))
    listing_url = f"/partner/v1/shows?date={local_date(show['starts_at'])}"

    async def counts() -> dict:
        _, listing = await partner.call("GET", listing_url)
        (row,) = [s for s in listing["shows"] if s["show"]["show_id"] == show_id]
        return row["availability"]

    before = await counts()
    assert (before["free"], before["blocked"], before["seq"]) == (24, 0, 0)
    status, out = await partner.call("POST", f"/partner/v1/shows/{show_id}/blocks",
                                     {"seats": ["A1", "A2", "A2"]})
    assert (status, sorted(out["seats"])) == (200, ["A1", "A2"])
    after = await counts()
    assert (after["free"], after["blocked"], after["seq"]) == (22, 2, 1)
    status, err = await partner.call("POST", f"/partner/v1/shows/{show_id}/blocks",
                                     {"seats": ["ZZ9"]})
    assert (status, err["error"]["code"]) == (422, "unknown_seats")
    status, out = await partner.call("DELETE", f"/partner/v1/shows/{show_id}/blocks",
                                     {"seats": ["A1"]})
    assert (status, out["seats"]) == (200, ["A1"])
    final = await counts()
    assert (final["free"], final["blocked"]) == (23, 1)
    _, listing = await partner.call("GET", listing_url)
    sales = [s["sales"] for s in listing["shows"] if s["show"]["show_id"] == show_id][0]
    assert sales == {"seats_sold": 0, "gross": None}


async def test_sales_counts_follow_bookings(partner: Partner, server) -> None:
    """A booking made through the actor shows up as seats sold and gross revenue."""
    from actors import commands as c
    from server.appkeys import SERVICES

    show_id = uid("sh")
    _, show = await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30))
    shows = server.app[SERVICES].shows
    held = await shows.submit(show_id, c.Hold(uid("cmd"), f"{show_id}.h1", "tok", ["A1", "D1"]))
    assert isinstance(held, c.Held), held
    done = await shows.submit(show_id, c.Confirm(uid("cmd"), f"{show_id}.h1", "tok",
                                                 f"{show_id}.b1", "pay-1"))
    assert isinstance(done, c.Confirmed), done
    _, listing = await partner.call(
        "GET", f"/partner/v1/shows?date={local_date(show['starts_at'])}")
    (row,) = [s for s in listing["shows"] if s["show"]["show_id"] == show_id]
    assert row["availability"]["booked"] == 2
    # A1 is Silver (200.00), D1 is Gold (350.00)
    assert row["sales"] == {"seats_sold": 2, "gross": {"amount": 55000, "currency": "INR"}}


# --- lists, cursors, GET one, ETags, retire, changes (issue 16) -----------------------

async def _pages(partner: Partner, path: str, limit: int) -> list[list[dict]]:
    pages: list[list[dict]] = []
    cursor = None
    sep = "&" if "?" in path else "?"
    while True:
        url = f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        status, page = await partner.call("GET", url)
        assert status == 200, page
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 20


async def test_lists_page_by_id_with_cursors(api: aiohttp.ClientSession,
                                             partner: Partner) -> None:
    theatre = {"name": "T", "city": partner.city, "address": "a"}
    made = [partner.theatre]
    for _ in range(4):
        made.append(uid("th"))
        assert (await partner.call("PUT", f"/partner/v1/theatres/{made[-1]}", theatre))[0] == 201
    pages = await _pages(partner, "/partner/v1/theatres", 2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [t["theatre_id"] for p in pages for t in p] == sorted(made)
    assert all(t["partner_id"] == partner.partner_id for p in pages for t in p)
    # Another partner's list is theirs alone.
    other = await (await new_partner(api)).setup()
    _, theirs = await other.call("GET", "/partner/v1/theatres")
    assert [t["theatre_id"] for t in theirs["items"]] == [other.theatre]
    assert theirs["next_cursor"] is None
    # Screens and movies page the same way (default limit: all of these on one page).
    _, screens = await partner.call("GET", "/partner/v1/screens")
    assert [s["screen_id"] for s in screens["items"]] == [partner.screen]
    assert screens["items"][0]["layout"]["seats"]
    _, movies = await partner.call("GET", "/partner/v1/movies?limit=1")
    assert [m["movie_id"] for m in movies["items"]] == [partner.movie]
    assert movies["next_cursor"] is None


async def test_show_list_pages_by_start_then_id(partner: Partner) -> None:
    second = uid("sc")
    assert (await partner.call("PUT", f"/partner/v1/screens/{second}",
                               {"theatre_id": partner.theatre, "name": "2",
                                "layout": layout()}))[0] == 201
    hours = [(10, partner.screen), (14, partner.screen), (14, second), (18, partner.screen),
             (18, second)]
    base = partner.show(0)  # same start second for the pairs: ties across a page boundary
    made = []
    for h, screen in hours:
        show_id = uid("sh")
        body = partner.show(h, screen_id=screen)
        body["starts_at"] = (dt.datetime.fromisoformat(base["starts_at"]) +
                             dt.timedelta(hours=h)).isoformat()
        status, show = await partner.call("PUT", f"/partner/v1/shows/{show_id}", body)
        assert status == 201, show
        made.append((show["starts_at"], show_id))
    pages = await _pages(partner, "/partner/v1/shows", 2)
    assert [len(p) for p in pages] == [2, 2, 1]
    got = [(r["show"]["starts_at"], r["show"]["show_id"]) for p in pages for r in p]
    assert got == sorted(made)
    assert all(r["availability"]["free"] == 24 for p in pages for r in p)
    # With a date: that day's shows, also as `shows` (the shape before pages).
    day = local_date(made[0][0])
    status, listing = await partner.call("GET", f"/partner/v1/shows?date={day}")
    assert status == 200 and listing["date"] == day
    assert listing["shows"] == listing["items"]
    assert made[0][1] in [r["show"]["show_id"] for r in listing["items"]]
    # A cursor is only good for the listing it came from.
    _, first = await partner.call("GET", "/partner/v1/shows?limit=2")
    status, err = await partner.call(
        "GET", f"/partner/v1/shows?date={day}&cursor={first['next_cursor']}")
    assert (status, err["error"]["code"]) == (422, "invalid_cursor")


async def test_get_one_with_its_etag(api: aiohttp.ClientSession, partner: Partner) -> None:
    show_id = uid("sh")
    _, show = await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30))
    for path, field in [(f"/partner/v1/theatres/{partner.theatre}", "theatre_id"),
                        (f"/partner/v1/screens/{partner.screen}", "screen_id"),
                        (f"/partner/v1/movies/{partner.movie}", "movie_id"),
                        (f"/partner/v1/shows/{show_id}", "show_id")]:
        async with api.get(path, headers=partner.headers) as r:
            assert r.status == 200
            body = await r.json()
            etag = r.headers["ETag"]
        assert body[field] == path.rsplit("/", 1)[1] and body["partner_id"] == partner.partner_id
        assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10
        # The same record, the same tag.
        async with api.get(path, headers=partner.headers) as r:
            assert r.headers["ETag"] == etag
    _, theatre = await partner.call("GET", f"/partner/v1/theatres/{partner.theatre}")
    assert theatre["status"] == "active"
    for kind in ("theatres", "screens", "movies", "shows"):
        status, err = await partner.call("GET", f"/partner/v1/{kind}/{uid('x')}")
        assert (status, err["error"]["code"]) == (404, "not_found")
    other = await new_partner(api)
    assert (await other.call("GET", f"/partner/v1/movies/{partner.movie}"))[0] == 403
    assert (await other.call("DELETE", f"/partner/v1/movies/{partner.movie}"))[0] == 403


async def _put(api: aiohttp.ClientSession, partner: Partner, path: str, body: dict,
               **headers: str) -> tuple[int, dict, str | None]:
    async with api.put(path, json=body, headers={**partner.headers, **headers}) as r:
        return r.status, await r.json(), r.headers.get("ETag")


MOVIE = {"languages": ["Hindi", "English"], "genres": ["Drama"], "runtime_min": 120,
         "certificate": "UA"}


async def test_if_match_lets_exactly_one_of_two_writers_win(
        api: aiohttp.ClientSession, partner: Partner) -> None:
    path = f"/partner/v1/movies/{partner.movie}"
    async with api.get(path, headers=partner.headers) as r:
        etag = r.headers["ETag"]
    results = await asyncio.gather(*(
        _put(api, partner, path, {**MOVIE, "title": f"Writer {n}"}, **{"If-Match": etag})
        for n in range(2)))
    statuses = sorted(s for s, _, _ in results)
    assert statuses == [200, 412], results
    (won,) = [(out, tag) for s, out, tag in results if s == 200]
    (lost,) = [out for s, out, _ in results if s == 412]
    assert lost["error"]["code"] == "precondition_failed"
    assert lost["error"]["etag"] == won[1]  # the current tag, to re-read and retry with
    _, now = await partner.call("GET", path)
    assert now["title"] == won[0]["title"]
    # A stale tag changes nothing, on PUT or DELETE; the current one works; so does *.
    status, err, _ = await _put(api, partner, path, {**MOVIE, "title": "stale"},
                                **{"If-Match": etag})
    assert (status, err["error"]["code"]) == (412, "precondition_failed")
    async with api.delete(path, headers={**partner.headers, "If-Match": etag}) as r:
        assert r.status == 412
    assert (await partner.call("GET", path))[1]["title"] == won[0]["title"]
    status, out, tag = await _put(api, partner, path, {**MOVIE, "title": "third"},
                                  **{"If-Match": f'"nope", {won[1]}'})
    assert status == 200 and tag != won[1]
    status, _, _ = await _put(api, partner, path, {**MOVIE, "title": "fourth"},
                              **{"If-Match": "*"})
    assert status == 200
    # If-Match on something that does not exist: 412, nothing made.
    missing = f"/partner/v1/movies/{uid('mv')}"
    status, _, _ = await _put(api, partner, missing, {**MOVIE, "title": "x"},
                              **{"If-Match": "*"})
    assert status == 412
    assert (await partner.call("GET", missing))[0] == 404


async def test_if_none_match_star_creates_only(api: aiohttp.ClientSession,
                                               partner: Partner) -> None:
    path = f"/partner/v1/theatres/{uid('th')}"
    body = {"name": "New", "city": partner.city, "address": "a"}
    status, out, tag = await _put(api, partner, path, body, **{"If-None-Match": "*"})
    assert status == 201 and tag
    status, err, _ = await _put(api, partner, path, {**body, "name": "Again"},
                                **{"If-None-Match": "*"})
    assert (status, err["error"]["code"]) == (412, "precondition_failed")
    assert (await partner.call("GET", path))[1]["name"] == "New"
    show_path = f"/partner/v1/shows/{uid('sh')}"
    assert (await _put(api, partner, show_path, partner.show(30),
                       **{"If-None-Match": "*"}))[0] == 201
    assert (await _put(api, partner, show_path, partner.show(30),
                       **{"If-None-Match": "*"}))[0] == 412


async def test_retire_is_refused_while_a_future_show_uses_it(
        api: aiohttp.ClientSession, partner: Partner) -> None:
    show_id = uid("sh")
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30)))[0] == 201
    for kind, item in [("screens", partner.screen), ("theatres", partner.theatre),
                       ("movies", partner.movie)]:
        status, err = await partner.call("DELETE", f"/partner/v1/{kind}/{item}")
        assert (status, err["error"]["code"]) == (409, "in_use"), (kind, err)
        assert err["error"]["show_ids"] == [show_id]
        assert (await partner.call("GET", f"/partner/v1/{kind}/{item}"))[1]["status"] == "active"
    assert (await partner.call("DELETE", f"/partner/v1/shows/{show_id}"))[0] == 200
    async with api.get("/api/cities") as r:
        assert partner.city in [c["name"] for c in (await r.json())["cities"]]
    for kind, item in [("screens", partner.screen), ("theatres", partner.theatre),
                       ("movies", partner.movie)]:
        async with api.delete(f"/partner/v1/{kind}/{item}", headers=partner.headers) as r:
            out = await r.json()
            assert (r.status, out["status"]) == (200, "retired"), out
            assert r.headers["ETag"]
        assert (await partner.call("DELETE", f"/partner/v1/{kind}/{item}"))[0] == 200  # again
        _, listing = await partner.call("GET", f"/partner/v1/{kind}")
        assert [i["status"] for i in listing["items"]] == ["retired"]
    # Out of customer browse.
    async with api.get("/api/cities") as r:
        assert partner.city not in [c["name"] for c in (await r.json())["cities"]]
    async with api.get(f"/api/movies/{partner.movie}") as r:
        assert r.status == 404
    status, err = await partner.call("DELETE", f"/partner/v1/screens/{uid('sc')}")
    assert (status, err["error"]["code"]) == (404, "not_found")


async def test_a_retired_movie_gets_no_new_shows_until_put_again(partner: Partner) -> None:
    assert (await partner.call("DELETE", f"/partner/v1/movies/{partner.movie}"))[0] == 200
    status, err = await partner.call("PUT", f"/partner/v1/shows/{uid('sh')}", partner.show(30))
    assert (status, err["error"]["code"]) == (422, "movie_retired")
    # A retired screen (and a theatre) likewise.
    assert (await partner.call("PUT", f"/partner/v1/movies/{partner.movie}",
                               {**MOVIE, "title": "Back"}))[1]["status"] == "active"
    assert (await partner.call("DELETE", f"/partner/v1/theatres/{partner.theatre}"))[0] == 200
    status, err = await partner.call("PUT", f"/partner/v1/shows/{uid('sh')}", partner.show(30))
    assert (status, err["error"]["code"]) == (422, "theatre_retired")
    status, err = await partner.call("PUT", f"/partner/v1/screens/{uid('sc')}",
                                     {"theatre_id": partner.theatre, "name": "x",
                                      "layout": layout()})
    assert (status, err["error"]["code"]) == (422, "theatre_retired")
    assert (await partner.call("PUT", f"/partner/v1/theatres/{partner.theatre}",
                               {"name": "Regal", "city": partner.city, "address": "1 Main St",
                                "timezone": "Asia/Kolkata"}))[0] == 200
    assert (await partner.call("DELETE", f"/partner/v1/screens/{partner.screen}"))[0] == 200
    status, err = await partner.call("PUT", f"/partner/v1/shows/{uid('sh')}", partner.show(30))
    assert (status, err["error"]["code"]) == (422, "screen_retired")
    assert (await partner.call("PUT", f"/partner/v1/screens/{partner.screen}",
                               {"theatre_id": partner.theatre, "name": "1",
                                "layout": layout()}))[0] == 200
    assert (await partner.call("PUT", f"/partner/v1/shows/{uid('sh')}", partner.show(30)))[0] == 201


async def _changes(partner: Partner, since: str | None = None, limit: int = 200) -> dict:
    url = f"/partner/v1/changes?limit={limit}" + (f"&since={since}" if since else "")
    status, page = await partner.call("GET", url)
    assert status == 200, page
    return page


async def test_changes_feed_lists_catalog_writes_and_bookings_with_availability(
        api: aiohttp.ClientSession, partner: Partner) -> None:
    first = await _changes(partner)
    assert [(c["type"], c["data"].get(f"{c['type'].split('.')[0]}_id")) for c in first["items"]] \
        == [("theatre.upserted", partner.theatre), ("screen.upserted", partner.screen),
            ("movie.upserted", partner.movie)]
    assert "layout" not in first["items"][1]["data"]
    assert first["items"][1]["data"]["seat_count"] == 24
    cursor = first["next_cursor"]
    empty = await _changes(partner, cursor)
    assert empty["items"] == [] and empty["next_cursor"]  # always a cursor to poll from

    show_id = uid("sh")
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30)))[0] == 201
    # The same body again changes nothing: no entry.
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30)))[0] == 200
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}",
                               partner.show(30, format="3D")))[0] == 200
    # A customer books a seat (as tests/api/test_checkout.py does).
    async with api.post(f"/api/shows/{show_id}/holds", json={"seats": ["A1", "A2"]}) as r:
        assert r.status == 201, await r.text()
        hold = await r.json()
    async with api.post(f"/api/holds/{hold['hold_id']}/checkout",
                        headers={"X-Holder-Token": hold["holder_token"],
                                 "Idempotency-Key": uid("idem")},
                        json={"card": GOOD_CARD, "email": "asha@example.com",
                              "name": "Asha Rao"}) as r:
        assert r.status == 201, await r.text()
        booking = await r.json()
    got: list[dict] = []
    deadline = asyncio.get_running_loop().time() + 30
    while not any(c["type"] == "booking.confirmed" for c in got):
        assert asyncio.get_running_loop().time() < deadline, got
        page = await _changes(partner, cursor, limit=2)  # small pages: the cursor moves on
        got += page["items"]
        if not page["items"]:
            await asyncio.sleep(0.2)
        cursor = page["next_cursor"]
    assert [c["type"] for c in got] == ["show.created", "show.updated", "booking.confirmed"]
    assert got[1]["data"]["format"] == "3D" and got[1]["data"]["etag"]
    ids = [c["id"] for c in got]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    event = got[2]
    assert event["data"]["booking_id"] == booking["booking_id"]
    assert event["data"]["seats"] == ["A1", "A2"]
    assert "email" not in event["data"] and "name" not in event["data"]
    assert event["data"]["availability"] == {"free": 22, "held": 0, "booked": 2,
                                             "blocked": 0,
                                             "seq": event["data"]["availability"]["seq"]}
    dt.datetime.fromisoformat(event["at"].replace("Z", "+00:00"))
    # Cancelling the show: show.cancelled (then the booking's cancellation).
    assert (await partner.call("DELETE", f"/partner/v1/shows/{show_id}"))[0] == 200
    deadline = asyncio.get_running_loop().time() + 30
    later: list[dict] = []
    while not any(c["type"] == "booking.cancelled" for c in later):
        assert asyncio.get_running_loop().time() < deadline, later
        page = await _changes(partner, cursor)
        later += page["items"]
        cursor = page["next_cursor"]
        await asyncio.sleep(0.1)
    assert [c["type"] for c in later] == ["show.cancelled", "booking.cancelled"]
    assert later[1]["data"]["availability"]["booked"] == 0


async def test_bad_cursor_and_bad_limit_are_422(partner: Partner) -> None:
    assert (await partner.call("PUT", f"/partner/v1/theatres/{uid('th')}",
                               {"name": "T", "city": partner.city, "address": "a"}))[0] == 201
    _, page = await partner.call("GET", "/partner/v1/theatres?limit=1")
    tampered = page["next_cursor"][:-2] + ("AA" if page["next_cursor"][-2:] != "AA" else "BB")
    _, changes = await partner.call("GET", "/partner/v1/changes?limit=1")
    for url in ["/partner/v1/theatres?cursor=nope", f"/partner/v1/theatres?cursor={tampered}",
                # a cursor of another list
                f"/partner/v1/movies?cursor={page['next_cursor']}",
                f"/partner/v1/shows?cursor={page['next_cursor']}",
                f"/partner/v1/theatres?cursor={changes['next_cursor']}"]:
        status, err = await partner.call("GET", url)
        assert (status, err["error"]["code"]) == (422, "invalid_cursor"), url
    for since in ["nope", page["next_cursor"]]:
        status, err = await partner.call("GET", f"/partner/v1/changes?since={since}")
        assert (status, err["error"]["code"], err["error"]["field"]) == (
            422, "invalid_cursor", "since")
    for path in ("theatres", "screens", "movies", "shows", "changes"):
        for limit in ("0", "201", "x", "-1"):
            status, err = await partner.call("GET", f"/partner/v1/{path}?limit={limit}")
            assert (status, err["error"]["code"]) == (422, "invalid_limit"), (path, limit)


async def test_records_from_before_the_indexes_are_indexed_once(
        partner: Partner, redis: aioredis.Redis) -> None:
    show_id = uid("sh")
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30)))[0] == 201
    await redis.delete(*(catalog_service.partner_items_key(partner.partner_id, k)
                         for k in ("theatre", "screen", "movie")),
                       catalog_service.partner_all_shows_key(partner.partner_id))
    assert (await partner.call("GET", "/partner/v1/movies"))[1]["items"] == []
    assert await catalog_service.index_existing(redis) >= 4
    assert [m["movie_id"] for m in (await partner.call("GET", "/partner/v1/movies"))[1]["items"]] \
        == [partner.movie]
    assert [r["show"]["show_id"] for r in (await partner.call("GET", "/partner/v1/shows"))[1]
            ["items"]] == [show_id]


async def test_a_show_with_bookings_cannot_be_moved_to_another_time(api, redis):
    # The portal lets a partner drag a show; the server is what refuses it once sold.
    from .catalog_helpers import new_partner
    from .test_checkout import checkout, hold

    partner = await (await new_partner(api)).setup()
    show_id = f"sh-{uuid.uuid4().hex[:10]}"
    body = partner.show(48)
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", body))[0] == 201
    moved = partner.show(50)
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", moved))[0] == 200
    status, b = await checkout(api, await hold(api, show_id, ["A1"]))
    assert status == 201, b
    status, out = await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(52))
    assert (status, out["error"]["code"]) == (409, "show_has_bookings"), out
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", moved))[0] == 200


# --- the steps after a catalog MULTI (Redis Cluster: other slots) ---------------------

async def test_a_change_left_in_the_outbox_goes_out_with_the_next_write_in_order(
        partner: Partner, redis: aioredis.Redis) -> None:
    # The change entry commits with the record (the catalog's outbox, one MULTI); the
    # partner's stream is in another slot and gets it afterwards. A writer that dies before
    # forwarding (here: cancelled while another process holds the forwarding lease) leaves
    # it in the outbox; the next write forwards it, before its own.
    cursor = (await _changes(partner))["next_cursor"]
    first, second = uid("mv"), uid("mv")
    body = MovieIn("Held Back", ["Hindi"], ["Drama"], 100, "U")
    await redis.set(catalog_service.OUTBOX_LEASE, "another-process", px=60_000)
    try:
        writer = asyncio.create_task(catalog_service.put_movie(
            redis, partner.partner_id, first, body))
        while not await redis.exists(catalog_key("movie", first)):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert (await _changes(partner, cursor))["items"] == []  # committed, not forwarded
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    finally:
        await redis.delete(catalog_service.OUTBOX_LEASE)
    status, _ = await partner.call("PUT", f"/partner/v1/movies/{second}",
                                   {"title": "Next", "languages": ["Hindi"], "genres": [],
                                    "runtime_min": 90, "certificate": "U"})
    assert status == 201
    got = (await _changes(partner, cursor))["items"]
    assert [(c["type"], c["data"]["movie_id"]) for c in got] \
        == [("movie.upserted", first), ("movie.upserted", second)]


async def test_a_shows_layout_goes_with_its_latest_write(
        partner: Partner, redis: aioredis.Redis) -> None:
    show_id = uid("sh")
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(30)))[0] == 201
    small = msgspec.json.decode(await redis.get(config_key(show_id)), type=ShowConfig)
    wide = uid("sc")
    assert (await partner.call("PUT", f"/partner/v1/screens/{wide}",
                               {"theatre_id": partner.theatre, "name": "Screen 2",
                                "layout": layout(rows=5)}))[0] == 201
    assert (await partner.call("PUT", f"/partner/v1/shows/{show_id}",
                               partner.show(30, screen_id=wide)))[0] == 200
    config = msgspec.json.decode(await redis.get(config_key(show_id)), type=ShowConfig)
    assert len(config.layout.seats) == 30
    # An earlier write's layout step arriving after this one's changes nothing.
    assert await catalog_service._put_config(redis, small, generation=1)
    assert await redis.get(config_key(show_id)) == msgspec.json.encode(config)
    # Once the show's log has started, only the layout it started with is accepted: the
    # write whose MULTI raced with the first hold is refused (and its record undone).
    later = int(await redis.get(catalog_service.GENERATION)) + 1
    await redis.set(seq_key(show_id), 1)
    assert not await catalog_service._put_config(redis, small, later)
    assert await catalog_service._put_config(redis, config, later)
    assert await redis.get(config_key(show_id)) == msgspec.json.encode(config)
