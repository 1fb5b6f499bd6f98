"""The live seat map WebSocket, with real `websockets` clients against the real server
(real Redis, real Ray show actors)."""
from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from actors import commands as c
from actors.client import ShowDirectory
from actors.layout import Layout, Rules, ShowConfig, grid_layout
from actors.host import ActorSettings
from actors.store import log_key, put_config
from server.appkeys import SERVICES
from server.core.embedded import RedisServer
from server.live.hub import HUB, Hub, events_payload

TIMEOUT = 10.0

Json = dict[str, Any]


@pytest.fixture
def hub(server: TestServer) -> Hub:
    return server.app[HUB]


@pytest.fixture
def shows(server: TestServer) -> ShowDirectory:
    return server.app[SERVICES].shows


@pytest.fixture
async def new_show(redis: aioredis.Redis) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Make fresh shows."""

    async def make(layout: Layout | None = None, rules: Rules | None = None) -> str:
        show_id = f"t-{uuid.uuid4().hex[:12]}"
        await put_config(redis, ShowConfig(show_id, layout or grid_layout(5, 8), rules or Rules()))
        return show_id

    yield make


def live_url(server: TestServer, show_id: str, since: int | None = None) -> str:
    url = server.make_url(f"/api/shows/{show_id}/live").with_scheme("ws")
    return str(url if since is None else url.with_query(since=since))


async def recv(ws: ClientConnection) -> Json:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def recv_events(ws: ClientConnection, count: int, after: int | None = None) -> list[Json]:
    """The next `count` events, from as many `events` frames as they came in; checks the
    frames' seqs are contiguous (and start at after + 1 when given)."""
    got: list[Json] = []
    while len(got) < count:
        msg = await recv(ws)
        assert msg["type"] == "events", msg
        assert msg["events"] and msg["seq"] == msg["events"][-1]["seq"]
        got += msg["events"]
    assert len(got) == count, got
    seqs = [e["seq"] for e in got]
    first = seqs[0] if after is None else after + 1
    assert seqs == list(range(first, first + count)), seqs
    return got


async def hold(shows: ShowDirectory, show_id: str, seats: list[str]) -> c.Held:
    hold_id = f"{show_id}.{uuid.uuid4().hex[:10]}"
    result = await shows.submit(show_id, c.Hold(uuid.uuid4().hex, hold_id, "tok", seats))
    assert isinstance(result, c.Held), result
    return result


async def release(shows: ShowDirectory, show_id: str, held: c.Held) -> None:
    result = await shows.submit(show_id, c.Release(uuid.uuid4().hex, held.hold_id, "tok"))
    assert isinstance(result, c.Released), result


async def stream_events(redis: aioredis.Redis, show_id: str) -> dict[int, bytes]:
    rows = await redis.xrange(log_key(show_id), "-", "+")
    return {int(i.split(b"-")[0]): f[b"e"] for i, f in rows}


async def test_two_clients_see_a_hold_with_the_next_seq(
    server: TestServer, shows: ShowDirectory, new_show, redis: aioredis.Redis, hub: Hub
) -> None:
    show_id = await new_show()
    async with connect(live_url(server, show_id)) as a, connect(live_url(server, show_id)) as b:
        snap_a, snap_b = await recv(a), await recv(b)
        for snap in (snap_a, snap_b):
            assert snap["type"] == "snapshot" and snap["seq"] == 0
            assert len(snap["seats"]) == 40 and set(snap["seats"].values()) == {"free"}
        assert hub.readers >= 1 and len(hub.feed(show_id).watchers) == 2  # one reader, two sockets

        await hold(shows, show_id, ["A1", "A2"])
        raw_a, raw_b = await asyncio.wait_for(a.recv(), TIMEOUT), await asyncio.wait_for(b.recv(), TIMEOUT)
        msg = json.loads(raw_b)
        assert msg["type"] == "events" and msg["seq"] == 1 and len(msg["events"]) == 1
        event = msg["events"][0]
        assert event["type"] == "event" and event["seq"] == 1
        assert event["changes"] == [["A1", "held"], ["A2", "held"]]
        # One frame for both sockets, the log entry's public field forwarded byte for byte.
        log = await stream_events(redis, show_id)
        assert raw_a.encode() == raw_b.encode() == events_payload(1, [log[1]])

        held = await hold(shows, show_id, ["C5"])
        await release(shows, show_id, held)
        for ws in (a, b):
            assert [(m["seq"], m["changes"]) for m in await recv_events(ws, 2, after=1)] == [
                (2, [["C5", "held"]]), (3, [["C5", "free"]])
            ]
        feed = hub.feed(show_id)
    # Both sockets gone: the show's reader stops and the hub forgets it.
    await asyncio.wait_for(feed.stopped.wait(), TIMEOUT)
    assert hub.feed(show_id) is None


async def test_changes_under_load_share_one_frame_written_directly(
    server: TestServer, shows: ShowDirectory, new_show, redis: aioredis.Redis, hub: Hub
) -> None:
    """Entries arriving within `linger` of the previous frame go out together, as one frame
    built once for every socket, written by the feed straight to in-sync sockets."""
    show_id = await new_show()
    hub.linger = 0.5
    try:
        async with connect(live_url(server, show_id)) as a, connect(live_url(server, show_id)) as b:
            assert (await recv(a))["seq"] == (await recv(b))["seq"] == 0
            for n in range(1, 7):
                await hold(shows, show_id, [f"A{n}"])
            frames: dict[ClientConnection, list[str]] = {a: [], b: []}
            for ws in (a, b):
                seen = 0
                while seen < 6:
                    frames[ws].append(await asyncio.wait_for(ws.recv(), TIMEOUT))
                    seen += len(json.loads(frames[ws][-1])["events"])
            assert frames[a] == frames[b]  # the same frames, byte for byte
            assert len(frames[a]) < 6  # batched: the first goes at once, the rest wait
            seqs = [e["seq"] for f in frames[a] for e in json.loads(f)["events"]]
            assert seqs == [1, 2, 3, 4, 5, 6]
            log = await stream_events(redis, show_id)
            assert json.loads(frames[a][-1])["events"][-1] == json.loads(log[6])
            feed = hub.feed(show_id)
            assert feed.batches == len(frames[a]) and feed.entries == 6
            assert all(w.direct == len(frames[a]) for w in feed.watchers)  # no queue, no task
    finally:
        hub.linger = 0.02


async def test_snapshot_reflects_earlier_changes(
    server: TestServer, shows: ShowDirectory, new_show
) -> None:
    show_id = await new_show()
    await hold(shows, show_id, ["B3", "B4"])
    held = await hold(shows, show_id, ["E8"])
    await release(shows, show_id, held)
    async with connect(live_url(server, show_id)) as ws:
        snap = await recv(ws)
        assert snap["type"] == "snapshot" and snap["seq"] == 3
        assert snap["seats"]["B3"] == snap["seats"]["B4"] == "held"
        assert snap["seats"]["E8"] == "free"
        await hold(shows, show_id, ["A1"])
        assert (await recv(ws))["seq"] == 4


async def test_reconnect_with_since_gets_exactly_the_missed_entries(
    server: TestServer, shows: ShowDirectory, new_show, redis: aioredis.Redis
) -> None:
    show_id = await new_show()
    async with connect(live_url(server, show_id)) as ws:
        assert (await recv(ws))["seq"] == 0
        await hold(shows, show_id, ["A1"])
        last = (await recv_events(ws, 1))[-1]["seq"]
    assert last == 1
    # Missed while away: seqs 2, 3, 4.
    held = await hold(shows, show_id, ["B1", "B2"])
    await hold(shows, show_id, ["C1"])
    await release(shows, show_id, held)
    log = await stream_events(redis, show_id)
    async with connect(live_url(server, show_id, since=last)) as ws:
        # No snapshot first: one catch-up frame with exactly the missed entries, as stored.
        missed = await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert missed.encode() == events_payload(4, [log[2], log[3], log[4]])
        await hold(shows, show_id, ["D1"])
        nxt = await recv(ws)
        assert nxt["type"] == "events" and nxt["seq"] == 5
        assert [(e["seq"], e["changes"]) for e in nxt["events"]] == [(5, [["D1", "held"]])]
    # Up to date already: nothing is replayed, the next message is the next entry.
    async with connect(live_url(server, show_id, since=5)) as ws:
        await hold(shows, show_id, ["D2"])
        assert (await recv(ws))["seq"] == 6


async def test_too_old_since_gets_a_fresh_snapshot(
    server: TestServer, redis_server: RedisServer, new_show, redis: aioredis.Redis
) -> None:
    show_id = await new_show()
    # Hosts of their own that snapshot every 5 entries and keep only 5 before the snapshot.
    small = await ShowDirectory(redis_server.url, ActorSettings(snapshot_every=5, keep_log=5),
                                pool="small-snapshots", hosts_per_node=1).start()
    held = []
    for n in range(1, 9):
        held.append(await hold(small, show_id, [f"A{n}"]))
    for h in held[:6]:
        await release(small, show_id, h)
    # seqs 1..14 written; the log was trimmed, entry 2 is gone.
    assert min(await stream_events(redis, show_id)) > 3
    async with connect(live_url(server, show_id, since=2)) as ws:
        snap = await recv(ws)
        assert snap["type"] == "snapshot" and snap["seq"] == 14
        truth = await small.inspect(show_id)
        assert snap["seats"] == truth["status"]
        assert [s for s, st in snap["seats"].items() if st == "held"] == ["A7", "A8"]
        await release(small, show_id, held[6])
        assert (await recv(ws))["seq"] == 15


async def test_since_from_the_future_gets_a_snapshot(
    server: TestServer, shows: ShowDirectory, new_show
) -> None:
    show_id = await new_show()
    await hold(shows, show_id, ["A1"])
    async with connect(live_url(server, show_id, since=999)) as ws:
        snap = await recv(ws)
        assert snap["type"] == "snapshot" and snap["seq"] == 1 and snap["seats"]["A1"] == "held"


async def test_bad_requests_are_clear_4xx(
    server: TestServer, api: aiohttp.ClientSession, new_show
) -> None:
    show_id = await new_show()
    resp = await api.get(f"/api/shows/{show_id}/live")  # plain HTTP, no upgrade
    assert resp.status == 426 and (await resp.json())["error"]["code"] == "upgrade_required"
    for bad in ("-1", "x", "1.5"):
        resp = await api.get(f"/api/shows/{show_id}/live", params={"since": bad})
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid"
    resp = await api.get("/api/shows/no-such-show/live")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    async with api.ws_connect(f"/api/shows/{show_id}/live") as ws:
        assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "snapshot"
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await api.ws_connect("/api/shows/no-such-show/live")
    assert err.value.status == 404


def _tiny_socket() -> socket.socket:
    """A client socket with a tiny receive buffer: a peer that stops reading is felt fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_slow_client_is_dropped_with_resync_while_fast_one_gets_everything(
    server: TestServer, shows: ShowDirectory, new_show, hub: Hub
) -> None:
    layout = grid_layout(16, 25)  # 400 seats: every event below carries 200 changes
    show_id = await new_show(layout, Rules(max_seats_per_hold=400))
    front = [s.id for s in layout.seats[:200]]
    back = [s.id for s in layout.seats[200:]]
    dropped_before = hub.dropped
    hub.queue_size = 8
    try:
        await _slow_and_fast(server, shows, show_id, hub, front, back, dropped_before)
    finally:
        hub.queue_size = 256


async def _slow_and_fast(server: TestServer, shows: ShowDirectory, show_id: str, hub: Hub,
                         front: list[str], back: list[str], dropped_before: int) -> None:
    fast = await connect(live_url(server, show_id))
    sock = _tiny_socket()
    sock.connect(("127.0.0.1", server.port))
    slow = await connect(live_url(server, show_id), sock=sock, max_queue=1)
    assert (await recv(fast))["seq"] == 0
    rounds = 60
    fast_seqs: list[int] = []

    got_more = asyncio.Condition()

    async def read_fast() -> None:
        while len(fast_seqs) < rounds * 4:
            msg = await recv(fast)
            assert msg["type"] == "events"
            fast_seqs.extend(e["seq"] for e in msg["events"])
            async with got_more:
                got_more.notify_all()

    reader = asyncio.create_task(read_fast())

    async def cycle(seats: list[str]) -> None:
        await release(shows, show_id, await hold(shows, show_id, seats))

    # Round by round, each after the fast reader has had the last one: however slow the
    # machine, it is at most one round (4 frames) behind, far inside its queue, while
    # the slow one, which reads nothing, falls 240 entries behind.
    for r in range(rounds):
        await asyncio.gather(cycle(front), cycle(back))
        async with got_more:
            await asyncio.wait_for(got_more.wait_for(
                lambda: len(fast_seqs) >= 4 * (r + 1) or reader.done()), TIMEOUT)
    await asyncio.wait_for(reader, TIMEOUT * 3)
    assert fast_seqs == list(range(1, rounds * 4 + 1))  # every entry, in order, no gaps

    # Now read what the slow one got: a contiguous prefix, then the resync notice, then close.
    got: list[Json] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            got.append(await recv(slow))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert got[0]["type"] == "snapshot" and got[-1] == {"type": "resync"}
    assert all(m["type"] == "events" and m["seq"] == m["events"][-1]["seq"] for m in got[1:-1])
    seqs = [got[0]["seq"]] + [e["seq"] for m in got[1:-1] for e in m["events"]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert seqs[-1] < rounds * 4  # it really fell behind
    assert hub.dropped == dropped_before + 1
    await fast.close()


async def test_clients_joining_mid_stream_never_miss_or_repeat_a_seq(
    server: TestServer, shows: ShowDirectory, new_show
) -> None:
    """The handover from snapshot/catch-up to the live tail, under a steady stream of
    changes: each socket's seqs are contiguous, and its view ends equal to the truth."""
    show_id = await new_show(grid_layout(4, 10))
    seats = [f"{row}{n}" for row in "ABCD" for n in range(1, 11)]
    total = 80

    async def watch(since: int | None) -> dict[str, str]:
        view: dict[str, str] = {}
        async with connect(live_url(server, show_id, since=since)) as ws:
            last = None
            while last != total:
                msg = await recv(ws)
                if msg["type"] == "snapshot":
                    assert last is None, "a snapshot in the middle of a healthy stream"
                    view = dict(msg["seats"])
                    last = msg["seq"]
                    continue
                assert msg["type"] == "events"
                assert msg["seq"] == msg["events"][-1]["seq"]
                for event in msg["events"]:
                    if last is not None:
                        assert event["seq"] == last + 1, (last, event["seq"])
                    elif since is not None:
                        assert event["seq"] == since + 1
                    for seat, status in event["changes"]:
                        view[seat] = status
                    last = event["seq"]
        return view

    # Sockets open while the log is being written (their connect races the writes).
    join_at = {0: None, 10: None, 25: 3, 40: None, 55: 50}
    watchers: list[asyncio.Task[dict[str, str]]] = []
    for i in range(total // 2):
        for at in (2 * i, 2 * i + 1):
            if at in join_at:
                watchers.append(asyncio.create_task(watch(join_at[at])))
        await release(shows, show_id, await hold(shows, show_id, [seats[i % 40]]))
    views = await asyncio.wait_for(asyncio.gather(*watchers), TIMEOUT * 3)
    truth = await shows.inspect(show_id)
    for view in views[:2] + views[3:4]:
        assert view == truth["status"]



async def test_a_peer_that_stops_answering_pings_is_closed_and_forgotten(
    server: TestServer, api: aiohttp.ClientSession, new_show, hub: Hub
) -> None:
    show_id = await new_show()
    hub.heartbeat = 0.3
    try:
        ws = await api.ws_connect(f"/api/shows/{show_id}/live", autoping=False)
    finally:
        hub.heartbeat = 20.0
    assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "snapshot"
    feed = hub.feed(show_id)
    assert feed is not None and len(feed.watchers) == 1
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.PING  # the server's heartbeat; we never answer
    while msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                           aiohttp.WSMsgType.CLOSING):
        msg = await ws.receive(timeout=TIMEOUT)
    await asyncio.wait_for(feed.stopped.wait(), TIMEOUT)
    assert hub.feed(show_id) is None
    await ws.close()


async def test_shutdown_closes_sockets_and_stops_readers(
    redis_server: RedisServer, ray_cluster: None, app_settings, new_show
) -> None:
    from server.app import create_app

    show_id = await new_show()
    srv = TestServer(create_app(app_settings, redis_server.url), host="127.0.0.1")
    await srv.start_server()
    ws = await connect(live_url(srv, show_id))
    assert (await recv(ws))["type"] == "snapshot"
    feed = srv.app[HUB].feed(show_id)
    await asyncio.wait_for(srv.close(), TIMEOUT)
    with pytest.raises(ConnectionClosed) as closed:
        await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert feed.stopped.is_set()


async def test_stats_report_the_servers_fan_out_lag_per_frame_once(
    server: TestServer, shows: ShowDirectory, new_show, api
) -> None:
    """`/api/_stats` lists, per frame since the last reading, ms from apply to written."""
    show_id = await new_show()
    await api.get("/api/_stats")  # drain what earlier tests left
    async with connect(live_url(server, show_id)) as ws:
        assert (await recv(ws))["type"] == "snapshot"
        before = time.time()
        await hold(shows, show_id, ["A1"])
        await recv_events(ws, 1)
        took_ms = (time.time() - before) * 1000
    lags = (await (await api.get("/api/_stats")).json())["fanout_lag_ms"]
    assert len(lags) >= 1 and all(0 <= lag <= took_ms + 5 for lag in lags), (lags, took_ms)
    assert (await (await api.get("/api/_stats")).json())["fanout_lag_ms"] == []
