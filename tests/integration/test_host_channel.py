"""The data path into a host (actors/channel.py): a direct stream that only a caller who
asked the host through Ray can use. (Its breaks - a host killed mid-stream - are in
test_actor_recovery.py: those calls now travel on it.)"""
from __future__ import annotations

import asyncio
import time

import ray

from actors import commands as c
from actors.channel import HEADER, Channel
from actors.layout import grid_layout

from ..show_actors import host_of


async def test_the_stream_serves_only_its_token(shows, directory):
    show_id = await shows(grid_layout(2, 5))
    handle = await host_of(directory, show_id)
    address, port, token = await handle.endpoint.remote()
    blob = c.command_encoder.encode(c.Call(directory.epoch, [
        c.Group(show_id, [c.Hold("chan-1", "chan-h1", "t", ["A1"])])]))

    reader, writer = await asyncio.open_connection(address, port)
    writer.write(bytes(b ^ 0xFF for b in token) + HEADER.pack(len(blob), 1) + blob)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed without an answer
    writer.close()
    assert (await handle.inspect.remote(show_id))["holds"] == {}  # and nothing applied

    channel = await Channel.open(address, port, token)
    try:
        reply = c.reply_decoder.decode(await asyncio.wait_for(channel.call(blob), 10))
    finally:
        await channel.close()
    held = reply.results[0][0]
    assert isinstance(held, c.Held) and held.seats == ["A1"], held
    assert set((await handle.inspect.remote(show_id))["holds"]) == {"chan-h1"}


async def test_a_restarted_host_has_a_new_stream(shows, directory):
    """The old token opens nothing on the host Ray started in its place."""
    show_id = await shows(grid_layout(2, 5))
    handle = await host_of(directory, show_id)
    before = await handle.endpoint.remote()
    assert isinstance(await directory.submit(show_id, c.Block("chan-b1", ["A2"])),
                      c.BlockedSeats)
    ray.kill(handle, no_restart=False)
    # ray.kill returns before the process is gone: the old host may still answer a call
    # or two. Wait until the handle reaches its successor (a new token: Ray announces the
    # restart to nobody, so this is polled, with a deadline).
    deadline = time.monotonic() + 60
    while True:
        try:
            after = await handle.endpoint.remote()
            if after[2] != before[2]:
                break
        except ray.exceptions.ActorUnavailableError:
            pass
        assert time.monotonic() < deadline, "Ray did not restart the host"
        await asyncio.sleep(0.1)
    # The directory's next command reaches the restarted host (a new stream).
    res = await directory.submit(show_id, c.Block("chan-b2", ["A3"]))
    assert isinstance(res, c.BlockedSeats), res
    reader, writer = await asyncio.open_connection(after[0], after[1])
    writer.write(before[2] + HEADER.pack(1, 1) + b"x")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert set((await handle.inspect.remote(show_id))["status"]) >= {"A2", "A3"}
