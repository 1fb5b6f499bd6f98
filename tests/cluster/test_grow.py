"""Growing the host pool while customers book: a third Ray node joins, a host is added on
it (what `python -m server.hosts add` does, from the `ray_probe` child process), shows
move to it by the hash, and nothing is sold twice, lost or left with two owners.

A cluster of its own (module fixture): the other cluster tests expect exactly two nodes.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from actors.placement import owner
from actors.pool import host_name

from .harness import Cluster, node_of_pid
from .rush import (
    CARD,
    Rush,
    acknowledged_holds,
    check_history,
    check_ledger,
    check_store,
    poll,
    publish,
    wait_no_holds,
)

STEP = 40
SETTLE_S = 90


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(web=2, ray_nodes=2) as cl:
        yield cl


async def _moving(cluster: Cluster, future: list[str], at_least: int, **kw: Any
                  ) -> tuple[dict[str, Any], list[str]]:
    """Publish shows until `at_least` of them will move to the host to come (placement
    is a pure hash of the ids and the host names: chosen, not hoped for)."""
    rush = await publish(cluster.web[0].url, cluster.redis_url, shows=6, **kw)
    for _ in range(25):
        moving = [s for s in rush["show_ids"] if owner(s, future) == future[-1]]
        if len(moving) >= at_least:
            return rush, moving
        more = await publish(cluster.web[0].url, cluster.redis_url, shows=4, **kw)
        assert more["seat_ids"] == rush["seat_ids"]
        rush["show_ids"] += more["show_ids"]
    raise AssertionError("no show would move to a third host")


async def _post(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.post(url, **kw) as resp:
        return resp.status, await resp.json()


async def test_a_host_added_on_a_new_node_during_a_rush(cluster: Cluster, tmp_path: Path):
    pool = cluster.pool()
    assert len(pool.hosts) == 2, pool
    future = [*pool.hosts, host_name(cluster.pool_name, len(pool.hosts))]
    urls = [w.url for w in cluster.web]
    # Rushed shows, some of which will move, and shows that will move and hold one hold
    # each across the move (nobody else touches them; their holds outlast the test).
    rush_info, moving = await _moving(cluster, future, 2, rows=6, per_row=10,
                                      hold_ttl_ms=5_000)
    shows = rush_info["show_ids"]
    _, pinned = await _moving(cluster, future, 2, rows=4, per_row=10,
                                        hold_ttl_ms=120_000, hold_max_lifetime_ms=120_000)
    pinned = pinned[:2]

    async with aiohttp.ClientSession() as session:
        pinned_holds = {}
        for show_id in pinned:
            status, hold = await _post(session, f"{urls[0]}/api/shows/{show_id}/holds",
                                       json={"seats": ["A1", "A2"]})
            assert status == 201, hold
            pinned_holds[show_id] = hold
        before_move = await asyncio.to_thread(cluster.probe.loaded, pool.hosts)
        for show_id in pinned:  # in their old owner, which is not the host to come
            assert show_id in before_move[owner(show_id, pool.hosts)]["shows"]

        rush = Rush(urls, rush_info, tmp_path / "ledger.jsonl", clients=24)
        running = asyncio.create_task(rush.run())
        try:
            await asyncio.wait_for(rush.reached(STEP).wait(), SETTLE_S)
            node_id = await asyncio.to_thread(cluster.add_node, "worker-new")
            before = rush.stats.ok()
            added = await asyncio.to_thread(cluster.probe.add_hosts, cluster.redis_url, 1,
                                            node_id)
            assert added == [future[-1]]
            # The rush goes on, and the new host serves the rushed shows that moved.
            await asyncio.wait_for(rush.reached(STEP).wait(), SETTLE_S)

            async def new_host_serves() -> bool:
                inside = await asyncio.to_thread(cluster.probe.inspect, future[-1], moving)
                return any(inside[s]["commands"] > 0 for s in moving)

            await poll(new_host_serves, SETTLE_S, "the new host to serve moved shows",
                       interval=0.5)
        finally:
            rush.stop.set()
            await asyncio.wait_for(running, SETTLE_S)
        print(f"rush: {rush.stats}")
        assert rush.stats.ok() >= before + STEP
        assert rush.stats.errors == {}, rush.stats.errors

        # The holds taken before the move are the new owner's now: each checks out,
        # through the other web process, with the seats it held.
        for i, (show_id, hold) in enumerate(pinned_holds.items()):
            status, booking = await _post(
                session, f"{urls[1]}/api/holds/{hold['hold_id']}/checkout",
                json={"card": CARD, "email": "m@example.com", "name": "Mover"},
                headers={"X-Holder-Token": hold["holder_token"],
                         "Idempotency-Key": f"pinned-{i}"})
            assert status == 201, booking
            assert sorted(booking["seats"]) == ["A1", "A2"]
            rush.booked.append({"show": show_id, "booking_id": booking["booking_id"],
                                "seats": booking["seats"]})

    grown = cluster.pool()
    assert grown.epoch == pool.epoch + 1
    assert grown.hosts == future and grown.nodes[future[-1]] == node_id
    table = {a["name"]: a for a in await asyncio.to_thread(cluster.probe.actors,
                                                           cluster.pool_name)}
    for host in future:  # each host on its node, by Ray's table and by the OS
        assert table[host]["node_id"] == grown.nodes[host], (host, table[host])
        assert node_of_pid(table[host]["pid"]) == grown.nodes[host], (host, table[host])

    # Nothing sold twice, nothing acknowledged lost.
    await wait_no_holds(cluster.redis_url, urls[0], shows, timeout=SETTLE_S)
    problems = await asyncio.to_thread(check_ledger, urls[0], rush)
    assert problems == [], problems
    await check_store(cluster.redis_url, rush, shows + pinned)
    logged = await check_history(cluster.redis_url, shows + pinned)
    for show_id, holds in acknowledged_holds(rush).items():
        for hold_id, seats in holds.items():
            assert logged[show_id].get(hold_id) == seats, f"{show_id}: {hold_id} lost"

    # Every show ends in exactly one host, its owner over the new host set: a command
    # through each web process loads it there, and the old owners let it go (they read
    # the pool about once a second).
    everything = shows + pinned
    async with aiohttp.ClientSession() as session:
        for url in urls:
            for show_id in everything:
                status, body = await _post(session, f"{url}/api/shows/{show_id}/holds",
                                           json={"best": {"count": 1}})
                assert status in (201, 409), (status, body)

    async def one_owner_each() -> bool:
        loaded = await asyncio.to_thread(cluster.probe.loaded, future)
        return all([h for h, w in loaded.items() if s in w["shows"]] == [owner(s, future)]
                   for s in everything)

    await poll(one_owner_each, 30, "every show to be in its owner only", interval=0.5)
