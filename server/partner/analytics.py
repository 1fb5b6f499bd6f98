"""The analytics feed: every outbox event exported as files a warehouse can load.

The exporter is the outbox consumer group `analytics` (outbox.GroupConsumer). Each event
becomes one row (schema: docs/analytics-schema.md, `SCHEMA` below) in

    <dir>/date=YYYY-MM-DD/events-<n>.jsonl     appended per event, before it is acknowledged
    <dir>/date=YYYY-MM-DD/events-<n>.parquet   the same rows, once the part is sealed

`date` is the event's UTC date. A part is open (JSON Lines only) until it has `max_rows`
rows, is `seal_after_s` old, or the exporter stops; sealing writes its Parquet file
(to a temporary name, then renamed, so a loader never sees half a file) and the next
event of that date starts part `n + 1`. Part numbers come from Redis INCR, so exporters in
several processes never write the same file.

Idempotent: an event id is recorded (`analytics:exported:<group>:<date>`, a set kept
35 days) after its row was written, and a redelivered event that is already recorded is skipped.
Only a crash between the write and the record can repeat a row; `event_id` is the
row's unique key for a loader that wants to be sure.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import redis.asyncio as aioredis
from aiohttp import web


from server.core.clock import as_utc
from server.catalog.model import Show, catalog_key
from server.core.outbox import Event, GroupConsumer, cancel_and_wait, run_with_app

log = logging.getLogger(__name__)

GROUP = "analytics"
EXPORTED_TTL_S = 35 * 24 * 3600
PART_KEY = "analytics:part"

SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("event_type", pa.string(), nullable=False),
    pa.field("event_time", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("date", pa.string(), nullable=False),
    pa.field("partner_id", pa.string()),
    pa.field("show_id", pa.string()),
    pa.field("movie_id", pa.string()),
    pa.field("screen_id", pa.string()),
    pa.field("theatre_id", pa.string()),
    pa.field("city", pa.string()),
    pa.field("show_starts_at", pa.timestamp("ms", tz="UTC")),
    pa.field("booking_id", pa.string()),
    pa.field("customer_id", pa.string()),
    pa.field("booking_status", pa.string()),
    pa.field("seats", pa.list_(pa.string())),
    pa.field("seat_count", pa.int32()),
    pa.field("amount", pa.int64()),
    pa.field("currency", pa.string()),
    pa.field("refund_amount", pa.int64()),
    pa.field("reason", pa.string()),
    pa.field("bookings_affected", pa.int32()),
    pa.field("booking_created_at", pa.timestamp("ms", tz="UTC")),
])

_json = msgspec.json.Encoder()


def exported_key(group: str, date: str) -> str:
    return f"analytics:exported:{group}:{date}"


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return as_utc(t)


def event_row(event: Event, show: Show | None) -> dict[str, Any]:
    """One event as a row (JSON-ready: times as ISO 8601 strings). No e-mail or name:
    the feed carries no customer contact data."""
    d = event.data
    seats = d.get("seats")
    seats = [str(s) for s in seats] if isinstance(seats, list) else None
    bookings = d.get("bookings")
    amount = d.get("total")
    refund = d.get("refund")
    refund = refund.get("amount") if isinstance(refund, dict) else None
    return {
        "event_id": event.id,
        "event_type": event.type,
        "event_time": _iso(event.time),
        "date": event.time.astimezone(UTC).date().isoformat(),
        "partner_id": event.partner_id or (show.partner_id if show else None) or None,
        "show_id": d.get("show_id"),
        "movie_id": show.movie_id if show else None,
        "screen_id": show.screen_id if show else None,
        "theatre_id": show.theatre_id if show else None,
        "city": show.city if show else None,
        "show_starts_at": _iso(show.starts_at) if show else None,
        "booking_id": d.get("booking_id"),
        "customer_id": d.get("customer_id"),
        "booking_status": d.get("status"),
        "seats": seats,
        "seat_count": len(seats) if seats is not None else None,
        "amount": amount if isinstance(amount, int) else None,
        "currency": d.get("currency") or None,
        "refund_amount": refund if isinstance(refund, int) else None,
        "reason": d.get("reason"),
        "bookings_affected": len(bookings) if isinstance(bookings, list) else None,
        "booking_created_at": _iso(_parse_time(d.get("created_at"))),
    }


def _arrow_table(rows: list[dict[str, Any]]) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    for r in rows:
        for f in SCHEMA:
            v = r.get(f.name)
            if pa.types.is_timestamp(f.type):
                v = _parse_time(v)
            cols[f.name].append(v)
    return pa.Table.from_pydict(cols, schema=SCHEMA)


@dataclass
class _Part:
    date: str
    n: int
    jsonl: Path
    opened: float
    rows: int = 0


class AnalyticsExporter:
    """Exports outbox events to `directory` (see the module doc). `start()` runs the
    consumer and a sealer in the background; `stop()` seals every open part."""

    def __init__(self, redis: aioredis.Redis, directory: str | os.PathLike, *,
                 group: str = GROUP, max_rows: int = 10_000, seal_after_s: float = 300.0,
                 start_id: str = "0", block_ms: int = 1000,
                 claim_idle_s: float = 60.0) -> None:
        self.redis = redis
        self.group = group
        self.dir = Path(directory)
        self.max_rows = max_rows
        self.seal_after_s = seal_after_s
        self.consumer = GroupConsumer(redis, group, self.handle, retry_s=1.0, retry_max_s=60.0,
                                      block_ms=block_ms, claim_idle_s=claim_idle_s,
                                      start_id=start_id)
        self._open: dict[str, _Part] = {}
        self._lock = asyncio.Lock()
        self._sealer: asyncio.Task[None] | None = None

    # -- the consumer's handler -------------------------------------------------------------

    async def handle(self, event: Event) -> bool:
        date = event.time.astimezone(UTC).date().isoformat()
        if await self.redis.sismember(exported_key(self.group, date), event.id):
            return True  # a redelivery: written already
        show = None
        show_id = event.data.get("show_id")
        if isinstance(show_id, str) and show_id:
            raw = await self.redis.get(catalog_key("show", show_id))
            show = msgspec.json.decode(raw, type=Show) if raw else None
        row = event_row(event, show)
        async with self._lock:
            part = await self._part(date)
            line = _json.encode(row) + b"\n"
            await asyncio.to_thread(_append, part.jsonl, line)
            part.rows += 1
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.sadd(exported_key(self.group, date), event.id)
                pipe.expire(exported_key(self.group, date), EXPORTED_TTL_S)
                await pipe.execute()
            if part.rows >= self.max_rows:
                await self._seal(part)
        return True

    async def _part(self, date: str) -> _Part:
        part = self._open.get(date)
        if part is None:
            n = int(await self.redis.incr(PART_KEY))
            folder = self.dir / f"date={date}"
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            part = _Part(date, n, folder / f"events-{n}.jsonl", time.monotonic())
            self._open[date] = part
        return part

    async def _seal(self, part: _Part) -> Path:
        """Write the part's Parquet file from its JSON Lines and close the part."""
        self._open.pop(part.date, None)
        return await asyncio.to_thread(_write_parquet, part.jsonl)

    async def flush(self) -> list[Path]:
        """Seal every open part now; returns the Parquet files written."""
        async with self._lock:
            parts = list(self._open.values())
            return [await self._seal(p) for p in parts]

    # -- running ----------------------------------------------------------------------------

    def start(self) -> None:
        self.consumer.start()
        self._sealer = asyncio.create_task(self._seal_loop(), name="analytics:sealer")

    async def _seal_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.seal_after_s, 30.0))
            try:
                async with self._lock:
                    now = time.monotonic()
                    for part in [p for p in self._open.values()
                                 if now - p.opened >= self.seal_after_s]:
                        await self._seal(part)
            except Exception:  # a full disk must not kill the loop
                log.exception("analytics: sealing failed")

    async def stop(self) -> None:
        await self.consumer.stop()
        if self._sealer is not None:
            await cancel_and_wait(self._sealer)
            self._sealer = None
        with contextlib.suppress(Exception):
            await self.flush()


def _append(path: Path, line: bytes) -> None:
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return [msgspec.json.decode(line) for line in f if line.strip()]


def _write_parquet(jsonl: Path) -> Path:
    target = jsonl.with_suffix(".parquet")
    tmp = target.with_name(target.name + ".tmp")
    pq.write_table(_arrow_table(read_jsonl(jsonl)), tmp)
    os.replace(tmp, target)
    return target


ANALYTICS = web.AppKey("analytics", AnalyticsExporter)


def setup(app: web.Application, redis_url: str, directory: Path) -> None:
    """Runs this process's analytics export while the app runs."""
    run_with_app(app, ANALYTICS, redis_url, lambda redis: AnalyticsExporter(redis, directory))
