"""Customer REST against the real server, Redis and Ray: seat map, holds, extend, release."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import redis.asyncio as aioredis

from actors import commands as c
from actors.client import ShowDirectory
from actors.layout import Rules
from server.appkeys import SERVICES
from server.catalog.seat_status import read_seat_statuses

from .builders import publish_show, publish_show_via_feed, wait_for_status


def auth(token: str) -> dict[str, str]:
    return {"X-Holder-Token": token}


async def hold(api: aiohttp.ClientSession, show_id: str, body: dict) -> tuple[int, dict]:
    async with api.post(f"/api/shows/{show_id}/holds", json=body) as resp:
        return resp.status, await resp.json()


async def seatmap(api: aiohttp.ClientSession, show_id: str) -> dict:
    async with api.get(f"/api/shows/{show_id}/seatmap") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def statuses(view: dict) -> dict[str, str]:
    return {s["id"]: s["status"] for s in view["seats"]}


# --- seat map --------------------------------------------------------------------------

async def test_seatmap_layout_prices_show_and_statuses(api, redis):
    pub = await publish_show(redis)
    view = await seatmap(api, pub.show_id)
    assert view["seq"] == 0
    assert len(view["seats"]) == 50
    a1 = next(s for s in view["seats"] if s["id"] == "A1")
    assert a1 == {"id": "A1", "row": "A", "number": 1, "category": "gold", "x": 0, "y": 0,
                  "flags": [], "status": "free"}
    a6 = next(s for s in view["seats"] if s["id"] == "A6")
    assert a6["x"] == 6  # the aisle after seat 5 is a gap in x
    cats = {cat["name"]: cat for cat in view["categories"]}
    assert cats["gold"]["price"] == {"amount": 45000, "currency": "INR"}
    assert cats["gold"]["seats"] == 20 and cats["silver"]["seats"] == 30
    assert view["show"]["movie_title"] == "The Test Movie"
    assert view["show"]["theatre_name"] == "Test Cinema"
    assert view["show"]["starts_at"] == pub.show.starts_at.isoformat().replace("+00:00", "Z")
    assert view["counts"] == {"free": 50, "held": 0, "booked": 0, "blocked": 0}


async def test_seatmap_reads_do_not_activate_the_show(api, server, redis):
    pub = await publish_show(redis)
    await seatmap(api, pub.show_id)
    shows = server.app[SERVICES].shows
    assert not await shows.is_loaded(pub.show_id)
    # Nor does a write the web tier turns down before it reaches the show.
    status, body = await hold(api, pub.show_id, {"seats": ["C3", "Z99"]})
    assert status == 422 and body["error"]["code"] == "unknown_seats", body
    status, body = await hold(api, pub.show_id, {"best": {"count": 1, "category": "nope"}})
    assert status == 422, body
    assert not await shows.is_loaded(pub.show_id)
    status, body = await hold(api, pub.show_id, {"seats": ["C3"]})  # a valid write does
    assert status == 201, body
    assert await shows.is_loaded(pub.show_id)


async def test_seatmap_follows_holds_with_seq(api, redis):
    pub = await publish_show(redis)
    status, body = await hold(api, pub.show_id, {"seats": ["C3", "C4"]})
    assert status == 201, body
    view = await seatmap(api, pub.show_id)
    assert view["seq"] == 1
    st = statuses(view)
    assert st["C3"] == st["C4"] == "held" and st["C5"] == "free"
    assert next(cat for cat in view["categories"] if cat["name"] == "silver")["free"] == 28


async def test_seatmap_unknown_show_is_404(api):
    async with api.get("/api/shows/no-such-show/seatmap") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_seat_status_from_snapshot_plus_log_matches_the_actor(redis, directory: ShowDirectory):
    """Past a snapshot (every 50 entries with these settings) and the log after it."""
    pub = await publish_show(redis, layout=None)
    sid = pub.show_id
    seats = [s.id for s in pub.config.layout.seats]
    for i in range(0, 46, 2):  # 23 holds, each released: 46 entries, then 10 more holds
        res = await directory.submit(sid, c.Hold(f"h{i}", f"h{i}", "t", seats[i:i + 2]))
        assert isinstance(res, c.Held)
        await directory.submit(sid, c.Release(f"r{i}", f"h{i}", "t"))
    for i in range(10):
        await directory.submit(sid, c.Hold(f"x{i}", f"x{i}", "t", [seats[i]]))
    await directory.submit(sid, c.Block("b", [seats[20]]))
    await directory.submit(sid, c.Confirm("cf", "x0", "t", "bk0", "pay"))
    snap = await redis.get(f"show:{{{sid}}}:snap")
    assert snap, "expected the actor to have written a snapshot"
    view = await read_seat_statuses(redis, sid)
    inside = await directory.inspect(sid)
    assert view.seq == inside["version"] == 58
    assert view.status == inside["status"]
    assert view.status[seats[0]] == "booked" and view.status[seats[20]] == "blocked"


# --- holds -----------------------------------------------------------------------------

async def test_hold_explicit_seats(api, redis):
    pub = await publish_show(redis)
    before = datetime.now(UTC)
    status, body = await hold(api, pub.show_id, {"seats": ["A1", "A2", "C1"]})
    assert status == 201, body
    assert body["hold_id"].startswith(pub.show_id + ".")
    assert len(body["holder_token"]) >= 32
    assert body["seats"] == ["A1", "A2", "C1"]
    expires = datetime.fromisoformat(body["expires_at"])
    assert expires.utcoffset() == timedelta(0)
    assert before + timedelta(minutes=9) < expires < before + timedelta(minutes=11)
    quote = body["quote"]
    assert quote["currency"] == "INR"
    assert [(x["seat"], x["category"], x["base"], x["total"]) for x in quote["lines"]] == [
        ("A1", "gold", 45000, 45000), ("A2", "gold", 45000, 45000),
        ("C1", "silver", 25000, 25000)]  # no offers, fee or tax configured here
    assert quote["total"] == 115000


async def test_hold_best_available_in_category(api, redis):
    pub = await publish_show(redis)
    status, body = await hold(api, pub.show_id, {"best": {"count": 3, "category": "gold"}})
    assert status == 201, body
    seats = body["seats"]
    assert len(seats) == 3 and all(s[0] in "AB" for s in seats)
    assert len({s[0] for s in seats}) == 1  # side by side in one row
    assert body["quote"]["total"] == 3 * 45000


async def test_hold_taken_seats_is_409_naming_them(api, redis):
    pub = await publish_show(redis)
    assert (await hold(api, pub.show_id, {"seats": ["B2", "B3"]}))[0] == 201
    status, body = await hold(api, pub.show_id, {"seats": ["B1", "B2", "B3", "B4"]})
    assert status == 409
    assert body["error"]["code"] == "seats_unavailable"
    assert sorted(body["error"]["seats"]) == ["B2", "B3"]
    assert statuses(await seatmap(api, pub.show_id))["B1"] == "free"  # nothing half-held


async def test_two_concurrent_holds_on_the_same_seats(api, redis):
    pub = await publish_show(redis)
    results = await asyncio.gather(
        hold(api, pub.show_id, {"seats": ["D4", "D5"]}),
        hold(api, pub.show_id, {"seats": ["D5", "D6"]}),
    )
    assert sorted(s for s, _ in results) == [201, 409]
    loser = next(b for s, b in results if s == 409)
    assert loser["error"]["seats"] == ["D5"]


@pytest.mark.parametrize("body, status, code", [
    ({"seats": ["Z99"]}, 422, "unknown_seats"),
    ({"seats": [f"C{n}" for n in range(1, 11)] + ["D1"]}, 422, "too_many_seats"),
    ({"best": {"count": 11}}, 422, "too_many_seats"),
    ({"best": {"count": 0}}, 422, "invalid"),
    ({"best": {"count": 2, "category": "platinum"}}, 422, "invalid"),
    ({}, 422, "invalid"),
    ({"seats": ["A1"], "best": {"count": 1}}, 422, "invalid"),
    ({"seats": []}, 422, "invalid"),
    ({"seats": "A1"}, 422, "invalid"),
    ({"seats": ["A1"], "extra": 1}, 422, "invalid"),
])
async def test_hold_validation(api, redis, body, status, code):
    pub = await publish_show(redis)
    got_status, got = await hold(api, pub.show_id, body)
    assert (got_status, got["error"]["code"]) == (status, code), got
    assert (await seatmap(api, pub.show_id))["seq"] == 0  # nothing written


async def test_hold_unknown_seats_are_named(api, redis):
    pub = await publish_show(redis)
    status, body = await hold(api, pub.show_id, {"seats": ["A1", "Q7", "Q8"]})
    assert status == 422 and body["error"]["seats"] == ["Q7", "Q8"]


async def test_hold_bad_json_is_400(api, redis):
    pub = await publish_show(redis)
    async with api.post(f"/api/shows/{pub.show_id}/holds", data=b"{nope",
                        headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_json"
    async with api.post(f"/api/shows/{pub.show_id}/holds", data=b'{"seats": ["A1"]}') as resp:
        assert resp.status == 415  # not declared JSON (L8): a cross-site form could send it
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"


async def test_hold_not_enough_seats_is_409(api, redis):
    pub = await publish_show(redis)
    for row in "AB":
        assert (await hold(api, pub.show_id, {"seats": [f"{row}{n}" for n in range(1, 10)]}))[0] == 201
    status, body = await hold(api, pub.show_id, {"best": {"count": 3, "category": "gold"}})
    assert (status, body["error"]["code"]) == (409, "not_enough_seats")


async def test_hold_unknown_cancelled_or_started_show(api, redis):
    assert (await hold(api, "no-such-show", {"seats": ["A1"]}))[0] == 404
    cancelled = await publish_show(redis, status="cancelled")
    assert (await hold(api, cancelled.show_id, {"seats": ["A1"]}))[0] == 404
    started = await publish_show(redis, starts_in=timedelta(minutes=-5))
    status, body = await hold(api, started.show_id, {"seats": ["A1"]})
    assert (status, body["error"]["code"]) == (410, "show_started")


# --- extend and release ----------------------------------------------------------------

async def test_extend_hold(api, redis):
    pub = await publish_show(redis)
    _, h = await hold(api, pub.show_id, {"seats": ["E1"]})
    first = datetime.fromisoformat(h["expires_at"])
    async with api.patch(f"/api/holds/{h['hold_id']}", json={"extra_seconds": 60},
                         headers=auth(h["holder_token"])) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert datetime.fromisoformat(body["expires_at"]) - first == timedelta(seconds=60)
    # No body: five more minutes; the bearer form of the token works too.
    async with api.patch(f"/api/holds/{h['hold_id']}",
                         headers={"Authorization": f"Bearer {h['holder_token']}"}) as resp:
        assert resp.status == 200
        later = datetime.fromisoformat((await resp.json())["expires_at"])
    assert later - first == timedelta(seconds=360)


async def test_extend_past_lifetime_is_409(api, redis):
    pub = await publish_show(redis, rules=Rules(hold_ttl_ms=60_000, hold_max_lifetime_ms=60_000))
    _, h = await hold(api, pub.show_id, {"seats": ["E2"]})
    async with api.patch(f"/api/holds/{h['hold_id']}", headers=auth(h["holder_token"])) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "lifetime_exceeded"


@pytest.mark.parametrize("method", ["patch", "delete"])
async def test_hold_token_errors(api, redis, method):
    pub = await publish_show(redis)
    _, h = await hold(api, pub.show_id, {"seats": ["E3"]})
    url = f"/api/holds/{h['hold_id']}"
    async with api.request(method, url) as resp:
        assert resp.status == 401
    async with api.request(method, url, headers=auth("not-the-token")) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "not_owner"
    async with api.request(method, f"/api/holds/{pub.show_id}.nope",
                           headers=auth(h["holder_token"])) as resp:
        assert resp.status == 404
    async with api.request(method, "/api/holds/garbage", headers=auth("x")) as resp:
        assert resp.status == 404
    assert statuses(await seatmap(api, pub.show_id))["E3"] == "held"  # untouched


async def test_extend_bad_body_is_422(api, redis):
    pub = await publish_show(redis)
    _, h = await hold(api, pub.show_id, {"seats": ["E4"]})
    async with api.patch(f"/api/holds/{h['hold_id']}", json={"extra_seconds": -5},
                         headers=auth(h["holder_token"])) as resp:
        assert resp.status == 422


async def test_release_frees_the_seats(api, redis):
    pub = await publish_show(redis)
    _, h = await hold(api, pub.show_id, {"seats": ["E5", "E6"]})
    async with api.delete(f"/api/holds/{h['hold_id']}", headers=auth(h["holder_token"])) as resp:
        assert resp.status == 200
        assert await resp.json() == {"hold_id": h["hold_id"], "seats": ["E5", "E6"],
                                     "released": True}
    st = statuses(await seatmap(api, pub.show_id))
    assert st["E5"] == st["E6"] == "free"
    async with api.delete(f"/api/holds/{h['hold_id']}", headers=auth(h["holder_token"])) as resp:
        assert resp.status == 404
    async with api.patch(f"/api/holds/{h['hold_id']}", headers=auth(h["holder_token"])) as resp:
        assert resp.status == 404
    # Someone else can hold them now.
    assert (await hold(api, pub.show_id, {"seats": ["E5"]}))[0] == 201


async def test_expired_hold_is_410(api, redis: aioredis.Redis):
    pub = await publish_show(redis, rules=Rules(hold_ttl_ms=1000))
    _, h = await hold(api, pub.show_id, {"seats": ["A9"]})
    await wait_for_status(redis, pub.show_id, ["A9"], "free")  # the actor expired it
    for method in ("patch", "delete"):
        async with api.request(method, f"/api/holds/{h['hold_id']}",
                               headers=auth(h["holder_token"])) as resp:
            assert resp.status == 410
            assert (await resp.json())["error"]["code"] == "hold_expired"


async def test_openapi_documents_the_customer_operations(api):
    async with api.get("/api/openapi.json") as resp:
        doc = await resp.json()
    paths = doc["paths"]
    assert "get" in paths["/api/shows/{show_id}/seatmap"]
    assert set(paths["/api/holds/{hold_id}"]) == {"patch", "delete"}
    checkout = paths["/api/holds/{hold_id}/checkout"]["post"]
    assert {"201", "402", "410"} <= set(checkout["responses"])
    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in checkout["parameters"])


async def test_show_published_through_the_partner_feed(api, redis):
    """End to end with the partner feed: seat map, house seats, hold, cancel."""
    show_id, partner = await publish_show_via_feed(api)
    view = await seatmap(api, show_id)
    assert view["show"]["theatre_name"] == "Regal" and view["show"]["city"] == partner.city
    assert {cat["name"]: cat["price"]["amount"] for cat in view["categories"]} == {
        "Silver": 20000, "Gold": 35000}
    status, _ = await partner.call("POST", f"/partner/v1/shows/{show_id}/blocks",
                                   {"seats": ["A1"]})
    assert status == 200
    assert statuses(await seatmap(api, show_id))["A1"] == "blocked"
    status, body = await hold(api, show_id, {"seats": ["A1", "A2"]})
    assert (status, body["error"]["seats"]) == (409, ["A1"])
    status, body = await hold(api, show_id, {"seats": ["D1"]})
    assert status == 201 and body["quote"]["total"] == 35000
    status, _ = await partner.call("DELETE", f"/partner/v1/shows/{show_id}")
    assert status in (200, 204)
    assert (await hold(api, show_id, {"seats": ["D2"]}))[0] == 404
