"""Per API key usage against the real server and Redis: every request an API key (or one of
its access tokens) authenticates is counted per UTC day, errors by class, with a latency
histogram for the p95; the partner reads it with the key (GET /partner/v1/usage) and in the
portal (GET /api/partner/keys/{key_id}/usage)."""
from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta

import aiohttp
import redis.asyncio as aioredis

from server.accounts import api_keys, key_usage

from .catalog_helpers import new_partner, uid
from .test_partner_onboarding import approved_partner

SHOWS = "/partner/v1/shows?date=2030-01-01"
THEATRE = {"name": "Regal", "city": "Pune", "address": "1 MG Road", "timezone": "Asia/Kolkata"}


def key_id(api_key: str) -> str:
    return api_keys.key_id_of(api_keys.hash_key(api_key))


async def status_of(api: aiohttp.ClientSession, method: str, path: str, key: str,
                    body: object = None) -> int:
    async with api.request(method, path, json=body,
                           headers={"Authorization": f"Bearer {key}"}) as resp:
        await resp.read()
        return resp.status


def today(rows: list[dict]) -> dict:
    assert rows[-1]["date"] == datetime.now(UTC).date().isoformat()
    return rows[-1]


async def test_requests_errors_and_p95_per_day(api: aiohttp.ClientSession,
                                               redis: aioredis.Redis) -> None:
    partner = await new_partner(api)
    other = await api_keys.issue_key(redis, partner.partner_id, "reporting", "read")
    statuses = []
    statuses += [await status_of(api, "GET", SHOWS, partner.key) for _ in range(7)]
    statuses += [await status_of(api, "GET", f"/partner/v1/shows/{uid('sh')}", partner.key)
                 for _ in range(2)]                                     # 404: not found
    statuses.append(await status_of(api, "PUT", f"/partner/v1/theatres/{uid('th')}",
                                    partner.key, {"name": 1}))         # 422
    statuses.append(await status_of(api, "PUT", f"/partner/v1/theatres/{uid('th')}",
                                    other, THEATRE))                    # 403 read-only key
    assert statuses == [200] * 7 + [404, 404, 422, 403], statuses
    # a token counts for the key it was issued for
    raw = base64.b64encode(f"{key_id(partner.key)}:{partner.key}".encode()).decode()
    async with api.post("/oauth/token", data={"grant_type": "client_credentials"},
                        headers={"Authorization": f"Basic {raw}"}) as resp:
        assert resp.status == 200                                       # counted too
        token = (await resp.json())["access_token"]
    assert await status_of(api, "GET", SHOWS, token) == 200
    # not a key: counted nowhere
    assert await status_of(api, "GET", SHOWS, "bmm_not-a-key") == 401

    async with api.get("/partner/v1/usage?days=7",
                       headers={"Authorization": f"Bearer {other}"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["partner_id"] == partner.partner_id
    by_key = {k["key_id"]: k for k in body["keys"]}
    assert set(by_key) == {key_id(partner.key), key_id(other)}
    main = by_key[key_id(partner.key)]
    assert main["name"] == "initial" and len(main["days"]) == 7
    dates = [d["date"] for d in main["days"]]
    assert dates == sorted(dates)
    day = today(main["days"])
    assert (day["requests"], day["errors_4xx"], day["errors_5xx"], day["errors"]) == \
        (7 + 2 + 1 + 2, 3, 0, 3), day
    assert day["p95_ms"] is not None and 0 < day["p95_ms"] < 5000, day
    assert all(d["requests"] == 0 and d["p95_ms"] is None for d in main["days"][:-1])
    # the read key: its refused write (this usage request is counted after it is answered)
    assert (today(by_key[key_id(other)]["days"])["requests"],
            today(by_key[key_id(other)]["days"])["errors_4xx"]) == (1, 1)

    async with api.get("/partner/v1/usage?days=0",
                       headers={"Authorization": f"Bearer {other}"}) as resp:
        assert resp.status == 422
    async with api.get("/partner/v1/usage") as resp:
        assert resp.status == 401


async def test_the_portal_shows_one_keys_usage(clients, redis: aioredis.Redis) -> None:
    admin = clients()
    p, _ = await approved_partner(clients, admin)
    status, made = await p.call("POST", "/api/partner/keys", {"name": "feed", "scope": "write"})
    assert status == 201
    kid = made["key"]["key_id"]
    for _ in range(5):
        assert (await p.call("GET", SHOWS, headers={
            "Authorization": f"Bearer {made['api_key']}"}))[0] == 200
    # the portal's own requests (its session) are not a key's
    assert (await p.call("GET", SHOWS))[0] == 200
    status, usage = await p.call("GET", f"/api/partner/keys/{kid}/usage?days=3")
    assert status == 200, usage
    assert usage["key_id"] == kid and usage["name"] == "feed" and len(usage["days"]) == 3
    day = today(usage["days"])
    assert (day["requests"], day["errors"]) == (5, 0) and day["p95_ms"] > 0
    assert (await p.call("GET", f"/api/partner/keys/{kid}/usage?days=99"))[0] == 422
    assert (await p.call("GET", "/api/partner/keys/0000000000000000/usage"))[0] == 404
    # another partner cannot read it
    q, _ = await approved_partner(clients, admin, "Other Cinemas")
    assert (await q.call("GET", f"/api/partner/keys/{kid}/usage"))[0] == 404


async def test_usage_days_roll_over(redis: aioredis.Redis) -> None:
    kid = uid("k")
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    await redis.hset(key_usage.usage_key(kid, yesterday.strftime("%Y%m%d")),
                     mapping={"n": 20, "5xx": 1, "b5": 19, "b20": 1})
    info = api_keys.KeyInfo(kid, "k", "read", [], 0, "bmm_")
    (got,) = await key_usage.usage(redis, [info], 2)
    assert [d.requests for d in got.days] == [20, 0]
    first = got.days[0]
    # b5 is (7.5, 10] ms: the 19th of 20 is its last
    assert (first.errors_5xx, first.errors_4xx) == (1, 0) and first.p95_ms == 10.0


def test_p95_from_the_histogram() -> None:
    counts = [0] * (len(key_usage.BUCKETS_MS) + 1)
    assert key_usage.p95(counts) is None
    counts[key_usage.bucket(8.0)] = 100          # all between 7.5 and 10 ms
    assert 7.5 < key_usage.p95(counts) <= 10
    counts[key_usage.bucket(400.0)] = 10         # 10 of 110 slow: the p95 is among them
    assert 300 < key_usage.p95(counts) <= 500
    slow = [0] * len(counts)
    slow[-1] = 3                                  # slower than the last bound
    assert key_usage.p95(slow) == key_usage.BUCKETS_MS[-1]
    assert key_usage.bucket(0.2) == 0 and key_usage.bucket(1.0) == 0
    assert key_usage.bucket(1.01) == 1 and key_usage.bucket(10**6) == len(key_usage.BUCKETS_MS)


async def test_a_failed_usage_write_never_fails_anything() -> None:
    class Broken:
        def pipeline(self, transaction: bool = False):  # noqa: ANN202
            raise ConnectionError("Redis is down")

    broken = Broken()
    key_usage.record(broken, "k", 200, 1.0)  # type: ignore[arg-type]
    await key_usage.flush(broken)  # type: ignore[arg-type]
    await asyncio.sleep(0)
