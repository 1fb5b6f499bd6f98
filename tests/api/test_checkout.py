"""Checkout, payments (sandbox gateway), bookings and e-tickets against the real server,
Redis and Ray."""
from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from actors.layout import Rules
from server.appkeys import SERVICES
from server.commerce.gateway_client import HttpGateway
from server.commerce.payments import Authorisation, CardDetails
from server.booking.tickets import (
    TicketPayload, booking_token, check_booking_token, sign_ticket, ticket_expiry, ticket_valid,
    token_expiry, verify_ticket,
)

from .builders import DECLINED_CARD, GOOD_CARD, publish_show, wait_for_status

BUYER = {"email": "asha@example.com", "name": "Asha Rao"}


def gateway(server: TestServer) -> HttpGateway:
    return server.app[SERVICES].payments


async def hold(api, show_id: str, seats: list[str]) -> dict:
    async with api.post(f"/api/shows/{show_id}/holds", json={"seats": seats}) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def checkout(api: aiohttp.ClientSession, h: dict, *, card: dict = GOOD_CARD,
                   key: str | None = None, token: str | None = None,
                   body: dict | None = None) -> tuple[int, dict]:
    headers = {"X-Holder-Token": token or h["holder_token"]}
    if key != "":
        headers["Idempotency-Key"] = key or uuid.uuid4().hex
    async with api.post(f"/api/holds/{h['hold_id']}/checkout", headers=headers,
                        json=body if body is not None else {"card": card, **BUYER}) as resp:
        return resp.status, await resp.json()


async def seat_status(api, show_id: str) -> dict[str, str]:
    async with api.get(f"/api/shows/{show_id}/seatmap") as resp:
        return {s["id"]: s["status"] for s in (await resp.json())["seats"]}


async def test_checkout_books_the_seats_and_issues_an_e_ticket(api, redis, server, app_settings):
    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["A4", "C4"])
    status, b = await checkout(api, h)
    assert status == 201, b
    assert b["booking_id"].startswith(pub.show_id + ".")
    assert b["seats"] == ["A4", "C4"]
    assert b["amount"] == {"amount": 45000 + 25000, "currency": "INR"}
    assert b["show"]["show_id"] == pub.show_id and b["show"]["movie_title"] == "The Test Movie"
    assert b["payment"]["last4"] == "4242" and b["status"] == "confirmed"
    st = await seat_status(api, pub.show_id)
    assert st["A4"] == st["C4"] == "booked"

    ledger = await gateway(server).entries(b["payment"]["ref"])
    assert [e.kind for e in ledger] == ["authorise", "capture"]
    assert ledger[0].amount == 70000

    # The booking, with its token.
    async with api.get(f"/api/bookings/{b['booking_id']}",
                       headers={"X-Booking-Token": b["booking_token"]}) as resp:
        assert resp.status == 200
        got = await resp.json()
    assert got["seats"] == ["A4", "C4"] and got["email"] == BUYER["email"]
    payload = verify_ticket(app_settings.secret, got["ticket"]["code"])
    assert payload is not None
    assert (payload.booking_id, payload.seats, payload.name) == (b["booking_id"], ["A4", "C4"],
                                                                 BUYER["name"])
    assert verify_ticket("another-secret", got["ticket"]["code"]) is None
    async with api.get(got["ticket"]["svg_url"]) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/svg+xml"
        assert b"<svg" in await resp.read()

    # The hold is spent: it can be neither extended nor checked out again.
    async with api.patch(f"/api/holds/{h['hold_id']}",
                         headers={"X-Holder-Token": h["holder_token"]}) as resp:
        assert resp.status == 409
    status, again = await checkout(api, h)
    assert (status, again["error"]["code"]) == (409, "hold_checked_out")
    assert again["error"]["booking_id"] == b["booking_id"]


async def test_same_idempotency_key_gets_the_same_booking_and_one_charge(api, redis, server):
    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["B5", "B6"])
    key = uuid.uuid4().hex
    first = await checkout(api, h, key=key)
    second = await checkout(api, h, key=key)
    assert first[0] == second[0] == 201
    assert first[1] == second[1]
    charges = [e for e in (await gateway(server).entries())
               if e.kind == "authorise" and e.ref == first[1]["payment"]["ref"]]
    assert len(charges) == 1


async def test_concurrent_retries_with_one_key_charge_once(api, redis, server):
    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["B7"])
    key = uuid.uuid4().hex
    results = await asyncio.gather(*(checkout(api, h, key=key) for _ in range(3)))
    codes = sorted(s for s, _ in results)
    assert codes.count(201) >= 1 and set(codes) <= {201, 409}
    for status, body in results:
        if status == 409:
            assert body["error"]["code"] == "checkout_in_progress"
    booking_ids = {b["booking_id"] for s, b in results if s == 201}
    assert len(booking_ids) == 1
    charges = [e for e in (await gateway(server).entries())
               if e.kind == "authorise" and h["hold_id"] in e.idempotency_key]
    assert len(charges) == 1


async def test_reused_key_with_a_different_request_is_422(api, redis):
    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["B8"])
    key = uuid.uuid4().hex
    assert (await checkout(api, h, key=key))[0] == 201
    status, body = await checkout(api, h, key=key,
                                  body={"card": GOOD_CARD, "email": "x@y.zz", "name": "X"})
    assert (status, body["error"]["code"]) == (422, "idempotency_key_reused")


async def test_declined_card_is_402_and_the_hold_stays(api, redis, server):
    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["C8"])
    key = uuid.uuid4().hex
    status, body = await checkout(api, h, card=DECLINED_CARD, key=key)
    assert (status, body["error"]["code"]) == (402, "card_declined")
    assert (await seat_status(api, pub.show_id))["C8"] == "held"
    # The same key answers the same decline; a new attempt (new key) with a good card books.
    assert (await checkout(api, h, card=DECLINED_CARD, key=key))[0] == 402
    assert len([e for e in (await gateway(server).entries())
                if e.kind == "decline" and e.idempotency_key.startswith(f"idem:{{{pub.show_id}}}")]) == 1
    status, booking = await checkout(api, h)
    assert status == 201, booking
    assert (await seat_status(api, pub.show_id))["C8"] == "booked"


async def test_invalid_card_is_422_and_leaves_the_key_free(api, redis, server):
    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["C9"])
    key = uuid.uuid4().hex
    status, body = await checkout(api, h, card={**GOOD_CARD, "number": "4111111111111111"}, key=key)
    assert (status, body["error"]["code"]) == (422, "card_invalid")
    status, body = await checkout(api, h, card={**GOOD_CARD, "exp_year": 2001}, key=key)
    assert (status, body["error"]["code"]) == (422, "card_expired")
    assert not [e for e in (await gateway(server).entries()) if pub.show_id in e.idempotency_key]
    assert (await checkout(api, h, key=key))[0] == 201


@pytest.mark.parametrize("body", [
    {"card": GOOD_CARD, "email": "not-an-email", "name": "A"},
    {"card": GOOD_CARD, "email": "a@b.co", "name": ""},
    {"card": {**GOOD_CARD, "cvc": "12"}, "email": "a@b.co", "name": "A"},
    {"card": {**GOOD_CARD, "exp_month": 13}, "email": "a@b.co", "name": "A"},
    {"card": {**GOOD_CARD, "number": "4242abcd42424242"}, "email": "a@b.co", "name": "A"},
    {"email": "a@b.co", "name": "A"},
])
async def test_checkout_body_validation_is_422(api, redis, body):
    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["D1"])
    status, got = await checkout(api, h, body=body)
    assert (status, got["error"]["code"]) == (422, "invalid"), got
    assert "4242" not in got["error"]["message"]  # card details are not echoed


async def test_checkout_needs_key_token_and_a_live_hold(api, redis):
    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["D2"])
    status, body = await checkout(api, h, key="")
    assert (status, body["error"]["code"]) == (400, "idempotency_key_required")
    status, body = await checkout(api, h, token="someone-else")
    assert (status, body["error"]["code"]) == (403, "not_owner")
    status, body = await checkout(api, {**h, "hold_id": f"{pub.show_id}.missing"})
    assert status == 404
    async with api.delete(f"/api/holds/{h['hold_id']}",
                          headers={"X-Holder-Token": h["holder_token"]}) as resp:
        assert resp.status == 200
    status, body = await checkout(api, h)
    assert status == 404
    assert (await seat_status(api, pub.show_id))["D2"] == "free"


async def test_checkout_of_an_expired_hold_is_410_without_a_charge(api, redis, server):
    pub = await publish_show(redis, rules=Rules(hold_ttl_ms=1000))
    h = await hold(api, pub.show_id, ["D3"])
    await wait_for_status(redis, pub.show_id, ["D3"], "free")
    status, body = await checkout(api, h)
    assert (status, body["error"]["code"]) == (410, "hold_expired")
    assert not [e for e in (await gateway(server).entries()) if pub.show_id in e.idempotency_key]


class ExpiresWhilePaying(HttpGateway):
    """The real sandbox, except authorising takes until the hold's seats are freed."""

    def __init__(self, real: HttpGateway, redis: aioredis.Redis, show_id: str,
                 seats: list[str]) -> None:
        super().__init__(real.base_url, "")
        self.redis, self.show_id, self.seats = redis, show_id, seats

    async def authorise(self, *, amount: int, currency: str, card: CardDetails,
                        idempotency_key: str) -> Authorisation:
        auth = await super().authorise(amount=amount, currency=currency, card=card,
                                       idempotency_key=idempotency_key)
        await wait_for_status(self.redis, self.show_id, self.seats, "free")
        return auth


async def test_hold_expiring_during_payment_is_refunded_and_410(api, redis, server):
    pub = await publish_show(redis, rules=Rules(hold_ttl_ms=1500))
    h = await hold(api, pub.show_id, ["E7", "E8"])
    services = server.app[SERVICES]
    slow = ExpiresWhilePaying(services.payments, redis, pub.show_id, ["E7", "E8"])
    services.payments, original = slow, services.payments
    try:
        status, body = await checkout(api, h)
    finally:
        services.payments = original
        await slow.close()
    assert (status, body["error"]["code"]) == (410, "hold_expired")
    assert body["error"]["refunded"] is True
    [auth] = [e for e in await original.entries(kind="authorise")
              if e.idempotency_key.startswith(f"idem:{{{pub.show_id}}}")]
    assert [e.kind for e in await original.entries(auth.ref)] == ["authorise", "void"]
    assert await original.state(auth.ref) == "voided"
    st = await seat_status(api, pub.show_id)
    assert st["E7"] == st["E8"] == "free"


async def test_booking_needs_its_token(api, redis, app_settings):
    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["E9"])
    _, b = await checkout(api, h)
    url = f"/api/bookings/{b['booking_id']}"
    async with api.get(url) as resp:
        assert resp.status == 401
    async with api.get(url, headers={"X-Booking-Token": "wrong"}) as resp:
        assert resp.status == 403
    async with api.get(url, headers={"Authorization": f"Bearer {b['booking_token']}"}) as resp:
        assert resp.status == 200
    # L20: the booking token stays out of URLs; a query token opens nothing
    async with api.get(url, params={"token": b["booking_token"]}) as resp:
        assert resp.status == 401
    assert b["booking_token"] not in b["ticket"]["svg_url"]
    async with api.get(b["ticket"]["svg_url"]) as resp:  # its own short-lived token
        assert resp.status == 200 and resp.content_type == "image/svg+xml"
    async with api.get(f"{url}/ticket.svg?t=wrong") as resp:
        assert resp.status == 401
    other = await hold(api, pub.show_id, ["E10"])
    _, b2 = await checkout(api, other)
    async with api.get(url, headers={"X-Booking-Token": b2["booking_token"]}) as resp:
        assert resp.status == 403  # another booking's token opens only that booking
    async with api.get(b2["ticket"]["svg_url"].replace(b2["booking_id"], b["booking_id"])
                       ) as resp:
        assert resp.status == 401  # nor does its image token
    ghost = f"{pub.show_id}.ghost"
    future = int(time.time()) + 3600
    async with api.get(f"/api/bookings/{ghost}", headers={
            "X-Booking-Token": booking_token(app_settings.secret, ghost, future)}) as resp:
        assert resp.status == 404


def test_booking_tokens_expire_a_month_after_the_show() -> None:
    # L20: booking tokens never expired.
    show_at = datetime(2030, 1, 1, 18, tzinfo=UTC)
    exp = token_expiry(show_at, show_at)
    token = booking_token("s" * 20, "b1", exp)
    assert check_booking_token("s" * 20, "b1", token, now=show_at.timestamp())
    assert not check_booking_token("s" * 20, "b1", token, now=exp + 1)
    assert exp == int((show_at + timedelta(days=30)).timestamp())
    forged = f"{exp + 10**6}.{token.split('.', 1)[1]}"  # a later expiry, same signature
    assert not check_booking_token("s" * 20, "b1", forged, now=show_at.timestamp())


def test_tickets_carry_their_status_and_expiry() -> None:
    # L3: tickets of any booking were validly signed, with no status and no expiry.
    starts = datetime(2030, 1, 1, 18, tzinfo=UTC)
    code = sign_ticket("s" * 20, TicketPayload(2, "b1", "s1", ["A1"], starts, "N",
                                               "confirmed", ticket_expiry(starts, None)))
    payload = verify_ticket("s" * 20, code)
    assert payload is not None and ticket_valid(payload, now=starts.timestamp()) is None
    assert ticket_valid(payload, now=payload.exp + 1) == "expired"
    assert payload.exp == int((starts + timedelta(hours=4 + 6)).timestamp())


async def test_a_booking_that_is_not_confirmed_has_no_ticket(api, redis):
    from server.commerce.payments import PENDING

    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["E5"])
    status, pending = await checkout(api, h, card={**GOOD_CARD, "number": PENDING})
    assert status == 202, pending
    headers = {"X-Booking-Token": pending["booking_token"]}
    async with api.get(f"/api/bookings/{pending['booking_id']}", headers=headers) as resp:
        view = await resp.json()
    assert view["status"] == "pending" and view["ticket"] is None
    async with api.get(f"/api/bookings/{pending['booking_id']}/ticket.svg",
                       headers=headers) as resp:
        assert resp.status == 409


async def test_card_numbers_are_never_stored(api, redis):
    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["A10"])
    assert (await checkout(api, h, card=DECLINED_CARD))[0] == 402
    assert (await checkout(api, h))[0] == 201
    keys = [k async for k in redis.scan_iter(match=f"*{{{pub.show_id}}}*")]
    assert any(k.startswith(b"booking:") for k in keys)
    for key in keys:
        kind = await redis.type(key)
        if kind == b"string":
            blobs = [await redis.get(key)]
        elif kind == b"stream":
            blobs = [v for _, fields in await redis.xrange(key) for v in fields.values()]
        else:
            continue
        for blob in blobs:
            assert b"4242424242424242" not in blob and b"4000000000000002" not in blob, key
            assert h["holder_token"].encode() not in blob, key  # only its hash is kept


async def test_a_key_reused_with_any_other_detail_is_422_not_the_first_answer(api, redis):
    # L10: the fingerprint covered only e-mail, name and the card's last four, so another
    # card with the same last four, or another phone, replayed the first booking.
    pub = await publish_show(redis)
    h = await hold(api, pub.show_id, ["E3"])
    key = uuid.uuid4().hex
    assert (await checkout(api, h, key=key))[0] == 201
    for changed in ({"card": {**GOOD_CARD, "exp_year": GOOD_CARD["exp_year"] + 1}, **BUYER},
                    {"card": {**GOOD_CARD, "cvc": "999"}, **BUYER},
                    {"card": GOOD_CARD, **BUYER, "phone": "+919800000001"}):
        status, body = await checkout(api, h, key=key, body=changed)
        assert (status, body["error"]["code"]) == (422, "idempotency_key_reused"), changed
    raw = b"".join([await redis.get(k) or b"" async for k in
                    redis.scan_iter(match=f"idem:{{{pub.show_id}}}:*")])
    assert raw and GOOD_CARD["number"].encode() not in raw  # the digest is keyed, not the number
