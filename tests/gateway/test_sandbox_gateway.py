"""The sandbox gateway process through the platform's HTTP client: the same test cards and
rules as the in-process SandboxGateway, a ledger that survives `kill -9`, failures that
look like an unreachable gateway, signed webhooks for pending payments, and 400s for bad
bodies."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.commerce import payments
from server.commerce.gateway_client import GatewayPayment, HttpGateway
from server.commerce.payments import (
    DECLINES,
    PENDING,
    SUCCEEDS,
    TIMES_OUT,
    WEBHOOK_HEADER,
    Authorisation,
    CardDeclined,
    CardDetails,
    CardInvalid,
    GatewayGuard,
    GatewayTimeout,
    GatewayUnavailable,
    LedgerEntry,
    PaymentError,
    WebhookError,
)
from server.core.embedded import SandboxGatewayServer

from .conftest import HANG_S, SECRET, StartGateway

GOOD = CardDetails(SUCCEEDS, 12, 2099, "123")
DECLINED = CardDetails(DECLINES, 12, 2099, "123")
PENDING_CARD = CardDetails(PENDING, 12, 2099, "123")
SLOW = CardDetails(TIMES_OUT, 12, 2099, "123")


def new_key() -> str:
    return f"k-{uuid.uuid4().hex}"


async def authorise(gw: HttpGateway, key: str | None = None, card: CardDetails = GOOD,
                    amount: int = 1500, currency: str = "EUR") -> Authorisation:
    return await gw.authorise(amount=amount, currency=currency, card=card,
                              idempotency_key=key or new_key())


async def kinds(gw: HttpGateway, ref: str) -> list[str]:
    return [e.kind for e in await gw.entries(ref=ref)]


async def entries_for_key(gw: HttpGateway, key: str) -> list[LedgerEntry]:
    return [e for e in await gw.entries() if e.idempotency_key == key]


# --- authorise -----------------------------------------------------------------------------

async def test_authorise_succeeds_and_the_same_key_returns_the_same_answer(gateway: HttpGateway):
    key = new_key()
    first = await authorise(gateway, key, amount=2350, currency="INR")
    assert first.status == "authorised"
    assert first.ref.startswith("sbx_") and first.card_token.startswith("tok_")
    assert (first.last4, first.brand, first.amount, first.currency) == ("4242", "visa", 2350,
                                                                        "INR")
    again = await authorise(gateway, key, amount=2350, currency="INR")
    assert again == first

    [entry] = await gateway.entries(ref=first.ref)
    assert (entry.kind, entry.amount, entry.currency, entry.last4, entry.idempotency_key) == (
        "authorise", 2350, "INR", "4242", key)
    payment = await gateway.payment(first.ref)
    assert payment == GatewayPayment(first.ref, key, "authorised", 2350, "INR", "4242", "visa",
                                     first.card_token, 0)
    assert await gateway.state(first.ref) == "authorised"


async def test_a_decline_is_remembered_under_its_key(gateway: HttpGateway):
    key = new_key()
    for card in (DECLINED, DECLINED, GOOD):  # a good card under a declined key: still declined
        with pytest.raises(CardDeclined) as exc:
            await authorise(gateway, key, card)
        assert exc.value.code == "card_declined" and exc.value.status == 402
    [entry] = await entries_for_key(gateway, key)
    assert (entry.kind, entry.last4) == ("decline", "0002")


@pytest.mark.parametrize(("card", "code"), [
    (CardDetails("4111111111111111", 12, 2099, "123"), "card_invalid"),   # not a test card
    (CardDetails("4242-4242", 12, 2099, "123"), "card_invalid"),
    (CardDetails(SUCCEEDS, 13, 2099, "123"), "card_invalid"),             # month
    (CardDetails(SUCCEEDS, 1, 2020, "123"), "card_expired"),
    (CardDetails(SUCCEEDS, 12, 2099, "12"), "card_invalid"),              # CVC
])
async def test_an_invalid_card_is_not_recorded_and_can_be_fixed_under_the_same_key(
        gateway: HttpGateway, card: CardDetails, code: str):
    key = new_key()
    with pytest.raises(CardInvalid) as exc:
        await authorise(gateway, key, card)
    assert exc.value.code == code and exc.value.status == 422
    assert await gateway.lookup(key) is None
    assert await entries_for_key(gateway, key) == []

    fixed = await authorise(gateway, key, GOOD)
    assert fixed.status == "authorised"
    assert [e.kind for e in await entries_for_key(gateway, key)] == ["authorise"]


# --- capture, void, refund -----------------------------------------------------------------

async def test_capture_is_idempotent_and_a_full_refund_gives_everything_back(
        gateway: HttpGateway):
    auth = await authorise(gateway, amount=1000)
    await gateway.capture(auth.ref)
    await gateway.capture(auth.ref)  # a no-op
    assert await gateway.state(auth.ref) == "captured"
    assert await gateway.refund(auth.ref) == 1000
    assert await gateway.state(auth.ref) == "refunded"
    assert await gateway.refund(auth.ref) == 0  # nothing left: changes nothing
    assert await kinds(gateway, auth.ref) == ["authorise", "capture", "refund"]
    assert (await gateway.payment(auth.ref)).refunded == 1000
    with pytest.raises(PaymentError) as exc:
        await gateway.capture(auth.ref)
    assert exc.value.code == "capture_failed"


async def test_a_refund_before_capture_voids_the_authorisation(gateway: HttpGateway):
    auth = await authorise(gateway, amount=800)
    assert await gateway.refund(auth.ref, 100) == 800  # a void releases all of it
    assert await gateway.state(auth.ref) == "voided"
    with pytest.raises(PaymentError) as exc:
        await gateway.capture(auth.ref)
    assert exc.value.code == "capture_failed"
    assert [(e.kind, e.amount) for e in await gateway.entries(ref=auth.ref)] == [
        ("authorise", 800), ("void", 800)]


async def test_partial_refunds_and_a_repeated_refund_key(gateway: HttpGateway):
    auth = await authorise(gateway, amount=1000)
    await gateway.capture(auth.ref)
    first, second = new_key(), new_key()
    assert await gateway.refund(auth.ref, 300, idempotency_key=first) == 300
    assert await gateway.refund(auth.ref, 300, idempotency_key=first) == 300  # the first answer
    assert await gateway.state(auth.ref) == "partially_refunded"
    with pytest.raises(PaymentError) as exc:
        await gateway.refund(auth.ref, 800)  # only 700 left
    assert exc.value.code == "refund_failed"
    assert await gateway.refund(auth.ref, 700, idempotency_key=second) == 700
    assert await gateway.refund(auth.ref, 700, idempotency_key=second) == 700
    payment = await gateway.payment(auth.ref)
    assert (payment.state, payment.refunded) == ("refunded", 1000)
    assert [(e.kind, e.amount) for e in await gateway.entries(ref=auth.ref, kind="refund")] == [
        ("refund", 300), ("refund", 700)]


async def test_an_unknown_ref_is_refused(gateway: HttpGateway):
    with pytest.raises(PaymentError) as exc:
        await gateway.capture("sbx_nosuchpayment")
    assert exc.value.code == "capture_failed"
    with pytest.raises(PaymentError) as exc:
        await gateway.refund("sbx_nosuchpayment", idempotency_key=new_key())
    assert exc.value.code == "refund_failed"
    assert await gateway.payment("sbx_nosuchpayment") is None
    assert await gateway.state("sbx_nosuchpayment") is None
    assert await gateway.entries(ref="sbx_nosuchpayment") == []


# --- lookup and concurrency ----------------------------------------------------------------

async def test_lookup_by_idempotency_key(gateway: HttpGateway):
    key, declined_key = new_key(), new_key()
    auth = await authorise(gateway, key, amount=4200)
    found = await gateway.lookup(key)
    assert found is not None
    assert (found.ref, found.idempotency_key, found.state, found.amount, found.card_token) == (
        auth.ref, key, "authorised", 4200, auth.card_token)
    assert await gateway.lookup(new_key()) is None

    with pytest.raises(CardDeclined):
        await authorise(gateway, declined_key, DECLINED)
    declined = await gateway.lookup(declined_key)
    assert declined is not None and declined.state == "declined" and declined.card_token == ""
    assert await gateway.payment(declined.ref) == declined


async def test_concurrent_authorises_with_one_key_make_one_payment(gateway: HttpGateway):
    key = new_key()
    answers = await asyncio.gather(*(authorise(gateway, key, amount=999) for _ in range(20)))
    assert len({a.ref for a in answers}) == 1 and len(set(answers)) == 1
    assert [e.kind for e in await entries_for_key(gateway, key)] == ["authorise"]
    assert (await gateway.lookup(key)).ref == answers[0].ref


async def test_the_times_out_card_hangs_only_its_own_call(gateway: HttpGateway):
    key = new_key()
    guard = GatewayGuard(timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(GatewayTimeout):
        await guard.call(lambda: authorise(gateway, key, SLOW))
    assert time.monotonic() - started < 2
    # The gateway is still making that authorisation; everyone else is served meanwhile.
    quick = time.monotonic()
    assert (await authorise(gateway)).status == "authorised"
    assert time.monotonic() - quick < 1
    # A retry under the same key waits for the gateway and gets the one authorisation.
    retried = await authorise(gateway, key, SLOW)
    assert retried.status == "authorised"
    assert time.monotonic() - started >= HANG_S * 0.9
    assert await authorise(gateway, key, SLOW) == retried  # known key: no hang now
    assert [e.kind for e in await entries_for_key(gateway, key)] == ["authorise"]


# --- durability ----------------------------------------------------------------------------

async def test_kill9_and_a_restart_on_the_same_data_dir_keep_every_payment_and_entry(
        start_gateway: StartGateway):
    server = await start_gateway()
    gw = HttpGateway(server.url, SECRET)
    try:
        keys = [new_key() for _ in range(6)]
        captured = [await authorise(gw, k, amount=1000 + i) for i, k in enumerate(keys[:3])]
        for auth in captured:
            await gw.capture(auth.ref)
        refund_key = new_key()
        assert await gw.refund(captured[0].ref, 250, idempotency_key=refund_key) == 250
        voided = await authorise(gw, keys[3], amount=500)
        await gw.refund(voided.ref)
        pending = await authorise(gw, keys[4], PENDING_CARD, amount=700)
        with pytest.raises(CardDeclined):
            await authorise(gw, keys[5], DECLINED)
        before_entries = await gw.entries()
        before_payments = [await gw.lookup(k) for k in keys]
        assert len(before_entries) == 3 + 3 + 1 + 2 + 1 + 1

        server.kill9()
        with pytest.raises(GatewayUnavailable):
            await gw.lookup(keys[0])

        restarted = await start_gateway(data_dir=server.data_dir, port=server.port)
        assert restarted.url == server.url
        assert await gw.entries() == before_entries
        assert [await gw.lookup(k) for k in keys] == before_payments
        assert [p.state for p in before_payments] == [
            "partially_refunded", "captured", "captured", "voided", "pending", "declined"]
        # The idempotency survives too: the same answers, nothing new in the ledger.
        assert await authorise(gw, keys[0], amount=1000) == captured[0]
        assert await authorise(gw, keys[4], PENDING_CARD, amount=700) == pending
        with pytest.raises(CardDeclined):
            await authorise(gw, keys[5], DECLINED)
        assert await gw.refund(captured[0].ref, 250, idempotency_key=refund_key) == 250
        await gw.capture(captured[1].ref)
        assert await gw.entries() == before_entries
        # And it carries on where it was.
        assert await gw.refund(captured[0].ref) == 750
        assert (await gw.payment(captured[0].ref)).state == "refunded"
    finally:
        await gw.close()


async def test_a_stopped_gateway_is_unavailable_at_once(start_gateway: StartGateway):
    server = await start_gateway()
    gw = HttpGateway(server.url, SECRET)
    try:
        auth = await authorise(gw)
        server.stop()
        assert server.proc is not None and server.proc.returncode == 0  # SIGTERM: clean exit
        calls = [
            lambda: authorise(gw),
            lambda: gw.capture(auth.ref),
            lambda: gw.refund(auth.ref),
            lambda: gw.lookup("k"),
            lambda: gw.payment(auth.ref),
            lambda: gw.entries(),
            lambda: gw.settle(auth.ref, "succeeded"),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(GatewayUnavailable):
                await call()
            assert time.monotonic() - started < 2
        # Through the guard it counts as a failure for the circuit breaker.
        guard = GatewayGuard(timeout_s=5, failure_threshold=2)
        for _ in range(2):
            with pytest.raises(GatewayUnavailable):
                await guard.call(lambda: authorise(gw))
        assert guard.breaker.state == "open"
    finally:
        await gw.close()


async def test_5xx_and_garbage_answers_are_gateway_unavailable():
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "oops", "message": "boom"}}, status=503)

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy page</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/v1/authorisations", broken)
    app.router.add_post("/v1/payments/{ref}/capture", garbage)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    gw = HttpGateway(str(server.make_url("/")), SECRET)
    try:
        with pytest.raises(GatewayUnavailable, match="503"):
            await authorise(gw)
        with pytest.raises(GatewayUnavailable):
            await gw.capture("sbx_x")
    finally:
        await gw.close()
        await server.close()


# --- pending payments and webhooks ---------------------------------------------------------

async def test_settling_a_pending_payment_gives_a_signed_webhook(gateway: HttpGateway):
    key = new_key()
    auth = await authorise(gateway, key, PENDING_CARD, amount=1200)
    assert auth.status == "pending"
    assert await gateway.state(auth.ref) == "pending"
    with pytest.raises(PaymentError):
        await gateway.capture(auth.ref)  # not until it succeeded

    body, headers = await gateway.settle(auth.ref, "succeeded")
    event = payments.verify_webhook(SECRET, body, headers[WEBHOOK_HEADER])
    assert (event.type, event.ref) == ("payment.succeeded", auth.ref)
    assert gateway.verify_webhook(body, headers) == event
    assert headers["Content-Type"] == "application/json"
    assert await gateway.state(auth.ref) == "authorised"
    await gateway.capture(auth.ref)
    assert await kinds(gateway, auth.ref) == ["pending", "capture"]
    assert await authorise(gateway, key, PENDING_CARD, amount=1200) == auth  # the first answer

    with pytest.raises(WebhookError) as exc:
        payments.verify_webhook("another secret", body, headers[WEBHOOK_HEADER])
    assert exc.value.code == "bad_signature"


async def test_a_failed_pending_payment(gateway: HttpGateway):
    auth = await authorise(gateway, card=PENDING_CARD, amount=650)
    body, headers = await gateway.settle(auth.ref, "failed")
    assert gateway.verify_webhook(body, headers).type == "payment.failed"
    assert await gateway.state(auth.ref) == "failed"
    assert [(e.kind, e.amount) for e in await gateway.entries(ref=auth.ref)] == [
        ("pending", 650), ("failed", 650)]
    with pytest.raises(PaymentError) as exc:
        await gateway.capture(auth.ref)
    assert exc.value.code == "capture_failed"
    # Settling again changes nothing (the state is no longer pending).
    await gateway.settle(auth.ref, "succeeded")
    assert await gateway.state(auth.ref) == "failed"


async def test_a_refund_of_a_pending_payment_voids_it_and_a_late_settlement_changes_nothing(
        gateway: HttpGateway):
    auth = await authorise(gateway, card=PENDING_CARD, amount=400)
    assert await gateway.refund(auth.ref) == 400
    assert await gateway.state(auth.ref) == "voided"
    body, headers = await gateway.settle(auth.ref, "succeeded")
    assert gateway.verify_webhook(body, headers).ref == auth.ref
    assert await gateway.state(auth.ref) == "voided"
    assert await kinds(gateway, auth.ref) == ["pending", "void"]


async def test_an_old_settlement_timestamp_makes_a_stale_webhook(gateway: HttpGateway):
    auth = await authorise(gateway, card=PENDING_CARD)
    body, headers = await gateway.settle(auth.ref, "succeeded", at=time.time() - 3600)
    with pytest.raises(WebhookError) as exc:
        gateway.verify_webhook(body, headers)
    assert exc.value.code == "stale_webhook"


async def test_the_gateway_posts_the_webhook_to_its_webhook_url(start_gateway: StartGateway):
    delivered: asyncio.Future[tuple[bytes, dict[str, str]]] = (
        asyncio.get_running_loop().create_future())

    async def receive(request: web.Request) -> web.Response:
        if not delivered.done():
            delivered.set_result((await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/api/payments/webhook", receive)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    server = await start_gateway(webhook_url=str(receiver.make_url("/api/payments/webhook")))
    gw = HttpGateway(server.url, SECRET)
    try:
        auth = await authorise(gw, card=PENDING_CARD)
        body, headers = await gw.settle(auth.ref, "succeeded")
        got_body, got_headers = await asyncio.wait_for(delivered, 10)
        assert got_body == body
        assert got_headers[WEBHOOK_HEADER] == headers[WEBHOOK_HEADER]
        event = payments.verify_webhook(SECRET, got_body, got_headers[WEBHOOK_HEADER])
        assert (event.type, event.ref) == ("payment.succeeded", auth.ref)
    finally:
        await gw.close()
        await receiver.close()


# --- the API itself ------------------------------------------------------------------------

async def test_bad_requests_are_400_with_an_error_body(gateway_server: SandboxGatewayServer):
    good_card = {"number": SUCCEEDS, "exp_month": 12, "exp_year": 2099, "cvc": "123"}
    cases = [
        ("POST", "/v1/authorisations", b"{not json", 400),
        ("POST", "/v1/authorisations", b"", 400),
        ("POST", "/v1/authorisations",
         json.dumps({"amount": "ten", "currency": "EUR", "card": good_card,
                     "idempotency_key": new_key()}).encode(), 400),
        ("POST", "/v1/authorisations",
         json.dumps({"amount": 10, "currency": "EUR", "idempotency_key": new_key()}).encode(),
         400),
        ("POST", "/v1/authorisations",
         json.dumps({"amount": 10, "currency": "EUR", "idempotency_key": new_key(),
                     "card": {**good_card, "exp_month": "12"}}).encode(), 400),
        ("POST", "/v1/payments/sbx_x/refund", b"[1, 2]", 400),
        ("POST", "/v1/payments/sbx_x/refund", b'{"amount": "all"}', 400),
        ("POST", "/v1/test/payments/sbx_x/settle", b'{"outcome": "maybe"}', 400),
        ("GET", "/v1/payments", None, 400),
        ("GET", "/v1/ledger?kind=bogus", None, 400),
        ("GET", "/v1/nothing-here", None, 404),
        ("GET", "/v1/payments/sbx_nosuchpayment", None, 404),
    ]
    async with aiohttp.ClientSession(gateway_server.url) as http:
        for method, path, body, status in cases:
            async with http.request(method, path, data=body,
                                    headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == status, (method, path, body)
                error = (await resp.json())["error"]
                assert error["code"] in ("bad_request", "not_found") and error["message"]
        async with http.get("/healthz") as resp:
            assert resp.status == 200
        # Nothing of the above was recorded.
        async with http.get("/v1/payments/sbx_x") as resp:
            assert resp.status == 404
