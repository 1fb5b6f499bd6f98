"""The booking lifecycle after the seats are held: service functions (no HTTP here).

Checkout (server/booking/checkout.py) and the endpoints in lifecycle_api call these.

**Pending payments** (`start_pending`, `settle_payment`). When the gateway answers
"pending" (the sandbox's 4000 0000 0000 3220 card), checkout answers 202: the hold is
extended to its maximum lifetime (so it cannot expire under the payment), a booking record
is written with status `pending`, the hold goes to state `pending` (it can be neither paid
again nor released) and `payref:<ref>` remembers where the payment belongs. The gateway's
signed webhook (POST /api/payments/webhook) then settles it:
- `payment.succeeded`: the actor confirms the hold, the payment is captured, the booking
  becomes `confirmed`, the checkout's Idempotency-Key now answers the booking (201), and
  booking.confirmed is published. If the hold is gone by then (it outlived its maximum
  lifetime), the payment is refunded and the booking is `failed`.
- `payment.failed`: **rule: the hold is released at once** (seats back on sale) and the
  booking is `failed`; the key answers 402 `payment_failed`. The hold was stretched to its
  maximum lifetime only for the pending payment; keeping it would lock the seats for a
  customer who may be gone. Whoever wants to retry holds again.
Settling is idempotent: a repeated webhook finds the booking no longer `pending`.

**Cancellation policy** (`refund_percent`): per show (`policy:<show_id>`, set by the partner
with PUT /partner/v1/shows/{id}/cancellation-policy) or the platform default
`DEFAULT_POLICY`: 100% refund until 24 h before the start, 50% until 2 h before, nothing
after (a customer can still cancel then, to free the seats, until the show starts). A tier
applies when at least `hours_before` hours are left. Refunds are rounded down to the minor
unit.

**Cancelling a booking** (`cancel_booking`): refund first (gateway, idempotency key
`cancel:<booking_id>`), then the actor's Cancel (command id `cancel:<booking_id>`), then
the booking record (`cancelled`) and its `cancellation:` record in one MULTI, then
booking.cancelled is published. Each step is safe to repeat, so a failure part-way answers
503 and a retry completes it; a lock (`cancelling:`) keeps two cancels of one booking apart.
Bulk (invoiced) bookings are refunded as a credit note: no gateway call.

**Partner cancels a show** (`cancel_show_bookings`): every confirmed booking of the show
is cancelled with a 100% refund and booking.cancelled published for each, then one
show.cancelled (with the bookings and e-mail addresses). Bookings are found through the
show's bookings index (`bookings:{<show>}`, booking id -> status, records.py). A checkout
racing the cancellation is caught by `after_confirm`, which cancels and refunds a booking
confirmed for a cancelled show. Repeating DELETE show finishes what a failure left.

**Sold out** (`after_confirm`): when a confirm leaves no `free` seat, show.sold_out is
published once (`soldout:<show>` flag, cleared by a cancellation that frees seats).

**Bulk booking** (`bulk_book`): a partner books many seats in one request, all or nothing:
the seats go to the actor as holds of at most `max_seats_per_hold` each, submitted together
(the group-commit client sends them as one batch), then confirmed; if any hold is refused,
the others are released and nothing is booked. Paid by invoice (payment ref `inv_<bulk>`).

**Check-in** (`check_in`): the signed e-ticket is verified (signature, the show is the
partner's, the booking confirmed) and admitted once: `SET checkin:<booking> NX`, so of
concurrent scans exactly one wins and the others get 409 already_admitted.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from actors import commands as c

from server.commerce import offers
from server.commerce.quoting import promo_of
from server.core.clock import as_utc, cmd_id, now_ms, utcnow
from server.booking import intents
from server.booking import records as store
from server.booking.intents import PaymentIntent
from server.core import outbox
from server.booking.records import BookingRecord, BulkRecord, HoldRecord, bulk_key
from server.catalog.model import Money, Show, catalog_key
from server.core.circuit_breaker import CircuitOpen
from server.core.errors import ApiError, error_response
from server.commerce.payments import (
    GATEWAY_FAILURES,
    GatewayTimeout,
    GatewayUnavailable,
    PaymentError,
    WebhookEvent,
)
from server.catalog.seat_status import read_seat_statuses
from server.booking.tickets import booking_token, ticket_valid, token_expiry, verify_ticket
from server.catalog import service as catalog

if TYPE_CHECKING:
    from server.appkeys import Services

log = logging.getLogger(__name__)

GATEWAY_DOWN_EXTEND_S = 300   # a hold is extended this much when the gateway is down
CHECKIN_TTL_S = 90 * 24 * 3600
LOCK_TTL_S = 60


class RetryLater(ApiError):
    """503 with a Retry-After header: the payment gateway is down or timed out."""

    def __init__(self, code: str, message: str, retry_after_s: float, **details: Any) -> None:
        super().__init__(503, code, message, retry_after_s=int(retry_after_s), **details)
        self.retry_after_s = int(retry_after_s)

    def response(self) -> web.Response:
        resp = error_response(self.status, self.code, self.message, **self.details)
        resp.headers["Retry-After"] = str(self.retry_after_s)
        return resp


def gateway_retry(exc: Exception, svc: Services, **details: Any) -> RetryLater:
    """The RetryLater for a failed gateway call (CircuitOpen, GatewayTimeout, ...)."""
    breaker = svc.payment_guard.breaker
    if isinstance(exc, CircuitOpen):
        return RetryLater("payments_unavailable", "payments are unavailable right now; "
                          "retry later", exc.retry_after_s, **details)
    wait = breaker.retry_after_s() if breaker.state != "closed" else 5
    code = "payment_timeout" if isinstance(exc, GatewayTimeout) else "payments_unavailable"
    return RetryLater(code, f"{exc}; retry later", wait, **details)


_show_decoder = msgspec.json.Decoder(Show)


async def load_show(redis: aioredis.Redis, show_id: str) -> Show | None:
    raw = await redis.get(catalog_key("show", show_id))
    return _show_decoder.decode(raw) if raw else None


# --- outbox events ----------------------------------------------------------------------

def booking_data(booking: BookingRecord, show: Show | None, **extra: Any) -> dict[str, Any]:
    return {
        **outbox.booking_data(booking),
        "customer_id": booking.customer_id,
        "starts_at": as_utc(show.starts_at).isoformat() if show else None,
        "movie_id": show.movie_id if show else None,
        "theatre_id": show.theatre_id if show else None,
        **extra,
    }


async def _publish(svc: Services, type_: str, data: dict[str, Any], partner_id: str | None,
                   event_id: str | None = None) -> None:
    try:
        await outbox.publish(svc.redis, type_, data, partner_id=partner_id or None,
                             event_id=event_id)
    except Exception:  # the booking stands; the event is logged for a manual re-send
        log.exception("outbox: could not publish %s %s", type_, data.get("booking_id"))


def soldout_key(show_id: str) -> str:
    return f"soldout:{{{show_id}}}"


async def after_confirm(svc: Services, booking: BookingRecord, *,
                        publish_confirmed: bool = True) -> None:
    """Publish booking.confirmed (unless the caller did) and show.sold_out when no seat is
    free any more. A booking confirmed for a show cancelled meanwhile is cancelled and
    refunded at once."""
    show = await load_show(svc.redis, booking.show_id)
    partner = show.partner_id if show else None
    if publish_confirmed:
        await _publish(svc, "booking.confirmed", booking_data(booking, show), partner,
                       f"booking.confirmed:{booking.booking_id}")
    if show is not None and show.status == "cancelled":
        await cancel_booking(svc, booking, by="show_cancelled", percent=100, show=show)
        return
    await check_sold_out(svc, booking.show_id, partner)


async def check_sold_out(svc: Services, show_id: str, partner_id: str | None) -> bool:
    view = await read_seat_statuses(svc.redis, show_id)
    if view is None or view.counts()["free"] > 0:
        return False
    if await svc.redis.set(soldout_key(show_id), "1", nx=True):
        counts = view.counts()
        await _publish(svc, "show.sold_out", {"show_id": show_id, "seq": view.seq,
                                              "counts": counts}, partner_id)
        return True
    return False


# --- holds when the gateway is down ----------------------------------------------------

async def extend_hold(svc: Services, hold: HoldRecord, seconds: int) -> datetime | None:
    """Extend a live hold through its actor (capped at its lifetime); the new expiry, or
    None if the actor refused (e.g. it is at its maximum lifetime already)."""
    result = await svc.shows.submit(hold.show_id, c.Extend(
        cmd_id(), hold.hold_id, hold.token_hash, seconds * 1000))
    if not isinstance(result, c.Extended):
        return None
    hold.expires_ms = result.expires_at_ms
    return datetime.fromtimestamp(result.expires_at_ms / 1000, UTC)


async def gateway_down(svc: Services, hold: HoldRecord, exc: Exception) -> RetryLater:
    """The hold is extended instead of lost; the 503 says until when."""
    expires = await extend_hold(svc, hold, GATEWAY_DOWN_EXTEND_S)
    expires_at = expires or datetime.fromtimestamp(hold.expires_ms / 1000, UTC)
    return gateway_retry(exc, svc, hold_id=hold.hold_id,
                         hold_expires_at=expires_at.isoformat().replace("+00:00", "Z"))


# --- pending payments -------------------------------------------------------------------

class PendingPayment(msgspec.Struct):
    ref: str
    show_id: str
    hold_id: str
    booking_id: str
    idem: str  # the checkout's idempotency record key


class PendingCheckout(msgspec.Struct):
    """202 body: the payment is being processed; the webhook will settle it."""

    status: Literal["pending"]
    booking_id: str
    booking_token: str
    hold_id: str
    payment_ref: str
    hold_expires_at: datetime
    url: str


def payref_key(ref: str) -> str:
    return f"payref:{ref}"


_pending_decoder = msgspec.json.Decoder(PendingPayment)


async def start_pending(svc: Services, intent: PaymentIntent) -> None:
    """The gateway settles this payment later: the hold is extended to its lifetime and
    locked (only the webhook's Confirm or Release ends it), the pending booking recorded,
    and the intent answers 202 until the webhook settles it."""
    assert intent.payment is not None
    ref = intent.payment.ref
    peek = await svc.shows.submit(intent.show_id, c.Peek(
        f"peek:{intent.key}", intent.hold_id, intent.token_hash))
    result: c.Result = peek
    if isinstance(peek, c.HoldInfo):
        lifetime_ms = peek.max_expires_ms - peek.created_ms
        result = await svc.shows.submit(intent.show_id, c.Extend(
            f"pending:{intent.key}", intent.hold_id, intent.token_hash, max(lifetime_ms, 1000),
            lock=intent.booking_id))
    if isinstance(result, c.Rejected) and result.code == "unavailable":
        raise ApiError(503, "unavailable", "the show cannot be reached right now; retry "
                       "with the same Idempotency-Key", retry_after_s=2)
    if isinstance(result, c.Rejected) and result.code != "lifetime_exceeded":
        await svc.payments.refund(ref, idempotency_key=f"void:{intent.key}")
        intent.state, intent.status = "voided", 410
        intent.body = msgspec.Raw(msgspec.json.encode({"error": {
            "code": "hold_expired", "message": "the hold's time is up; the payment was "
            "refunded", "refunded": True, "seats": intent.seats}}))
        await intents.save(svc.redis, intent)
        return
    expires_ms = result.expires_at_ms if isinstance(result, c.Extended | c.HoldInfo) else 0
    booking = BookingRecord(
        booking_id=intent.booking_id, show_id=intent.show_id, hold_id=intent.hold_id,
        seats=intent.seats, quote=intent.quote, payment=intent.payment, email=intent.email,
        name=intent.name, created_at=utcnow(), status="pending",
        customer_id=intent.customer_id, holder_hash=intent.token_hash, phone=intent.phone,
        id_number=intent.id_number)
    secret = svc.settings.secret
    intent.state, intent.status = "pending", 202
    intent.body = msgspec.Raw(msgspec.json.encode(PendingCheckout(
        "pending", booking.booking_id,
        booking_token(secret, booking.booking_id, token_expiry(None, booking.created_at)),
        intent.hold_id, ref, datetime.fromtimestamp(expires_ms / 1000, UTC),
        f"/api/bookings/{booking.booking_id}")))
    # Three slots (the show's, the payment ref's, the intent's show again), so three ordered
    # steps, each safe to repeat: the pending booking first, then `payref:` (what the webhook
    # looks for; until it exists a webhook is ignored and the gateway or the reconciler asks
    # again), then the intent turns "pending". A crash before that leaves it "authorised":
    # whoever drives it runs start_pending again (the Extend is idempotent by its id).
    await store.save_booking(svc.redis, booking)
    await svc.redis.set(payref_key(ref), msgspec.json.encode(PendingPayment(
        ref, intent.show_id, intent.hold_id, booking.booking_id, intent.key)),
        ex=store.IDEMPOTENCY_TTL_S * 7)
    await intents.save(svc.redis, intent)


async def _refund_quietly(svc: Services, ref: str, key: str, amount: int | None = None) -> int:
    try:
        return await svc.payments.refund(ref, amount, idempotency_key=key)
    except (PaymentError, GatewayUnavailable):
        log.exception("refund of %s failed; needs a manual refund", ref)
        return 0


async def _set_attempt(svc: Services, idem: str, status: int, body: bytes = b"null") -> None:
    """The pending payment's intent is settled: final, with this answer."""
    intent = await intents.load(svc.redis, idem)
    if intent is None:
        return
    intent.state = "done" if status == 201 else "refunded" if status == 410 else "declined"
    intent.status, intent.body, intent.updated_ms = status, msgspec.Raw(body), now_ms()
    if status != 201 and intent.quote.promo_code and intent.promo_who is not None:
        # no booking came of it: the promo use it consumed goes back
        await offers.unconsume(svc.redis, intent.quote.promo_code, intent.hold_id,
                               intent.promo_who)
    await intents.save(svc.redis, intent)


async def settle_payment(svc: Services, event: WebhookEvent) -> str:
    """Apply a verified webhook; returns what happened (for the 200 answer)."""
    raw = await svc.redis.get(payref_key(event.ref))
    if raw is None:
        return "ignored"  # not a pending payment of ours (or settled long ago)
    pending = _pending_decoder.decode(raw)
    lock = f"settling:{event.ref}"
    if not await svc.redis.set(lock, "1", nx=True, ex=LOCK_TTL_S):
        raise ApiError(409, "in_progress", "this payment is being settled; retry shortly")
    try:
        booking = await store.load_booking(svc.redis, pending.booking_id)
        if booking is None or booking.status != "pending":
            return "already_settled"
        token = booking.holder_hash
        if event.type == "payment.failed":
            await svc.shows.submit(pending.show_id, c.Release(
                f"release:{pending.idem}", pending.hold_id, token, unlock=booking.booking_id))
            return await _fail(svc, booking, pending, 402, "payment_failed",
                               "the payment failed; the seats were released", "failed")
        result = await svc.shows.submit(pending.show_id, c.Confirm(
            f"confirm:{pending.idem}", pending.hold_id, token, booking.booking_id, event.ref,
            booking=intents.facts_encoder.encode(intents.BookingFacts(
                booking.email, booking.name, booking.payment,
                int(booking.created_at.timestamp() * 1000), booking.customer_id,
                booking.phone, booking.id_number))))
        if isinstance(result, c.Rejected) and result.code == "unavailable":
            raise ApiError(503, "unavailable", "the show cannot be reached right now",
                           retry_after_s=2)
        if isinstance(result, c.Rejected):
            await _refund_quietly(svc, event.ref, f"void:{pending.idem}")
            return await _fail(svc, booking, pending, 410, "hold_expired",
                               "the hold ran out before the payment completed; the payment "
                               "was refunded", "refunded")
        assert isinstance(result, c.Confirmed)
        try:
            await svc.payments.capture(event.ref)
        except (PaymentError, GatewayUnavailable):
            await svc.shows.submit(pending.show_id, c.Cancel(
                f"cancel:{pending.idem}", booking.booking_id, token))
            await _refund_quietly(svc, event.ref, f"void:{pending.idem}")
            return await _fail(svc, booking, pending, 402, "capture_failed",
                               "the payment could not be captured; it was refunded", "refunded")
        booking.status, booking.seats = "confirmed", result.seats
        await store.save_booking(svc.redis, booking)
        await _set_attempt(svc, pending.idem, 201)
        await svc.redis.delete(payref_key(event.ref))
        await after_confirm(svc, booking)
        return "confirmed"
    finally:
        await svc.redis.delete(lock)


async def _fail(svc: Services, booking: BookingRecord, pending: PendingPayment, status: int,
                code: str, message: str, outcome: str) -> str:
    booking.status = "failed"
    await store.save_booking(svc.redis, booking)
    await _set_attempt(svc, pending.idem, status, msgspec.json.encode(
        {"error": {"code": code, "message": message}}))
    await svc.redis.delete(payref_key(pending.ref))
    return outcome


# --- cancellation policy ----------------------------------------------------------------

class RefundTier(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hours_before: Annotated[int, msgspec.Meta(ge=0, le=24 * 365)]
    refund_percent: Annotated[int, msgspec.Meta(ge=0, le=100)]


class CancellationPolicy(msgspec.Struct, forbid_unknown_fields=True):
    """Refund tiers: the first tier (most hours first) with at least `hours_before` hours
    left before the start applies; none: no refund."""

    tiers: Annotated[list[RefundTier], msgspec.Meta(max_length=10)]
    source: Literal["show", "platform"] = "show"


DEFAULT_POLICY = CancellationPolicy([RefundTier(24, 100), RefundTier(2, 50)], "platform")


def policy_key(show_id: str) -> str:
    return f"policy:{{{show_id}}}"


def validate_policy(policy: CancellationPolicy) -> CancellationPolicy:
    tiers = sorted(policy.tiers, key=lambda t: -t.hours_before)
    hours = [t.hours_before for t in tiers]
    if len(set(hours)) != len(hours):
        raise ApiError(422, "invalid_policy", "two tiers have the same hours_before")
    if any(a.refund_percent < b.refund_percent for a, b in zip(tiers, tiers[1:])):
        raise ApiError(422, "invalid_policy",
                       "refunds must not grow closer to the start (more hours, more refund)")
    return CancellationPolicy(tiers, "show")


async def load_policy(redis: aioredis.Redis, show_id: str) -> CancellationPolicy:
    raw = await redis.get(policy_key(show_id))
    return msgspec.json.decode(raw, type=CancellationPolicy) if raw else DEFAULT_POLICY


async def save_policy(redis: aioredis.Redis, show_id: str, policy: CancellationPolicy) -> None:
    await redis.set(policy_key(show_id), msgspec.json.encode(policy))


def refund_percent(policy: CancellationPolicy, starts_at: datetime, now: datetime) -> int:
    left = as_utc(starts_at) - now
    for tier in sorted(policy.tiers, key=lambda t: -t.hours_before):
        if left >= timedelta(hours=tier.hours_before):
            return tier.refund_percent
    return 0


# --- cancelling bookings ----------------------------------------------------------------

CancelledBy = Literal["customer", "partner", "show_cancelled"]


class Cancellation(msgspec.Struct):
    booking_id: str
    show_id: str
    status: Literal["cancelled"]
    seats: list[str]
    by: CancelledBy
    refund_percent: int
    refund: Money
    cancelled_at: datetime


def cancellation_key(show_id: str, booking_id: str) -> str:
    return f"cancellation:{{{show_id}}}:{booking_id}"


def checkin_key(show_id: str, booking_id: str) -> str:
    return f"checkin:{{{show_id}}}:{booking_id}"


def cancel_decided_key(show_id: str, booking_id: str) -> str:
    """Set once a cancellation has begun (its refund may be made): no check-in after it."""
    return f"cancel_decided:{{{show_id}}}:{booking_id}"


# KEYS: check-in, cancel decided. ARGV: refuse if admitted (1/0), TTL s. 1 decided, 0 not.
_DECIDE_CANCEL = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
return 1
"""

# KEYS: check-in, cancel decided. ARGV: the admission, TTL s. 1 admitted, 0 cancelled,
# -1 admitted before.
_ADMIT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
return -1
"""


async def load_cancellation(redis: aioredis.Redis, booking: BookingRecord
                            ) -> Cancellation | None:
    raw = await redis.get(cancellation_key(booking.show_id, booking.booking_id))
    return msgspec.json.decode(raw, type=Cancellation) if raw else None


async def quote_cancellation(svc: Services, booking: BookingRecord, show: Show | None
                             ) -> tuple[int, int, CancellationPolicy]:
    """(percent, refund amount, policy) if the customer cancelled now."""
    policy = await load_policy(svc.redis, booking.show_id)
    pct = refund_percent(policy, show.starts_at, utcnow()) if show else 100
    return pct, booking.quote.total * pct // 100, policy


async def customer_cancel(svc: Services, booking: BookingRecord) -> Cancellation:
    """A customer cancels their own booking: refund per the show's policy."""
    show = await load_show(svc.redis, booking.show_id)
    if booking.status != "confirmed":
        raise ApiError(409, f"booking_{booking.status}", f"this booking is {booking.status}")
    if show is not None and as_utc(show.starts_at) <= utcnow():
        raise ApiError(409, "show_started", "the show has started; it cannot be cancelled")
    if await svc.redis.exists(checkin_key(booking.show_id, booking.booking_id)):
        raise ApiError(409, "already_admitted", "this ticket was used at the door")
    pct, _, _ = await quote_cancellation(svc, booking, show)
    return await cancel_booking(svc, booking, by="customer", percent=pct, show=show)


async def cancel_booking(svc: Services, booking: BookingRecord, *, by: CancelledBy,
                         percent: int, show: Show | None = None) -> Cancellation:
    """Refund `percent` of the booking, cancel it in the actor, record and publish it.
    `booking.status` becomes "cancelled" on the caller's object too."""
    lock = f"cancelling:{{{booking.show_id}}}:{booking.booking_id}"
    if not await svc.redis.set(lock, "1", nx=True, ex=LOCK_TTL_S):
        raise ApiError(409, "cancellation_in_progress", "this booking is being cancelled")
    # Decided against a check-in in one atomic step: of a scan and a customer's cancel,
    # exactly one wins (the partner and a cancelled show refund even an admitted ticket).
    decided = await svc.redis.eval(
        _DECIDE_CANCEL, 2, checkin_key(booking.show_id, booking.booking_id),
        cancel_decided_key(booking.show_id, booking.booking_id),
        "1" if by == "customer" else "0", CHECKIN_TTL_S)
    if decided == 0:
        await svc.redis.delete(lock)
        raise ApiError(409, "already_admitted", "this ticket was used at the door")
    caller = booking
    try:
        fresh = await store.load_booking(svc.redis, booking.booking_id) or booking
        if fresh.status == "cancelled":
            done = await load_cancellation(svc.redis, fresh)
            if done is not None:
                caller.status = "cancelled"
                return done
        booking = fresh
        amount = booking.quote.total * percent // 100
        key = f"cancel:{booking.booking_id}"
        refunded = amount
        if amount and booking.payment.brand != "invoice":
            try:
                refunded = await svc.payment_guard.call(lambda: svc.payments.refund(
                    booking.payment.ref, amount, idempotency_key=key))
            except GATEWAY_FAILURES as exc:
                if not isinstance(exc, GatewayTimeout):  # surely not refunded: undecided
                    await svc.redis.delete(cancel_decided_key(booking.show_id,
                                                              booking.booking_id))
                raise gateway_retry(exc, svc) from None
            except PaymentError as exc:
                await svc.redis.delete(cancel_decided_key(booking.show_id, booking.booking_id))
                raise ApiError(409, exc.code, exc.message) from None
        token = booking.holder_hash
        result = await svc.shows.submit(booking.show_id, c.Cancel(key, booking.booking_id,
                                                                  token))
        if isinstance(result, c.Rejected) and result.code != "not_found":
            raise ApiError(503 if result.code == "unavailable" else 409, result.code,
                           result.message)
        booking.status = caller.status = "cancelled"
        record = Cancellation(booking.booking_id, booking.show_id, "cancelled", booking.seats,
                              by, percent, Money(refunded, booking.quote.currency), utcnow())
        async with svc.redis.pipeline(transaction=True) as pipe:  # all in the show's slot
            store.queue_booking(pipe, booking)
            pipe.set(cancellation_key(booking.show_id, booking.booking_id),
                     msgspec.json.encode(record))
            pipe.delete(soldout_key(booking.show_id))
            await pipe.execute()
        show = show or await load_show(svc.redis, booking.show_id)
        await _publish(svc, "booking.cancelled", booking_data(
            booking, show, reason=by, refund={"amount": refunded,
                                              "currency": booking.quote.currency},
            refund_percent=percent), show.partner_id if show else None,
            f"booking.cancelled:{booking.booking_id}")
        return record
    finally:
        await svc.redis.delete(lock)


async def show_bookings(redis: aioredis.Redis, show_id: str,
                        status: str | None = None) -> list[BookingRecord]:
    """The show's bookings (those with `status`, by the index), through its index."""
    ids = await store.show_booking_ids(redis, show_id)
    wanted = sorted(b for b, s in ids.items() if status is None or s == status)
    return await store.load_show_bookings(redis, show_id, wanted)


async def release_show_holds(svc: Services, show_id: str) -> int:
    """Release the holds of a cancelled show in one command (holds being paid for are
    settled by their webhook, which then refunds: the show is cancelled); their promo
    reservations are given back."""
    result = await svc.shows.submit(show_id, c.ReleaseAll(f"showcancel:{show_id}"))
    if not isinstance(result, c.ReleasedAll):
        return 0
    now = now_ms()
    for hold_id, quote in zip(result.hold_ids, result.quotes, strict=True):
        if code := promo_of(quote):
            await offers.release(svc.redis, code, hold_id, now)
    return len(result.hold_ids)


async def cancel_show_bookings(svc: Services, show: Show) -> list[Cancellation]:
    """Cancel and fully refund every confirmed booking of a cancelled show; publish
    booking.cancelled per booking and show.cancelled once. Raises RetryLater if some
    could not be refunded now (the show stays cancelled; repeating finishes the rest)."""
    await release_show_holds(svc, show.show_id)
    done: list[Cancellation] = []
    failed: list[ApiError] = []
    for booking in await show_bookings(svc.redis, show.show_id, "confirmed"):
        if booking.status != "confirmed":
            continue
        try:
            done.append(await cancel_booking(svc, booking, by="show_cancelled", percent=100,
                                             show=show))
        except ApiError as exc:
            failed.append(exc)
    if failed:
        retry = next((e for e in failed if isinstance(e, RetryLater)), None)
        raise RetryLater("refunds_pending", f"{len(failed)} bookings could not be cancelled "
                         "and refunded yet; repeat the request", retry.retry_after_s if retry
                         else 5, cancelled=len(done))
    if await svc.redis.set(f"showcancelled:{{{show.show_id}}}", "1", nx=True):
        everyone = [b for b in await show_bookings(svc.redis, show.show_id, "cancelled")
                    if b.status == "cancelled"]
        await _publish(svc, "show.cancelled", {
            "show_id": show.show_id, "movie_id": show.movie_id,
            "theatre_id": show.theatre_id, "starts_at": as_utc(show.starts_at).isoformat(),
            "bookings": [{"booking_id": b.booking_id, "email": b.email, "name": b.name,
                          "seats": b.seats} for b in everyone],
        }, show.partner_id, f"show.cancelled:{show.show_id}")
    return done


# --- bulk booking ------------------------------------------------------------------------

async def announce_bulk(svc: Services, show: Show, bulk: BulkRecord,
                        bookings: list[BookingRecord]) -> None:
    for b in bookings:
        await _publish(svc, "booking.confirmed", booking_data(b, show, bulk_id=bulk.bulk_id),
                       show.partner_id, f"booking.confirmed:{b.booking_id}")
    await check_sold_out(svc, show.show_id, show.partner_id)


async def bulk_cancel(svc: Services, show: Show, bulk: BulkRecord) -> list[Cancellation]:
    """Cancel every booking of a bulk booking (credited in full)."""
    out: list[Cancellation] = []
    for booking_id in bulk.booking_ids:
        booking = await store.load_booking(svc.redis, booking_id)
        if booking is None or booking.status not in ("confirmed", "cancelled"):
            continue
        out.append(await cancel_booking(svc, booking, by="partner", percent=100, show=show))
    bulk.status = "cancelled"
    await svc.redis.set(bulk_key(show.show_id, bulk.bulk_id), msgspec.json.encode(bulk))
    return out




# --- check-in ------------------------------------------------------------------------------

class Admission(msgspec.Struct):
    booking_id: str
    show_id: str
    seats: list[str]
    name: str
    admitted_at: datetime


async def check_in(svc: Services, partner_id: str, code: str) -> Admission:
    payload = verify_ticket(svc.settings.secret, code)
    if payload is None:
        raise ApiError(400, "invalid_ticket", "the ticket's signature does not verify")
    if (why := ticket_valid(payload)) is not None:
        raise ApiError(409, f"ticket_{why}", "this ticket does not admit (it is "
                       f"{why.replace('_', ' ')})")
    await catalog.owned_show(svc.redis, partner_id, payload.show_id)  # 404 / 403
    booking = await store.load_booking(svc.redis, payload.booking_id)
    if booking is None or booking.show_id != payload.show_id:
        raise ApiError(404, "not_found", f"no booking {payload.booking_id!r}")
    if booking.status != "confirmed":
        raise ApiError(409, f"booking_{booking.status}", f"this booking is {booking.status}")
    if sorted(payload.seats) != sorted(booking.seats):
        raise ApiError(409, "ticket_outdated", "the ticket's seats are not the booking's")
    admission = Admission(booking.booking_id, booking.show_id, booking.seats, booking.name,
                          utcnow())
    key = checkin_key(booking.show_id, booking.booking_id)
    admitted = await svc.redis.eval(_ADMIT, 2, key,
                                    cancel_decided_key(booking.show_id, booking.booking_id),
                                    msgspec.json.encode(admission), CHECKIN_TTL_S)
    if admitted == 0:
        raise ApiError(409, "booking_cancelled", "this booking is being cancelled or was")
    if admitted == -1:
        raw = await svc.redis.get(key)
        first = msgspec.json.decode(raw, type=Admission) if raw else admission
        raise ApiError(409, "already_admitted", "this ticket was admitted already",
                       admitted_at=first.admitted_at.isoformat().replace("+00:00", "Z"))
    return admission
