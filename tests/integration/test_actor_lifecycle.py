"""An actor's life: it passivates when idle with no holds (and only then), comes back
transparently on the next command, and rejects bad input with typed results while it
keeps serving."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import ray

from actors import commands as c
from actors.client import ShowDirectory
from actors.layout import Rules, grid_layout
from actors.show_actor import ActorSettings

from .conftest import (
    actor_exists,
    comparable,
    get_actor,
    next_log_entry,
    now_ms,
    read_log,
    replayed_state,
    wait_until,
)

PASSIVATE_S = 1.0


@pytest.fixture
def quick(redis_server, ray_cluster) -> ShowDirectory:
    return ShowDirectory(redis_server.url, ActorSettings(
        snapshot_every=50, keep_log=100, passivate_after_s=PASSIVATE_S))


async def test_idle_actor_passivates_and_comes_back(shows, quick, redis):
    idle = await shows(grid_layout(5, 10))
    busy = await shows(grid_layout(5, 10))
    # The busy show has a hold that will outlive the test; the idle one has a booking
    # but no holds.
    assert isinstance(await quick.submit(busy, c.Hold("c1", "h1", "t1", ["A1"])), c.Held)
    busy_last_call = time.monotonic()
    busy_pid = await get_actor(busy).pid.remote()
    client = quick.client(idle)
    assert isinstance(await client.submit(c.Hold("c1", "h1", "t1", ["A1", "A2"])), c.Held)
    assert isinstance(await client.submit(c.Confirm("c2", "h1", "t1", "b1", "p")), c.Confirmed)
    assert isinstance(await client.submit(c.Block("c3", ["E1"])), c.BlockedSeats)
    before = await replayed_state(redis, idle)  # (its actor may be gone any moment now)
    assert set(before["bookings"]) == {"b1"} and before["holds"] == {}

    await wait_until(lambda: not actor_exists(idle), timeout=PASSIVATE_S + 10,
                     what="the idle show's actor to passivate")

    # The busy show's actor has been idle as long (plus a full timer round): it stays.
    await wait_until(lambda: time.monotonic() > busy_last_call + PASSIVATE_S + 1.5,
                     timeout=10)
    assert actor_exists(busy)
    assert await get_actor(busy).pid.remote() == busy_pid

    # The next commands (through a client whose handle is the dead actor) recreate it.
    results = await asyncio.gather(*(
        client.submit(c.Hold(f"n{i}", f"nh{i}", "t2", [f"B{i}"])) for i in range(1, 11)))
    assert all(isinstance(r, c.Held) for r in results), results
    again = await client.submit(c.Confirm("c2", "h1", "t1", "b1", "p"))  # a retry
    assert isinstance(again, c.Confirmed) and again.seats == ["A1", "A2"]
    after = comparable(await get_actor(idle).inspect.remote())
    assert after["bookings"] == before["bookings"]
    assert after["status"]["E1"] == "blocked"
    assert after["version"] == before["version"] + 10
    assert after == await replayed_state(redis, idle)


async def test_bad_input_gets_typed_rejections_and_the_actor_keeps_serving(
        shows, directory, redis):
    show_id = await shows(grid_layout(5, 10), Rules(max_seats_per_hold=4, hold_ttl_ms=1500))
    client = directory.client(show_id)

    async def rejected(cmd: c.Command, code: str, seats: list[str] | None = None) -> None:
        res = await client.submit(cmd)
        if not isinstance(res, c.Rejected):  # say what the actor had, to diagnose it
            state = await get_actor(show_id).inspect.remote()
            raise AssertionError(f"{cmd} -> {res}; at {now_ms()} the actor had {state}, "
                                 f"the log {await read_log(redis, show_id)}")
        assert res.code == code, res
        if seats is not None:
            assert res.seats == seats
        assert res.message

    await rejected(c.Hold("r1", "x1", "t", ["A1", "Q99", "A0"]), "unknown_seats", ["Q99", "A0"])
    await rejected(c.Hold("r2", "x2", "t", ["A1", "A2", "A3", "A4", "A5"]), "too_many_seats")
    await rejected(c.HoldBest("r3", "x3", "t", count=5), "too_many_seats")
    await rejected(c.Hold("r4", "x4", "t", []), "invalid")
    await rejected(c.HoldBest("r5", "x5", "t", count=0), "invalid")
    await rejected(c.HoldBest("r6", "x6", "t", count=2, category="gold"), "invalid")
    await rejected(c.Block("r7", ["ZZ1"]), "unknown_seats", ["ZZ1"])

    held = await client.submit(c.Hold("ok1", "h1", "owner", ["A1", "A2"]))
    assert isinstance(held, c.Held)
    await rejected(c.Release("r8", "h1", "thief"), "not_owner")
    await rejected(c.Confirm("r9", "h1", "thief", "b1", "p"), "not_owner")
    await rejected(c.Extend("r10", "h1", "owner", -5), "invalid")
    await rejected(c.Hold("r11", "h1", "owner", ["B1"]), "duplicate_id")
    await rejected(c.Hold("r12", "x12", "other", ["A2", "B2"]), "seats_unavailable", ["A2"])
    await rejected(c.Release("r13", "nope", "owner"), "not_found")
    await rejected(c.Cancel("r14", "nope", "owner"), "not_found")
    seq = (await read_log(redis, show_id))[-1]["seq"]
    assert seq == 1  # none of the above was logged

    # The hold runs out (await its expiry event); confirming it then is refused.
    expired = await next_log_entry(redis, show_id, seq, timeout_s=10)
    assert isinstance(expired["command"], c.Expire)
    await rejected(c.Confirm("r15", "h1", "owner", "b1", "p"), "not_found")
    await rejected(c.Extend("r16", "h1", "owner", 100), "not_found")

    # A batch that is not even a list of commands fails that call, nothing else.
    handle = get_actor(show_id)
    pid = await handle.pid.remote()
    with pytest.raises(ray.exceptions.RayTaskError):
        await handle.apply.remote(b"\x93not msgpack commands")
    with pytest.raises(ray.exceptions.RayTaskError):
        await handle.apply.remote(c.command_encoder.encode([{"type": "steal", "cmd_id": "x"}]))

    # The actor still serves, in the same process, and its state is exactly the log.
    res = await client.submit(c.Hold("ok2", "h2", "owner", ["A1", "A2", "A3", "A4"]))
    assert isinstance(res, c.Held)
    assert await handle.pid.remote() == pid
    state = comparable(await handle.inspect.remote())
    assert set(state["holds"]) == {"h2"} and state["bookings"] == {}
    assert state == await replayed_state(redis, show_id)


async def test_unknown_show_is_rejected_and_leaves_no_actor(shows, directory):
    show_id = f"no-such-show-{uuid.uuid4().hex[:8]}"
    shows.made.append(show_id)  # clean up if the test fails
    res = await directory.submit(show_id, c.Hold("c1", "h1", "t", ["A1"]))
    assert isinstance(res, c.Rejected) and res.code == "not_found", res
    results = await asyncio.gather(*(
        directory.submit(show_id, c.Block(f"b{i}", ["A1"])) for i in range(5)))
    assert all(isinstance(r, c.Rejected) and r.code == "not_found" for r in results)
    # An 80 MB process per mistyped id would be a cheap way to exhaust the cluster.
    await wait_until(lambda: not actor_exists(show_id), timeout=10,
                     what="the unknown show's actor to exit")
