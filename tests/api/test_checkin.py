"""POST /partner/v1/checkin against the real server, Redis and Ray: a signed e-ticket is
verified (signature, the partner's own show, booking not cancelled) and admitted once,
also when many scanners send it at the same moment."""
from __future__ import annotations

import asyncio

from server.booking.tickets import TicketPayload, sign_ticket

from .builders import publish_show_via_feed
from .catalog_helpers import new_partner
from .test_checkout import checkout, hold


async def booked(api, show_id: str, seats: list[str]) -> dict:
    status, b = await checkout(api, await hold(api, show_id, seats))
    assert status == 201, b
    return b


async def scan(api, headers: dict, code: str) -> tuple[int, dict]:
    async with api.post("/partner/v1/checkin", json={"code": code}, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_a_ticket_is_admitted_once(api, redis):
    show_id, partner = await publish_show_via_feed(api)
    b = await booked(api, show_id, ["A1", "A2"])
    status, got = await scan(api, partner.headers, b["ticket"]["code"])
    assert status == 200, got
    assert (got["booking_id"], got["seats"], got["name"]) == (b["booking_id"], ["A1", "A2"],
                                                              b["name"])
    status, again = await scan(api, partner.headers, b["ticket"]["code"])
    assert (status, again["error"]["code"]) == (409, "already_admitted")
    assert again["error"]["admitted_at"].startswith(got["admitted_at"][:19])
    # An admitted ticket can no longer be cancelled for a refund.
    async with api.post(f"/api/bookings/{b['booking_id']}/cancel",
                        headers={"X-Booking-Token": b["booking_token"]}) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (409, "already_admitted")


async def test_concurrent_scans_admit_exactly_once(api, redis):
    show_id, partner = await publish_show_via_feed(api)
    b = await booked(api, show_id, ["B3"])
    results = await asyncio.gather(*(scan(api, partner.headers, b["ticket"]["code"])
                                     for _ in range(12)))
    statuses = sorted(s for s, _ in results)
    assert statuses.count(200) == 1 and statuses.count(409) == 11, statuses
    assert {body["error"]["code"] for s, body in results if s == 409} == {"already_admitted"}


async def test_forged_foreign_and_cancelled_tickets_are_refused(api, redis, app_settings):
    show_id, partner = await publish_show_via_feed(api)
    b = await booked(api, show_id, ["C1"])
    code = b["ticket"]["code"]
    prefix, body, sig = code.split(".")

    # A ticket signed with another key, or with the seats changed, does not verify.
    forged = sign_ticket("not-the-secret", TicketPayload(1, b["booking_id"], show_id, ["C1"],
                                                         None, b["name"]))
    tampered = f"{prefix}.{body[:-2]}AA.{sig}"
    for bad in (forged, tampered, "garbage"):
        status, got = await scan(api, partner.headers, bad)
        assert (status, got["error"]["code"]) == (400, "invalid_ticket"), got

    # Another partner's scanner: 403; no key: 401.
    stranger = await new_partner(api)
    assert (await scan(api, stranger.headers, code))[0] == 403
    assert (await scan(api, {}, code))[0] == 401

    # A valid signature for a booking that does not exist is 404.
    ghost = sign_ticket(app_settings.secret, TicketPayload(1, f"{show_id}.ghost", show_id,
                                                           ["C2"], None, "G"))
    assert (await scan(api, partner.headers, ghost))[0] == 404

    # A cancelled booking is not admitted.
    async with api.post(f"/api/bookings/{b['booking_id']}/cancel",
                        headers={"X-Booking-Token": b["booking_token"]}) as resp:
        assert resp.status == 200
    status, got = await scan(api, partner.headers, code)
    assert (status, got["error"]["code"]) == (409, "booking_cancelled")


async def test_a_scan_and_a_cancel_at_the_same_moment_never_both_win(api, redis):
    # The review's race: a scan between the cancel's check and its refund gave both an
    # admission and a refund. Now one atomic step decides: exactly one of them wins.
    show_id, partner = await publish_show_via_feed(api)
    outcomes = []
    for seat in ("D1", "D2", "D3", "D4", "D5", "D6"):
        b = await booked(api, show_id, [seat])

        async def cancel() -> int:
            async with api.post(f"/api/bookings/{b['booking_id']}/cancel",
                                headers={"X-Booking-Token": b["booking_token"]}) as resp:
                return resp.status

        scans, cancels = await asyncio.gather(
            asyncio.gather(*(scan(api, partner.headers, b["ticket"]["code"]) for _ in range(4))),
            asyncio.gather(*(cancel() for _ in range(2))))
        admitted = [s for s, _ in scans].count(200)
        cancelled = cancels.count(200)
        assert admitted + cancelled == 1, (scans, cancels)
        outcomes.append("admitted" if admitted else "cancelled")
    print(outcomes)
