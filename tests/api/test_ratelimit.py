"""Rate limits and load shedding through the real server (real Redis, real Ray).

The server here trusts X-Forwarded-For from loopback, so each test speaks as its own
client addresses and never shares a bucket with another test (the Redis is shared)."""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import pytest

from server.core.settings import Settings

from .account_helpers import Client
from .builders import PublishedShow
from .catalog_helpers import new_partner


@pytest.fixture
def app_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                    passivate_after_s=30, data_dir=str(tmp_path_factory.mktemp("data")),
                    trusted_proxies="127.0.0.1/32",
                    rl_ip_read_per_s=0.05, rl_ip_read_burst=5,
                    rl_ip_write_per_s=0.05, rl_ip_write_burst=10,
                    rl_customer_write_per_s=0.05, rl_customer_write_burst=3,
                    rl_partner_per_s=0.05, rl_partner_burst=12,
                    hold_max_inflight=0, hold_cap_seats=0)


def new_ip() -> str:
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


def as_ip(ip: str, **more: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip, **more}


async def status_of(api: aiohttp.ClientSession, method: str, path: str,
                    headers: dict[str, str], body: Any = None) -> tuple[int, Any, str | None]:
    async with api.request(method, path, json=body, headers=headers) as resp:
        data = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, data, resp.headers.get("Retry-After")


async def test_reads_past_the_burst_get_429_with_retry_after_per_ip(
        api: aiohttp.ClientSession, show: PublishedShow) -> None:
    ip, other = new_ip(), new_ip()
    path = f"/api/shows/{show.show_id}/seatmap"
    for _ in range(5):
        status, _, _ = await status_of(api, "GET", path, as_ip(ip))
        assert status == 200
    status, body, retry_after = await status_of(api, "GET", path, as_ip(ip))
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    assert retry_after is not None and int(retry_after) >= 1
    assert body["error"]["retry_after_ms"] > 0
    # another client is not affected; static files and health probes are never limited
    assert (await status_of(api, "GET", path, as_ip(other)))[0] == 200
    assert (await status_of(api, "GET", "/healthz", as_ip(ip)))[0] == 200
    async with api.get("/static/show.html", headers=as_ip(ip)) as resp:
        assert resp.status == 200


async def test_concurrent_writes_from_one_ip_pass_exactly_the_burst(
        api: aiohttp.ClientSession, show: PublishedShow) -> None:
    """40 holds at once from one address: the script checks and charges atomically, so
    exactly the burst (10) gets through to the hold path and the rest are refused."""
    ip = new_ip()
    seats = [f"{row}{n}" for row in "ABCD" for n in range(1, 11)]
    results = await asyncio.gather(*(
        status_of(api, "POST", f"/api/shows/{show.show_id}/holds", as_ip(ip), {"seats": [s]})
        for s in seats))
    codes = [r[0] for r in results]
    assert codes.count(201) == 10, codes
    assert codes.count(429) == 30
    assert all(r[1]["error"]["code"] == "rate_limited" for r in results if r[0] == 429)
    # reads have their own bucket: this address can still look at the seat map
    assert (await status_of(api, "GET", f"/api/shows/{show.show_id}/seatmap", as_ip(ip)))[0] \
        == 200


async def test_concurrent_holds_charge_all_of_their_buckets_or_none(
        api: aiohttp.ClientSession, clients: Any, show: PublishedShow) -> None:
    """One signed-in customer fires 12 holds at once from one address (checked together, in
    shared script calls): its customer bucket (burst 3) admits exactly 3. The 9 it refuses
    charge the address's write bucket (burst 10) nothing, so 12 anonymous holds fired at
    once from that address next get exactly the 7 left. Refills are one per 20 s."""
    ip = new_ip()
    user: Client = clients()
    status, body = await user.call("POST", "/api/accounts", {
        "email": f"rl-{uuid.uuid4().hex[:10]}@example.test", "password": "correct horse battery",
        "name": "Asha Rao"}, headers=as_ip(new_ip()))  # signed in, on another address
    assert status == 201, body
    started = time.monotonic()
    first = await asyncio.gather(*(
        user.call("POST", f"/api/shows/{show.show_id}/holds", {"seats": [f"A{n}"]},
                  headers=as_ip(ip)) for n in range(1, 11)), *(
        user.call("POST", f"/api/shows/{show.show_id}/holds", {"seats": [f"B{n}"]},
                  headers=as_ip(ip)) for n in range(1, 3)))
    assert sorted(status for status, _ in first) == [201] * 3 + [429] * 9, first
    assert all(b["error"]["code"] == "rate_limited" for status, b in first if status == 429)
    second = await asyncio.gather(*(  # `api` keeps no cookies: anonymous
        status_of(api, "POST", f"/api/shows/{show.show_id}/holds", as_ip(ip),
                  {"seats": [f"{row}{n}"]}) for row in "CD" for n in range(1, 7)))
    refills = int((time.monotonic() - started) // 20)
    codes = [r[0] for r in second]
    assert set(codes) <= {201, 429}, second
    assert 7 <= codes.count(201) <= 7 + refills, codes


async def test_a_customer_is_limited_whatever_address_they_use(
        clients: Any, show: PublishedShow) -> None:
    user: Client = clients()
    await user.sign_up()  # signs in: the session carries the customer
    statuses = []
    for n in range(1, 6):  # a new address each time: only the customer bucket can refuse
        status, body = await user.call("POST", f"/api/shows/{show.show_id}/holds",
                                       {"seats": [f"E{n}"]}, headers=as_ip(new_ip()))
        statuses.append((status, body["error"]["code"] if status >= 400 else None))
    assert statuses[:3] == [(201, None)] * 3, statuses
    assert statuses[3:] == [(429, "rate_limited")] * 2, statuses


async def test_a_partner_key_is_limited_across_addresses(api: aiohttp.ClientSession) -> None:
    partner = await new_partner(api)
    # the sign-up call above came from 127.0.0.1; from here on every call has a fresh
    # address, so only the key's bucket (burst 12) can refuse
    statuses = []
    for _ in range(15):
        async with api.get("/partner/v1/theatres", headers={**partner.headers,
                                                            "X-Forwarded-For": new_ip()}) as r:
            statuses.append(r.status)
    assert statuses.count(429) >= 3, statuses
    assert statuses.index(429) <= 12
    # another key of the same partner platform is unaffected
    other = await new_partner(api)
    async with api.get("/partner/v1/theatres",
                       headers={**other.headers, "X-Forwarded-For": new_ip()}) as r:
        assert r.status != 429


async def test_forwarded_for_from_the_client_is_not_believed_past_the_proxy(
        api: aiohttp.ClientSession, show: PublishedShow) -> None:
    """The proxy appends the real address; what the client put in front is ignored, so a
    client cannot dodge its bucket by inventing addresses."""
    real = new_ip()
    path = f"/api/shows/{show.show_id}/seatmap"
    statuses = [(await status_of(api, "GET", path,
                                 {"X-Forwarded-For": f"{new_ip()}, {real}"}))[0]
                for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2


async def test_overload_is_shed_at_once_with_429(redis_server: Any, ray_cluster: None,
                                                 tmp_path_factory: pytest.TempPathFactory,
                                                 redis: Any) -> None:
    """A server whose hold path takes at most 2 requests at a time, hit by 60 at once:
    the excess gets 429 `overloaded` + Retry-After straight away, the rest are served."""
    from aiohttp.test_utils import TestServer

    from server.app import create_app

    from .builders import publish_show

    settings = Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                        data_dir=str(tmp_path_factory.mktemp("data")), rate_limits=False,
                        hold_max_inflight=2)
    srv = TestServer(create_app(settings, redis_server.url), host="127.0.0.1")
    await srv.start_server()
    pub = await publish_show(redis)
    try:
        async with aiohttp.ClientSession(base_url=str(srv.make_url(""))) as http:
            seats = [f"{row}{n}" for row in "ABCDE" for n in range(1, 11)] + ["A1"] * 10
            results = await asyncio.gather(*(
                status_of(http, "POST", f"/api/shows/{pub.show_id}/holds", {},
                          {"seats": [s]}) for s in seats))
        codes = [r[0] for r in results]
        shed = [r for r in results if r[0] == 429]
        assert shed and codes.count(201) >= 2, codes
        assert set(codes) <= {201, 409, 429}, codes
        assert all(r[1]["error"]["code"] == "overloaded" and r[2] == "1" for r in shed)
    finally:
        await srv.close()


async def test_a_leaked_ip_restricted_key_cannot_keep_its_partner_at_429(
        api: aiohttp.ClientSession, redis: Any) -> None:
    """L7: 30 requests with the partner's valid key from addresses its allow-list refuses
    (403 each), and 30 with keys that are not valid (401 each), charge the key's bucket
    (burst 12) nothing: the partner's own request from its allowed address is served. The
    refused requests were charged to their caller's address instead. The key's bucket
    still limits the partner itself."""
    from server.accounts.api_keys import issue_key

    partner = await new_partner(api)
    office = new_ip()
    key = await issue_key(redis, partner.partner_id, "box office", "write", [office])
    mine = {"Authorization": f"Bearer {key}"}
    statuses = [(await status_of(api, "GET", "/partner/v1/theatres",
                                 as_ip(new_ip(), **mine)))[0] for _ in range(30)]
    assert statuses == [403] * 30, statuses
    forged = [(await status_of(api, "GET", "/partner/v1/theatres",
                               as_ip(new_ip(), Authorization=f"Bearer bmm_{uuid.uuid4().hex}"))
               )[0] for _ in range(30)]
    assert forged == [401] * 30, forged
    assert (await status_of(api, "GET", "/partner/v1/theatres", as_ip(office, **mine)))[0] \
        == 200
    # a refused caller spends its own address's bucket (reads: burst 5)
    thief = new_ip()
    codes = [(await status_of(api, "GET", "/partner/v1/theatres", as_ip(thief, **mine)))[0]
             for _ in range(7)]
    assert codes == [403] * 5 + [429] * 2, codes
    # the partner's own requests are still charged to its key (burst 12, from many of its
    # addresses: only the key's bucket can refuse)
    own = [(await status_of(api, "GET", "/partner/v1/theatres", as_ip(office, **mine)))[0]
           for _ in range(4)]
    assert own == [200] * 4, own  # the office address: 1 + 4 of its read burst of 5
    key2 = await issue_key(redis, partner.partner_id, "anywhere", "write")
    anywhere = {"Authorization": f"Bearer {key2}"}
    codes = [(await status_of(api, "GET", "/partner/v1/theatres", as_ip(new_ip(), **anywhere)))[0]
             for _ in range(15)]
    assert 429 in codes and codes.index(429) <= 12, codes
