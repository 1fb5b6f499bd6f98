"""The web tier's client of the show hosts (actors/client.py): request ids stamped on
the commands, the batch observer, group commit across shows, routing by the pool."""
from __future__ import annotations

import asyncio

from actors import client as actor_client
from actors import commands as c
from actors import placement
from actors.context import request_id
from actors.layout import grid_layout

from .conftest import read_log


async def test_commands_carry_their_request_ids_and_the_observer_sees_each_batch(
        shows, directory, redis):
    show_id = await shows(grid_layout(2, 5))
    await directory.inspect(show_id)  # loaded, so the batch below is the whole story
    host = directory._host(directory.owner(show_id))
    calls = host.calls
    seen: list[tuple[str, int, int, float]] = []
    previous = actor_client.set_batch_observer(
        lambda show, cmds, results, secs: seen.append((show, len(cmds), len(results), secs)))
    try:
        async def request(rid: str, cmd: c.Command) -> c.Result:
            request_id.set(rid)  # each task has its own context, like each request
            return await directory.submit(show_id, cmd)

        results = await asyncio.gather(
            request("req-a", c.Hold("c1", "h1", "t", ["A1"])),
            request("req-b", c.Hold("c2", "h2", "t", ["A2"])),
            request("", c.Release("c3", "h3", "t")),
            request("req-d", c.Hold("c4", "h4", "t", ["A4"], rid="explicit")),
        )
    finally:
        actor_client.set_batch_observer(previous)
    assert [type(r).__name__ for r in results] == ["Held", "Held", "Rejected", "Held"]
    # The request id went web -> host -> the show's log (the rejected release is not logged).
    logged = [e["command"] for e in await read_log(redis, show_id)]
    assert [(x.cmd_id, x.rid) for x in logged] == [
        ("c1", "req-a"), ("c2", "req-b"), ("c4", "explicit")]
    # Group commit: all four were queued before the flusher ran: one host call.
    assert host.calls == calls + 1
    assert [(s, n, r) for s, n, r, _ in seen] == [(show_id, 4, 4)]
    assert all(secs >= 0 for *_, secs in seen)


async def test_one_host_call_carries_many_shows(shows, directory, redis):
    made = [await shows(grid_layout(2, 5)) for _ in range(12)]
    for show_id in made:
        await directory.inspect(show_id)
    before = {h.name: h.calls for h in directory.clients()}
    results = await asyncio.gather(*(
        directory.submit(show_id, c.Hold(f"c{i}", f"h{i}", "t", [f"A{i + 1}"]))
        for show_id in made for i in range(3)))
    assert all(isinstance(r, c.Held) for r in results), results
    # Every show is on the host placement says, and each host got one call for all of its
    # shows' 3 holds each (all were queued before any call went out).
    by_host: dict[str, int] = {}
    for show_id in made:
        owner = placement.owner(show_id, directory.hosts)
        assert owner == directory.owner(show_id)
        assert await directory.is_loaded(show_id)
        by_host[owner] = by_host.get(owner, 0) + 1
    for host in directory.clients():
        if host.name in by_host:
            assert host.calls - before.get(host.name, 0) == 1, (host.name, by_host)
