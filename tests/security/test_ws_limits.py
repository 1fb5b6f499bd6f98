"""M8: WebSocket connection caps, with many real sockets against the real server (real
Redis, real Ray): per client address (as the rate limiter sees it) and in all per web
process, refused before the upgrade with a JSON error and Retry-After; the live seat map
and the queue socket share them. A client's oversized frame closes the socket (1009)."""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.app import create_app
from server.core.settings import Settings
from server.onsale import pow
from server.onsale.ratelimit import LIMITER
from tests.api.account_helpers import Client
from tests.api.builders import PublishedShow, publish_show_via_feed
from tests.api.conftest import TEST_DATA_KEY

TIMEOUT = 10.0
PER_CLIENT = 20


@pytest.fixture
def app_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # The default caps (20 per address); the read limit out of the way of 20+ upgrades.
    return Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                    data_key=TEST_DATA_KEY, passivate_after_s=30,
                    data_dir=str(tmp_path_factory.mktemp("data")),
                    rl_ip_read_per_s=1000, rl_ip_read_burst=1000)


def an_address() -> str:
    """A loopback address of this test's own (its sockets never count with another's)."""
    return f"127.{random.randint(2, 250)}.{random.randint(0, 250)}.{random.randint(1, 250)}"


def live_url(server: TestServer, show_id: str) -> str:
    return f"ws://127.0.0.1:{server.port}/api/shows/{show_id}/live"


async def open_live(server: TestServer, show_id: str, address: str) -> ClientConnection:
    ws = await connect(live_url(server, show_id), local_addr=(address, 0))
    assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "snapshot"
    return ws


async def refused(url: str, address: str, **options: Any) -> Any:
    with pytest.raises(InvalidStatus) as exc:
        async with connect(url, local_addr=(address, 0), **options):
            pass
    return exc.value.response


@pytest.fixture
async def sockets() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def test_the_21st_live_socket_from_one_address_is_refused_until_one_closes(
        server: TestServer, show: PublishedShow, sockets: AsyncExitStack) -> None:
    me, other = an_address(), an_address()
    mine = [await open_live(server, show.show_id, me) for _ in range(PER_CLIENT)]
    for ws in mine:
        sockets.push_async_callback(ws.close)
    response = await refused(live_url(server, show.show_id), me)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    body = json.loads(response.body)
    assert body["error"]["code"] == "too_many_sockets"
    assert body["error"]["retry_after_ms"] >= 1000
    assert server.app[LIMITER].sockets.by_client[me] == PER_CLIENT  # the refused one holds none
    # another address is not affected
    theirs = await open_live(server, show.show_id, other)
    sockets.push_async_callback(theirs.close)
    # closing one frees a place (once the server saw the close)
    await mine.pop().close()
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            again = await open_live(server, show.show_id, me)
            break
        except InvalidStatus as exc:
            assert exc.response.status_code == 429
            assert time.monotonic() < deadline, "the closed socket's place was never freed"
            await asyncio.sleep(0.05)
    sockets.push_async_callback(again.close)
    # and the place is taken again: full
    assert (await refused(live_url(server, show.show_id), me)).status_code == 429


async def test_the_live_and_queue_sockets_share_a_clients_places(
        server: TestServer, api: Any, sockets: AsyncExitStack) -> None:
    """A client at its cap on live sockets cannot open a queue socket either; the queue
    socket's refusal comes before any session or Redis work (the same JSON 429)."""
    show_id, _partner = await publish_show_via_feed(api)
    me = an_address()
    for _ in range(PER_CLIENT):
        ws = await open_live(server, show_id, me)
        sockets.push_async_callback(ws.close)
    url = f"ws://127.0.0.1:{server.port}/api/shows/{show_id}/queue/live"
    response = await refused(url, me)
    assert response.status_code == 429 and response.headers["Retry-After"]
    assert json.loads(response.body)["error"]["code"] == "too_many_sockets"
    # from elsewhere the queue socket answers as before (409: this visitor never joined)
    assert (await refused(url, an_address())).status_code == 409


async def test_over_the_total_the_server_answers_503(
        redis_server: Any, ray_cluster: None, app_settings: Settings,
        show: PublishedShow, sockets: AsyncExitStack) -> None:
    """ws_total = 3: three sockets from three addresses, a fourth (any address) gets 503
    `unavailable` with Retry-After."""
    import msgspec

    srv = TestServer(create_app(msgspec.structs.replace(app_settings, ws_total=3),
                                redis_server.url), host="127.0.0.1")
    await srv.start_server()
    sockets.push_async_callback(srv.close)
    for _ in range(3):
        ws = await open_live(srv, show.show_id, an_address())
        sockets.push_async_callback(ws.close)
    response = await refused(live_url(srv, show.show_id), an_address())
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert json.loads(response.body)["error"]["code"] == "unavailable"


async def test_an_oversized_frame_closes_the_queue_socket_with_1009(
        server: TestServer, api: Any) -> None:
    """The queue socket took frames up to aiohttp's default 4 MiB; now a few KB."""
    show_id, partner = await publish_show_via_feed(api)
    async with api.put(f"/partner/v1/shows/{show_id}/waiting-room", headers=partner.headers,
                       json={"enabled": True, "admit_per_minute": 1, "burst": 1,
                             "challenge_max_number": 1_000}) as resp:
        assert resp.status == 200, await resp.text()
    visitors = [Client(server), Client(server)]
    try:
        for visitor in visitors:  # the first is let in at once; the second waits
            async with visitor.http.get(f"/api/shows/{show_id}/queue/challenge") as resp:
                challenge = await resp.json()
            status, body = await visitor.call("POST", f"/api/shows/{show_id}/queue",
                                              {"altcha": pow.solve(challenge)})
            assert status == 201, body
        url = f"ws://127.0.0.1:{server.port}/api/shows/{show_id}/queue/live"
        cookie = {"Cookie": f"bmm_session={visitors[1].session_cookie()}"}
        async with connect(url, additional_headers=cookie, max_size=None) as ws:
            msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert msg["type"] == "position", msg
            await ws.send("x" * 100)  # small: ignored, the socket stays
            await ws.send("x" * (64 * 1024))
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == 1009, (ws.close_code, ws.close_reason)
    finally:
        for visitor in visitors:
            await visitor.close()


async def test_an_oversized_frame_closes_the_live_socket_with_1009(
        server: TestServer, show: PublishedShow) -> None:
    async with connect(live_url(server, show.show_id)) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "snapshot"
        await ws.send("x" * (64 * 1024))
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1009
