"""Live seat map over WebSockets: one Redis Stream reader per show per process.

`GET /api/shows/{show_id}/live[?since=SEQ]` upgrades to a WebSocket that sends JSON text
messages, each with the log sequence it brings the client to:

- `{"type": "snapshot", "seq": N, "seats": {"A1": "free", ...}}`: every seat's status
  as of N. Sent first, unless `since` is given and the log still holds every entry after
  it, in which case the missed entries are sent instead (none if nothing was missed).
- `{"type": "events", "seq": N, "events": [<event>, ...]}`: one or more consecutive log
  entries, the last one being N. Each `<event>` is the stream entry's public `e` field
  forwarded byte for byte: `{"type": "event", "seq": S, "at": <ms>, "changes":
  [["A1", "held"], ...]}`. There is no top-level `event` message any more: everything
  after the snapshot comes in `events` frames, apply their events in order.
- `{"type": "resync"}`: the client fell too far behind; the server closes the socket
  right after (code 4000). Reconnect with `since=<last seq seen>`.

Per socket the seqs are strictly increasing and contiguous across frames: after a
snapshot at N the first event is N+1, and each `events` frame starts right after the
previous one's `seq`. A client that remembers the last seq it applied can always reconnect
with `since` and be correct without reloading anything.

Why batches: the cost of fan-out is frames per second, not bytes. One frame per log entry
per socket is 1M frames/s for 2,000 watchers at 500 changes/s, each a Python-level send
(and a wakeup, and a syscall); it cut every watcher off (see loadtest/RESULTS.md). Now the
show's reader takes everything one `XREAD` returned, and when the previous frame went out
less than `linger` (20 ms) ago it waits out the rest of that interval and reads again
(non-blocking) before building ONE frame for the lot: at most ~50 frames per second per
socket under load, no added delay for a change on a quiet show. The frame - WebSocket
header included, since server frames are unmasked and uncompressed - is built once and the
same bytes object is written to every socket.

How: the `Hub` keeps one `_Feed` per show that has watchers in this process. A feed is a
task doing `XREAD BLOCK` on the show's log from a cursor and handing each `Batch` to every
watcher. A watcher that is in sync (its sender is waiting on an empty queue, the batch
starts right after the last seq it sent, and its transport buffer is below the high-water
mark) gets the frame written straight to its transport by the feed: no task wakeup, no
await, no per-frame timeout. Otherwise the batch goes to the watcher's bounded queue
(counted in batches) and its sender task writes it - several queued batches merged into
one frame of its own - waiting for the transport to drain when it is above the high-water
mark (a socket stuck `send_timeout` on that is cut off). A
watcher joins the feed *before* it reads its snapshot or catch-up, so every entry after
that read is already on its way; its sender drops what the snapshot already covers (or
sends its own frame with the uncovered tail of a batch) and fills any hole (XRANGE, as its
own `events` frames, or a new snapshot if trimmed), so nothing is missed or sent twice.
A watcher whose queue overflows is cut off the feed and gets a resync notice; it never
slows the feed or the other watchers.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import RedisError

from actors import redis_conn
from actors.commands import SeatChange, SeatStatus
from actors.store import config_key, log_key, seq_key

from server.ops import metrics
from server.core.errors import ApiError
from server.core.redis_retry import redis_retry
from server.ops.security import check_origin
from server.core.openapi import Query, operation
from server.catalog.seat_status import read_seat_statuses
from server.onsale.ratelimit import LIMITER

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

_SHOW_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

RESYNC_CLOSE_CODE = 4000  # private range: "you fell behind, reconnect with since"
MAX_CLIENT_MESSAGE = 1 << 12  # bytes; a larger client message closes the socket (1009)


# --- the messages (documented in OpenAPI; events are forwarded as stored) ----------------

class LiveSnapshot(msgspec.Struct, tag_field="type", tag="snapshot"):
    """Every seat's status as of log sequence `seq`."""

    seq: int
    seats: dict[str, SeatStatus]


class LiveEvent(msgspec.Struct, tag_field="type", tag="event"):
    """One log entry: the seats it changed, at `at` (epoch ms)."""

    seq: int
    at: int
    changes: list[SeatChange]


class LiveEvents(msgspec.Struct, tag_field="type", tag="events"):
    """Consecutive log entries, in order; `seq` is the last one's."""

    seq: int
    events: list[LiveEvent]


class LiveResync(msgspec.Struct, tag_field="type", tag="resync"):
    """The client fell behind; the socket closes next. Reconnect with `since`."""


LiveMessage = LiveSnapshot | LiveEvents | LiveResync

_encoder = msgspec.json.Encoder()
RESYNC = _encoder.encode(LiveResync())

_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack


def ws_text_frame(payload: bytes) -> bytes:
    """A complete server-to-client WebSocket text frame (FIN, unmasked, uncompressed): the
    same bytes are valid on every socket, so a batch is framed once for all of them."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 1 << 16:
        head = _LEN2(0x81, 126, n)
    else:
        head = _LEN3(0x81, 127, n)
    return head + payload


def events_payload(last: int, events: list[bytes]) -> bytes:
    """`{"type":"events","seq":last,"events":[e1,e2,...]}` from the stored event bytes."""
    return b'{"type":"events","seq":%d,"events":[%b]}' % (last, b",".join(events))


class Batch:
    """Consecutive log entries (first..last) and their `events` frame, built once."""

    __slots__ = ("entries", "first", "last", "wire")

    def __init__(self, entries: list[tuple[int, bytes]]) -> None:
        self.entries = entries
        self.first = entries[0][0]
        self.last = entries[-1][0]
        self.wire = ws_text_frame(events_payload(self.last, [e for _, e in entries]))


# --- the hub -----------------------------------------------------------------------------

class _Resync:
    """Queue marker: this watcher overflowed and is off the feed."""


_RESYNC = _Resync()

Item = Batch | _Resync


class Watcher:
    """One socket's place on a show's feed: the last seq it was sent, a bounded queue of
    batches, and (once its sender is live) the transport the feed may write to directly."""

    __slots__ = ("feed", "queue", "dropped", "last", "idle", "transport", "ws", "direct")

    def __init__(self, feed: _Feed, queue_size: int) -> None:
        self.feed = feed
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=queue_size)
        self.dropped = False
        self.last = -1          # the seq this socket has been brought to (-1: nothing yet)
        self.idle = False       # its sender waits on an empty queue
        self.transport: asyncio.Transport | None = None
        self.ws: web.WebSocketResponse | None = None
        self.direct = 0         # batches the feed wrote straight to the transport

    def offer(self, batch: Batch) -> bool:
        """Called by the feed; False means the watcher overflowed and must be dropped."""
        t = self.transport
        if (self.idle and batch.first == self.last + 1 and t is not None
                and t.get_write_buffer_size() < self.feed.hub.high_water
                and not t.is_closing() and self.queue.empty() and not self.ws.closed):
            # In sync and the socket keeps up: write now, no task wakeup, no await.
            t.write(batch.wire)
            self.last = batch.last
            self.direct += 1
            return True
        try:
            self.queue.put_nowait(batch)
            return True
        except asyncio.QueueFull:
            self._overflow()
            return False

    def _overflow(self) -> None:
        self.dropped = True
        self.transport = None  # no more direct writes: its sender sends the resync
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_RESYNC)


class _Feed:
    """The single reader of one show's log in this process."""

    def __init__(self, hub: Hub, show_id: str) -> None:
        self.hub = hub
        self.show_id = show_id
        self.key = log_key(show_id)
        self.watchers: set[Watcher] = set()
        self.cursor = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stopped = asyncio.Event()
        self.entries = 0  # entries read from Redis (each fanned out once)
        self.batches = 0  # frames built (one per batch, for every socket)
        self.oldest_ms: int | None = None  # apply time of the oldest entry not yet fanned out
        # Its own context: the feed serves every watcher, not the request that started it.
        self.task = asyncio.create_task(self._run(), name=f"live-feed:{show_id}",
                                        context=contextvars.Context())

    async def _read(self, after: int, block: int | None) -> list[tuple[int, bytes]]:
        reply = await self.hub.redis.xread(
            {self.key: f"{after}-0"}, count=self.hub.read_count, block=block)
        rows = [row for _key, rows in reply or () for row in rows]
        if rows and self.oldest_ms is None:
            # When the oldest entry of the coming frame was applied (the actor's clock):
            # the server's share of delivery latency is measured from it.
            self.oldest_ms = int(rows[0][1].get(b"t", 0)) or None
        return [(int(entry_id.split(b"-")[0]), fields[b"e"]) for entry_id, fields in rows]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sent_at = -1e9  # loop time of the last fan-out
        try:
            await self._start()
            while True:
                try:
                    entries = await self._read(self.cursor, self.hub.block_ms)
                    if not entries:
                        continue
                    # Under load (the last frame went out < linger ago) gather more first:
                    # frames per socket are the cost, not bytes. A quiet show waits not.
                    wait = sent_at + self.hub.linger - loop.time()
                    if wait > 0 and len(entries) < self.hub.read_count:
                        await asyncio.sleep(wait)
                        entries += await self._read(entries[-1][0], None)
                except (RedisError, OSError) as exc:
                    log.warning("live %s: reading the log failed (%s); retrying", self.show_id, exc)
                    await asyncio.sleep(self.hub.retry_s)
                    continue
                self._fan_out(Batch(entries))
                sent_at = loop.time()
        finally:
            if not self.ready.done():
                self.ready.cancel()
            self.stopped.set()

    async def _start(self) -> None:
        """Fix the cursor at the log's current end before any watcher reads its snapshot."""
        while True:
            try:
                self.cursor = int(await self.hub.redis.get(seq_key(self.show_id)) or 0)
                break
            except (RedisError, OSError) as exc:
                log.warning("live %s: Redis unavailable (%s); retrying", self.show_id, exc)
                await asyncio.sleep(self.hub.retry_s)
        self.ready.set_result(None)

    def _fan_out(self, batch: Batch) -> None:
        self.cursor = batch.last
        self.entries += len(batch.entries)
        self.batches += 1
        for watcher in list(self.watchers):
            if not watcher.offer(batch):
                self.watchers.discard(watcher)
                self.hub.dropped += 1
        if self.oldest_ms is not None:  # applied -> written to every in-sync socket
            self.hub.fanout_lag_ms.append(time.time() * 1000 - self.oldest_ms)
            self.oldest_ms = None
        if not self.watchers:
            self.hub._retire(self)


class Hub:
    """Live fan-out for this process: one log reader per show with local watchers."""

    def __init__(
        self, redis: aioredis.Redis, *, queue_size: int = 256, heartbeat: float = 20.0,
        block_ms: int = 2_000, read_count: int = 500, send_timeout: float = 30.0,
        send_buffer: int | None = 64 * 1024, linger: float = 0.02,
        high_water: int = 64 * 1024,
    ) -> None:
        self.redis = redis
        self.queue_size = queue_size      # per-socket backlog (batches) before it is dropped
        self.heartbeat = heartbeat        # WebSocket ping interval (s); dead peers closed
        # A blocking read must end before the client's socket timeout would cut it.
        timeout = redis_conn.connection_option(redis, "socket_timeout")
        self.block_ms = block_ms if not timeout else min(block_ms, int(timeout * 500))
        self.read_count = read_count      # most entries per batch
        self.linger = linger              # under load, at most one frame per socket per this (s)
        self.send_timeout = send_timeout  # a socket stuck this long draining is cut off
        # Kernel send buffer per socket (None: the OS default, which autotunes up to MBs).
        # Kept small so a peer that stops reading backs up into its bounded queue soon,
        # instead of parking megabytes in the kernel first.
        self.send_buffer = send_buffer
        # Bytes waiting in a socket's transport above which the feed stops writing to it
        # directly and queues instead (and its sender waits for the transport to drain).
        self.high_water = high_water
        self.retry_s = 0.5
        self.dropped = 0                  # watchers cut off for falling behind
        # Per frame: ms from the oldest event's apply (actor) to its frame written to every
        # in-sync socket -- the server's share of delivery latency (read by /api/_stats).
        self.fanout_lag_ms: deque[float] = deque(maxlen=100_000)
        self._feeds: dict[str, _Feed] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._closed = False

    def feed(self, show_id: str) -> _Feed | None:
        return self._feeds.get(show_id)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def readers(self) -> int:
        return len(self._feeds)

    async def join(self, show_id: str) -> Watcher:
        """Register a watcher; once this returns, every log entry after the log's
        current end goes to it."""
        if self._closed:
            raise RuntimeError("hub is closed")
        feed = self._feeds.get(show_id)
        if feed is None:
            feed = self._feeds[show_id] = _Feed(self, show_id)
        watcher = Watcher(feed, self.queue_size)
        feed.watchers.add(watcher)
        try:
            await asyncio.shield(feed.ready)
        except BaseException:
            self.leave(watcher)
            raise
        return watcher

    def leave(self, watcher: Watcher) -> None:
        watcher.transport = None
        feed = watcher.feed
        feed.watchers.discard(watcher)
        if not feed.watchers:
            self._retire(feed)

    def _retire(self, feed: _Feed) -> None:
        if self._feeds.get(feed.show_id) is feed:
            del self._feeds[feed.show_id]
        feed.task.cancel()

    async def close(self) -> None:
        """Stop every reader and close every socket (server shutdown). Idempotent."""
        self._closed = True
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            feed.task.cancel()
            for watcher in feed.watchers:
                watcher.transport = None
        sockets = list(self._sockets)
        if sockets:
            await asyncio.gather(
                *(_close(ws, WSCloseCode.GOING_AWAY, b"server shutting down") for ws in sockets),
                return_exceptions=True,
            )
        if feeds:
            # Bounded: a reader that ignores its cancel must not hold up the rest of the
            # shutdown (the app's workers stop after this; left running, they keep
            # consuming the outbox for a server that is gone).
            _, stuck = await asyncio.wait([asyncio.ensure_future(f.stopped.wait())
                                           for f in feeds], timeout=CLOSE_WAIT_S)
            if stuck:
                log.warning("live: %d feed reader(s) did not stop within %.0f s: %s",
                            len(stuck), CLOSE_WAIT_S,
                            [f.show_id for f in feeds if not f.stopped.is_set()])
                for waiter in stuck:
                    waiter.cancel()


CLOSE_WAIT_S = 5.0  # how long a shutdown waits for the feed readers to stop
HUB = web.AppKey("live_hub", Hub)
HUB_REDIS_MAX = 10_000  # one blocking reader per watched show, plus reads


def setup(app: web.Application, redis_url: str) -> None:
    """This process's hub while the app runs; its sockets close when shutdown starts."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        # Its own connections: each watched show's reader holds one in a blocking XREAD,
        # which must never starve (or be starved by) requests.
        redis = redis_conn.async_client(redis_url, max_connections=HUB_REDIS_MAX,
                                        retry=redis_retry())
        app[HUB] = hub = Hub(redis)
        yield
        await hub.close()
        await redis.aclose()

    async def close_sockets(app: web.Application) -> None:
        await app[HUB].close()

    app.cleanup_ctx.append(run)
    app.on_shutdown.append(close_sockets)  # before the server waits for handlers


async def _close(ws: web.WebSocketResponse, code: int, message: bytes) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=code, message=message), timeout=2.0)


# --- the socket ----------------------------------------------------------------------------

class _Session:
    """Sends one socket its catch-up, then the live tail, seqs contiguous. Its sender task
    writes what the feed queued; while it waits on an empty queue the feed writes directly."""

    def __init__(self, hub: Hub, show_id: str, ws: web.WebSocketResponse,
                 watcher: Watcher, transport: asyncio.Transport, protocol: Any) -> None:
        self.hub = hub
        self.show_id = show_id
        self.ws = ws
        self.watcher = watcher
        self.transport = transport
        self.protocol = protocol  # aiohttp's BaseProtocol: flow control (pause/resume)

    @property
    def last(self) -> int:
        return self.watcher.last

    @last.setter
    def last(self, seq: int) -> None:
        self.watcher.last = seq

    async def send(self, payload: bytes) -> None:
        await self.write(ws_text_frame(payload))

    async def write(self, wire: bytes) -> None:
        """Write a complete frame; wait (bounded) only if the socket is backed up."""
        t = self.transport
        if self.ws.closed or t.is_closing():
            raise ConnectionResetError("socket closing")
        t.write(wire)
        if t.get_write_buffer_size() > self.hub.high_water:
            async with asyncio.timeout(self.hub.send_timeout):
                # The transport paused the protocol (its high-water mark is ours); aiohttp's
                # drain waiter resumes when the kernel took the backlog.
                if getattr(self.protocol, "_paused", False):
                    await self.protocol._drain_helper()

    async def start(self, since: int | None) -> None:
        """The first messages: the entries after `since` if the log still has them all,
        else a snapshot. Runs after the watcher joined the feed, so the feed hands over
        everything after the log end read here."""
        if since is not None:
            current = int(await self.hub.redis.get(seq_key(self.show_id)) or 0)
            if since <= current:
                self.last = since
                if await self.catch_up(current):
                    return
        # No since, a since from the future (the data was reset), or one too old.
        await self.snapshot()

    async def snapshot(self) -> None:
        statuses = await read_seat_statuses(self.hub.redis, self.show_id)
        if statuses is None:
            raise _Gone()  # the show was deleted meanwhile
        await self.send(_encoder.encode(LiveSnapshot(statuses.seq, statuses.status)))
        self.last = statuses.seq

    async def catch_up(self, until: int) -> bool:
        """Send the log entries in (last, until], as this socket's own `events` frames.
        False if the log no longer starts at last + 1 (trimmed): the caller sends a
        snapshot instead."""
        key = log_key(self.show_id)
        while self.last < until:
            rows = await self.hub.redis.xrange(key, f"{self.last + 1}-0", f"{until}-0", count=500)
            entries: list[tuple[int, bytes]] = []
            for entry_id, fields in rows:
                seq = int(entry_id.split(b"-")[0])
                if seq != self.last + 1 + len(entries):
                    break
                entries.append((seq, fields[b"e"]))
            if not entries:
                return False
            batch = Batch(entries)
            await self.write(batch.wire)
            self.last = batch.last
        return True

    async def deliver(self, batch: Batch) -> None:
        for _ in range(3):
            if batch.last <= self.last:
                return  # the snapshot or catch-up already covered it
            if batch.first == self.last + 1:
                await self.write(batch.wire)  # the shared frame
                self.last = batch.last
                return
            if batch.first <= self.last:
                # Partly covered (the handover): this socket's own frame for the rest.
                rest = Batch([e for e in batch.entries if e[0] > self.last])
                await self.write(rest.wire)
                self.last = rest.last
                return
            # A hole between what this socket has and the tail: fill it, or start over.
            if not await self.catch_up(batch.first - 1):
                await self.snapshot()
        raise _Gone()

    async def pump(self) -> None:
        watcher = self.watcher
        queue = watcher.queue
        if not watcher.dropped:
            watcher.ws = self.ws
            watcher.transport = self.transport  # the feed may now write directly
        while True:
            if queue.empty():
                watcher.idle = True
            try:
                item = await queue.get()
            finally:
                watcher.idle = False
            if isinstance(item, Batch) and not queue.empty():
                # Behind by several batches: send them as few frames as possible (frames,
                # not bytes, are what a lagging client is short of).
                run, size = [item], len(item.entries)
                while not queue.empty() and isinstance(nxt := queue.get_nowait(), Batch):
                    if nxt.first == run[-1].last + 1 and size < _MERGE_MAX:
                        run.append(nxt)
                        size += len(nxt.entries)
                        continue
                    await self.deliver(_merged(run))
                    run, size = [nxt], len(nxt.entries)
                else:
                    await self.deliver(_merged(run))
                    continue
                await self.deliver(_merged(run))
                item = nxt  # the resync marker that ended the loop
            if isinstance(item, _Resync):
                await self.send(RESYNC)
                await asyncio.wait_for(
                    self.ws.close(code=RESYNC_CLOSE_CODE, message=b"resync"), self.hub.send_timeout
                )
                return
            await self.deliver(item)


_MERGE_MAX = 2_000  # most entries in one merged catch-up frame


def _merged(run: list[Batch]) -> Batch:
    return run[0] if len(run) == 1 else Batch([e for b in run for e in b.entries])


class _Gone(Exception):
    pass


def _since(request: web.Request) -> int | None:
    raw = request.query.get("since")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, "invalid", "since must be a non-negative integer (a seq you saw)",
                       field="since")
    return int(raw)


@routes.get("/api/shows/{show_id}/live")
@operation(
    "GET", "/api/shows/{show_id}/live", summary="Live seat map (WebSocket)",
    response=LiveMessage, status=101, errors=(400, 403, 404, 426, 429, 503),
    tags=("customer", "live"),
    params=(Query("since", int, description="the last seq the client applied; the server "
                  "sends exactly the entries after it, or a fresh snapshot when too old"),),
    description="Upgrade to a WebSocket. Messages (JSON text): first a `snapshot` (or, with "
    "`since`, the missed entries as `events`), then `events` frames, each carrying one or "
    "more consecutive log entries (`{\"type\":\"events\",\"seq\":N,\"events\":[{\"type\":"
    "\"event\",\"seq\":...,\"at\":...,\"changes\":[...]},...]}`, `seq` = the last one's); "
    "seqs are contiguous across frames. Under load one frame carries everything that changed "
    "in ~20 ms. A client that falls behind gets `resync` and the socket closes (code 4000); "
    "reconnect with `since`. Open sockets are capped per client address (429 "
    "`too_many_sockets`) and per server (503), both with `Retry-After`; a client message "
    "over 4 KiB closes the socket (1009).",
)
async def live(request: web.Request) -> web.WebSocketResponse:
    show_id = request.match_info["show_id"]
    if not _SHOW_ID.match(show_id):
        raise ApiError(404, "not_found", f"no show {show_id!r}")
    since = _since(request)
    check_origin(request)  # before any work: a foreign page must not watch in our name
    lim = request.app[LIMITER]
    # One place per open socket, per client address and in all, taken before any I/O.
    with lim.sockets.slot(lim.client(request.remote, request.headers.get("X-Forwarded-For"))):
        return await _live(request, show_id, since)


async def _live(request: web.Request, show_id: str, since: int | None
                ) -> web.WebSocketResponse:
    hub = request.app[HUB]
    if hub.closed:
        raise ApiError(503, "unavailable", "the server is shutting down; reconnect shortly")
    if not await hub.redis.exists(config_key(show_id)):
        raise ApiError(404, "not_found", f"no show {show_id!r}")
    ws = web.WebSocketResponse(
        heartbeat=hub.heartbeat,
        compress=False,       # a batch's frame is built once and written to every socket
        writer_limit=1 << 15,  # wait for a slow peer early; its queue then takes the strain
        max_msg_size=MAX_CLIENT_MESSAGE,  # clients have nothing big to say (1009 past it)
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(426, "upgrade_required", "this endpoint is a WebSocket")
    await ws.prepare(request)
    transport = request.transport
    if transport is None:
        return ws  # the peer left during the handshake
    sock = transport.get_extra_info("socket")
    if hub.send_buffer and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, hub.send_buffer)
    # The transport pauses the protocol above our high-water mark: what a backed-up
    # socket's sender waits on (the feed stops writing to it directly at the same mark).
    transport.set_write_buffer_limits(high=hub.high_water)
    hub._sockets.add(ws)
    metrics.WATCHERS.inc()  # /metrics: bmm_live_watchers
    watcher: Watcher | None = None
    sender: asyncio.Task[None] | None = None
    try:
        watcher = await hub.join(show_id)
        session = _Session(hub, show_id, ws, watcher, transport, request.protocol)

        async def run() -> None:
            try:
                await session.start(since)
                await session.pump()
            except _Gone:
                await _close(ws, WSCloseCode.GOING_AWAY, b"show gone")
            except ConnectionError:
                pass  # the peer went away while we were sending
            except TimeoutError:
                log.info("live %s: a socket stuck on send; cutting it off", show_id)
                transport.abort()
            except Exception:
                log.exception("live %s: socket failed", show_id)
                await _close(ws, WSCloseCode.INTERNAL_ERROR, b"internal error")

        sender = asyncio.create_task(run())
        # Reading keeps ping/pong and the close handshake going; clients say nothing else.
        receiver = asyncio.create_task(_drain(ws))
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        receiver.cancel()
    finally:
        if sender is not None:
            sender.cancel()
        if watcher is not None:
            hub.leave(watcher)
        hub._sockets.discard(ws)
        metrics.WATCHERS.dec()
        if not ws.closed:
            await _close(ws, WSCloseCode.OK, b"")
    return ws


async def _drain(ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type == WSMsgType.ERROR:
            break
