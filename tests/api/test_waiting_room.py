"""The waiting room and the per-customer hold cap through the real server: the partner
switch, the proof-of-work join, the pre-queue and its random draw, queue positions (live
over a real `websockets` client), admission at the configured rate, admissions recorded in
Redis (a replayed cookie or token cannot renew one), tokens bound to the visitor, and the
cap under concurrent requests."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from websockets.asyncio.client import ClientConnection, connect

from server.core.settings import Settings
from server.onsale import admission, pow
from server.onsale.keys import room_visitors_key

from .account_helpers import Client
from .builders import PublishedShow, publish_show_via_feed

ADMIN = {"Authorization": "Bearer test-admin-key"}
TIMEOUT = 15.0
LOW_COST = 1_000  # challenge max number for the tests: ~500 hashes a join


@pytest.fixture
def app_settings(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
                 ) -> Settings:
    """The module's settings; a test changes some with
    `@pytest.mark.parametrize("app_settings", [{...}], indirect=True)`."""
    return Settings(**{"seed_demo": False, "secret": "test-secret",
                       "admin_key": "test-admin-key", "passivate_after_s": 30,
                       "data_dir": str(tmp_path_factory.mktemp("data")),
                       "hold_cap_seats": 4, "rl_customer_write_burst": 100,
                       **getattr(request, "param", {})})


async def set_room(api: aiohttp.ClientSession, show_id: str, headers: dict[str, str],
                   **body: Any) -> tuple[int, Any]:
    body.setdefault("challenge_max_number", LOW_COST)
    async with api.put(f"/partner/v1/shows/{show_id}/waiting-room", json=body,
                       headers=headers) as resp:
        return resp.status, await resp.json()


async def solved(client: Client | aiohttp.ClientSession, show_id: str) -> str:
    """A solved challenge for `show_id`: the `altcha` payload of a join."""
    http = client.http if isinstance(client, Client) else client
    async with http.get(f"/api/shows/{show_id}/queue/challenge") as resp:
        assert resp.status == 200, await resp.text()
        return pow.solve(await resp.json())


async def join(client: Client, show_id: str) -> tuple[int, Any]:
    """Join as a browser does: fetch a challenge, solve it, send it."""
    return await client.call("POST", f"/api/shows/{show_id}/queue",
                             {"altcha": await solved(client, show_id)})


def ws_url(server: TestServer, show_id: str) -> str:
    return str(server.make_url(f"/api/shows/{show_id}/queue/live")).replace("http", "ws", 1)


def cookie_header(client: Client) -> dict[str, str]:
    return {"Cookie": f"bmm_session={client.session_cookie()}"}


async def next_msg(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def hold(client: Client, show_id: str, seats: list[str],
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return await client.call("POST", f"/api/shows/{show_id}/holds", {"seats": seats},
                             headers=headers)


def iso(at: datetime) -> str:
    return at.isoformat()


async def test_partner_switch_is_owner_or_admin_only_and_validated(
        api: aiohttp.ClientSession) -> None:
    show_id, partner = await publish_show_via_feed(api)
    status, body = await set_room(api, show_id, partner.headers, enabled=True,
                                  admit_per_minute=120)
    assert status == 200, body
    assert body == {"show_id": show_id, "enabled": True, "admit_per_minute": 120, "burst": 2,
                    "joined": 0, "admitted": 0, "waiting": 0, "opens_at": None,
                    "pre_queue": 0, "challenge_max_number": LOW_COST}
    from .catalog_helpers import new_partner

    stranger = await new_partner(api)
    assert (await set_room(api, show_id, stranger.headers, enabled=False))[0] == 403
    assert (await set_room(api, show_id, {}, enabled=False))[0] == 401
    status, body = await set_room(api, show_id, partner.headers, enabled=True,
                                  admit_per_minute=0)
    assert status == 422 and body["error"]["field"] == "admit_per_minute"
    status, body = await set_room(api, show_id, partner.headers, enabled="yes")
    assert status == 422
    # the proof of work's cost: bounded both ways, the default when left out
    for cost in (pow.MIN_MAX_NUMBER - 1, pow.MAX_MAX_NUMBER + 1):
        status, body = await set_room(api, show_id, partner.headers, enabled=True,
                                      challenge_max_number=cost)
        assert status == 422 and body["error"]["field"] == "challenge_max_number"
    async with api.put(f"/partner/v1/shows/{show_id}/waiting-room", headers=partner.headers,
                       json={"enabled": True}) as resp:
        assert (await resp.json())["challenge_max_number"] == pow.DEFAULT_MAX_NUMBER
    async with api.get(f"/api/shows/{show_id}/queue/challenge") as resp:
        assert (await resp.json())["maxNumber"] == pow.DEFAULT_MAX_NUMBER
    status, body = await set_room(api, show_id, partner.headers, enabled=True,
                                  opens_at="2030-01-01T10:00:00")  # no time zone
    assert status == 422 and body["error"]["field"] == "opens_at"
    assert (await set_room(api, "no-such-show", ADMIN, enabled=True))[0] == 404
    status, body = await set_room(api, show_id, ADMIN, enabled=False)
    assert status == 200 and body["enabled"] is False


async def test_queue_positions_move_live_and_admission_follows_the_rate(
        api: aiohttp.ClientSession, server: TestServer, clients: Any) -> None:
    """60 per minute, burst 1: the first visitor is in at once, the second and third wait
    one and two places, see their places change over the socket, and are let in."""
    show_id, partner = await publish_show_via_feed(api)
    assert (await set_room(api, show_id, partner.headers, enabled=True, admit_per_minute=60,
                           burst=1))[0] == 200
    first, second, third = clients(), clients(), clients()
    status, body = await join(first, show_id)
    assert status == 201 and body["admitted"] is True and body["position"] == 0
    status, body = await join(second, show_id)
    assert status == 201 and body["position"] == 1 and not body["admitted"]
    assert body["admission_token"] is None
    status, body = await join(third, show_id)
    assert status == 201 and body["position"] == 2 and body["eta_seconds"] == 2
    # joining again keeps the place (and never moves anyone forward)
    status, again = await join(third, show_id)
    assert status == 200 and again["position"] in (1, 2)

    async with connect(ws_url(server, show_id), additional_headers=cookie_header(second)) as w2, \
            connect(ws_url(server, show_id), additional_headers=cookie_header(third)) as w3:
        seen3 = []
        while True:
            msg = await next_msg(w3)
            if msg["type"] == "admitted":
                break
            assert msg["type"] == "position"
            seen3.append(msg["position"])
        assert (await next_msg(w2)) in ({"type": "admitted"},
                                        {"type": "position", "position": 1, "eta_seconds": 1})
    assert seen3 and seen3[-1] == 1 and seen3 == sorted(seen3, reverse=True)
    status, body = await third.call("GET", f"/api/shows/{show_id}/queue")
    assert status == 200 and body["admitted"] and body["admission_token"]
    status, room = await partner.call("GET", f"/partner/v1/shows/{show_id}/waiting-room")
    assert status == 200 and room["joined"] == 3 and room["waiting"] == 0
    async with api.get("/metrics") as resp:  # the gauge follows the counters it read
        assert f'bmm_waiting_room_waiting{{show_id="{show_id}"}} 0.0' in await resp.text()


async def test_the_hold_api_needs_this_visitors_admission(
        api: aiohttp.ClientSession, clients: Any) -> None:
    show_id, partner = await publish_show_via_feed(api)
    assert (await set_room(api, show_id, partner.headers, enabled=True,
                           admit_per_minute=600, burst=5))[0] == 200
    walk_in, visitor, other = clients(), clients(), clients()
    status, body = await hold(walk_in, show_id, ["A1"])
    assert status == 403 and body["error"]["code"] == "admission_required"
    assert body["error"]["queue"] == f"/api/shows/{show_id}/queue"

    status, body = await join(visitor, show_id)
    assert status == 201 and body["admitted"], body
    token = body["admission_token"]
    # the queue set the token as a cookie for this show's API paths: holds just work
    status, body = await hold(visitor, show_id, ["A1"])
    assert status == 201, body
    status, body = await hold(visitor, show_id, ["A2"], {"X-Admission-Token": token})
    assert status == 201, body

    # someone else's token, in a session of their own (or none): refused
    assert (await join(other, show_id))[0] == 201
    status, body = await hold(other, show_id, ["A3"], {"X-Admission-Token": token})
    assert status == 403 and body["error"]["reason"] == "other_visitor"
    status, body = await hold(walk_in, show_id, ["A3"], {"X-Admission-Token": token})
    assert status == 403 and body["error"]["reason"] == "other_visitor"
    # altered or made up: refused
    payload, mac = token.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
    status, body = await hold(visitor, show_id, ["A3"], {"X-Admission-Token": forged})
    assert status == 403 and body["error"]["code"] == "admission_invalid"
    status, body = await hold(visitor, show_id, ["A3"], {"X-Admission-Token": "nonsense"})
    assert status == 403 and body["error"]["reason"] == "malformed"
    # a token for another show does not open this one
    other_show, other_partner = await publish_show_via_feed(api)
    await set_room(api, other_show, other_partner.headers, enabled=True, admit_per_minute=600)
    status, body = await hold(visitor, other_show, ["A1"], {"X-Admission-Token": token})
    assert status == 403

    # waiting room off: everyone holds directly again
    assert (await set_room(api, show_id, partner.headers, enabled=False))[0] == 200
    status, body = await hold(walk_in, show_id, ["B1"])
    assert status == 201, body
    status, body = await walk_in.call("GET", f"/api/shows/{show_id}/queue")
    assert status == 200 and body["on_sale"] is False


async def test_queue_bad_requests_are_clear_4xx(api: aiohttp.ClientSession,
                                                server: TestServer,
                                                show: PublishedShow) -> None:
    async with api.post("/api/shows/no-such-show/queue") as resp:
        assert resp.status == 404
    async with api.get(f"/api/shows/{show.show_id}/queue") as resp:
        assert resp.status == 200 and (await resp.json())["on_sale"] is False
    async with api.get(f"/api/shows/{show.show_id}/queue/live") as resp:  # not joined
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "not_in_queue"


async def test_cap_per_customer_holds_under_concurrency(
        api: aiohttp.ClientSession, clients: Any, show: PublishedShow) -> None:
    """A signed-in customer fires 12 one-seat holds at once on one show: the actor takes
    them in turn and lets exactly 4 (the cap) through. Releasing one frees one place."""
    user: Client = clients()
    await user.sign_up()
    seats = [f"{row}{n}" for row in "AB" for n in range(1, 7)]
    results = await asyncio.gather(*(hold(user, show.show_id, [s]) for s in seats))
    codes = [status for status, _ in results]
    assert codes.count(201) == 4, codes
    assert codes.count(409) == 8
    assert {b["error"]["code"] for s, b in results if s == 409} == {"customer_limit"}
    # someone else is not affected by this customer's cap
    assert (await hold(clients(), show.show_id, ["C1", "C2", "C3", "C4", "C5"]))[0] == 201
    held = next(b for s, b in results if s == 201)
    status, _ = await user.call("DELETE", f"/api/holds/{held['hold_id']}",
                                headers={"X-Holder-Token": held["holder_token"]})
    assert status == 200
    assert (await hold(user, show.show_id, ["D1", "D2"]))[1]["error"]["code"] == \
        "customer_limit"
    assert (await hold(user, show.show_id, ["D1"]))[0] == 201


async def test_cap_binds_queued_guests_by_their_visitor_id(
        api: aiohttp.ClientSession, clients: Any) -> None:
    show_id, partner = await publish_show_via_feed(api)
    await set_room(api, show_id, partner.headers, enabled=True, admit_per_minute=600,
                   burst=10)
    guest = clients()
    assert (await join(guest, show_id))[1]["admitted"]
    results = await asyncio.gather(*(hold(guest, show_id, [f"C{n}"]) for n in range(1, 7)))
    codes = sorted(status for status, _ in results)
    assert codes == [201] * 4 + [409] * 2, results


async def test_openapi_documents_the_waiting_room(api: aiohttp.ClientSession) -> None:
    async with api.get("/api/openapi.json") as resp:
        doc = await resp.json()
    paths = doc["paths"]
    assert {"get", "post"} <= set(paths["/api/shows/{show_id}/queue"])
    assert paths["/api/shows/{show_id}/queue"]["post"]["requestBody"]
    assert "get" in paths["/api/shows/{show_id}/queue/challenge"]
    assert "get" in paths["/api/shows/{show_id}/queue/live"]
    room = paths["/partner/v1/shows/{show_id}/waiting-room"]
    assert room["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert "429" in paths["/api/shows/{show_id}/holds"]["post"]["responses"]


# --- issue 15: proof of work, one place per visitor, the pre-queue, admissions in Redis ---

def forged_payload(made: dict[str, Any], number: int) -> str:
    return base64.b64encode(json.dumps({
        "algorithm": made["algorithm"], "challenge": made["challenge"], "number": number,
        "salt": made["salt"], "signature": made["signature"]}).encode()).decode()


async def test_joining_needs_a_solved_challenge_and_a_solution_works_once(
        api: aiohttp.ClientSession, clients: Any) -> None:
    show_id, partner = await publish_show_via_feed(api)
    other_show, _ = await publish_show_via_feed(api)
    assert (await set_room(api, show_id, partner.headers, enabled=True,
                           admit_per_minute=60, burst=1))[0] == 200
    bot = clients()
    url = f"/api/shows/{show_id}/queue"
    async with bot.http.post(url) as resp:  # no body (the old way of joining)
        body = await resp.json()
        assert resp.status == 400 and body["error"]["code"] == "challenge_required"
        assert body["error"]["challenge"] == f"{url}/challenge"
    async with bot.http.get(f"{url}/challenge") as resp:
        made = await resp.json()
        assert resp.headers["Cache-Control"] == "no-store"
    assert set(made) == {"algorithm", "challenge", "maxNumber", "salt", "signature"}
    assert made["algorithm"] == "SHA-256" and made["maxNumber"] == LOW_COST
    good = pow.solve(made)
    number = json.loads(base64.b64decode(good))["number"]
    expired = pow.challenge("test-secret", show_id, LOW_COST, now=time.time() - 600)
    foreign = await solved(bot, other_show)
    cases = {
        "malformed": "not base64 !",
        "wrong_solution": forged_payload(made, (number + 1) % (LOW_COST + 1)),
        "expired": pow.solve(expired),
        "other_show": foreign,
    }
    # the same number under a made-up signature, and a challenge signed with another key
    cases_bad_sig = [forged_payload({**made, "signature": "00" * 32}, number),
                     pow.solve(pow.challenge("another-secret", show_id, LOW_COST))]
    for reason, payload in cases.items():
        status, body = await bot.call("POST", url, {"altcha": payload})
        assert status == 403 and body["error"]["code"] == "challenge_invalid", (reason, body)
        assert body["error"]["reason"] == reason
    for payload in cases_bad_sig:
        status, body = await bot.call("POST", url, {"altcha": payload})
        assert status == 403 and body["error"]["reason"] == "wrong_solution"
    status, body = await bot.call("POST", url, {"nope": 1})
    assert status == 422
    assert bot.session_cookie() is None  # nothing given to a refused client
    status, body = await bot.call("POST", url, {"altcha": good})
    assert status == 201 and body["admitted"], body
    # the same solution again, from this client or any other: refused
    for again in (bot, clients()):
        status, body = await again.call("POST", url, {"altcha": good})
        assert status == 403 and body["error"]["code"] == "challenge_used", body
    status, room = await partner.call("GET", f"/partner/v1/shows/{show_id}/waiting-room")
    assert room["joined"] == 1


async def test_the_same_visitor_joining_twice_keeps_one_place(
        api: aiohttp.ClientSession, clients: Any) -> None:
    show_id, partner = await publish_show_via_feed(api)
    opens = datetime.now(UTC) + timedelta(hours=1)
    assert (await set_room(api, show_id, partner.headers, enabled=True, admit_per_minute=1,
                           burst=1, opens_at=iso(opens)))[0] == 200
    early, fan = clients(), clients()
    assert (await join(early, show_id))[0] == 201
    status, body = await join(fan, show_id)
    assert status == 201 and body["pre_queue"] and body["in_queue"], body
    assert body["position"] is None and body["opens_at"].startswith(opens.strftime("%Y-%m-%dT%H:%M"))
    status, again = await join(fan, show_id)  # before the start: still one entry
    assert status == 200 and again["pre_queue"]
    status, room = await partner.call("GET", f"/partner/v1/shows/{show_id}/waiting-room")
    assert (room["pre_queue"], room["joined"], room["admitted"]) == (2, 2, 0)
    # the sale opens: the draw gives each a place; joining again keeps it
    assert (await set_room(api, show_id, partner.headers, enabled=True, admit_per_minute=1,
                           burst=1, opens_at=iso(datetime.now(UTC))))[0] == 200
    status, mine = await fan.call("GET", f"/api/shows/{show_id}/queue")
    assert status == 200 and not mine["pre_queue"] and mine["position"] in (0, 1)
    for _ in range(2):
        status, again = await join(fan, show_id)
        assert status == 200 and again["position"] == mine["position"], again
    status, room = await partner.call("GET", f"/partner/v1/shows/{show_id}/waiting-room")
    assert (room["pre_queue"], room["joined"], room["admitted"]) == (0, 2, 1)
    # the start of a drawn pre-queue cannot move again
    status, body = await set_room(api, show_id, partner.headers, enabled=True,
                                  opens_at=iso(datetime.now(UTC) + timedelta(hours=1)))
    assert status == 409 and body["error"]["code"] == "pre_queue_drawn"


def spearman(xs: list[int], ys: list[int]) -> float:
    """Rank correlation of two lists of distinct values."""
    rank = {v: i for i, v in enumerate(sorted(ys))}
    ry = [rank[y] for y in ys]
    rx = [sorted(xs).index(x) for x in xs]
    n = len(xs)
    return 1 - 6 * sum((a - b) ** 2 for a, b in zip(rx, ry, strict=True)) / (n * (n * n - 1))


@pytest.mark.parametrize("app_settings", [{"rate_limits": False}], indirect=True)
async def test_the_pre_queue_is_drawn_in_random_order_and_late_joiners_go_behind(
        api: aiohttp.ClientSession, server: TestServer) -> None:
    """1,000 visitors join (each solving a challenge) an hour before the start, one after
    another; at the start each has a place, the places are a random order (rank
    correlation with the arrival order near 0, the first 100 arrivals spread out), and a
    visitor who joins after the start is behind all of them."""
    show_id, partner = await publish_show_via_feed(api)
    n = 1_000
    assert (await set_room(api, show_id, partner.headers, enabled=True, admit_per_minute=1,
                           burst=1, opens_at=iso(datetime.now(UTC) + timedelta(hours=1))))[0] \
        == 200
    url = f"/api/shows/{show_id}/queue"
    # one connection pool, no cookie jar: every visitor's session cookie is kept by hand
    async with aiohttp.ClientSession(base_url=str(server.make_url("")),
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:

        async def join_as_new() -> str:
            payload = await solved(http, show_id)
            async with http.post(url, json={"altcha": payload}) as resp:
                body = await resp.json()
                assert resp.status == 201, body
                return resp.cookies["bmm_session"].value

        async def status(cookie: str) -> dict[str, Any]:
            async with http.get(url, headers={"Cookie": f"bmm_session={cookie}"}) as resp:
                assert resp.status == 200
                return await resp.json()

        arrivals = [await join_as_new() for _ in range(n)]  # in this order
        before = await asyncio.gather(*(status(c) for c in arrivals[:20]))
        assert all(b["pre_queue"] and b["position"] is None for b in before)
        status_code, room = await partner.call("GET",
                                               f"/partner/v1/shows/{show_id}/waiting-room")
        assert (room["pre_queue"], room["admitted"]) == (n, 0)
        # the sale opens now (at 1 a minute, the queue will not move during the test)
        assert (await set_room(api, show_id, partner.headers, enabled=True, admit_per_minute=1,
                               burst=1, opens_at=iso(datetime.now(UTC))))[0] == 200
        late = await join_as_new()
        sem = asyncio.Semaphore(32)

        async def position(cookie: str) -> int:
            async with sem:
                return (await status(cookie))["position"]

        places = await asyncio.gather(*(position(c) for c in arrivals))
        last = await position(late)
    assert sorted(places) == list(range(n))  # one place each; the first is admitted (burst)
    rho = spearman(list(range(n)), places)
    first_in_first = sum(1 for p in places[:100] if p < 100)
    assert abs(rho) < 0.2, rho
    assert first_in_first < 40, first_in_first  # ~10 expected; arrival order would be 100
    assert last == n and last > max(places)


@pytest.mark.parametrize("app_settings", [{"admission_ttl_s": 2}], indirect=True)
async def test_a_replayed_admission_is_refused_once_it_expired(
        api: aiohttp.ClientSession, server: TestServer, clients: Any,
        redis: aioredis.Redis) -> None:
    """Security review M2: the visitor saves the session cookie they had while waiting,
    uses the admission until it expires, then replays the saved cookie: before issue 15
    it was admitted again with a fresh expiry. Now the admission lives in Redis: the
    replayed cookie is told it is spent, and even a token with a valid signature and a
    later expiry is refused by the hold gate."""
    show_id, partner = await publish_show_via_feed(api)
    assert (await set_room(api, show_id, partner.headers, enabled=True, admit_per_minute=60,
                           burst=1))[0] == 200
    assert (await join(clients(), show_id))[1]["admitted"]  # takes the burst
    visitor = clients()
    status, body = await join(visitor, show_id)
    assert status == 201 and body["position"] == 1
    saved = visitor.session_cookie()  # the pre-admission session
    deadline = time.monotonic() + TIMEOUT
    while not body["admitted"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
        status, body = await visitor.call("GET", f"/api/shows/{show_id}/queue")
    token, expires = body["admission_token"], datetime.fromisoformat(body["admission_expires_at"])
    assert (await hold(visitor, show_id, ["A1"]))[0] == 201
    vid = (await redis.hkeys(room_visitors_key(show_id)))
    vid = [v.decode() for v in vid
           if admission.record_expiry(await redis.hget(room_visitors_key(show_id), v))
           == int(expires.timestamp() * 1000)][0]
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.3)

    status, body = await visitor.call("GET", f"/api/shows/{show_id}/queue")
    assert status == 200 and body["admission_spent"] and not body["admitted"]
    replay = clients()
    replay.jar.update_cookies({"bmm_session": saved}, server.make_url("/"))
    status, body = await replay.call("GET", f"/api/shows/{show_id}/queue")
    assert status == 200 and not body["admitted"] and body["admission_token"] is None
    assert body["admission_spent"]
    # the old token (its own expiry passed) and a re-signed one (valid MAC, expiry in an
    # hour, as if the secret had leaked or the token were minted again): both refused
    status, body = await hold(replay, show_id, ["A2"], {"X-Admission-Token": token})
    assert status == 403 and body["error"]["code"] == "admission_invalid"
    later = int(time.time() * 1000) + 3_600_000
    resigned = admission.sign("test-secret", show_id, vid, later)
    assert admission.verify("test-secret", resigned, show_id, vid) is None  # it would verify
    status, body = await hold(replay, show_id, ["A2"], {"X-Admission-Token": resigned})
    assert status == 403 and body["error"]["code"] == "admission_invalid", body
    assert body["error"]["reason"] == "expired"
    # a new admission needs a new place at the back of the queue
    status, room = await partner.call("GET", f"/partner/v1/shows/{show_id}/waiting-room")
    joined = room["joined"]
    status, body = await join(replay, show_id)
    assert status == 201, body
    status, room = await partner.call("GET", f"/partner/v1/shows/{show_id}/waiting-room")
    assert room["joined"] == joined + 1
    # the re-signed token still does not match the new admission's record
    status, body = await hold(replay, show_id, ["A2"], {"X-Admission-Token": resigned})
    assert status == 403 and body["error"]["reason"] in ("superseded", "not_admitted")
    if body["error"]["reason"] == "superseded":  # admitted at once (a quiet queue)
        assert (await hold(replay, show_id, ["A2"]))[0] == 201
