"""Fair holds (issue 15) against the real server, Redis and Ray: every hold counts against
its customer, its device (a signed cookie) and its network (the address; an IPv6 /64),
with the caps and the hold period the partner set for the show; the show's actor enforces
them, so no number of connections, cookies or forged headers gets a client past them."""
from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from server.core.settings import Settings
from server.onsale.identity import DEVICE_COOKIE, network_prefix

from .builders import GOOD_CARD
from .catalog_helpers import new_partner

POLICY = {"hold_minutes": 4, "max_hold_minutes": 12, "seats_per_customer": 3,
          "seats_per_device": 3, "seats_per_network": 6}
SEATS = [f"{row}{n}" for row in "AB" for n in range(1, 7)]


@pytest.fixture
def app_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # Behind one trusted proxy (127.0.0.1), so X-Forwarded-For names the client there.
    return Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                    passivate_after_s=30, data_dir=str(tmp_path_factory.mktemp("data")),
                    trusted_proxies="127.0.0.2/32")


async def _show(api: aiohttp.ClientSession, policy: dict | None = POLICY) -> str:
    partner = await (await new_partner(api)).setup()
    show_id = f"sh-{uuid.uuid4().hex[:10]}"
    body = partner.show(48) | ({"hold_policy": policy} if policy else {})
    status, out = await partner.call("PUT", f"/partner/v1/shows/{show_id}", body)
    assert status == 201, out
    return show_id


def _browser(server: TestServer) -> aiohttp.ClientSession:
    """A client that keeps its cookies (aiohttp's default jar drops cookies of IPs)."""
    return aiohttp.ClientSession(base_url=str(server.make_url("")),
                                 cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _hold(session: aiohttp.ClientSession, show_id: str, seat: str,
                headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with session.post(f"/api/shows/{show_id}/holds", json={"seats": [seat]},
                            headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def test_one_client_without_cookies_holds_at_most_the_network_cap(api, server):
    show_id = await _show(api)

    async def cookieless(seat: str) -> tuple[int, dict]:
        # a new connection and no cookies every time, and a forged X-Forwarded-For
        # (believed only from a trusted proxy, which this client is not)
        async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as fresh:
            return await _hold(fresh, show_id, seat, {"X-Forwarded-For": f"203.0.113.{seat[1]}"})

    results = await asyncio.gather(*(cookieless(s) for s in SEATS))
    ok = [s for s, _ in results if s == 201]
    refused = [b["error"]["code"] for s, b in results if s != 201]
    assert len(ok) == POLICY["seats_per_network"], results
    assert refused == ["network_limit"] * (len(SEATS) - len(ok))


async def test_a_device_cap_binds_a_browser_and_two_customers_behind_one_nat_both_buy(
        api, server):
    show_id = await _show(api)
    first, second = _browser(server), _browser(server)
    try:
        held = [await _hold(first, show_id, s) for s in SEATS[:4]]
        assert [s for s, _ in held] == [201, 201, 201, 409]
        assert held[3][1]["error"]["code"] == "device_limit"
        assert DEVICE_COOKIE in {c.key for c in first.cookie_jar}
        # another customer on the same network (a NAT): their own device, room left
        held2 = [await _hold(second, show_id, s) for s in SEATS[4:7]]
        assert [s for s, _ in held2] == [201, 201, 201]
        # the network is full now (6): a third device on it is refused
        async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as third:
            assert (await _hold(third, show_id, SEATS[8]))[1]["error"]["code"] == "network_limit"
        # both buy
        for session, holds in ((first, held[:3]), (second, held2)):
            for _, h in holds:
                async with session.post(
                        f"/api/holds/{h['hold_id']}/checkout",
                        json={"card": GOOD_CARD, "email": "nat@example.com", "name": "N A T"},
                        headers={"X-Holder-Token": h["holder_token"],
                                 "Idempotency-Key": uuid.uuid4().hex}) as resp:
                    assert resp.status == 201, await resp.text()
        # booked seats no longer count: the device may hold again
        assert (await _hold(first, show_id, SEATS[9]))[0] == 201
    finally:
        await first.close()
        await second.close()


async def test_behind_a_trusted_proxy_each_client_network_counts_and_an_ipv6_64_is_one(
        api, server):
    show_id = await _show(api, POLICY | {"seats_per_network": 3})
    # the test client connects from 127.0.0.1; make it a trusted proxy by connecting
    # through 127.0.0.2 (a loopback address of its own)
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(base_url=str(server.make_url("")),
                                     connector=connector) as proxy:
        async def via(client: str, seat: str) -> int:
            return (await _hold(proxy, show_id, seat, {"X-Forwarded-For": client}))[0]

        # three addresses of one /64 are one network: the fourth seat is refused
        v6 = [await via(f"2001:db8:1:2::{i}", s) for i, s in enumerate(SEATS[:4], 1)]
        assert v6 == [201, 201, 201, 409]
        # another /64, another network; two IPv4 clients, two networks
        assert await via("2001:db8:1:3::1", SEATS[4]) == 201
        assert await via("198.51.100.1", SEATS[5]) == 201
        assert await via("198.51.100.2", SEATS[6]) == 201


def test_network_prefix() -> None:
    assert network_prefix("2001:db8:1:2::1") == network_prefix("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert network_prefix("2001:db8:1:3::1") != network_prefix("2001:db8:1:2::1")
    assert network_prefix("::ffff:198.51.100.7") == "198.51.100.7"
    assert network_prefix("198.51.100.7") == "198.51.100.7"
    assert network_prefix("unknown") == "unknown"


async def test_the_show_hold_period_is_the_partners_and_the_seat_map_says_so(api, server):
    show_id = await _show(api)
    async with api.get(f"/api/shows/{show_id}/seatmap") as resp:
        view = await resp.json()
        assert DEVICE_COOKIE in resp.cookies  # the page's first visit gives the device
    assert (view["hold_ttl_seconds"], view["hold_max_seconds"]) == (4 * 60, 12 * 60)
    assert (view["seats_per_device"], view["seats_per_network"]) == (3, 6)
    status, h = await _hold(api, show_id, "A1")
    assert status == 201, h
    left = datetime.fromisoformat(h["expires_at"].replace("Z", "+00:00")) - datetime.now(UTC)
    assert 3 * 60 < left.total_seconds() <= 4 * 60
    # extensions stop at the lifetime the partner set
    async with api.patch(f"/api/holds/{h['hold_id']}", json={"extra_seconds": 3600},
                         headers={"X-Holder-Token": h["holder_token"]}) as resp:
        ext = await resp.json()
    assert resp.status == 200, ext
    left = datetime.fromisoformat(ext["expires_at"].replace("Z", "+00:00")) - datetime.now(UTC)
    assert 11 * 60 < left.total_seconds() <= 12 * 60


async def test_a_bad_hold_policy_is_422(api):
    partner = await (await new_partner(api)).setup()
    for bad in ({"hold_minutes": 1}, {"hold_minutes": 31},
                {"hold_minutes": 20, "max_hold_minutes": 10},
                {"seats_per_device": 10, "seats_per_network": 4}):
        status, out = await partner.call("PUT", f"/partner/v1/shows/sh-{uuid.uuid4().hex[:8]}",
                                         partner.show(48, hold_policy=bad))
        assert status == 422, (bad, out)
