"""The host pool: many shows per host process, within a memory budget; the host set
changes during a rush and nothing is lost or sold twice; every show ends with one owner."""
from __future__ import annotations

import asyncio

import msgspec
import pytest

from actors import commands as c
from actors.client import ShowDirectory
from actors.host import ActorSettings
from actors.layout import ShowConfig, grid_layout
from actors.store import config_key

from .conftest import Stream, assert_one_owner_per_seat, comparable, replayed_state, wait_until

LAYOUT = grid_layout(10, 20)
SEATS = [s.id for s in LAYOUT.seats]
# The memory goal: 10,000 shows of 400 seats in <= 1.5 GB of host RSS, base included
# (two hosts here start at ~110 MB each), so a loaded show may add at most ~128 KB.
PER_SHOW_BUDGET = 128 * 1024


@pytest.fixture
async def own_pool(redis_server, ray_cluster, request):
    """A pool of this test's own (it kills its hosts at the end)."""
    made: list[ShowDirectory] = []

    async def make(hosts_per_node: int, **settings) -> ShowDirectory:
        directory = ShowDirectory(redis_server.url, ActorSettings(**settings),
                                  pool=request.node.name[:40], hosts_per_node=hosts_per_node)
        made.append(await directory.start())
        return directory

    yield make
    for directory in made:
        directory.kill_hosts()
        await directory.close()


async def test_a_thousand_shows_in_two_host_processes(own_pool, redis):
    directory = await own_pool(2)
    big = grid_layout(20, 20)
    ids = [f"mem-{directory.pool}-{i}" for i in range(1000)]
    pipe = redis.pipeline(transaction=False)
    for show_id in ids:
        pipe.set(config_key(show_id), msgspec.json.encode(ShowConfig(show_id, big)))
    await pipe.execute()
    before = await directory.host_stats()

    # Activation is a Redis read: a command that changes nothing still loads the show.
    results = await asyncio.gather(*(
        directory.submit(show_id, c.Release(f"wake-{show_id}", "no-hold", "t")) for show_id in ids))
    assert {r.code for r in results if isinstance(r, c.Rejected)} == {"not_found"}

    after = await directory.host_stats()
    assert [h["pid"] for h in after] == [h["pid"] for h in before]  # no process started
    assert sum(h["shows"] for h in after) == 1000
    assert all(h["layouts"] == 1 for h in after)  # one seat plan shared by all its shows
    grew = sum(h["rss"] for h in after) - sum(h["rss"] for h in before)
    print(f"1,000 shows: hosts grew {grew / 2**20:.1f} MB ({grew / 1000 / 1024:.1f} KB a show)")
    assert grew <= 1000 * PER_SHOW_BUDGET, grew


async def test_adding_hosts_during_a_rush_moves_shows_and_loses_nothing(own_pool, make_show,
                                                                         redis):
    directory = await own_pool(1, snapshot_every=50, keep_log=100)
    made = [await make_show(LAYOUT) for _ in range(20)]
    streams = [Stream(directory.client(show_id).submit, SEATS, workers=3, steps=16)
               for show_id in made]
    running = asyncio.gather(*(s.run() for s in streams))
    await asyncio.gather(*(s.reached(12).wait() for s in streams))
    # Hold new commands back while the pool grows, so the rest of the rush meets it.
    for s in streams:
        s.gate.clear()
    acked = [s.acked for s in streams]
    [old] = directory.hosts
    added = await directory.add_hosts(2)
    for s in streams:
        s.gate.set()
    await running

    assert sorted(directory.hosts) == sorted([old, *added])
    moved = [show_id for show_id in made if directory.owner(show_id) != old]
    assert moved, "no show moved to the new hosts"
    for show_id, stream, at_change in zip(made, streams, acked, strict=True):
        assert stream.acked > at_change  # the rush went on through the change
        assert stream.rejections() == []
        state = comparable(await directory.inspect(show_id))
        assert state == await replayed_state(redis, show_id)
        assert_one_owner_per_seat(state)
        stream.assert_reflected_exactly(state)

    # Every show ends in exactly one host: its owner (the old host lets the moved ones go
    # when it next reads the pool, about once a second).
    handles = {h: await directory.host_handle(h) for h in directory.hosts}

    async def one_owner_each() -> bool:
        loaded = {h: set(await handle.loaded.remote()) for h, handle in handles.items()}
        return all({h for h, shows in loaded.items() if show_id in shows}
                   == {directory.owner(show_id)} for show_id in made)

    await wait_until(one_owner_each, timeout=15, interval=0.2,
                     what="every show to be loaded by its owner only")
