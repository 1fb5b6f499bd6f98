"""The checkout use case: pay for a hold and book its seats, as a saga over a durable
payment intent (booking/intents.py has its states and keys). Plain inputs, `Refused` for
every no; the handler (booking/api.py) gathers the request and renders the booking.

`checkout` writes the intent before anything is charged, then `drive` moves it on one
durable step at a time: authorise (the gateway, by the intent's key) -> Confirm in the
show's log, carrying the whole booking -> capture -> the booking record and its events
(projections) -> done. Every step is safe to run again, so whoever finds an intent short
of a final state finishes it the same way: a retry with the same Idempotency-Key, or the
reconciler (booking/reconciler.py) after a crash or an outage. Nothing is decided by a
guess: an outcome that is not known ("unavailable", a gateway timeout) leaves the intent
where it is, answered 503 with Retry-After, and is asked again."""
from __future__ import annotations

import hashlib
import hmac
import os
import signal
from dataclasses import dataclass

import msgspec

from actors import commands as c

from server.booking import intents
from server.booking import records as store
from server.booking.holding import holders_hold, promo_customer, refusal, require_active
from server.booking.intents import PaymentIntent, facts_encoder
from server.booking.ports import Booking, Customer
from server.booking.records import BookingRecord, HoldRecord, PaymentInfo, show_of
from server.commerce.payments import (
    GATEWAY_FAILURES, Authorisation, CardDetails, CardInvalid, PaymentError,
)
from server.core import pii
from server.core.clock import from_ms, new_id
from server.core.refusals import Refused

# Where a test may make the web process die (Settings.crash_at): after each durable step.
CRASH_POINTS = ("claimed", "authorised", "confirmed", "captured", "booked")


@dataclass(frozen=True)
class CheckoutAsk:
    card: CardDetails
    email: str
    name: str
    phone: str | None = None
    id_number: str | None = None
    source: str = ""  # the client's network (the payment breaker's blame for a timeout)


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


def fingerprint(secret: str, ask: CheckoutAsk) -> str:
    """What makes two requests with one key the same checkout: all of it (the card's
    every detail, the contact, the documents). Keyed with the platform secret, so the
    stored digest cannot be searched for a card number."""
    card = ask.card
    canon = msgspec.json.encode([card.number, card.exp_month, card.exp_year, card.cvc,
                                 ask.email, ask.name, ask.phone, ask.id_number])
    return hmac.new(f"checkout-fingerprint:{secret}".encode(), canon, hashlib.sha256
                    ).hexdigest()


def retry_later(message: str, seconds: int = 2, **details: object) -> Refused:
    return Refused("unavailable", message + "; retry with the same Idempotency-Key",
                   status=503, retry_after_s=seconds, **details)


async def checkout(booking: Booking, hold_id: str, token: str, key: str, ask: CheckoutAsk,
                   who: Customer) -> Outcome:
    """`key` is the client's Idempotency-Key (1-255 characters), one per attempt."""
    print_ = fingerprint(booking.settings.secret, ask)
    show_id = show_of(hold_id)
    if show_id is None:
        raise Refused("not_found", f"no hold {hold_id!r}")
    idem = store.idempotency_key(show_id, hold_id, key)
    earlier = await booking.checkouts.load(idem)
    if earlier is not None:  # a retry: the first answer, or finish what the first began
        return await _resume(booking, earlier, print_, ask.card, ask.source)
    hold = await holders_hold(booking, hold_id, token)
    now = booking.clock.now_ms()
    require_active(hold, now)
    show = (await booking.catalog.get(show_id)).show
    if show is None or show.status == "cancelled":
        raise Refused("show_cancelled", "this show was cancelled; it cannot be booked")
    if show.starts_at_utc <= from_ms(now):
        raise Refused("show_started", "this show has started; it can no longer be booked")
    settings = booking.settings
    if ask.phone or ask.id_number:
        pii.settings_cipher(settings)  # refused now, before paying, if there is no data key
    booking_id = new_id(show_id)
    customer_id = await who.customer_id()
    promo_who = None
    if hold.quote.promo_code:
        promo_who = promo_customer(await who.user_id(), ask.email) or ""
    intent = PaymentIntent(
        key=idem, state="created", fingerprint=print_, show_id=show_id, hold_id=hold_id,
        booking_id=booking_id, token_hash=hold.token_hash, quote=hold.quote, seats=hold.seats,
        email=ask.email, name=ask.name, customer_id=customer_id,
        phone=pii.seal_booking_phone(settings, ask.phone, booking_id),
        id_number=pii.seal_booking_id_number(settings, ask.id_number, booking_id),
        promo_who=promo_who, created_ms=now, updated_ms=now)
    try:
        earlier = await booking.checkouts.claim(intent)
    except intents.Busy as busy:
        # An earlier attempt under another key is open. Nobody is driving it (it met an
        # outage or a crash): finish it first, so this attempt knows what it paid.
        await _take_over(booking, str(busy), hold)
        try:
            earlier = await booking.checkouts.claim(intent)
        except intents.Busy:
            raise Refused("checkout_in_progress", "another checkout of this hold is in "
                          "progress; wait for its answer") from None
    if earlier is not None:  # the same key, a moment ago
        return await _resume(booking, earlier, print_, ask.card, ask.source)
    _crash(booking, "claimed")
    try:
        return await drive(booking, intent, ask.card, hold, source=ask.source)
    finally:
        await booking.checkouts.drop_lease(intent.key)


async def _take_over(booking: Booking, key: str, hold: HoldRecord) -> None:
    in_progress = Refused("checkout_in_progress", "another checkout of this hold is in "
                          "progress; wait for its answer")
    other = await booking.checkouts.load(key)
    if other is None or not other.open:
        return
    if other.state == "pending" or not await booking.checkouts.take_lease(key, "takeover"):
        raise in_progress
    try:
        await drive(booking, other, None, hold, customer_here=True)
    except Refused as exc:
        if exc.status == 503:  # an outage: this attempt must wait for it too
            raise
        raise in_progress from None
    finally:
        await booking.checkouts.drop_lease(key)
    if other.state == "done":
        raise Refused("hold_checked_out", "this hold was checked out already",
                      booking_id=other.booking_id)


async def _resume(booking: Booking, intent: PaymentIntent, print_: str,
                  card: CardDetails | None, source: str = "") -> Outcome:
    if intent.fingerprint != print_:
        raise Refused("idempotency_key_reused",
                      "this Idempotency-Key was used for a different checkout request")
    if not intent.open or intent.state == "pending":
        return await answer(booking, intent)
    if not await booking.checkouts.take_lease(intent.key, "request"):
        raise Refused("checkout_in_progress",
                      "a checkout with this Idempotency-Key is in progress; retry shortly")
    try:
        return await drive(booking, intent, card, None, source=source)
    finally:
        await booking.checkouts.drop_lease(intent.key)


async def answer(booking: Booking, intent: PaymentIntent) -> Outcome:
    """The answer an intent gives for its key (final, or 202 pending)."""
    if not await booking.checkouts.replicated(intent.key):
        # Its primary has what the answer says, a replica may not yet: a failover now
        # would lose it. The retry (same key) answers the same once it is safe.
        raise retry_later("the booking is being saved")
    if intent.state == "done":
        found = await booking.checkouts.load_booking(intent.booking_id)
        if found is not None:
            return Booked(found)
        return Booked(booking_record(intent, intent.seats))
    return Answered(intent.status, bytes(intent.body))


async def drive(booking: Booking, intent: PaymentIntent, card: CardDetails | None,
                hold: HoldRecord | None, *, customer_here: bool = False,
                source: str = "") -> Outcome:
    """Move `intent` on until it is final (or pending, or blocked on an outage: then
    `Refused` 503 and it stays where it is). `card` is there only in the request that
    brought it: without it (the reconciler, a later attempt of the same customer:
    `customer_here`) the gateway is asked by the intent's key."""
    if intent.state == "created":
        await _authorise(booking, intent, card, hold, customer_here, source)
        if not intent.open:
            return await answer(booking, intent)
    if intent.state == "authorised" and intent.async_payment:
        await booking.checkouts.pending(intent)
        return await answer(booking, intent)
    if intent.state == "authorised":
        await _confirm(booking, intent)
        if not intent.open:
            return await answer(booking, intent)
    if intent.state == "confirmed":
        await _capture(booking, intent)
        if not intent.open:
            return await answer(booking, intent)
    if intent.state == "captured":
        record = booking_record(intent, intent.seats)
        await booking.checkouts.booked(record)  # idempotent: the record, the event id
        _crash(booking, "booked")
        await _step(booking, intent, "done", status=201)
        await booking.checkouts.after_booking(record)  # sold out? show cancelled meanwhile?
    return await answer(booking, intent)


async def _authorise(booking: Booking, intent: PaymentIntent, card: CardDetails | None,
                     hold: HoldRecord | None, customer_here: bool, source: str) -> None:
    await _consume_promo(booking, intent)
    gateway = booking.payments
    auth: Authorisation | None = None
    try:  # timeout + circuit breaker (payments.GatewayGuard)
        if card is not None:
            auth = await booking.payment_guard.call(lambda: gateway.authorise(
                amount=intent.quote.total, currency=intent.quote.currency, card=card,
                idempotency_key=intent.key), source=source)
        else:
            found = await booking.payment_guard.call(lambda: gateway.lookup(intent.key))
            if found is None:  # the gateway never took it: nothing to undo but the promo
                live = None if customer_here else await booking.shows.submit(
                    intent.show_id, c.Peek(f"peek:{intent.key}", intent.hold_id,
                                           intent.token_hash))
                if isinstance(live, c.HoldInfo):  # its customer may still retry the key
                    raise retry_later("the checkout waits for its customer")
                await _end(booking, intent, "abandoned", 409, "checkout_abandoned",
                           "this checkout stopped before the payment; nothing was charged")
                return
            if found.state == "declined":
                raise PaymentError("card_declined", "the card was declined by its issuer")
            auth = Authorisation(found.ref, found.card_token, found.last4, found.brand,
                                 found.amount, found.currency,
                                 "pending" if found.state == "pending" else "authorised")
    except GATEWAY_FAILURES as exc:  # down or timed out: the intent stays "created"
        if hold is not None:
            raise await booking.checkouts.gateway_down(hold, exc) from None
        raise retry_later(f"the payment gateway cannot be reached ({exc})") from None
    except CardInvalid as exc:  # nothing was charged: the key is free again
        await _give_promo_back(booking, intent)
        await booking.checkouts.forget(intent)
        raise Refused(exc.code, exc.message, status=422) from None
    except PaymentError as exc:  # CardDeclined among them
        await _end(booking, intent, "declined", 402, exc.code, exc.message)
        return
    intent.payment = PaymentInfo(auth.ref, auth.card_token, auth.last4, auth.brand)
    intent.async_payment = auth.status == "pending"
    await _step(booking, intent, "authorised")
    _crash(booking, "authorised")


async def _confirm(booking: Booking, intent: PaymentIntent) -> None:
    assert intent.payment is not None
    result = await booking.shows.submit(intent.show_id, c.Confirm(
        f"confirm:{intent.key}", intent.hold_id, intent.token_hash, intent.booking_id,
        intent.payment.ref, booking=facts_encoder.encode(intent.facts())))
    if isinstance(result, c.Rejected) and result.code == "hold_checked_out" \
            and result.booking_id == intent.booking_id:
        result = c.Confirmed(intent.booking_id, intent.hold_id, intent.seats)
    if isinstance(result, c.Rejected):
        if result.code == "unavailable":  # it may have been made durable: ask again later
            raise retry_later("the show cannot be reached right now")
        await _refund(booking, intent.payment.ref, f"void:{intent.key}")
        err = refusal(result)
        await _end(booking, intent, "voided", err.status, err.code,
                   err.message + "; the payment was refunded", refunded=True, **err.details)
        return
    assert isinstance(result, c.Confirmed)
    intent.seats = list(result.seats)
    await _step(booking, intent, "confirmed")
    _crash(booking, "confirmed")


async def _capture(booking: Booking, intent: PaymentIntent) -> None:
    assert intent.payment is not None
    ref = intent.payment.ref
    try:
        await booking.payment_guard.call(lambda: booking.payments.capture(ref))
    except GATEWAY_FAILURES as exc:  # the seats stay booked; the capture is asked again
        raise retry_later(f"the payment could not be completed yet ({exc})") from None
    except PaymentError as exc:  # the gateway refuses it for good: undo the booking
        result = await booking.shows.submit(intent.show_id, c.Cancel(
            f"cancel:{intent.key}", intent.booking_id, intent.token_hash))
        if isinstance(result, c.Rejected) and result.code == "unavailable":
            raise retry_later("the show cannot be reached right now") from None
        await _refund(booking, ref, f"void:{intent.key}")
        await _end(booking, intent, "refunded", 402, exc.code, exc.message, refunded=True)
        return
    await _step(booking, intent, "captured")
    _crash(booking, "captured")


async def _refund(booking: Booking, ref: str, key: str) -> None:
    try:
        await booking.payment_guard.call(lambda: booking.payments.refund(
            ref, idempotency_key=key))
    except GATEWAY_FAILURES as exc:  # the decision stands; the refund is asked again
        raise retry_later(f"the refund could not be made yet ({exc})") from None


async def _step(booking: Booking, intent: PaymentIntent, state: intents.IntentState,
                status: int = 0) -> None:
    intent.state = state
    intent.status = status or intent.status
    intent.updated_ms = booking.clock.now_ms()
    await booking.checkouts.save(intent)


async def _end(booking: Booking, intent: PaymentIntent, state: intents.IntentState,
               status: int, code: str, message: str, **details: object) -> None:
    """A final state without a booking: the promo use goes back, the answer is kept."""
    await _give_promo_back(booking, intent)
    intent.body = msgspec.Raw(msgspec.json.encode(
        {"error": {"code": code, "message": message, **details}}))
    await _step(booking, intent, state, status)


def booking_record(intent: PaymentIntent, seats: list[str]) -> BookingRecord:
    """The booking as the Confirm entry in the show's log has it."""
    assert intent.payment is not None
    return BookingRecord(
        booking_id=intent.booking_id, show_id=intent.show_id, hold_id=intent.hold_id,
        seats=list(seats), quote=intent.quote, payment=intent.payment, email=intent.email,
        name=intent.name, created_at=from_ms(intent.created_ms),
        customer_id=intent.customer_id, holder_hash=intent.token_hash, phone=intent.phone,
        id_number=intent.id_number)


async def _consume_promo(booking: Booking, intent: PaymentIntent) -> None:
    """Turn the hold's promo reservation into a use (refused if it cannot be). One intent
    checks a hold out at a time, so a use this hold consumed before is this intent's."""
    code = intent.quote.promo_code
    if not code or intent.promo_who is None:
        return
    promo = await booking.promos.get(code)
    if promo is None:  # deleted meanwhile: the quote stands, there is nothing to count
        return
    verdict = await booking.promos.consume(promo, intent.hold_id, intent.promo_who,
                                           booking.clock.now_ms())
    if verdict in ("ok", "repeat"):
        return
    await booking.checkouts.forget(intent)
    if verdict == "wrong_customer":
        raise Refused("promo_customer_mismatch",
                      "check out with the e-mail address (or account) the promo code was "
                      "applied for")
    raise Refused("promo_exhausted", "this promo code has been used up meanwhile")


async def _give_promo_back(booking: Booking, intent: PaymentIntent) -> None:
    code = intent.quote.promo_code
    if not code or intent.promo_who is None:
        return
    # the hold may still be live (a declined card): its reservation comes back with it
    live = await booking.shows.submit(intent.show_id, c.Peek(
        f"peek:{intent.key}", intent.hold_id, intent.token_hash))
    until = live.expires_at_ms if isinstance(live, c.HoldInfo) else None
    await booking.promos.unconsume(code, intent.hold_id, intent.promo_who, until)


def _crash(booking: Booking, point: str) -> None:
    if booking.settings.crash_at == point:
        os.kill(os.getpid(), signal.SIGKILL)
