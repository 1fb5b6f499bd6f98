"""The outbox: domain events in the sharded Redis Streams `outbox:{o<i>}:events`.

Producers (checkout, cancellations, the partner feed) call `publish()` after their own
write succeeded. Consumers (the e-mail worker in notifications.py, the webhook fan-out in
webhooks.py) read the streams through consumer groups, so an event is delivered to every
group at least once even if a worker, the SMTP server or a receiver is down: an entry is
acknowledged (XACK) only after its side effect succeeded, and entries left pending by a
dead consumer are claimed again (XAUTOCLAIM) by a live one.

Shards: the outbox is `SHARDS` streams, each in its own Redis Cluster slot (hash tag
`{o<i>}`), so its writes and reads spread over the masters. An event goes to the shard of
its show id (its event id when it has none): one show's events stay in order. A group
exists on every shard, with its retries hash `outbox:{o<i>}:retries:<group>` in the
shard's slot, and a `GroupConsumer` reads every shard (one reader per shard: a blocking
XREADGROUP may name several streams only within one slot). Order holds within a shard,
not across shards.

Entry fields (all strings): `id` (the event id, `evt_<hex>`), `type`, `time` (UTC ISO
8601), `partner_id` ("" when unknown) and `data` (JSON).

Event types: booking.confirmed, booking.cancelled, show.cancelled, show.sold_out.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError, ResponseError

from actors import redis_conn

log = logging.getLogger(__name__)

SHARDS = 8  # streams (changing it moves events between shards: only on an empty outbox)
STREAMS: tuple[str, ...] = tuple(f"outbox:{{o{i}}}:events" for i in range(SHARDS))
STREAM_MAXLEN = 1_000_000 // SHARDS  # approximate cap per shard; consumers keep up long before


def shard_of(key: str) -> int:
    """The shard of a show id (or, for an event without one, its event id): stable across
    processes and restarts (CRC-32, not Python's salted hash)."""
    return zlib.crc32(key.encode()) % SHARDS


def stream_for(key: str) -> str:
    return STREAMS[shard_of(key)]


def retries_key(stream: str, group: str) -> str:
    """A group's retry schedule on one shard (entry id -> "attempts:next_at_ms"), in the
    shard's slot (the ack and its HDEL are one transaction)."""
    return stream.removesuffix(":events") + f":retries:{group}"


def _show_of(data: dict | msgspec.Struct) -> str | None:
    show = data.get("show_id") if isinstance(data, dict) else getattr(data, "show_id", None)
    return show if isinstance(show, str) and show else None

EVENT_TYPES = frozenset({"booking.confirmed", "booking.cancelled", "show.cancelled",
                         "show.sold_out"})

_encoder = msgspec.json.Encoder()


class Event(msgspec.Struct, frozen=True):
    """One outbox event as consumers see it."""

    id: str            # the event id (stable across redeliveries)
    type: str
    time: datetime
    data: dict[str, Any]
    partner_id: str | None = None
    entry_id: str = ""  # the Redis Stream entry id (for XACK)
    stream: str = ""    # the shard's stream it was read from


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


async def publish(redis: aioredis.Redis, type: str, data: dict | msgspec.Struct, *,
                  partner_id: str | None = None, event_id: str | None = None) -> str:
    """Append an event to the outbox and return its event id.

    `data` is a dict or a msgspec Struct (encoded to JSON; datetimes as ISO 8601).
    For booking events include at least `booking_id`, `show_id`, `email`, `name`, `seats`
    (`booking_data(booking)` builds that from a BookingRecord); for show events `show_id`
    and, so customers are told, `bookings`: a list of `booking_data(...)` dicts.
    `partner_id` may be left out: the webhook worker finds the show's partner itself.
    `event_id` (optional) makes the event id deterministic, e.g.
    `f"booking.confirmed:{booking_id}"`, so a producer that retries after a crash
    publishes the same event again and consumers deliver it only once.
    """
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown outbox event type {type!r}")
    event_id = event_id or new_event_id()
    fields = {
        "id": event_id,
        "type": type,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "partner_id": partner_id or "",
        "data": _encoder.encode(data),
    }
    await redis.xadd(stream_for(_show_of(data) or event_id), fields, maxlen=STREAM_MAXLEN,
                     approximate=True)
    return event_id


def booking_data(booking: Any) -> dict[str, Any]:
    """The public part of a booking record for an event (no payment token)."""
    quote = getattr(booking, "quote", None)
    created = getattr(booking, "created_at", None)
    return {
        "booking_id": booking.booking_id,
        "show_id": booking.show_id,
        "seats": list(booking.seats),
        "email": booking.email,
        "name": booking.name,
        "status": getattr(booking, "status", "confirmed"),
        "total": getattr(quote, "total", 0),
        "currency": getattr(quote, "currency", ""),
        "created_at": created.isoformat() if isinstance(created, datetime) else created,
    }


async def cancel_and_wait(task: asyncio.Task) -> None:
    """Cancel `task` and wait until it has stopped."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_entry(entry_id: bytes | str, fields: dict, stream: str = "") -> Event:
    """A stream entry (as redis-py returns it) as an `Event`."""
    f = {_s(k): _s(v) for k, v in fields.items()}
    return Event(
        id=f.get("id", _s(entry_id)),
        type=f.get("type", ""),
        time=datetime.fromisoformat(f["time"].replace("Z", "+00:00")) if f.get("time")
        else datetime.now(UTC),
        data=msgspec.json.decode(f.get("data", "{}").encode()),
        partner_id=f.get("partner_id") or None,
        entry_id=_s(entry_id),
        stream=stream,
    )


# --- consumers -------------------------------------------------------------------------

Handler = Callable[[Event], Awaitable[bool]]


class GroupConsumer:
    """Runs `handler` for every outbox event, as one consumer of the group `group`.

    The handler returns True when the event's side effect is done (the entry is then
    acknowledged) and False, or raises, when it should be tried again later: the entry
    stays pending on this consumer, which reads it again from its own pending list
    (XREADGROUP from id 0) once its backoff has passed (`retry_s`, doubled per attempt up
    to `retry_max_s`). Entries a dead consumer (another process) left pending are taken
    over (XAUTOCLAIM) once idle for `claim_idle_s`; a live consumer's re-reads keep its
    own entries from looking idle. Handlers must be idempotent: delivery is at least once.

    Every shard is read by its own task (its own blocking read); the handler still runs
    for one event at a time per consumer, as with one stream.
    """

    def __init__(self, redis: aioredis.Redis, group: str, handler: Handler, *,
                 retry_s: float = 5.0, retry_max_s: float = 300.0,
                 claim_idle_s: float = 60.0, block_ms: int = 1000, batch: int = 32,
                 name: str | None = None, start_id: str = "0") -> None:
        self.redis = redis
        self.group = group
        self.handler = handler
        self.retry_ms = max(1, int(retry_s * 1000))
        self.retry_max_ms = max(self.retry_ms, int(retry_max_s * 1000))
        self.claim_idle_ms = max(1, int(claim_idle_s * 1000))
        self.start_id = start_id
        self.retries_keys = {stream: retries_key(stream, group) for stream in STREAMS}
        self.block_ms = block_ms
        self.batch = batch
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._handling = asyncio.Lock()  # one handler call at a time, whichever shard

    async def ensure_group(self, stream: str | None = None) -> None:
        for s in (stream,) if stream else STREAMS:
            try:
                # From the stream's start: events published before the first worker ran
                # count too.
                await self.redis.xgroup_create(s, self.group, id=self.start_id, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(stream), name=f"outbox:{self.group}:{i}")
                       for i, stream in enumerate(STREAMS)]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        for stream in STREAMS:
            try:  # leave no idle consumer behind unless it still owns pending entries
                info = await self.redis.xpending_range(stream, self.group, "-", "+", 1,
                                                       consumername=self.name)
                if not info:
                    await self.redis.xgroup_delconsumer(stream, self.group, self.name)
            except (RedisError, OSError):
                pass

    async def _run(self, stream: str) -> None:
        ready = False
        while not self._stopping:
            try:
                if not ready:  # Redis may be down when the worker starts
                    await self.ensure_group(stream)
                    ready = True
                await self.run_shard(stream)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if "NOGROUP" in str(exc):  # the stream or group was deleted: make it again
                    ready = False
                log.warning("outbox %s (%s): redis error %s; retrying", self.group, stream,
                            exc)
                await asyncio.sleep(1.0)
            except Exception:  # a bug must not kill the worker
                log.exception("outbox %s (%s): unexpected error", self.group, stream)
                await asyncio.sleep(1.0)

    async def run_once(self, block_ms: int | None = None) -> int:
        """One pass over every shard (concurrently: a blocking read waits on each): retry
        this consumer's failed entries that are due, take over a dead consumer's, then read
        new ones. Returns how many entries were handled."""
        counts = await asyncio.gather(*(self.run_shard(s, block_ms) for s in STREAMS))
        return sum(counts)

    async def run_shard(self, stream: str, block_ms: int | None = None) -> int:
        """`run_once` on one shard."""
        handled = await self._retry_pass(stream) + await self._claim_pass(stream)
        block = self.block_ms if block_ms is None else block_ms
        # Wake up in time for the next retry when something is pending.
        if handled == 0 and await self._has_pending(stream):
            block = min(block, self.retry_ms)
        resp = await self.redis.xreadgroup(self.group, self.name, {stream: ">"},
                                           count=self.batch, block=block or None)
        for _stream, entries in resp or []:
            for entry_id, fields in entries:
                await self._handle(stream, entry_id, fields)
                handled += 1
        return handled

    async def _has_pending(self, stream: str) -> bool:
        summary = await self.redis.xpending(stream, self.group)
        return bool(summary and summary.get("pending"))

    async def _retry_pass(self, stream: str) -> int:
        handled = 0
        after = "0"
        for _ in range(100):  # bounded per pass
            resp = await self.redis.xreadgroup(self.group, self.name, {stream: after},
                                               count=self.batch)
            entries = resp[0][1] if resp else []
            if not entries:
                break
            for entry_id, fields in entries:
                after = _s(entry_id)
                if not fields:  # trimmed away before it was acknowledged
                    await self.redis.xack(stream, self.group, entry_id)
                elif await self._due(stream, entry_id):
                    await self._handle(stream, entry_id, fields)
                    handled += 1
        return handled

    async def _claim_pass(self, stream: str) -> int:
        handled = 0
        cursor: bytes | str = "0-0"
        for _ in range(100):  # bounded per pass
            resp = await self.redis.xautoclaim(stream, self.group, self.name,
                                               min_idle_time=self.claim_idle_ms,
                                               start_id=cursor, count=self.batch)
            cursor, entries = resp[0], resp[1]
            deleted = resp[2] if len(resp) > 2 else []
            if deleted:  # trimmed away before anyone acknowledged them: nothing to do
                await self.redis.xack(stream, self.group, *deleted)
            for entry_id, fields in entries:
                if fields is None:
                    await self.redis.xack(stream, self.group, entry_id)
                    continue
                if await self._due(stream, entry_id):
                    await self._handle(stream, entry_id, fields)
                    handled += 1
            if _s(cursor) == "0-0" or not entries:
                break
        return handled

    async def _handle(self, stream: str, entry_id: bytes | str, fields: dict) -> None:
        try:
            event = decode_entry(entry_id, fields, stream)
        except (msgspec.DecodeError, KeyError, ValueError):
            log.error("outbox %s: dropping malformed entry %s", self.group, _s(entry_id))
            await self.redis.xack(stream, self.group, entry_id)
            return
        async with self._handling:
            try:
                done = await self.handler(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox %s: %s %s failed (%s); will retry", self.group,
                            event.type, event.id, exc)
                done = False
        if done:
            async with self.redis.pipeline(transaction=True) as pipe:  # one shard's slot
                pipe.xack(stream, self.group, entry_id)
                pipe.hdel(self.retries_keys[stream], entry_id)
                await pipe.execute()
        else:
            await self._failed(stream, entry_id)

    async def _due(self, stream: str, entry_id: bytes | str) -> bool:
        """A claimed entry is retried only once its backoff has passed."""
        raw = await self.redis.hget(self.retries_keys[stream], entry_id)
        if raw is None:
            return True
        _attempts, _, next_at = _s(raw).partition(":")
        return int(next_at or 0) <= time.time_ns() // 1_000_000

    async def _failed(self, stream: str, entry_id: bytes | str) -> None:
        key = self.retries_keys[stream]
        raw = await self.redis.hget(key, entry_id)
        attempts = int(_s(raw).partition(":")[0]) + 1 if raw else 1
        delay = min(self.retry_max_ms, self.retry_ms * 2 ** min(attempts - 1, 30))
        next_at = time.time_ns() // 1_000_000 + delay
        await self.redis.hset(key, entry_id, f"{attempts}:{next_at}")

    async def attempts(self, entry_id: bytes | str, stream: str | None = None) -> int:
        """Failed attempts of an entry so far (every shard is looked at unless `stream`
        says which: entry ids are unique per stream only)."""
        for s in (stream,) if stream else STREAMS:
            raw = await self.redis.hget(self.retries_keys[s], entry_id)
            if raw:
                return int(_s(raw).partition(":")[0])
        return 0


class Worker(Protocol):
    def start(self) -> None: ...

    async def stop(self) -> None: ...


W = TypeVar("W", bound=Worker)


def run_with_app(app: web.Application, key: web.AppKey[W], redis_url: str,
                 make: Callable[[aioredis.Redis], W]) -> None:
    """Run an outbox consumer while the app runs, on its own Redis connections (its
    blocking stream reads must not take the request pool's)."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        redis = redis_conn.async_client(redis_url)
        app[key] = worker = make(redis)
        worker.start()
        yield
        await worker.stop()
        await redis.aclose()

    app.cleanup_ctx.append(run)
