"""Checkout: pay for a hold and book its seats, once per Idempotency-Key (a repeated key
replays the first answer)."""
from __future__ import annotations

import msgspec
from aiohttp import web

from actors import commands as c

from server.booking import records as store
from server.booking import lifecycle
from server.core import pii
from server.accounts.users import current_user, link_booking
from server.booking.views import booking_view
from server.booking.records import BookingRecord, HoldRecord, PaymentInfo
from server.booking.wire import CheckoutRequest
from server.core.errors import ApiError
from server.booking.holds import gone_or_expired, require_active, services, utcnow
from server.core.outbox import booking_data, publish
from server.commerce.payments import CardDeclined, CardDetails, CardInvalid, GatewayUnavailable, PaymentError
from server.core.wire import json_response


def respond(status: int, payload: bytes) -> web.Response:
    return web.Response(status=status, body=payload, content_type="application/json")


async def replay(request: web.Request, earlier: store.CheckoutAttempt, fingerprint: str
                 ) -> web.Response:
    if earlier.fingerprint != fingerprint:
        raise ApiError(422, "idempotency_key_reused",
                       "this Idempotency-Key was used for a different checkout request")
    if earlier.state == "pending":
        raise ApiError(409, "checkout_in_progress",
                       "a checkout with this Idempotency-Key is in progress; retry shortly")
    if earlier.status == 201:
        booking = await store.load_booking(services(request).redis, earlier.booking_id)
        if booking is not None:
            return json_response(await booking_view(request, booking), status=201)
    return respond(earlier.status, bytes(earlier.body))


async def pay_and_book(
    request: web.Request, hold: HoldRecord, card: CardDetails, body: CheckoutRequest,
    attempt: store.CheckoutAttempt, idem: str,
) -> tuple[int, bytes]:
    """Pay, confirm, capture. ApiError means nothing happened (the claim is dropped);
    a returned (status, body) is final and remembered under the idempotency key."""
    svc = services(request)
    require_active(hold)
    if body.phone or body.id_number:
        pii.settings_cipher(svc.settings)  # 503 now, before paying, if there is no data key

    async def final(status: int, code: str, message: str, **details: object) -> tuple[int, bytes]:
        payload = msgspec.json.encode({"error": {"code": code, "message": message, **details}})
        await store.finish_attempt(svc.redis, idem, msgspec.structs.replace(
            attempt, state="done", status=status, body=msgspec.Raw(payload)))
        return status, payload

    gateway = svc.payments
    try:  # timeout + circuit breaker (payments.GatewayGuard)
        auth = await svc.payment_guard.call(lambda: gateway.authorise(
            amount=hold.quote.total, currency=hold.quote.currency, card=card,
            idempotency_key=idem))
    except lifecycle.GATEWAY_FAILURES as exc:  # down or timed out: extend the hold, 503
        raise await lifecycle.gateway_down(svc, hold, exc) from None
    except CardInvalid as exc:
        raise ApiError(422, exc.code, exc.message) from None
    except CardDeclined as exc:
        return await final(402, exc.code, exc.message)
    except PaymentError as exc:
        return await final(402, exc.code, exc.message)
    if auth.status == "pending":  # settled later by the gateway's webhook (lifecycle.py)
        customer = await current_user(request)
        return await lifecycle.start_pending(
            svc, hold, auth, attempt, idem, email=body.email, name=body.name,
            customer_id=customer.user_id if customer and customer.role == "customer" else None,
            phone=pii.seal_booking_phone(svc.settings, body.phone, attempt.booking_id),
            id_number=pii.seal_booking_id_number(svc.settings, body.id_number,
                                                 attempt.booking_id))

    result = await svc.shows.submit(hold.show_id, c.Confirm(
        f"confirm:{idem}", hold.hold_id, hold.token_hash, attempt.booking_id, auth.ref))
    if isinstance(result, c.Rejected):
        await gateway.refund(auth.ref)
        err = gone_or_expired(result, hold)
        return await final(err.status, err.code, err.message + "; the payment was refunded",
                           refunded=True, **err.details)
    assert isinstance(result, c.Confirmed)
    booking_id = result.booking_id  # a resumed attempt gets the first attempt's booking
    try:
        await gateway.capture(auth.ref)
    except (PaymentError, GatewayUnavailable) as exc:
        await svc.shows.submit(hold.show_id, c.Cancel(f"cancel:{idem}", booking_id,
                                                      hold.token_hash))
        await gateway.refund(auth.ref)
        return await final(402, getattr(exc, "code", "capture_failed"), str(exc))

    customer = await current_user(request)  # logged in: "my bookings"; else a guest
    customer_id = customer.user_id if customer and customer.role == "customer" else None
    booking = BookingRecord(
        booking_id=booking_id, show_id=hold.show_id, hold_id=hold.hold_id,
        seats=result.seats, quote=hold.quote,
        payment=PaymentInfo(auth.ref, auth.card_token, auth.last4, auth.brand),
        email=body.email, name=body.name, created_at=utcnow(), customer_id=customer_id,
        holder_hash=hold.token_hash,
        phone=pii.seal_booking_phone(svc.settings, body.phone, booking_id),
        id_number=pii.seal_booking_id_number(svc.settings, body.id_number, booking_id),
    )
    await store.save_booking(svc.redis, booking)
    if customer_id is not None:
        await link_booking(svc.redis, customer_id, booking_id)
    await publish(svc.redis, "booking.confirmed", booking_data(booking),
                  event_id=f"booking.confirmed:{booking_id}")  # e-mail + partner webhooks
    hold.state, hold.booking_id = "booked", booking_id
    await store.save_hold(svc.redis, hold)
    await store.finish_attempt(svc.redis, idem, msgspec.structs.replace(
        attempt, state="done", booking_id=booking_id, status=201))
    await lifecycle.after_confirm(svc, booking, publish_confirmed=False)  # sold out? cancelled?
    return 201, msgspec.json.encode(await booking_view(request, booking))

