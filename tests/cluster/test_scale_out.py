"""Scale-out on real processes: two web processes and a two-node Ray cluster started with
the Ray CLI on loopback (tests/cluster/harness.py).

- show hosts on both nodes, each where the pool record says (Ray's actor table, the
  host's own pid and the OS's process tree agree), and every show in the host the hash
  says and in no other: a deterministic spread (growing the pool: test_grow.py);
- a live seat-map watcher (a `websockets` client) on web process 1 sees holds made
  through web process 2;
- under concurrent holds on the same seats through both processes, no seat is held or
  sold twice.
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from actors.placement import owner

from .harness import Cluster, node_of_pid
from .rush import CARD, Rush, Watcher, check_store, poll, publish, watchers_converge


async def _hold(session: aiohttp.ClientSession, url: str, show_id: str, body: dict[str, Any]
                ) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/api/shows/{show_id}/holds", json=body) as resp:
        return resp.status, await resp.json()


async def _publish_spread(cluster: Cluster, hosts: list[str], nodes: dict[str, str],
                          at_least: int) -> list[str]:
    """Shows until every node's hosts own `at_least` of them (placement is a pure
    function of the ids, so this is chosen, not hoped for)."""
    shows: list[str] = []
    for _ in range(25):  # 2 hosts, 4 shows a round: ~3 rounds; 25 would be absurd
        per_node = Counter(nodes[owner(s, hosts)] for s in shows)
        if len(per_node) == len(set(nodes.values())) and min(per_node.values()) >= at_least:
            return shows
        rush = await publish(cluster.web[0].url, cluster.redis_url, shows=4, rows=4, per_row=10)
        shows += rush["show_ids"]
    raise AssertionError(f"placement puts 100 shows on one node only: {per_node}")


async def test_show_hosts_and_shows_spread_over_both_nodes(cluster: Cluster):
    pool = cluster.pool()
    nodes = {n["node_id"] for n in await asyncio.to_thread(cluster.probe.nodes)}
    assert len(nodes) == 2
    # One host per CPU of each node (1 each here), pinned there.
    assert sorted(Counter(pool.nodes.values()).values()) == [1, 1]
    assert set(pool.nodes.values()) == nodes
    table = {a["name"]: a for a in await asyncio.to_thread(cluster.probe.actors,
                                                           cluster.pool_name)}
    for host in pool.hosts:
        assert table[host]["node_id"] == pool.nodes[host], (host, table[host])
        # ...and the OS agrees: its process descends from that node's raylet.
        assert node_of_pid(table[host]["pid"]) == pool.nodes[host], (host, table[host])

    shows = await _publish_spread(cluster, pool.hosts, pool.nodes, at_least=3)
    async with aiohttp.ClientSession() as session:
        # Activate every show (its first hold loads it into its host), all through one
        # web process (one Ray driver, attached to one of the two nodes).
        for show_id in shows:
            status, _ = await _hold(session, cluster.web[0].url, show_id,
                                    {"best": {"count": 1}})
            assert status == 201
    loaded = await asyncio.to_thread(cluster.probe.loaded, pool.hosts)
    for host, where in loaded.items():
        assert where["pid"] == table[host]["pid"]  # the table and the host agree
    for show_id in shows:
        holders = [h for h, where in loaded.items() if show_id in where["shows"]]
        assert holders == [owner(show_id, pool.hosts)], (show_id, holders)
    per_node = Counter(pool.nodes[owner(s, pool.hosts)] for s in shows)
    print(f"shows per node: {dict(per_node)}")
    assert set(per_node) == nodes and min(per_node.values()) >= 3, per_node


async def test_watcher_on_one_process_sees_holds_made_through_the_other(cluster: Cluster):
    rush = await publish(cluster.web[0].url, cluster.redis_url, shows=1, rows=6, per_row=10,
                         hold_ttl_ms=60_000)
    show_id = rush["show_ids"][0]
    watcher = Watcher([cluster.web[0].ws_url], show_id).start()
    try:
        await asyncio.wait_for(watcher.connected.wait(), 30)
        await poll(lambda: _true(watcher.seq is not None), 30, "the watcher's snapshot")
        async with aiohttp.ClientSession() as session:
            for seats in (["A1", "A2"], ["C5"], ["F10"]):
                status, hold = await _hold(session, cluster.web[1].url, show_id,
                                           {"seats": seats})
                assert status == 201, hold
                await poll(lambda: _true(all(watcher.seats.get(s) == "held" for s in seats)),
                           30, f"web 1's watcher to see {seats} held through web 2",
                           interval=0.02)
        assert watcher.connects == 1  # one socket, every change over it
        await watchers_converge([watcher], [w.url for w in cluster.web], show_id)
    finally:
        await watcher.close()


async def test_no_seat_held_or_sold_twice_across_processes(cluster: Cluster, tmp_path: Path):
    rush_info = await publish(cluster.web[0].url, cluster.redis_url, shows=1, rows=3,
                              per_row=8, hold_ttl_ms=60_000)
    show_id = rush_info["show_ids"][0]
    seats = rush_info["seat_ids"]  # 24 seats, wanted by 120 customers at once
    watchers = [Watcher([w.ws_url], show_id).start() for w in cluster.web]
    rnd = random.Random(7)
    asks = [rnd.sample(seats, rnd.randint(1, 3)) for _ in range(120)]
    try:
        for w in watchers:
            await asyncio.wait_for(w.connected.wait(), 30)
        async with aiohttp.ClientSession() as session:
            answers = await asyncio.gather(*(
                _hold(session, cluster.web[i % 2].url, show_id, {"seats": ask})
                for i, ask in enumerate(asks)))
            won = [hold for status, hold in answers if status == 201]
            assert {status for status, _ in answers} <= {201, 409}, Counter(
                status for status, _ in answers)
            assert len(won) < len(asks), "no contention: the test proves nothing"
            held = Counter(s for hold in won for s in hold["seats"])
            assert [s for s, n in held.items() if n > 1] == [], "a seat held twice"

            # Each winner checks out through the process it did not hold through.
            rush = Rush([w.url for w in cluster.web], rush_info, tmp_path / "ledger.jsonl")

            async def checkout(i: int, hold: dict[str, Any]) -> None:
                url = cluster.web[(i + 1) % 2].url
                async with session.post(
                        f"{url}/api/holds/{hold['hold_id']}/checkout",
                        json={"card": CARD, "email": "a@example.com", "name": "A"},
                        headers={"X-Holder-Token": hold["holder_token"],
                                 "Idempotency-Key": f"k{i}"}) as resp:
                    assert resp.status == 201, await resp.text()
                    booking = await resp.json()
                rush.booked.append({"show": show_id, "booking_id": booking["booking_id"],
                                    "seats": booking["seats"]})

            await asyncio.gather(*(checkout(i, hold) for i, hold in enumerate(won)))
        rush.ledger.close()
        assert len(rush.booked) == len(won)
        await check_store(cluster.redis_url, rush, [show_id])
        await watchers_converge(watchers, [w.url for w in cluster.web], show_id)
        sold = Counter(s for w in watchers[:1] for s, st in w.seats.items() if st == "booked")
        assert set(sold) == set(held)
    finally:
        for w in watchers:
            await w.close()


async def _true(value: bool) -> bool:
    return value
