"""Booking lifecycle against the real server, Redis and Ray: customer cancellation with
refunds per policy, per-show policies, a partner cancelling a show (everything refunded,
everyone notified), bulk booking all or nothing, bulk cancellation, show.sold_out."""
from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp.test_utils import TestServer

from actors.layout import grid_layout
from server.core import outbox
from server.appkeys import SERVICES
from server.booking.records import show_booking_ids
from server.commerce.gateway_client import HttpGateway

from .builders import publish_show, publish_show_via_feed
from .catalog_helpers import new_partner
from .test_checkout import checkout, hold, seat_status


def gateway(server: TestServer) -> HttpGateway:
    return server.app[SERVICES].payments


async def events(redis, show_id: str, type_: str) -> list[outbox.Event]:
    rows = [row for stream in outbox.STREAMS for row in await redis.xrange(stream)]
    out = [outbox.decode_entry(i, f) for i, f in rows]
    return [e for e in out if e.type == type_ and e.data.get("show_id") == show_id]


async def book(api, show_id: str, seats: list[str]) -> dict:
    status, b = await checkout(api, await hold(api, show_id, seats))
    assert status == 201, b
    return b


async def cancel(api, b: dict, token: str | None = None) -> tuple[int, dict]:
    async with api.post(f"/api/bookings/{b['booking_id']}/cancel",
                        headers={"X-Booking-Token": token or b["booking_token"]}) as resp:
        return resp.status, await resp.json()


async def get_booking(api, b: dict) -> dict:
    async with api.get(f"/api/bookings/{b['booking_id']}",
                       headers={"X-Booking-Token": b["booking_token"]}) as resp:
        return await resp.json()


# --- customer cancellation ----------------------------------------------------------------

@pytest.mark.parametrize(("hours", "percent"), [(48, 100), (10, 50), (1, 0)])
async def test_customer_cancel_refunds_per_the_default_policy(api, redis, server, hours,
                                                              percent):
    pub = await publish_show(redis, starts_in=timedelta(hours=hours))
    b = await book(api, pub.show_id, ["A2", "C2"])
    total = b["amount"]["amount"]
    async with api.get(f"/api/bookings/{b['booking_id']}/cancellation",
                       headers={"X-Booking-Token": b["booking_token"]}) as resp:
        quote = await resp.json()
    assert quote["refund_percent"] == percent and quote["policy"]["source"] == "platform"

    status, got = await cancel(api, b)
    assert status == 200, got
    assert got["status"] == "cancelled" and got["by"] == "customer"
    assert got["refund_percent"] == percent
    assert got["refund"] == {"amount": total * percent // 100, "currency": "INR"}
    ref = b["payment"]["ref"]
    refunds = await gateway(server).entries(ref, "refund")
    assert [e.amount for e in refunds] == ([total * percent // 100] if percent else [])
    st = await seat_status(api, pub.show_id)
    assert st["A2"] == st["C2"] == "free"  # back on sale
    assert (await get_booking(api, b))["status"] == "cancelled"
    [event] = await events(redis, pub.show_id, "booking.cancelled")
    assert event.data["booking_id"] == b["booking_id"] and event.data["reason"] == "customer"
    assert event.data["refund"]["amount"] == total * percent // 100

    # Cancelling again changes nothing; another booking's token cannot cancel this one.
    status, again = await cancel(api, b)
    assert (status, again["error"]["code"]) == (409, "booking_cancelled")
    assert len(await gateway(server).entries(ref, "refund")) == len(refunds)


async def test_cancel_needs_the_booking_token(api, redis):
    pub = await publish_show(redis)
    b = await book(api, pub.show_id, ["B1"])
    other = await book(api, pub.show_id, ["B2"])
    status, _ = await cancel(api, b, token=other["booking_token"])
    assert status == 403
    assert (await seat_status(api, pub.show_id))["B1"] == "booked"


async def test_partner_sets_a_per_show_policy(api, redis, server):
    show_id, partner = await publish_show_via_feed(api, hours=24)
    path = f"/partner/v1/shows/{show_id}/cancellation-policy"
    status, policy = await partner.call("GET", path)
    assert status == 200 and policy["source"] == "platform"
    status, got = await partner.call("PUT", path, {"tiers": [
        {"hours_before": 12, "refund_percent": 25}, {"hours_before": 72, "refund_percent": 100}]})
    assert status == 200, got
    assert [t["hours_before"] for t in got["tiers"]] == [72, 12] and got["source"] == "show"
    # Refunds may not grow closer to the start; bad percentages are 422.
    status, bad = await partner.call("PUT", path, {"tiers": [
        {"hours_before": 48, "refund_percent": 10}, {"hours_before": 2, "refund_percent": 90}]})
    assert (status, bad["error"]["code"]) == (422, "invalid_policy")
    status, _ = await partner.call("PUT", path, {"tiers": [
        {"hours_before": 1, "refund_percent": 101}]})
    assert status == 422
    stranger = await new_partner(api)
    async with api.put(path, json={"tiers": []}, headers=stranger.headers) as resp:
        assert resp.status == 403

    b = await book(api, show_id, ["A1"])  # 24 h before the start: the 12 h tier, 25%
    status, got = await cancel(api, b)
    assert status == 200, got
    assert got["refund_percent"] == 25
    assert got["refund"]["amount"] == b["amount"]["amount"] * 25 // 100


# --- partner cancels a show ----------------------------------------------------------------

async def test_partner_cancelling_a_show_cancels_and_refunds_every_booking(api, redis, server):
    show_id, partner = await publish_show_via_feed(api, hours=3)  # < 24 h: no matter
    b1 = await book(api, show_id, ["A1", "A2"])
    b2 = await book(api, show_id, ["D4"])
    gone = await book(api, show_id, ["B1"])
    assert (await cancel(api, gone))[0] == 200  # cancelled before: not refunded twice
    loose = await hold(api, show_id, ["C3"])  # a hold in progress is released
    # The show's bookings index (no SCAN finds them) follows every record's status.
    assert await show_booking_ids(redis, show_id) == {
        b1["booking_id"]: "confirmed", b2["booking_id"]: "confirmed",
        gone["booking_id"]: "cancelled"}

    status, show = await partner.call("DELETE", f"/partner/v1/shows/{show_id}")
    assert status == 200, show
    assert show["status"] == "cancelled"
    gw = gateway(server)
    for b in (b1, b2):
        assert (await get_booking(api, b))["status"] == "cancelled"
        [refund] = await gw.entries(b["payment"]["ref"], "refund")
        assert refund.amount == b["amount"]["amount"]  # in full, whatever the policy
    view = await seat_status(api, show_id)
    assert all(view[s] == "free" for s in ("A1", "A2", "D4", "B1", "C3"))
    status, body = await checkout(api, loose)
    assert status == 404, body

    cancelled = await events(redis, show_id, "booking.cancelled")
    by_show = {e.data["booking_id"] for e in cancelled if e.data["reason"] == "show_cancelled"}
    assert by_show == {b1["booking_id"], b2["booking_id"]}
    [notice] = await events(redis, show_id, "show.cancelled")
    assert notice.partner_id == partner.partner_id
    listed = {b["booking_id"]: b["email"] for b in notice.data["bookings"]}
    assert set(listed) == {b1["booking_id"], b2["booking_id"], gone["booking_id"]}
    assert set((await show_booking_ids(redis, show_id)).values()) == {"cancelled"}

    # Repeating the request is safe: no second refund, no second notice.
    status, _ = await partner.call("DELETE", f"/partner/v1/shows/{show_id}")
    assert status == 200
    assert len(await gw.entries(b1["payment"]["ref"], "refund")) == 1
    assert len(await events(redis, show_id, "show.cancelled")) == 1


# --- bulk booking ---------------------------------------------------------------------------

async def test_bulk_booking_is_all_or_nothing(api, redis, server):
    show_id, partner = await publish_show_via_feed(api)  # 4 rows x 6 seats, 10 per hold
    taken = await hold(api, show_id, ["B2"])
    path = f"/partner/v1/shows/{show_id}/bulk-bookings"
    wanted = [f"{r}{n}" for r in "AB" for n in range(1, 7)]  # 12 seats: two actor holds
    status, body = await partner.call("POST", path, {
        "seats": wanted, "email": "events@corp.example", "name": "Corp Ltd"})
    assert (status, body["error"]["code"]) == (409, "seats_unavailable"), body
    assert body["error"]["seats"] == ["B2"]
    view = await seat_status(api, show_id)
    assert all(view[s] == "free" for s in wanted if s != "B2")  # nothing kept
    assert view["B2"] == "held"

    wanted = [s for s in wanted if s != "B2"] + ["C1"]
    status, bulk = await partner.call("POST", path, {
        "seats": wanted, "email": "events@corp.example", "name": "Corp Ltd",
        "reference": "PO-42"})
    assert status == 201, bulk
    assert sorted(bulk["seats"]) == sorted(wanted) and bulk["reference"] == "PO-42"
    assert len(bulk["bookings"]) == 2  # one per actor hold
    assert sum(len(t["seats"]) for t in bulk["bookings"]) == 12
    assert bulk["amount"]["amount"] == 11 * 20000 + 35000  # list prices, invoiced
    view = await seat_status(api, show_id)
    assert all(view[s] == "booked" for s in wanted)
    confirmed = await events(redis, show_id, "booking.confirmed")
    assert {e.data["booking_id"] for e in confirmed} == {t["booking_id"]
                                                         for t in bulk["bookings"]}

    status, best = await partner.call("POST", path, {
        "best": {"count": 4, "category": "Gold"}, "email": "a@corp.example", "name": "A"})
    assert status == 201, best
    assert len(best["seats"]) == 4
    status, too_many = await partner.call("POST", path, {
        "best": {"count": 30}, "email": "a@corp.example", "name": "A"})
    assert (status, too_many["error"]["code"]) == (409, "not_enough_seats")
    assert (await seat_status(api, show_id)) == {**view, **{s: "booked" for s in best["seats"]}}

    # Another partner cannot book or read this show's bulk bookings.
    stranger = await new_partner(api)
    async with api.post(path, json={"seats": ["D6"], "email": "x@y.zz", "name": "X"},
                        headers=stranger.headers) as resp:
        assert resp.status == 403
    async with api.get(f"{path}/{bulk['bulk_id']}", headers=stranger.headers) as resp:
        assert resp.status == 403
    assert taken  # the customer's hold was never touched


async def test_bulk_cancellation_frees_every_seat(api, redis, server):
    show_id, partner = await publish_show_via_feed(api)
    path = f"/partner/v1/shows/{show_id}/bulk-bookings"
    status, bulk = await partner.call("POST", path, {
        "best": {"count": 14}, "email": "events@corp.example", "name": "Corp Ltd"})
    assert status == 201, bulk
    status, got = await partner.call("GET", f"{path}/{bulk['bulk_id']}")
    assert status == 200 and got["status"] == "confirmed"
    status, done = await partner.call("DELETE", f"{path}/{bulk['bulk_id']}")
    assert status == 200, done
    assert done["status"] == "cancelled"
    assert sorted(s for c in done["cancelled"] for s in c["seats"]) == sorted(bulk["seats"])
    view = await seat_status(api, show_id)
    assert all(view[s] == "free" for s in bulk["seats"])
    cancelled = await events(redis, show_id, "booking.cancelled")
    assert len(cancelled) == len(bulk["bookings"])
    assert not await gateway(server).entries(kind="refund") or all(
        not e.ref.startswith("inv_") for e in await gateway(server).entries(kind="refund"))


# --- sold out ---------------------------------------------------------------------------------

async def test_show_sold_out_is_published_when_the_last_seat_is_booked(api, redis):
    pub = await publish_show(redis, layout=grid_layout(1, 3, bands=[("gold", 1)]))
    await book(api, pub.show_id, ["A1"])
    b2 = await book(api, pub.show_id, ["A2"])
    assert await events(redis, pub.show_id, "show.sold_out") == []
    await book(api, pub.show_id, ["A3"])
    [sold_out] = await events(redis, pub.show_id, "show.sold_out")
    assert sold_out.partner_id == "partner-test"
    assert sold_out.data["counts"]["free"] == 0
    # A cancellation frees a seat; selling it again is a new sell-out.
    assert (await cancel(api, b2))[0] == 200
    await book(api, pub.show_id, ["A2"])
    assert len(await events(redis, pub.show_id, "show.sold_out")) == 2
