"""Holds run out: the show's host frees them on its own timer (no command needed, also
after the host restarts) and sweeps before every batch; the freed seats are ordinary log
events."""
from __future__ import annotations

import asyncio

from actors import commands as c
from actors.layout import Rules, grid_layout

from .conftest import (
    append_behind_the_actors_back,
    comparable,
    host_of,
    kill9,
    next_log_entry,
    now_ms,
    read_log,
    replayed_state,
)

SHORT = Rules(hold_ttl_ms=300)


async def test_timer_frees_seats_without_another_command(shows, directory, redis):
    show_id = await shows(grid_layout(5, 10), SHORT)
    client = directory.client(show_id)
    held = await client.submit(c.Hold("c1", "h1", "tok", ["A1", "A2"]))
    assert isinstance(held, c.Held)
    [entry] = await read_log(redis, show_id)

    expired = await next_log_entry(redis, show_id, entry["seq"], timeout_s=10)

    assert isinstance(expired["command"], c.Expire)
    assert expired["event"].changes == [c.SeatChange("A1", "free"), c.SeatChange("A2", "free")]
    assert held.expires_at_ms <= expired["at"] < held.expires_at_ms + 5000
    state = await directory.inspect(show_id)
    assert state["holds"] == {} and state["status"]["A1"] == "free"
    assert state["calls"] == 1  # nobody sent anything after the hold
    assert comparable(state) == await replayed_state(redis, show_id)


async def test_timer_expires_holds_after_the_host_restarts(shows, directory, redis):
    """A restarted host owns a show with holds in its log that will run out; nobody
    writes to the show. Their seats must still be freed, or they stay held forever."""
    show_id = await shows(grid_layout(5, 10), SHORT)
    held = await directory.submit(show_id, c.Hold("c1", "h1", "tok", ["B3"]))
    assert isinstance(held, c.Held)
    [entry] = await read_log(redis, show_id)
    handle = await host_of(directory, show_id)
    kill9(await handle.pid.remote())  # Ray restarts it; no call follows

    expired = await next_log_entry(redis, show_id, entry["seq"], timeout_s=15)
    assert isinstance(expired["command"], c.Expire)
    assert expired["event"].changes == [c.SeatChange("B3", "free")]


async def test_sweep_runs_before_every_batch(shows, directory, redis):
    """A hold the actor's timer cannot know about (written behind its back, long expired)
    is swept by the next batch before its commands run, in the same append."""
    show_id = await shows(grid_layout(5, 10), SHORT)
    client = directory.client(show_id)
    assert isinstance(await client.submit(c.Block("c0", ["E10"])), c.BlockedSeats)
    seq, _ = await append_behind_the_actors_back(
        redis, show_id, [c.Hold("x", "hx", "tok-x", ["C1", "C2"])], at=now_ms() - 10_000)

    res = await client.submit(c.Hold("c1", "h1", "tok-1", ["C2", "C3"]))

    assert isinstance(res, c.Held), res
    sweep, hold = (await read_log(redis, show_id))[seq:]
    assert isinstance(sweep["command"], c.Expire) and isinstance(hold["command"], c.Hold)
    assert sweep["at"] == hold["at"]  # one batch: the sweep, then the commands
    assert sweep["event"].changes == [c.SeatChange("C1", "free"), c.SeatChange("C2", "free")]
    state = comparable(await directory.inspect(show_id))
    assert set(state["holds"]) == {"h1"}
    assert state == await replayed_state(redis, show_id)


async def test_extended_hold_expires_later(shows, directory, redis):
    show_id = await shows(grid_layout(5, 10), Rules(hold_ttl_ms=300, hold_max_lifetime_ms=5000))
    client = directory.client(show_id)
    held = await client.submit(c.Hold("c1", "h1", "tok", ["D1"]))
    ext = await client.submit(c.Extend("c2", "h1", "tok", 700))
    assert isinstance(ext, c.Extended) and ext.expires_at_ms == held.expires_at_ms + 700
    log = await read_log(redis, show_id)
    assert isinstance(log[-1]["command"], c.Extend)

    expired = await next_log_entry(redis, show_id, log[-1]["seq"], timeout_s=10)
    assert isinstance(expired["command"], c.Expire)
    assert expired["at"] >= ext.expires_at_ms  # not at the original expiry
    assert await asyncio.wait_for(directory.inspect(show_id), 10) is not None
