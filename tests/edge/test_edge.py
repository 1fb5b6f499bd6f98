"""nginx as the edge (server/edge.py): a real nginx process in front of the real server.

Through the edge holds and the live socket work as without it; a burst of holds beyond the
configured rate is answered 429 by nginx itself (the project's JSON error, Retry-After),
per show; the app sees the client's address through X-Forwarded-For; nothing is lost."""
from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
import uuid
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from websockets.asyncio.client import connect

from server.edge import SHED_MESSAGE, Edge, command, prepare_prefix, render
from tests.api.builders import PublishedShow, publish_show

from .conftest import HOLD_BURST, HOLD_RATE

TIMEOUT = 10.0
Json = dict[str, Any]


async def post_hold(http: aiohttp.ClientSession, url: str, show_id: str, seat: str,
                    headers: dict[str, str] | None = None
                    ) -> tuple[int, Json, aiohttp.typedefs.LooseHeaders]:
    async with http.post(f"{url}/api/shows/{show_id}/holds", json={"seats": [seat]},
                         headers=headers or {}) as resp:
        assert resp.content_type == "application/json", (resp.status, await resp.text())
        return resp.status, await resp.json(), resp.headers


async def seat_statuses(http: aiohttp.ClientSession, url: str, show_id: str) -> dict[str, str]:
    async with http.get(f"{url}/api/shows/{show_id}/seatmap") as resp:
        assert resp.status == 200
        return {s["id"]: s["status"] for s in (await resp.json())["seats"]}


async def test_a_hold_through_the_edge(edge: Edge, show: PublishedShow) -> None:
    rid = f"edge-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as http:
        status, body, headers = await post_hold(http, edge.url, show.show_id, "A1",
                                                {"X-Request-Id": rid})
        assert status == 201, body
        assert body["seats"] == ["A1"] and body["hold_id"] and body["holder_token"]
        assert headers["X-Request-Id"] == rid  # passed through to the app, which echoes it
        assert headers["Server"].startswith("nginx")  # it did go through the edge
        assert (await seat_statuses(http, edge.url, show.show_id))["A1"] == "held"
        # an id the app would not take (a quote could break the JSON) is replaced by nginx's
        async with http.get(f"{edge.url}/api/shows/{show.show_id}/seatmap",
                            headers={"X-Request-Id": 'x"y'}) as resp:
            assert resp.status == 200
            assert len(resp.headers["X-Request-Id"]) == 32 and resp.headers["X-Request-Id"] \
                .isalnum()
        # releasing goes through the edge too (not the limited path)
        async with http.delete(f"{edge.url}/api/holds/{body['hold_id']}",
                               headers={"X-Holder-Token": body["holder_token"]}) as resp:
            assert resp.status == 200, await resp.text()
        assert (await seat_statuses(http, edge.url, show.show_id))["A1"] == "free"


async def test_the_live_seat_map_through_the_edge(edge: Edge, show: PublishedShow) -> None:
    """A real WebSocket client through nginx: the snapshot, then the event of a hold made
    through the edge."""
    ws_url = f"ws://127.0.0.1:{edge.port}/api/shows/{show.show_id}/live"
    async with connect(ws_url) as ws, aiohttp.ClientSession() as http:
        snap = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert snap["type"] == "snapshot"
        assert snap["seats"]["B3"] == "free" and len(snap["seats"]) == 50
        status, body, _ = await post_hold(http, edge.url, show.show_id, "B3")
        assert status == 201, body
        msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert msg["type"] == "events" and msg["seq"] == snap["seq"] + 1, msg
        assert any("B3" in json.dumps(e) for e in msg["events"]), msg


async def test_a_burst_over_the_rate_is_shed_by_nginx_and_nothing_is_lost(
        edge: Edge, show: PublishedShow, redis: aioredis.Redis) -> None:
    """40 holds at once on each of two shows, the edge letting 5/s + a burst of 5 through
    per show: the excess is answered by nginx (429 `overloaded`, Retry-After, JSON); each
    show has its own bucket; every 201 is a real hold in the seat map that its holder can
    release, and every shed seat is still free. The rest of the API is not limited."""
    seats = [f"{row}{n}" for row in "ABCD" for n in range(1, 11)]
    other = await publish_show(redis)
    shows = (show.show_id, other.show_id)
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        results = await asyncio.gather(*(post_hold(http, edge.url, show_id, s)
                                         for show_id in shows for s in seats))
        elapsed = time.monotonic() - started
        refill = int(elapsed * HOLD_RATE) + 1
        for i, show_id in enumerate(shows):
            mine = results[i * len(seats):(i + 1) * len(seats)]
            codes = [r[0] for r in mine]
            assert set(codes) == {201, 429}, codes
            # nginx (nodelay) lets the first + the burst through at once per show, plus
            # what the rate refilled meanwhile; a bucket shared by the shows would not
            assert HOLD_BURST + 1 <= codes.count(201) <= HOLD_BURST + 1 + refill, \
                (show_id, codes, elapsed)
            for status, body, headers in mine:
                if status != 429:
                    continue
                assert headers["Retry-After"] == "1"
                assert headers["Content-Type"].startswith("application/json")
                # nginx's answer (the app here never sheds: no in-flight cap)
                assert body["error"] == {"code": "overloaded", "message": SHED_MESSAGE,
                                         "retry_after_ms": 1000,
                                         "request_id": headers["X-Request-Id"]}
            # nothing lost, nothing invented
            held = {s for s, r in zip(seats, mine, strict=True) if r[0] == 201}
            statuses = await seat_statuses(http, edge.url, show_id)
            assert {s for s in seats if statuses[s] == "held"} == held
            assert all(statuses[s] == "free" for s in seats if s not in held)
            # each 201 is a hold its holder can release
            for s, (status, body, _) in zip(seats, mine, strict=True):
                if status == 201:
                    assert body["seats"] == [s]
                    async with http.delete(
                            f"{edge.url}/api/holds/{body['hold_id']}",
                            headers={"X-Holder-Token": body["holder_token"]}) as resp:
                        assert resp.status == 200
            assert set((await seat_statuses(http, edge.url, show_id)).values()) == {"free"}
        # reads are not limited by the edge
        reads = await asyncio.gather(*(seat_statuses(http, edge.url, show.show_id)
                                       for _ in range(30)))
        assert len(reads) == 30


async def test_a_ceiling_for_all_shows_together(
        server: TestServer, show: PublishedShow, redis: aioredis.Redis) -> None:
    """With `total_hold_rate_per_s` the shows also share one bucket: 20 holds at once on
    each of two shows, a generous per-show limit, 5/s + 5 for all: only the shared burst
    (+ the refill) gets through, over both shows together."""
    from .conftest import free_port

    other = await publish_show(redis)
    proxy = Edge(free_port(), [f"127.0.0.1:{server.port}"], 100, 100,
                 total_hold_rate_per_s=HOLD_RATE, total_hold_burst=HOLD_BURST).start()
    seats = [f"{row}{n}" for row in "AB" for n in range(1, 11)]
    try:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            results = await asyncio.gather(*(post_hold(http, proxy.url, show_id, s)
                                             for show_id in (show.show_id, other.show_id)
                                             for s in seats))
            elapsed = time.monotonic() - started
            codes = [r[0] for r in results]
            assert set(codes) == {201, 429}, codes
            assert HOLD_BURST + 1 <= codes.count(201) \
                <= HOLD_BURST + 2 + int(elapsed * HOLD_RATE), (codes, elapsed)
            assert all(r[1]["error"]["code"] == "overloaded" for r in results if r[0] == 429)
            for show_id, mine in ((show.show_id, results[:20]), (other.show_id, results[20:])):
                held = {s for s, r in zip(seats, mine, strict=True) if r[0] == 201}
                statuses = await seat_statuses(http, proxy.url, show_id)
                assert {s for s in seats if statuses[s] == "held"} == held
    finally:
        proxy.stop()


async def test_one_clients_flood_on_a_show_does_not_starve_the_others(
        server: TestServer, show: PublishedShow) -> None:
    """L6: one client (its own loopback address) fires holds on a show as fast as it can,
    ~hundreds a second, while another client makes one every 0.4 s. The show's bucket
    (20/s + 10) would be emptied by the flood for everyone; the flooder's own bucket on the
    show (5/s + 5) sheds it first, so the other client's holds all get through."""
    from .conftest import free_port

    proxy = Edge(free_port(), [f"127.0.0.1:{server.port}"], 20, 10,
                 client_hold_rate_per_s=5, client_hold_burst=5).start()
    n = random.randint(2, 250)
    flooder, legit = f"127.0.{n}.7", f"127.0.{n}.8"
    stop = asyncio.Event()
    flood: list[int] = []

    async def flood_holds() -> None:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=(flooder, 0), limit=50)) as http:
            while not stop.is_set():  # A1 again and again: past the edge it is a 409
                flood.extend(r[0] for r in await asyncio.gather(
                    *(post_hold(http, proxy.url, show.show_id, "A1") for _ in range(50))))

    legit_codes: list[int] = []
    try:
        task = asyncio.create_task(flood_holds())
        await asyncio.sleep(0.3)  # the flood is on
        started = time.monotonic()
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=(legit, 0))) as http:
            for seat in ("E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8"):
                status, body, _ = await post_hold(http, proxy.url, show.show_id, seat)
                legit_codes.append(status)
                await asyncio.sleep(0.4)
        elapsed = time.monotonic() - started + 0.3
        stop.set()
        await task
    finally:
        stop.set()
        proxy.stop()
    assert legit_codes == [201] * 8, legit_codes
    shed = flood.count(429)
    passed = len(flood) - shed
    assert len(flood) >= 200, len(flood)  # it was a flood
    # the flooder got about its own rate through, nothing like the show's
    assert passed <= 5 + 1 + int((elapsed + 2) * 5), (passed, shed, elapsed)
    assert set(flood) <= {201, 409, 429}


async def test_too_many_open_requests_from_one_client_get_429(
        server: TestServer, show: PublishedShow) -> None:
    """`conn_per_client=2`: two live sockets from one address stay open; a third is refused
    by nginx (429 `rate_limited`, the JSON error); once one closes, a new one gets in."""
    from websockets.exceptions import InvalidStatus

    from .conftest import free_port

    proxy = Edge(free_port(), [f"127.0.0.1:{server.port}"], 100, 100,
                 conn_per_client=2).start()
    ws_url = f"ws://127.0.0.1:{proxy.port}/api/shows/{show.show_id}/live"
    try:
        async with connect(ws_url) as first, connect(ws_url) as second:
            for ws in (first, second):
                assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] \
                    == "snapshot"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url):
                    pass
            response = refused.value.response
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "1"
            assert json.loads(response.body)["error"]["code"] == "rate_limited"
        # both closed: nginx forgets them as it sees the close; poll until a socket gets in
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                async with connect(ws_url) as again:
                    assert json.loads(await asyncio.wait_for(again.recv(), TIMEOUT))["type"] \
                        == "snapshot"
                break
            except InvalidStatus:
                assert time.monotonic() < deadline, "the closed sockets were never released"
                await asyncio.sleep(0.05)
    finally:
        proxy.stop()


async def test_the_app_sees_the_client_address_through_the_edge(
        edge: Edge, show: PublishedShow, redis: aioredis.Redis) -> None:
    """The client connects from its own loopback address (not 127.0.0.1); nginx appends it
    to X-Forwarded-For, the app trusts nginx (127.0.0.1/32) and charges the client's
    address: its rate-limit bucket is named after it. An address the client wrote into
    X-Forwarded-For itself is not believed."""
    client = f"127.{random.randint(2, 250)}.{random.randint(0, 250)}.{random.randint(1, 250)}"
    spoofed = f"203.0.113.{random.randint(1, 250)}"
    connector = aiohttp.TCPConnector(local_addr=(client, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        status, body, _ = await post_hold(http, edge.url, show.show_id, "E5",
                                          {"X-Forwarded-For": spoofed})
        assert status == 201, body
    assert await redis.keys(f"rl:ip:write:*:{client}"), "the app did not charge the client"
    assert not await redis.keys(f"rl:ip:write:*:{spoofed}")


async def test_the_apps_own_429_passes_through_unchanged(
        redis_server: Any, ray_cluster: None, tmp_path_factory: pytest.TempPathFactory,
        redis: aioredis.Redis) -> None:
    """nginx rewrites only its own 429s: the app's `rate_limited` answer (a tight per-IP
    write limit here) reaches the client as the app made it."""
    from server.app import create_app
    from server.core.settings import Settings
    from tests.api.conftest import TEST_DATA_KEY

    from .conftest import free_port

    settings = Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                        data_key=TEST_DATA_KEY, data_dir=str(tmp_path_factory.mktemp("data")),
                        trusted_proxies="127.0.0.1/32", rl_ip_write_per_s=0.05,
                        rl_ip_write_burst=2, hold_max_inflight=0, hold_cap_seats=0)
    srv = TestServer(create_app(settings, redis_server.url), host="127.0.0.1")
    await srv.start_server()
    pub = await publish_show(redis)
    proxy = Edge(free_port(), [f"127.0.0.1:{srv.port}"], 100, 100).start()
    client = f"127.{random.randint(2, 250)}.{random.randint(0, 250)}.{random.randint(1, 250)}"
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=(client, 0))) as http:
            codes = []
            for seat in ("A1", "A2", "A3"):
                status, body, headers = await post_hold(http, proxy.url, pub.show_id, seat)
                codes.append(status)
            assert codes == [201, 201, 429], codes
            assert body["error"]["code"] == "rate_limited"
            assert int(headers["Retry-After"]) >= 1
    finally:
        proxy.stop()
        await srv.close()


@pytest.mark.parametrize("options", [
    {}, {"conn_per_client": 20, "workers": 2, "access_log": True, "hold_timing_log": True,
     "total_hold_rate_per_s": 0.5, "total_hold_burst": 9, "client_hold_rate_per_s": 0},
])
def test_rendered_configs_pass_nginx_t(tmp_path: Any, options: dict[str, Any]) -> None:
    text = render(18080, ["127.0.0.1:8080", "8081", "[::1]:8082"], 0.5, 3, prefix=tmp_path,
                  **options)
    assert "rate=30r/m;" in text  # below 1/s nginx needs requests per minute
    assert ("zone=bmm_holds_all burst=9 nodelay;" in text) == bool(options)
    assert ("limit_conn bmm_conn 20;" in text) == bool(options)
    # per show and client address, before the show's own bucket (L6); 0 turns it off
    client = "limit_req zone=bmm_holds_client burst=20 nodelay;"
    assert (client in text) == (not options.get("client_hold_rate_per_s") == 0)
    if client in text:
        assert text.index(client) < text.index("limit_req zone=bmm_holds burst=3 nodelay;")
    assert "server 127.0.0.1:8081;" in text and "server [::1]:8082;" in text
    prepare_prefix(tmp_path)
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    test = subprocess.run([*command(tmp_path, conf)[:-2], "-t"], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr


def test_render_refuses_what_nginx_would_misread(tmp_path: Any) -> None:
    with pytest.raises(ValueError):
        render(18080, [], 10, 1, prefix=tmp_path)
    with pytest.raises(ValueError):
        render(18080, ["localhost"], 10, 1, prefix=tmp_path)
    with pytest.raises(ValueError):
        render(18080, ["127.0.0.1:1"], 0, 1, prefix=tmp_path)
    with pytest.raises(ValueError):
        render(18080, ["127.0.0.1:1"], 10, 1, prefix=tmp_path / "a;b")


async def test_the_operators_endpoints_are_not_public(edge: Edge, api, server) -> None:
    # L4: /metrics and /api/_stats were public and proxied by the shipped edge.
    async with aiohttp.ClientSession() as http:
        for path in ("/metrics", "/api/_stats"):
            async with http.get(edge.url + path) as resp:
                assert resp.status == 404, path
            # straight to the app, but from another machine's address (a forwarded one)
            async with http.get(f"http://127.0.0.1:{server.port}{path}",
                                headers={"X-Forwarded-For": "203.0.113.9"}) as resp:
                assert resp.status == 404, path
            async with http.get(f"http://127.0.0.1:{server.port}{path}") as resp:
                assert resp.status == 200, path  # a scraper on the machine itself
