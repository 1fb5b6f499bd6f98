"""Tokens and signatures come from the client: any string must be refused, never a 500
(hmac.compare_digest raises TypeError on non-ASCII str; found by schemathesis)."""
from __future__ import annotations

import time

import aiohttp

from server.commerce.payments import WebhookError, verify_webhook
from server.booking.tickets import booking_token, check_booking_token
from server.partner.webhooks import verify


def test_booking_token_check_takes_any_string() -> None:
    assert check_booking_token("s" * 20, "b1", "é") is False
    assert check_booking_token("s" * 20, "b1", "é.é") is False
    assert check_booking_token("s" * 20, "b1", booking_token("s" * 20, "b1",
                                                             int(time.time()) + 60)) is True


def test_webhook_signature_check_takes_any_string() -> None:
    assert verify("secret", str(int(time.time())), b"{}", "ü") is False


def test_payment_webhook_signature_takes_any_string() -> None:
    try:
        verify_webhook("secret", b"{}", f"t={int(time.time())},v1=ü")
    except WebhookError as exc:
        assert exc.status == 401
    else:
        raise AssertionError("a bad signature was accepted")


async def test_booking_endpoints_refuse_non_ascii_tokens(api: aiohttp.ClientSession) -> None:
    for method, path in [("GET", "/api/bookings/b1"), ("GET", "/api/bookings/b1/ticket.svg"),
                         ("GET", "/api/bookings/b1/cancellation"),
                         ("POST", "/api/bookings/b1/cancel")]:
        async with api.request(method, path, headers={"X-Booking-Token": "ünïcödé"},
                               params={"t": "ünïcödé"}) as resp:
            assert resp.status == 403, (method, path, resp.status, await resp.text())
