"""The analytics feed: booking events made through the real API are exported by an
AnalyticsExporter (its own consumer group) to JSON Lines and Parquet partitioned by date;
a redelivered event is not written twice."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pyarrow.parquet as pq
import pytest

from server.core import outbox
from server.partner.analytics import SCHEMA, AnalyticsExporter, read_jsonl

from .builders import PublishedShow
from .outbox_helpers import destroy_group
from .test_lifecycle import book, cancel


@pytest.fixture
async def exporter(redis, tmp_path) -> AsyncIterator[AnalyticsExporter]:
    group = f"analytics-test-{uuid.uuid4().hex[:8]}"
    exp = AnalyticsExporter(redis, tmp_path / "analytics", group=group, start_id="$")
    await exp.consumer.ensure_group()  # from now on: only this test's events
    yield exp
    await destroy_group(redis, group)


async def drain(exp: AnalyticsExporter, count: int) -> None:
    """Run the consumer until `count` entries were handled (each pass blocks on XREADGROUP)."""
    handled = 0
    async with asyncio.timeout(20):
        while handled < count:
            handled += await exp.consumer.run_once(block_ms=2000)


def files(exp: AnalyticsExporter, pattern: str) -> list:
    return sorted(exp.dir.glob(f"date=*/{pattern}"))


async def test_booking_events_are_exported_to_jsonl_and_parquet(api, redis, exporter,
                                                                 show: PublishedShow):
    b = await book(api, show.show_id, ["A1", "C1"])
    status, c = await cancel(api, b)
    assert status == 200, c
    await drain(exporter, 2)
    [jsonl] = files(exporter, "events-*.jsonl")
    assert files(exporter, "*.parquet") == []  # the part is open: JSON Lines only so far
    [parquet] = await exporter.flush()
    assert parquet == jsonl.with_suffix(".parquet")
    assert jsonl.parent.name.startswith("date=")

    table = pq.read_table(parquet)
    assert table.schema.equals(SCHEMA)  # the documented schema, exactly
    rows = table.to_pylist()
    assert [r["event_type"] for r in rows] == ["booking.confirmed", "booking.cancelled"]
    confirmed, cancelled = rows
    for r in rows:
        assert r["booking_id"] == b["booking_id"] and r["show_id"] == show.show_id
        assert r["seats"] == ["A1", "C1"] and r["seat_count"] == 2
        assert r["amount"] == b["amount"]["amount"] == show.price("A1") + show.price("C1")
        assert r["currency"] == "INR" and r["partner_id"] == "partner-test"
        assert r["theatre_id"] == show.theatre.theatre_id and r["movie_id"] == show.movie.movie_id
        assert "email" not in r and "name" not in r
        assert jsonl.parent.name == f"date={r['event_time'].date().isoformat()}"
    assert confirmed["event_id"] == f"booking.confirmed:{b['booking_id']}"
    assert confirmed["booking_status"] == "confirmed" and confirmed["refund_amount"] is None
    assert cancelled["booking_status"] == "cancelled"
    assert cancelled["refund_amount"] == c["refund"]["amount"]
    assert cancelled["reason"] == "customer"
    # The JSON Lines hold the same rows (times as ISO 8601 strings).
    lines = read_jsonl(jsonl)
    assert [r["event_id"] for r in lines] == [r["event_id"] for r in rows]
    assert lines[0]["event_time"].endswith("Z")


async def test_a_redelivered_event_is_not_written_twice(api, redis, exporter,
                                                        show: PublishedShow):
    b = await book(api, show.show_id, ["B2"])
    await drain(exporter, 1)
    [entry] = [e for stream in outbox.STREAMS
               for e in (outbox.decode_entry(i, f, stream)
                         for i, f in await redis.xrevrange(stream, count=20))
               if e.data.get("booking_id") == b["booking_id"]]
    # The producer retries after a crash: the same event (same id) is in its stream again.
    fields = (await redis.xrange(entry.stream, entry.entry_id, entry.entry_id))[0][1]
    await redis.xadd(entry.stream, fields)
    await drain(exporter, 1)
    # And the consumer is handed it again directly (an unacknowledged redelivery).
    assert await exporter.handle(entry) is True
    [parquet] = await exporter.flush()
    rows = pq.read_table(parquet).to_pylist()
    assert [r["event_id"] for r in rows] == [entry.id]
    # After the part is sealed a redelivery starts no new part either.
    assert await exporter.handle(entry) is True
    assert await exporter.flush() == []
    assert len(files(exporter, "*.jsonl")) == 1
