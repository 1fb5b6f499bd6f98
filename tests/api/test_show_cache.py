"""The hold path's show cache (server/catalog/show_cache.py): a partner feed change reaches every
web process, not only the one that served it."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.appkeys import SERVICES
from server.core.embedded import RedisServer
from server.core.settings import Settings

from .builders import publish_show_via_feed
from .catalog_helpers import PRICES


@pytest.fixture
async def other(redis_server: RedisServer, ray_cluster: None, app_settings: Settings
                ) -> AsyncIterator[tuple[TestServer, aiohttp.ClientSession]]:
    """A second web process (app) on the same Redis and Ray."""
    srv = TestServer(create_app(app_settings, redis_server.url), host="127.0.0.1")
    await srv.start_server()
    async with aiohttp.ClientSession(base_url=str(srv.make_url(""))) as session:
        yield srv, session
    await srv.close()


async def _hold(api: aiohttp.ClientSession, show_id: str, seat: str) -> tuple[int, dict]:
    async with api.post(f"/api/shows/{show_id}/holds", json={"seats": [seat]}) as resp:
        return resp.status, await resp.json()


async def _until(check, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the other process never saw the change"
        await asyncio.sleep(0.01)


async def test_feed_changes_reach_the_other_process(api, other) -> None:
    srv_b, api_b = other
    show_id, partner = await publish_show_via_feed(api)
    cache_b = srv_b.app[SERVICES].show_cache
    await _until(lambda: _true(cache_b.listening))

    status, body = await _hold(api_b, show_id, "A1")  # B caches the show
    assert status == 201 and body["quote"]["total"] == 20000
    status, _ = await _hold(api_b, show_id, "A2")
    assert status == 201 and cache_b.hits >= 1

    # A new price through process A: B's next holds are priced with it.
    prices = {**PRICES, "Silver": {"amount": 21000, "currency": "INR"}}
    status, body = await partner.call("PUT", f"/partner/v1/shows/{show_id}",
                                      partner.show(24, prices=prices))
    assert status == 200, body
    seats = iter(["A3", "B1", "B2", "B3"])

    async def repriced() -> bool:
        status, body = await _hold(api_b, show_id, next(seats))
        assert status == 201, body
        return body["quote"]["total"] == 21000

    await _until(repriced)

    # Cancelled through A: B stops holding seats for it.
    status, _ = await partner.call("DELETE", f"/partner/v1/shows/{show_id}")
    assert status == 200

    async def gone() -> bool:
        return (await _hold(api_b, show_id, "C1"))[0] == 404

    await _until(gone)


async def test_the_serving_process_sees_its_own_change_at_once(api, server) -> None:
    show_id, partner = await publish_show_via_feed(api)
    assert (await _hold(api, show_id, "A1"))[0] == 201
    prices = {**PRICES, "Silver": {"amount": 22000, "currency": "INR"}}
    status, _ = await partner.call("PUT", f"/partner/v1/shows/{show_id}",
                                   partner.show(24, prices=prices))
    assert status == 200
    status, body = await _hold(api, show_id, "A2")
    assert status == 201 and body["quote"]["total"] == 22000


async def _true(value: bool) -> bool:
    return value
