"""The waiting room and the per-customer hold cap through the real server: the partner
switch, queue positions (live over a real `websockets` client), admission at the configured
rate, tokens bound to the visitor, and the cap under concurrent requests."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from websockets.asyncio.client import ClientConnection, connect

from server.core.settings import Settings

from .account_helpers import Client
from .builders import PublishedShow, publish_show_via_feed

ADMIN = {"Authorization": "Bearer test-admin-key"}
TIMEOUT = 15.0


@pytest.fixture
def app_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                    passivate_after_s=30, data_dir=str(tmp_path_factory.mktemp("data")),
                    hold_cap_seats=4, rl_customer_write_burst=100)


async def set_room(api: aiohttp.ClientSession, show_id: str, headers: dict[str, str],
                   **body: Any) -> tuple[int, Any]:
    async with api.put(f"/partner/v1/shows/{show_id}/waiting-room", json=body,
                       headers=headers) as resp:
        return resp.status, await resp.json()


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


async def test_partner_switch_is_owner_or_admin_only_and_validated(
        api: aiohttp.ClientSession) -> None:
    show_id, partner = await publish_show_via_feed(api)
    status, body = await set_room(api, show_id, partner.headers, enabled=True,
                                  admit_per_minute=120)
    assert status == 200, body
    assert body == {"show_id": show_id, "enabled": True, "admit_per_minute": 120, "burst": 2,
                    "joined": 0, "admitted": 0, "waiting": 0}
    from .catalog_helpers import new_partner

    stranger = await new_partner(api)
    assert (await set_room(api, show_id, stranger.headers, enabled=False))[0] == 403
    assert (await set_room(api, show_id, {}, enabled=False))[0] == 401
    status, body = await set_room(api, show_id, partner.headers, enabled=True,
                                  admit_per_minute=0)
    assert status == 422 and body["error"]["field"] == "admit_per_minute"
    status, body = await set_room(api, show_id, partner.headers, enabled="yes")
    assert status == 422
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
    status, body = await first.call("POST", f"/api/shows/{show_id}/queue")
    assert status == 201 and body["admitted"] is True and body["position"] == 0
    status, body = await second.call("POST", f"/api/shows/{show_id}/queue")
    assert status == 201 and body["position"] == 1 and not body["admitted"]
    assert body["admission_token"] is None
    status, body = await third.call("POST", f"/api/shows/{show_id}/queue")
    assert status == 201 and body["position"] == 2 and body["eta_seconds"] == 2
    # joining again keeps the place (and never moves anyone forward)
    status, again = await third.call("POST", f"/api/shows/{show_id}/queue")
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

    status, body = await visitor.call("POST", f"/api/shows/{show_id}/queue")
    assert status == 201 and body["admitted"], body
    token = body["admission_token"]
    # the queue set the token as a cookie for this show's API paths: holds just work
    status, body = await hold(visitor, show_id, ["A1"])
    assert status == 201, body
    status, body = await hold(visitor, show_id, ["A2"], {"X-Admission-Token": token})
    assert status == 201, body

    # someone else's token, in a session of their own (or none): refused
    assert (await other.call("POST", f"/api/shows/{show_id}/queue"))[0] == 201
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
    assert (await guest.call("POST", f"/api/shows/{show_id}/queue"))[1]["admitted"]
    results = await asyncio.gather(*(hold(guest, show_id, [f"C{n}"]) for n in range(1, 7)))
    codes = sorted(status for status, _ in results)
    assert codes == [201] * 4 + [409] * 2, results


async def test_openapi_documents_the_waiting_room(api: aiohttp.ClientSession) -> None:
    async with api.get("/api/openapi.json") as resp:
        doc = await resp.json()
    paths = doc["paths"]
    assert {"get", "post"} <= set(paths["/api/shows/{show_id}/queue"])
    assert "get" in paths["/api/shows/{show_id}/queue/live"]
    room = paths["/partner/v1/shows/{show_id}/waiting-room"]
    assert room["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert "429" in paths["/api/shows/{show_id}/holds"]["post"]["responses"]
