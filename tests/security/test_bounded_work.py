"""Bounded work per request (security review M6, M7), measured with Redis' own counters
(`INFO commandstats`) against the real server.

M6: a sales report walks the keyspace at most once (not once per show), runs at most
`reports.REPLAYS` seat-map replays at once, and refuses more than `reports.MAX_SHOWS` shows.
M7: cache-busting `/api/search` (varying `page`/`q`), `/api/movies` and
`/api/recommendations` do not re-read the listing indexes per request, and search writes
no `search:*` keys; `page` and `q` are capped; trivially different queries share an entry.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import math

import pytest
import redis.asyncio as aioredis

from server.catalog import service as catalog
from server.partner import reports

from tests.api.catalog_helpers import new_partner, uid


REPLAYS = getattr(reports, "REPLAYS", 8)


def clear_reports_cache() -> None:
    getattr(reports, "clear_cache", lambda: None)()


async def calls(redis: aioredis.Redis, command: str) -> int:
    """Calls of `command` so far, summed over every master of a Redis Cluster."""
    if isinstance(redis, aioredis.RedisCluster):
        per_node = await redis.info("commandstats", target_nodes=aioredis.RedisCluster.PRIMARIES)
        return sum(int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
                   for stats in per_node.values())
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def partner_with_shows(api, n: int):
    p = await (await new_partner(api)).setup(runtime=90)
    shows = []
    for i in range(n):
        show_id = uid("sh")
        status, body = await p.call("PUT", f"/partner/v1/shows/{show_id}", p.show(6 + 2 * i))
        assert status == 201, body
        shows.append(body)
    dates = sorted({s["starts_at"][:10] for s in shows})
    # theatre-local dates (Asia/Kolkata) run up to a day after the UTC date
    last = (dt.date.fromisoformat(dates[-1]) + dt.timedelta(days=1)).isoformat()
    return p, shows, dates[0], last


async def walk_cost(redis: aioredis.Redis) -> int:
    """SCAN calls of one walk over the whole keyspace (COUNT 1000, as the report uses)."""
    return max(1, math.ceil(await redis.dbsize() / getattr(reports, "SCAN_COUNT", 1000))) + 1


# --- M6 ------------------------------------------------------------------------------------

async def test_sales_report_walks_the_keyspace_at_most_once(api, redis) -> None:
    p, shows, first, last = await partner_with_shows(api, 6)
    clear_reports_cache()
    before = await calls(redis, "scan")
    status, body = await p.call("GET", f"/partner/v1/reports/sales?from={first}&to={last}")
    assert status == 200, body
    assert sum(r["shows"] for r in body["rows"]) == len(shows)
    scans = await calls(redis, "scan") - before
    walk = await walk_cost(redis)
    print(f"M6: {len(shows)} shows, SCAN calls per report {scans} (one walk ~{walk})")
    # before the fix: one whole-keyspace walk per show, i.e. >= 6 walks
    assert scans <= walk, (scans, walk)


async def test_sales_report_bounds_concurrent_replays(api, redis, monkeypatch) -> None:
    p, shows, first, last = await partner_with_shows(api, REPLAYS + 4)
    real = reports.read_seat_statuses
    in_flight = peak = 0

    async def slow(redis_, show_id):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.05)
            return await real(redis_, show_id)
        finally:
            in_flight -= 1

    monkeypatch.setattr(reports, "read_seat_statuses", slow)
    clear_reports_cache()
    status, body = await p.call("GET", f"/partner/v1/reports/sales?from={first}&to={last}")
    assert status == 200, body
    print(f"M6: {len(shows)} shows, peak concurrent replays {peak}")
    assert 1 <= peak <= REPLAYS, peak


async def test_sales_report_refuses_too_many_shows(api, monkeypatch) -> None:
    p, shows, first, last = await partner_with_shows(api, 4)
    monkeypatch.setattr(reports, "MAX_SHOWS", 3, raising=False)
    status, body = await p.call("GET", f"/partner/v1/reports/sales?from={first}&to={last}")
    assert status == 422, body
    assert body["error"]["code"] == "too_many_shows", body
    assert "shorter range" in body["error"]["message"]


async def test_finished_days_are_cached_per_partner(redis, monkeypatch) -> None:
    """A finished day's facts are loaded once; an unfinished day's every time."""
    partner = uid("pt")
    today = dt.date(2031, 6, 10)
    old, recent = "2031-06-01", "2031-06-09"
    assert reports.finished(old, today) and not reports.finished(recent, today)
    reports.clear_cache()
    before = await calls(redis, "zrange")
    await reports.load_facts(redis, partner, [old, recent], today=today)
    await reports.load_facts(redis, partner, [old, recent], today=today)
    assert (partner, old) in reports._finished and (partner, recent) not in reports._finished
    assert await calls(redis, "zrange") - before == 4  # the index read; nothing to replay


# --- M7 ------------------------------------------------------------------------------------

async def listing_reads(redis: aioredis.Redis) -> int:
    return await calls(redis, "zrangebyscore")


async def one_load_cost(redis: aioredis.Redis) -> int:
    """ZRANGEBYSCOREs of one listing load over all cities for the browse window."""
    return len(await redis.hkeys(catalog.CITIES)) * (catalog.BROWSE_DAYS + 2)


async def search_keys(redis: aioredis.Redis) -> int:
    return len([k async for k in redis.scan_iter(match="search:*", count=1000)])


async def test_search_cache_busting_does_not_rescan_the_catalogue(api, redis) -> None:
    p = await (await new_partner(api)).setup(title="Bounded Busting")
    status, out = await p.call("PUT", f"/partner/v1/shows/{uid('sh')}", p.show(20))
    assert status == 201, out
    n = 40
    keys_before, before = await search_keys(redis), await listing_reads(redis)
    for i in range(n):
        params = {"q": f"bounded {i}", "page": str(1 + i % 50)}
        async with api.get("/api/search", params=params) as resp:
            assert resp.status == 200, await resp.text()
    reads = await listing_reads(redis) - before
    cost = await one_load_cost(redis)
    new_keys = await search_keys(redis) - keys_before
    print(f"M7 search: {n} cache-busting requests, {reads} ZRANGEBYSCORE "
          f"(one load = {cost}), {new_keys} new search:* keys")
    # before the fix: n loads (n * cost reads) and n new search:* keys
    assert reads <= cost + 5, (reads, cost)
    assert new_keys == 0


async def test_search_caps_page_and_query_and_normalises(api) -> None:
    for params in ({"page": "51"}, {"page": "10000"}, {"q": "x" * 201}):
        async with api.get("/api/search", params=params) as resp:
            assert resp.status == 422, params
    p = await (await new_partner(api)).setup(title="Amélie Normal")
    status, out = await p.call("PUT", f"/partner/v1/shows/{uid('sh')}", p.show(20))
    assert status == 201, out
    states = []
    for q in ("Amélie normal", "AMELIE, normal!", "amelie amelie  Normal"):
        async with api.get("/api/search", params={"q": q, "city": p.city}) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["query"] == " ".join(q.split())  # each request's own q echoed
            assert [h["movie"]["movie_id"] for h in body["results"]] == [p.movie]
            states.append(resp.headers["X-Cache"])
    assert states == ["miss", "hit", "hit"]


@pytest.mark.parametrize("path", ["/api/movies", "/api/recommendations"])
async def test_browse_and_recommendations_do_not_rescan_per_request(api, redis, path) -> None:
    p = await (await new_partner(api)).setup(title="Bounded Browse")
    status, out = await p.call("PUT", f"/partner/v1/shows/{uid('sh')}", p.show(20))
    assert status == 201, out
    n = 30
    before = await listing_reads(redis)
    for i in range(n):
        params = {"city": p.city} if i % 2 else {"language": f"lang{i}"}
        async with api.get(path, params=params) as resp:
            assert resp.status == 200, await resp.text()
    reads = await listing_reads(redis) - before
    cost = await one_load_cost(redis)
    print(f"M7 {path}: {n} requests, {reads} ZRANGEBYSCORE (one load = {cost})")
    # before the fix: every request read the listing indexes (>= n reads)
    assert reads <= cost + 5, (reads, cost)
