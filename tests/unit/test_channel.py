"""actors/channel.py over real loopback sockets: answers pair with their calls by id, and a
broken stream fails every call waiting on it (the client then looks the host up again)."""
from __future__ import annotations

import asyncio

import pytest

from actors import channel as ch


async def test_answers_find_their_calls_in_any_order():
    release = {b"slow": asyncio.Event(), b"fast": asyncio.Event()}
    release[b"fast"].set()

    async def handler(payload: bytes) -> bytes:
        await release[payload].wait()
        return payload.upper()

    listener = ch.Listener(handler)
    port = await listener.start("127.0.0.1")
    channel = await ch.Channel.open("127.0.0.1", port, listener.token)
    try:
        slow = asyncio.ensure_future(channel.call(b"slow"))
        assert await asyncio.wait_for(channel.call(b"fast"), 5) == b"FAST"  # overtook
        assert not slow.done()
        release[b"slow"].set()
        assert await asyncio.wait_for(slow, 5) == b"SLOW"
    finally:
        await channel.close()


async def test_a_broken_stream_fails_every_waiting_call():
    never = asyncio.Event()
    connections: list[asyncio.StreamWriter] = []

    async def handler(payload: bytes) -> bytes:
        await never.wait()
        return payload

    listener = ch.Listener(handler)
    serve = listener._serve

    async def tracking(reader, writer):
        connections.append(writer)
        await serve(reader, writer)

    listener._serve = tracking  # type: ignore[method-assign]
    port = await listener.start("127.0.0.1")
    channel = await ch.Channel.open("127.0.0.1", port, listener.token)
    calls = [asyncio.ensure_future(channel.call(b"x")) for _ in range(3)]
    while not connections:
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)  # the frames are on the wire
    connections[0].transport.abort()  # the host's end goes, as in a kill -9
    for call in calls:
        with pytest.raises(ch.ChannelLost):
            await asyncio.wait_for(call, 5)
    assert channel.lost
    with pytest.raises(ch.ChannelLost):
        await channel.call(b"y")
    await channel.close()


async def test_an_unreachable_host_is_channel_lost():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ch.ChannelLost):
        await ch.Channel.open("127.0.0.1", port, b"0" * ch.TOKEN_BYTES)
