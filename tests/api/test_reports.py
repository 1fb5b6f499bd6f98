"""Partner reports against the real server, Redis and Ray: shows published through the
partner feed, seats held and booked through the customer API, one booking cancelled (50 %
refund, so revenue is netted), then the sales report in every grouping, as CSV, and the
occupancy heat map; another partner sees none of it."""
from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest

from server.booking.records import (
    BookingRecord, PaymentInfo, Quote, booking_key, show_booking_ids,
)

from .catalog_helpers import new_partner
from .test_checkout import hold, seat_status
from .test_lifecycle import book, cancel

SEATS = 24  # catalog_helpers.layout(): 4 rows x 6, Silver A-B 20000, Gold C-D 35000


def local_date(starts_at: str) -> str:
    t = datetime.fromisoformat(starts_at.replace("Z", "+00:00"))
    return t.astimezone(ZoneInfo("Asia/Kolkata")).date().isoformat()


@pytest.fixture
async def sold(api, server):
    """Partner with two shows on one screen (10 h and 14 h ahead): show 1 has a confirmed
    booking A1+A2 and a cancelled C1 (half refunded); show 2 a booking D1+D2 and a hold on B1."""
    partner = await (await new_partner(api)).setup()
    ids = []
    for hours in (10, 14):
        show_id = f"sh-{uuid.uuid4().hex[:10]}"
        status, body = await partner.call("PUT", f"/partner/v1/shows/{show_id}",
                                          partner.show(hours))
        assert status == 201, body
        ids.append((show_id, body))
    (s1, b1), (s2, b2) = ids
    await book(api, s1, ["A1", "A2"])
    gone = await book(api, s1, ["C1"])
    status, c = await cancel(api, gone)
    assert status == 200 and c["refund"]["amount"] == 17500, c
    await book(api, s2, ["D1", "D2"])
    await hold(api, s2, ["B1"])
    dates = sorted({local_date(b1["starts_at"]), local_date(b2["starts_at"])})
    return partner, s1, s2, dates, {s1: local_date(b1["starts_at"]),
                                     s2: local_date(b2["starts_at"])}


async def report(partner, query: str) -> tuple[int, dict]:
    return await partner.call("GET", f"/partner/v1/reports/sales?{query}")


async def test_sales_by_show_counts_confirmed_and_nets_refunds(sold):
    partner, s1, s2, dates, _ = sold
    status, body = await report(partner, f"from={dates[0]}&to={dates[-1]}&group_by=show")
    assert status == 200, body
    rows = {r["key"]: r for r in body["rows"]}
    assert set(rows) == {s1, s2}
    one, two = rows[s1], rows[s2]
    assert (one["bookings"], one["tickets"], one["cancelled"]) == (1, 2, 1)
    assert one["revenue"] == {"amount": 40000 + 17500, "currency": "INR"}
    assert one["refunds"] == {"amount": 17500, "currency": "INR"}
    assert (one["booked_seats"], one["sellable_seats"]) == (2, SEATS)
    assert one["occupancy"] == round(2 / SEATS, 4)
    assert (two["bookings"], two["tickets"], two["cancelled"]) == (1, 2, 0)
    assert two["revenue"] == {"amount": 70000, "currency": "INR"}
    assert two["booked_seats"] == 2  # the hold on B1 is not booked
    assert body["group_by"] == "show" and body["from_date"] == dates[0]


@pytest.mark.parametrize("group_by", ["screen", "theatre"])
async def test_sales_by_screen_and_theatre_sum_the_shows(sold, group_by):
    partner, _s1, _s2, dates, _ = sold
    status, body = await report(partner, f"from={dates[0]}&to={dates[-1]}&group_by={group_by}")
    assert status == 200, body
    [row] = body["rows"]
    assert row["key"] == (partner.screen if group_by == "screen" else partner.theatre)
    assert (row["shows"], row["bookings"], row["tickets"]) == (2, 2, 4)
    assert row["revenue"]["amount"] == 57500 + 70000
    assert (row["booked_seats"], row["sellable_seats"]) == (4, 2 * SEATS)


async def test_sales_by_day_uses_the_theatre_local_date(sold):
    partner, s1, s2, dates, date_of = sold
    status, body = await report(partner, f"from={dates[0]}&to={dates[-1]}&group_by=day")
    assert status == 200, body
    expected: dict[str, int] = {}
    for show, revenue in ((s1, 57500), (s2, 70000)):
        expected[date_of[show]] = expected.get(date_of[show], 0) + revenue
    assert {r["key"]: r["revenue"]["amount"] for r in body["rows"]} == expected
    # A range that excludes the shows' days has no rows.
    status, body = await report(partner, "from=2020-01-01&to=2020-01-31&group_by=day")
    assert (status, body["rows"]) == (200, [])


async def test_sales_as_csv_download(sold, api):
    partner, s1, s2, dates, _ = sold
    q = f"from={dates[0]}&to={dates[-1]}&group_by=show"
    for path, headers in [(f"/partner/v1/reports/sales?{q}&format=csv", partner.headers),
                          (f"/partner/v1/reports/sales?{q}",
                           {**partner.headers, "Accept": "text/csv"})]:
        async with api.get(path, headers=headers) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/csv"
            disposition = resp.headers["Content-Disposition"]
            assert disposition.startswith("attachment;")
            assert f"sales-show-{dates[0]}-{dates[-1]}.csv" in disposition
            rows = list(csv.DictReader(io.StringIO(await resp.text())))
        by_key = {r["key"]: r for r in rows}
        assert set(by_key) == {s1, s2}
        assert by_key[s1]["revenue_minor"] == "57500" and by_key[s1]["tickets"] == "2"
        assert by_key[s1]["currency"] == "INR" and by_key[s1]["group_by"] == "show"
        assert by_key[s2]["occupancy"] == f"{2 / SEATS:.4f}"


async def test_bad_report_requests(sold, api):
    partner, *_ = sold
    for query, code in [("group_by=movie", "invalid_group_by"), ("from=2026-13-01", "invalid_date"),
                        ("from=2026-02-10&to=2026-02-01", "invalid_range"),
                        ("from=2026-01-01&to=2026-12-31", "range_too_long"),
                        ("format=xml", "invalid_format")]:
        status, body = await report(partner, query)
        assert (status, body["error"]["code"]) == (422, code), query
    async with api.get("/partner/v1/reports/sales") as resp:
        assert resp.status == 401


async def test_heatmap_matches_the_seat_map(sold, api):
    partner, s1, s2, *_ = sold
    status, body = await partner.call("GET", f"/partner/v1/reports/shows/{s2}/heatmap")
    assert status == 200, body
    statuses = {s["id"]: s["status"] for s in body["seats"]}
    assert statuses == await seat_status(api, s2)
    assert statuses["D1"] == statuses["D2"] == "booked" and statuses["B1"] == "held"
    assert body["counts"] == {"free": SEATS - 3, "held": 1, "booked": 2, "blocked": 0}
    d1 = next(s for s in body["seats"] if s["id"] == "D1")
    assert (d1["row"], d1["number"], d1["category"], d1["y"]) == ("D", 1, "Gold", 3)
    assert "x" in d1
    status, body = await partner.call("GET", f"/partner/v1/reports/shows/{s1}/heatmap")
    freed = {s["id"]: s["status"] for s in body["seats"]}
    assert freed["C1"] == "free" and freed["A1"] == "booked"  # the cancelled seat is free


async def test_another_partner_sees_nothing(sold, api):
    partner, s1, s2, dates, _ = sold
    other = await new_partner(api)
    status, body = await other.call("GET", f"/partner/v1/reports/shows/{s1}/heatmap")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await report(other, f"from={dates[0]}&to={dates[-1]}&group_by=show")
    assert (status, body["rows"]) == (200, [])
    status, _ = await partner.call("GET", "/partner/v1/reports/shows/no-such-show/heatmap")
    assert status == 404


async def test_the_report_finds_bookings_by_the_shows_index(sold, redis):
    """Bookings are found through each show's bookings index (a report never SCANs the
    keyspace): a record the index does not name is not counted, and the index names each
    booking with its record's status."""
    partner, s1, _, dates, _ = sold
    index = await show_booking_ids(redis, s1)
    assert sorted(index.values()) == ["cancelled", "confirmed"]
    stray = BookingRecord(
        booking_id=f"{s1}.stray", show_id=s1, hold_id=f"{s1}.h", seats=["B6"],
        quote=Quote("INR", [], 99_999, 0, 0, 0, 99_999), email="x@example.com", name="X",
        payment=PaymentInfo("pay_stray", "tok", "4242", "visa"),
        created_at=datetime.now(UTC))
    await redis.set(booking_key(s1, stray.booking_id), msgspec.json.encode(stray))
    status, body = await report(partner, f"from={dates[0]}&to={dates[-1]}&group_by=show")
    assert status == 200, body
    [row] = [r for r in body["rows"] if r["key"] == s1]
    assert (row["bookings"], row["tickets"], row["cancelled"]) == (1, 2, 1)
