"""Crashes in the middle of a stream of bookings: the show's host (ray.kill, kill -9 of its
process) and Redis (kill -9, restart on the same port and data). Acknowledged means
durable; the clients ride through; the restarted host's state is exactly the log."""
from __future__ import annotations

import asyncio
import os
import signal
import time as _time

import msgspec
import pytest
import ray

from actors import commands as c, redis_conn
from actors.client import ShowDirectory
from actors.layout import ShowConfig, grid_layout
from actors.seatmap import Snapshot
from actors.store import Event, Fenced, LogEntry, ShowStore, event_encoder, put_config

from .conftest import (
    Stream,
    append_behind_the_actors_back,
    comparable,
    gone,
    host_of,
    raw_apply,
    replayed_state,
    restarted,
)

LAYOUT = grid_layout(20, 20)
SEATS = [s.id for s in LAYOUT.seats]


def kill(handle: ray.actor.ActorHandle, pid: int, how: str) -> None:
    if how == "ray.kill":
        ray.kill(handle, no_restart=False)
    else:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["ray.kill", "kill -9"])
async def test_host_killed_mid_stream(how, shows, directory, redis):
    show_id = await shows(LAYOUT)
    client = directory.client(show_id)
    stream = Stream(client.submit, SEATS, workers=8, steps=25)
    handle = await host_of(directory, show_id)
    old_pid = await handle.pid.remote()

    running = asyncio.create_task(stream.run())
    await stream.reached(40).wait()
    # Hold back new commands (the ones in flight stay in flight) until the old process is
    # gone: on a quiet machine the rest of the stream could otherwise finish before
    # ray.kill lands, and nothing would have met the crash.
    stream.gate.clear()
    kill(handle, old_pid, how)
    await gone(old_pid)
    acked_at_kill = stream.acked
    stream.gate.set()
    await restarted(handle, old_pid)
    await running

    assert stream.acked > acked_at_kill, "the kill did not land mid-stream"
    assert stream.acked > 8 * 25  # holds plus their releases / confirms
    assert stream.rejections() == []  # retried until answered; never twice-applied
    state = comparable(await handle.inspect.remote(show_id))
    assert state == await replayed_state(redis, show_id)
    stream.assert_reflected_exactly(state)


@pytest.mark.single_redis
async def test_redis_kill9_mid_stream(shows, private_redis, private_redis_client, settings,
                                      ray_cluster):
    redis = private_redis_client
    show_id = await shows(LAYOUT)  # (in the session Redis) registers the id for clean-up
    await put_config(redis, ShowConfig(show_id, LAYOUT))
    directory = await ShowDirectory(private_redis.url, settings, pool="private-redis",
                                    hosts_per_node=1).start()
    client = directory.client(show_id)
    stream = Stream(client.submit, SEATS, workers=8, steps=20)
    handle = await host_of(directory, show_id)
    pid = await handle.pid.remote()

    running = asyncio.create_task(stream.run())
    await stream.reached(40).wait()
    private_redis.kill9()
    acked_at_crash = stream.acked
    await asyncio.sleep(0.3)  # an outage, not a sync point: nothing can be acked now
    assert stream.acked <= acked_at_crash + 8  # at most the batch that was in flight
    await asyncio.to_thread(private_redis.start)  # same port, same data dir
    await running

    assert stream.rejections() == []
    assert await handle.pid.remote() == pid  # the host rode it out, it did not die
    state = comparable(await handle.inspect.remote(show_id))
    assert state == await _replayed_fresh(private_redis.url, show_id)
    stream.assert_reflected_exactly(state)

    # Crash Redis again right after the last acknowledgement: all of it was fsynced.
    private_redis.kill9()
    await asyncio.to_thread(private_redis.start)
    assert await _replayed_fresh(private_redis.url, show_id) == state

    # And the host keeps serving against the restarted Redis (it reloads as needed).
    free = [s for s, st in state["status"].items() if st == "free"][:2]
    res = await client.submit(c.Hold("after", "after", "tok", free))
    assert isinstance(res, c.Held)
    after = comparable(await handle.inspect.remote(show_id))
    assert after == await _replayed_fresh(private_redis.url, show_id)
    assert after["version"] == state["version"] + 1
    directory.kill_hosts()  # their Redis goes with this test
    await directory.close()


async def test_resend_after_kill_is_answered_not_applied(shows, directory, redis, settings):
    show_id = await shows(LAYOUT)
    handle = await host_of(directory, show_id)
    batch = c.command_encoder.encode([
        c.Hold("i1", "h1", "tok1", ["A1", "A2"]),
        c.Hold("i2", "h2", "tok2", ["A2", "A3"]),          # rejected: A2 is taken
        c.HoldBest("i3", "h3", "tok3", count=3),
        c.Confirm("i4", "h1", "tok1", "b1", "pay-1"),
        c.Block("i5", ["T1", "T2"]),
        c.Hold("i6", "h6", "tok6", ["ZZ99"]),              # rejected: no such seat
    ])
    first = await raw_apply(handle, directory, show_id, batch)
    assert [type(r).__name__ for r in first] == [
        "Held", "Rejected", "Held", "Confirmed", "BlockedSeats", "Rejected"]

    # Enough further changes that a snapshot (every 50) covers the batch: the answers
    # must come back from the snapshot, not only from replaying the log.
    filler = [c.Block(f"f{i}", ["S1"]) if i % 2 == 0 else c.Unblock(f"f{i}", ["S1"])
              for i in range(60)]
    await raw_apply(handle, directory, show_id, filler)
    state = comparable(await handle.inspect.remote(show_id))
    assert state["version"] >= settings.snapshot_every
    assert await redis.exists(f"show:{{{show_id}}}:snap")
    seq = int(await redis.get(f"show:{{{show_id}}}:seq"))

    for how in ("kill -9", "ray.kill"):
        old_pid = await handle.pid.remote()
        kill(handle, old_pid, how)
        await restarted(handle, old_pid)
        again = await raw_apply(handle, directory, show_id, batch)
        assert again == first, how
        assert comparable(await handle.inspect.remote(show_id)) == state, how
        assert int(await redis.get(f"show:{{{show_id}}}:seq")) == seq, how

    # Through the coalescing client too, on a fresh restart (answers rebuilt by replay).
    kill(handle, await handle.pid.remote(), "kill -9")
    results = await asyncio.gather(*(
        directory.submit(show_id, cmd) for cmd in c.commands_decoder.decode(batch)))
    assert results == first
    assert comparable(await handle.inspect.remote(show_id)) == state
    assert state == await replayed_state(redis, show_id)


async def test_stale_state_cannot_write(shows, directory, redis):
    """Fencing: a write computed from an old state never lands; the host, finding the
    show's log moved on behind its back, reloads it and applies its batch on top: both
    writes stay."""
    show_id = await shows(LAYOUT)
    client = directory.client(show_id)
    assert isinstance(await client.submit(c.Hold("a", "ha", "tok-a", ["A1", "A2"])), c.Held)
    before = comparable(await directory.inspect(show_id))

    # Someone else (a twin instance) writes to the log at the right sequence.
    seq, (ext,) = await append_behind_the_actors_back(
        redis, show_id, [c.Hold("x", "hx", "tok-x", ["B1", "B2"])], _time.time_ns() // 10**6)
    assert isinstance(ext, c.Held) and seq == before["version"] + 1

    # The actor's memory is now stale. Its next batch must see the twin's write.
    results = await asyncio.gather(
        client.submit(c.Hold("y", "hy", "tok-y", ["B2", "B3"])),           # B2 is taken
        client.submit(c.Confirm("z", "hx", "tok-x", "bx", "pay-x")),      # the twin's hold
        client.submit(c.Hold("w", "hw", "tok-w", ["C1"])),
    )
    assert isinstance(results[0], c.Rejected) and results[0].code == "seats_unavailable"
    assert results[0].seats == ["B2"]
    assert isinstance(results[1], c.Confirmed) and results[1].seats == ["B1", "B2"]
    assert isinstance(results[2], c.Held)

    state = comparable(await directory.inspect(show_id))
    assert state == await replayed_state(redis, show_id)
    assert set(state["holds"]) == {"ha", "hw"} and set(state["bookings"]) == {"bx"}
    assert state["version"] == seq + 2

    # A write from the old sequence is refused outright and changes nothing.
    at = _time.time_ns() // 10**6
    stale = LogEntry(at, c.command_encoder.encode(c.Hold("s", "hs", "tok-s", ["C2"])),
                     event_encoder.encode(Event(before["version"] + 1, at,
                                                [c.SeatChange("C2", "held")])))
    with pytest.raises(Fenced):
        await ShowStore(redis, show_id).append(before["version"], [stale], None, None)
    assert await replayed_state(redis, show_id) == state


async def test_a_stale_copy_does_not_refuse_from_memory(shows, directory, redis):
    """A host whose copy is behind the log (the show's old owner wrote a hold while the
    pool changed) is asked only things it would refuse: releasing, extending and paying
    for that hold. Nothing is written, so no fence catches it; each must still be
    answered from the log as it is, not with a stale `not_found`."""
    show_id = await shows(LAYOUT)
    client = directory.client(show_id)
    assert isinstance(await client.submit(c.Hold("a", "ha", "tok-a", ["A1"])), c.Held)
    at = _time.time_ns() // 10**6
    _, (held_x, held_y) = await append_behind_the_actors_back(
        redis, show_id, [c.Hold("x", "hx", "tok-x", ["B1"]), c.Hold("y", "hy", "tok-y", ["B2"])],
        at)
    assert isinstance(held_x, c.Held) and isinstance(held_y, c.Held)

    released = await client.submit(c.Release("rx", "hx", "tok-x"))
    assert isinstance(released, c.Released) and released.seats == ["B1"]
    # and again, behind its back: now a Confirm of a hold it has never seen
    _, (held_z,) = await append_behind_the_actors_back(
        redis, show_id, [c.Hold("z", "hz", "tok-z", ["C1"])], _time.time_ns() // 10**6)
    assert isinstance(held_z, c.Held)
    confirmed = await client.submit(c.Confirm("cz", "hz", "tok-z", "bz", "pay-z"))
    assert isinstance(confirmed, c.Confirmed) and confirmed.seats == ["C1"]
    # a refusal that is right stays a refusal (and the copy is current: no reload loop)
    taken = await client.submit(c.Hold("t", "ht", "tok-t", ["B2"]))
    assert isinstance(taken, c.Rejected) and taken.code == "seats_unavailable"
    state = comparable(await directory.inspect(show_id))
    assert state == await replayed_state(redis, show_id)
    assert set(state["holds"]) == {"ha", "hy"} and set(state["bookings"]) == {"bz"}


async def _replayed_fresh(url: str, show_id: str) -> dict:
    """Replay over a new connection: a client's pooled ones died with the old server."""
    fresh = redis_conn.async_client(url)
    try:
        return await replayed_state(fresh, show_id)
    finally:
        await fresh.aclose()


async def test_snapshots_keep_coming_across_restarts(shows, directory, redis, settings):
    """A show reloaded (host restarted, or passivated) every fewer than `snapshot_every`
    changes must still snapshot and trim: otherwise the log grows forever and so does
    every load."""
    show_id = await shows(LAYOUT)
    client = directory.client(show_id)
    handle = await host_of(directory, show_id)
    half = settings.snapshot_every // 2 + 5
    for round_ in range(3):
        cmds = [(c.Block if i % 2 == 0 else c.Unblock)(f"{round_}-{i}", ["S1"])
                for i in range(half)]
        assert not any(isinstance(r, c.Rejected)
                       for r in await asyncio.gather(*map(client.submit, cmds)))
        old_pid = await handle.pid.remote()
        kill(handle, old_pid, "kill -9")
        await restarted(handle, old_pid)

    snap = await redis.get(f"show:{{{show_id}}}:snap")
    assert snap is not None, "no snapshot after 3 x snapshot_every/2 changes"
    assert msgspec.msgpack.decode(snap, type=Snapshot).version >= settings.snapshot_every
    assert comparable(await handle.inspect.remote(show_id)) == await replayed_state(redis, show_id)
