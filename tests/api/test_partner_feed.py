"""Partner show feed against a real server, Redis and Ray: auth, idempotent upserts,
every validation error (and that nothing was written), bulk, cancel, house seats."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from actors.layout import ShowConfig
from actors.store import config_key
from server.accounts.api_keys import hash_key
from server.catalog.service import screen_shows_key

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
    assert not await redis.exists(f"catalog:show:{show_id}", config_key(show_id))


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
    assert not await redis.exists(f"catalog:screen:{screen_id}")
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
    assert not await redis.exists(f"catalog:show:{past}", f"catalog:show:{clash}")


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
    await redis.set(f"catalog:show:{show_id}", msgspec.json.encode(show))
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
