"""Live seat map over WebSockets: one Redis Stream reader per show per process.

`GET /api/shows/{show_id}/live[?since=SEQ]` upgrades to a WebSocket that sends JSON text
messages, each with the log sequence it brings the client to:

- `{"type": "snapshot", "seq": N, "seats": {"A1": "free", ...}}`: every seat's status
  as of N. Sent first, unless `since` is given and the log still holds every entry after
  it, in which case the missed entries are sent instead (none if nothing was missed).
- `{"type": "event", "seq": N, "at": <ms>, "changes": [["A1", "held"], ...]}`: one per
  log entry, the stream entry's public `e` field forwarded byte for byte.
- `{"type": "resync"}`: the client fell too far behind; the server closes the socket
  right after (code 4000). Reconnect with `since=<last seq seen>`.

Per socket the seqs are strictly increasing and contiguous: after a snapshot at N the next
event is N+1. A client that remembers the last seq it applied can always reconnect with
`since` and be correct without reloading anything.

How: the `Hub` keeps one `_Feed` per show that has watchers in this process. A feed is a
task doing `XREAD BLOCK` on the show's log from a cursor, handing each entry (the same
bytes object) to every watcher's bounded queue; it stops when the last watcher leaves.
A watcher joins the feed *before* it reads its snapshot or catch-up, so every entry after
that read is already on its way through the queue; the socket's sender drops what the
snapshot already covers and fills any hole (XRANGE, or a new snapshot if trimmed), so
nothing is missed or sent twice. A watcher whose queue overflows is cut off the feed and
gets a resync notice; it never slows the feed or the other watchers.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from typing import Literal

import msgspec
import redis.asyncio as aioredis
from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import RedisError

from actors.commands import SeatChange, SeatStatus
from actors.store import config_key, log_key, seq_key

from .errors import ApiError
from .openapi import Query, operation
from .seat_status import read_seat_statuses

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

_SHOW_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

RESYNC_CLOSE_CODE = 4000  # private range: "you fell behind, reconnect with since"


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


class LiveResync(msgspec.Struct, tag_field="type", tag="resync"):
    """The client fell behind; the socket closes next. Reconnect with `since`."""


LiveMessage = LiveSnapshot | LiveEvent | LiveResync

_encoder = msgspec.json.Encoder()
RESYNC = _encoder.encode(LiveResync())


# --- the hub -----------------------------------------------------------------------------

class _Resync:
    """Queue marker: this watcher overflowed and is off the feed."""


_RESYNC = _Resync()

Item = tuple[int, bytes] | _Resync


class Watcher:
    """One socket's place on a show's feed: a bounded queue of (seq, event bytes)."""

    def __init__(self, feed: _Feed, queue_size: int) -> None:
        self.feed = feed
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=queue_size)
        self.dropped = False

    def offer(self, seq: int, data: bytes) -> bool:
        """Called by the feed; False means the watcher overflowed and must be dropped."""
        try:
            self.queue.put_nowait((seq, data))
            return True
        except asyncio.QueueFull:
            self._overflow()
            return False

    def _overflow(self) -> None:
        self.dropped = True
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
        self.task = asyncio.create_task(self._run(), name=f"live-feed:{show_id}")

    async def _run(self) -> None:
        try:
            await self._start()
            while True:
                try:
                    reply = await self.hub.redis.xread(
                        # No more per read than a queue holds, so one read never
                        # overflows a watcher that has kept up with the previous one.
                        {self.key: f"{self.cursor}-0"},
                        count=min(self.hub.read_count, self.hub.queue_size),
                        block=self.hub.block_ms,
                    )
                except (RedisError, OSError) as exc:
                    log.warning("live %s: reading the log failed (%s); retrying", self.show_id, exc)
                    await asyncio.sleep(self.hub.retry_s)
                    continue
                for _key, rows in reply or ():
                    for entry_id, fields in rows:
                        self._fan_out(int(entry_id.split(b"-")[0]), fields[b"e"])
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

    def _fan_out(self, seq: int, data: bytes) -> None:
        self.cursor = seq
        self.entries += 1
        for watcher in list(self.watchers):
            if not watcher.offer(seq, data):
                self.watchers.discard(watcher)
                self.hub.dropped += 1
        if not self.watchers:
            self.hub._retire(self)


class Hub:
    """Live fan-out for this process: one log reader per show with local watchers."""

    def __init__(
        self, redis: aioredis.Redis, *, queue_size: int = 256, heartbeat: float = 20.0,
        block_ms: int = 2_000, read_count: int = 500, send_timeout: float = 30.0,
        send_buffer: int | None = 64 * 1024,
    ) -> None:
        self.redis = redis
        self.queue_size = queue_size      # per-socket backlog before it is dropped
        self.heartbeat = heartbeat        # WebSocket ping interval (s); dead peers closed
        # A blocking read must end before the client's socket timeout would cut it.
        timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
        self.block_ms = block_ms if not timeout else min(block_ms, int(timeout * 500))
        self.read_count = read_count
        self.send_timeout = send_timeout  # a socket stuck this long on one send is cut off
        # Kernel send buffer per socket (None: the OS default, which autotunes up to MBs).
        # Kept small so a peer that stops reading backs up into its bounded queue soon,
        # instead of parking megabytes in the kernel first.
        self.send_buffer = send_buffer
        self.retry_s = 0.5
        self.dropped = 0                  # watchers cut off for falling behind
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
        current end goes to its queue."""
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
        sockets = list(self._sockets)
        if sockets:
            await asyncio.gather(
                *(_close(ws, WSCloseCode.GOING_AWAY, b"server shutting down") for ws in sockets),
                return_exceptions=True,
            )
        if feeds:
            await asyncio.gather(*(f.stopped.wait() for f in feeds))


async def _close(ws: web.WebSocketResponse, code: int, message: bytes) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=code, message=message), timeout=2.0)


# --- the socket ----------------------------------------------------------------------------

class _Session:
    """Sends one socket its catch-up, then the live tail, seqs contiguous."""

    def __init__(self, hub: Hub, show_id: str, ws: web.WebSocketResponse) -> None:
        self.hub = hub
        self.show_id = show_id
        self.ws = ws
        self.last = -1  # the seq this socket has been brought to (-1: nothing sent yet)

    async def send(self, data: bytes) -> None:
        await asyncio.wait_for(self.ws.send_frame(data, WSMsgType.TEXT), self.hub.send_timeout)

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
        """Send the log entries in (last, until]. False if the log no longer starts at
        last + 1 (trimmed): the caller sends a snapshot instead."""
        key = log_key(self.show_id)
        while self.last < until:
            rows = await self.hub.redis.xrange(key, f"{self.last + 1}-0", f"{until}-0", count=500)
            if not rows:
                return False
            for entry_id, fields in rows:
                if int(entry_id.split(b"-")[0]) != self.last + 1:
                    return False
                await self.send(fields[b"e"])
                self.last += 1
        return True

    async def deliver(self, seq: int, data: bytes) -> None:
        for _ in range(3):
            if seq <= self.last:
                return  # the snapshot or catch-up already covered it
            if seq == self.last + 1:
                await self.send(data)
                self.last = seq
                return
            # A hole between what this socket has and the tail: fill it, or start over.
            if not await self.catch_up(seq - 1):
                await self.snapshot()
        raise _Gone()

    async def pump(self, watcher: Watcher) -> None:
        while True:
            item = await watcher.queue.get()
            if isinstance(item, _Resync):
                await self.send(RESYNC)
                await asyncio.wait_for(
                    self.ws.close(code=RESYNC_CLOSE_CODE, message=b"resync"), self.hub.send_timeout
                )
                return
            await self.deliver(*item)


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
    response=LiveMessage, status=101, errors=(400, 404, 426), tags=("customer", "live"),
    params=(Query("since", int, description="the last seq the client applied; the server "
                  "sends exactly the entries after it, or a fresh snapshot when too old"),),
    description="Upgrade to a WebSocket. Messages (JSON text): first a `snapshot` (or, with "
    "`since`, the missed `event`s), then one `event` per log entry with contiguous `seq`s. "
    "A client that falls behind gets `resync` and the socket closes (code 4000); reconnect "
    "with `since`.",
)
async def live(request: web.Request) -> web.WebSocketResponse:
    from .app import services  # app imports this module

    show_id = request.match_info["show_id"]
    if not _SHOW_ID.match(show_id):
        raise ApiError(404, "not_found", f"no show {show_id!r}")
    since = _since(request)
    hub = services(request).hub
    if hub.closed:
        raise ApiError(503, "unavailable", "the server is shutting down; reconnect shortly")
    if not await hub.redis.exists(config_key(show_id)):
        raise ApiError(404, "not_found", f"no show {show_id!r}")
    ws = web.WebSocketResponse(
        heartbeat=hub.heartbeat,
        compress=False,       # each message is encoded once and sent as is to every socket
        writer_limit=1 << 15,  # wait for a slow peer early; its queue then takes the strain
        max_msg_size=1 << 12,  # clients have nothing big to say
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(426, "upgrade_required", "this endpoint is a WebSocket")
    await ws.prepare(request)
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if hub.send_buffer and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, hub.send_buffer)
    hub._sockets.add(ws)
    watcher: Watcher | None = None
    sender: asyncio.Task[None] | None = None
    try:
        watcher = await hub.join(show_id)
        session = _Session(hub, show_id, ws)

        async def run() -> None:
            try:
                await session.start(since)
                await session.pump(watcher)
            except _Gone:
                await _close(ws, WSCloseCode.GOING_AWAY, b"show gone")
            except ConnectionError:
                pass  # the peer went away while we were sending
            except TimeoutError:
                log.info("live %s: a socket stuck on send; cutting it off", show_id)
                if request.transport is not None:
                    request.transport.abort()
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
        if not ws.closed:
            await _close(ws, WSCloseCode.OK, b"")
    return ws


async def _drain(ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type == WSMsgType.ERROR:
            break
