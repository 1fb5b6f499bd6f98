"""The checkout use case: pay for a hold and book its seats, once per Idempotency-Key (a
repeated key replays the first answer). Plain inputs, `Refused` for every no; the handler
(booking/api.py) gathers the request and renders the booking.

The order is what keeps money and seats together: the promo use is consumed, the card
authorised, the seats confirmed by the show's actor (a refusal refunds at once), the
payment captured (a failure cancels the seats and refunds), and only then the booking is
saved and announced. Anything unknown mid-way (Redis failing after paying) keeps the
attempt's claim: a retry with the same key resumes, and the gateway and the actor both
answer a repeated key / command id with the first answer."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgspec

from actors import commands as c

from server.booking import records as store
from server.booking.holding import holders_hold, promo_customer, refusal, require_active
from server.booking.ports import Booking, Customer
from server.booking.records import BookingRecord, CheckoutAttempt, HoldRecord, PaymentInfo, show_of
from server.commerce.payments import (
    GATEWAY_FAILURES, CardDetails, CardInvalid, GatewayUnavailable, PaymentError,
)
from server.core import pii
from server.core.clock import from_ms, new_id
from server.core.refusals import Refused

@dataclass(frozen=True)
class CheckoutAsk:
    card: CardDetails
    email: str
    name: str
    phone: str | None = None
    id_number: str | None = None


@dataclass(frozen=True)
class Booked:
    """The booking made (or, for a replayed key, found again): the handler renders it."""

    booking: BookingRecord


@dataclass(frozen=True)
class Answered:
    """A final answer that is not a new booking (declined, refunded, pending): its HTTP
    status and JSON body, exactly as remembered under the idempotency key."""

    status: int
    body: bytes


Outcome = Booked | Answered


# The hold is over (booked, expired, released after a failed payment) or being paid for:
# an attempt under this key may have done that, and a retry must get its answer.
_REPLAYABLE = frozenset({"hold_checked_out", "hold_expired", "not_found", "payment_pending"})


def fingerprint(ask: CheckoutAsk) -> str:
    """What makes two requests with one key the same checkout."""
    return hashlib.sha256(f"{ask.email}\n{ask.name}\n{ask.card.number[-4:]}".encode()
                          ).hexdigest()


async def checkout(booking: Booking, hold_id: str, token: str, key: str, ask: CheckoutAsk,
                   who: Customer) -> Outcome:
    """`key` is the client's Idempotency-Key (1-255 characters), one per attempt."""
    print_ = fingerprint(ask)
    try:
        hold = await holders_hold(booking, hold_id, token)
    except Refused as gone:
        # A retry of the attempt that ended the hold gets its first answer; anyone else
        # this refusal (the idempotency record is keyed by the hold and the secret key).
        if gone.code not in _REPLAYABLE:
            raise
        earlier = await booking.checkouts.earlier(
            store.idempotency_key(show_of(hold_id) or "", hold_id, key))
        if earlier is None:
            raise
        return await _replay(booking, earlier, print_)
    idem = store.idempotency_key(hold.show_id, hold_id, key)
    attempt = CheckoutAttempt("pending", new_id(hold.show_id), print_)
    earlier = await booking.checkouts.claim(idem, attempt)
    if earlier is not None:
        return await _replay(booking, earlier, print_)
    try:
        # the promo code's reserved use is consumed first (refused if it cannot be), and
        # given back if this attempt does not book
        promo_who = await _consume_promo(booking, hold, ask.email, who)
        try:
            outcome = await _pay_and_book(booking, hold, ask, attempt, idem, who)
        except Refused:
            await _unconsume_promo(booking, hold, promo_who)
            raise
        if isinstance(outcome, Answered) and outcome.status >= 400:
            await _unconsume_promo(booking, hold, promo_who)
    except Refused:
        await booking.checkouts.drop(idem)  # nothing happened: the key is free again
        raise
    return outcome


async def _replay(booking: Booking, earlier: CheckoutAttempt, print_: str) -> Outcome:
    if earlier.fingerprint != print_:
        raise Refused("idempotency_key_reused",
                      "this Idempotency-Key was used for a different checkout request")
    if earlier.state == "pending":
        raise Refused("checkout_in_progress",
                      "a checkout with this Idempotency-Key is in progress; retry shortly")
    if earlier.status == 201:
        found = await booking.checkouts.load_booking(earlier.booking_id)
        if found is not None:
            return Booked(found)
    return Answered(earlier.status, bytes(earlier.body))


async def _pay_and_book(booking: Booking, hold: HoldRecord, ask: CheckoutAsk,
                        attempt: CheckoutAttempt, idem: str, who: Customer) -> Outcome:
    """Pay, confirm, capture. `Refused` means nothing happened (the claim is dropped); an
    outcome is final and remembered under the idempotency key."""
    require_active(hold, booking.clock.now_ms())
    settings = booking.settings
    if ask.phone or ask.id_number:
        pii.settings_cipher(settings)  # refused now, before paying, if there is no data key

    async def final(status: int, code: str, message: str, **details: object) -> Answered:
        payload = msgspec.json.encode({"error": {"code": code, "message": message, **details}})
        await booking.checkouts.finish(idem, msgspec.structs.replace(
            attempt, state="done", status=status, body=msgspec.Raw(payload)))
        return Answered(status, payload)

    gateway = booking.payments
    try:  # timeout + circuit breaker (payments.GatewayGuard)
        auth = await booking.payment_guard.call(lambda: gateway.authorise(
            amount=hold.quote.total, currency=hold.quote.currency, card=ask.card,
            idempotency_key=idem))
    except GATEWAY_FAILURES as exc:  # down or timed out: extend the hold, 503
        raise await booking.checkouts.gateway_down(hold, exc) from None
    except CardInvalid as exc:
        raise Refused(exc.code, exc.message, status=422) from None
    except PaymentError as exc:  # CardDeclined among them
        return await final(402, exc.code, exc.message)
    if auth.status == "pending":  # settled later by the gateway's webhook (lifecycle.py)
        status, body = await booking.checkouts.pending(
            hold, auth, attempt, idem, email=ask.email, name=ask.name,
            customer_id=await who.customer_id(),
            phone=pii.seal_booking_phone(settings, ask.phone, attempt.booking_id),
            id_number=pii.seal_booking_id_number(settings, ask.id_number, attempt.booking_id))
        return Answered(status, body)

    result = await booking.shows.submit(hold.show_id, c.Confirm(
        f"confirm:{idem}", hold.hold_id, hold.token_hash, attempt.booking_id, auth.ref))
    if isinstance(result, c.Rejected):
        await gateway.refund(auth.ref)
        err = refusal(result)
        return await final(err.status, err.code, err.message + "; the payment was refunded",
                           refunded=True, **err.details)
    assert isinstance(result, c.Confirmed)
    booking_id = result.booking_id  # a resumed attempt gets the first attempt's booking
    try:
        await gateway.capture(auth.ref)
    except (PaymentError, GatewayUnavailable) as exc:
        await booking.shows.submit(hold.show_id, c.Cancel(f"cancel:{idem}", booking_id,
                                                          hold.token_hash))
        await gateway.refund(auth.ref)
        return await final(402, getattr(exc, "code", "capture_failed"), str(exc))

    record = BookingRecord(
        booking_id=booking_id, show_id=hold.show_id, hold_id=hold.hold_id,
        seats=result.seats, quote=hold.quote,
        payment=PaymentInfo(auth.ref, auth.card_token, auth.last4, auth.brand),
        email=ask.email, name=ask.name, created_at=from_ms(booking.clock.now_ms()),
        customer_id=await who.customer_id(),  # logged in: "my bookings"; else a guest
        holder_hash=hold.token_hash,
        phone=pii.seal_booking_phone(settings, ask.phone, booking_id),
        id_number=pii.seal_booking_id_number(settings, ask.id_number, booking_id),
    )
    await booking.checkouts.booked(record)
    await booking.checkouts.finish(idem, msgspec.structs.replace(
        attempt, state="done", booking_id=booking_id, status=201))
    await booking.checkouts.after_booking(record)  # sold out? show cancelled meanwhile?
    return Booked(record)


async def _consume_promo(booking: Booking, hold: HoldRecord, email: str, who: Customer
                         ) -> str | None:
    """Turn the hold's promo reservation into a use. The customer key if this call
    consumed one (to give back if the checkout fails)."""
    code = hold.quote.promo_code
    if not code or hold.state != "active":
        return None
    promo = await booking.promos.get(code)
    if promo is None:  # deleted meanwhile: the quote stands, there is nothing to count
        return None
    customer = promo_customer(await who.user_id(), email) or ""
    verdict = await booking.promos.consume(promo, hold.hold_id, customer,
                                           booking.clock.now_ms())
    if verdict == "repeat":
        return None
    if verdict == "wrong_customer":
        raise Refused("promo_customer_mismatch",
                      "check out with the e-mail address (or account) the promo code was "
                      "applied for")
    if verdict != "ok":
        raise Refused("promo_exhausted", "this promo code has been used up meanwhile")
    return customer


async def _unconsume_promo(booking: Booking, hold: HoldRecord, customer: str | None) -> None:
    if customer is None or not hold.quote.promo_code:
        return
    live = hold.state == "active" and hold.expires_ms > booking.clock.now_ms()
    await booking.promos.unconsume(hold.quote.promo_code, hold.hold_id, customer,
                                   hold.expires_ms if live else None)
