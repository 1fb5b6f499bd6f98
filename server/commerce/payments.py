"""Payments: the adapter the checkout talks to, and the built-in sandbox gateway.

Checkout does `authorise` (reserve the money) -> confirm the seats in the show actor ->
`capture` (take the money); if the seats cannot be confirmed it calls `refund`, which voids
an authorisation that was not captured yet and refunds one that was.

Card numbers never leave this module's call: the gateway answers with an opaque card token
and the last four digits, and that is all the platform keeps. `CardDetails.__repr__` masks
the number so it cannot end up in a log line by accident.

Sandbox test cards (any future expiry, any 3-4 digit CVC):
    4242 4242 4242 4242  succeeds
    4000 0000 0000 0002  is declined (402)
    4000 0000 0000 0119  times out: the gateway hangs far past the client's timeout
    4000 0000 0000 3220  is "pending": authorise answers at once with status "pending" and
                         the outcome comes later in a signed webhook (`SandboxGateway.webhook`
                         makes it; a real gateway POSTs it to /api/payments/webhook)
    any other number     is invalid (422)
`SandboxGateway.down = True` makes every call fail as if the gateway were unreachable.

Resilience (`GatewayGuard`, one per web process in `Services.payment_guard`): every gateway
call gets a client timeout (`timeout_s`) and goes through a circuit breaker
(server/core/circuit_breaker.py). "Unreachable" and "timed out" count as failures; a decline does
not. While the breaker is open, calls fail at once with `CircuitOpen` and checkout answers
503 with `Retry-After` (and extends the hold, see customer_api.checkout).

Webhooks: the body is JSON `{"id", "type": "payment.succeeded" | "payment.failed", "ref",
"created"}`; the header `Sandbox-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>." + body)>`. `verify_webhook` checks the signature in constant time and refuses a
timestamp more than `WEBHOOK_TOLERANCE_S` away from now (a replayed old delivery).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol, TypeVar

import msgspec

from server.core.circuit_breaker import CircuitBreaker, CircuitOpen

SUCCEEDS = "4242424242424242"
DECLINES = "4000000000000002"
TIMES_OUT = "4000000000000119"
PENDING = "4000000000003220"
TEST_CARDS = (SUCCEEDS, DECLINES, TIMES_OUT, PENDING)
WEBHOOK_HEADER = "Sandbox-Signature"
WEBHOOK_TOLERANCE_S = 300

T = TypeVar("T")


@dataclass(frozen=True)
class CardDetails:
    number: str
    exp_month: int
    exp_year: int
    cvc: str

    def __repr__(self) -> str:  # never print the number or the CVC
        return f"CardDetails(last4={self.number[-4:]!r}, exp={self.exp_month:02d}/{self.exp_year})"

    __str__ = __repr__


class PaymentError(Exception):
    """Base: `code` and `message` go to the client as they are."""

    status = 402

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CardInvalid(PaymentError):
    """The card details cannot be charged at all (bad number, expired, bad CVC): 422."""

    status = 422


class CardDeclined(PaymentError):
    """The issuer said no: 402."""

    status = 402


class GatewayUnavailable(Exception):
    """The gateway could not be reached or failed on its side (not a business answer):
    counts as a failure for the circuit breaker. Not a PaymentError: never a 402."""


class GatewayTimeout(GatewayUnavailable):
    """The gateway did not answer within the client timeout (the outcome is unknown; a
    retry with the same idempotency key gets the gateway's first answer)."""


# What "the gateway cannot answer now" looks like: callers extend the hold and say 503.
GATEWAY_FAILURES = (CircuitOpen, GatewayUnavailable)


class WebhookError(Exception):
    """A webhook that must not be trusted: 400 malformed, 401 bad signature or stale."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Authorisation(msgspec.Struct, frozen=True):
    ref: str          # the gateway's reference for this payment
    card_token: str   # opaque token for the card (what we store instead of the number)
    last4: str
    brand: str
    amount: int       # minor units
    currency: str
    # "pending": asynchronous; the outcome comes in a webhook (payment.succeeded / .failed)
    status: Literal["authorised", "pending"] = "authorised"


class GatewayPayment(msgspec.Struct, frozen=True):
    """A payment as the gateway has it, looked up by its ref or its idempotency key."""

    ref: str
    idempotency_key: str
    # authorised | pending | captured | partially_refunded | refunded | voided | failed |
    # declined
    state: str
    amount: int
    currency: str
    last4: str
    brand: str
    card_token: str
    refunded: int = 0


class WebhookEvent(msgspec.Struct, frozen=True):
    id: str
    type: Literal["payment.succeeded", "payment.failed"]
    ref: str
    created: int  # unix seconds


class PaymentGateway(Protocol):
    async def authorise(
        self, *, amount: int, currency: str, card: CardDetails, idempotency_key: str
    ) -> Authorisation:
        """Reserve `amount`; raises CardInvalid / CardDeclined. The same idempotency key
        returns the first answer (a retry never charges twice)."""
        ...

    async def capture(self, ref: str) -> None:
        """Take the authorised money."""
        ...

    async def refund(self, ref: str, amount: int | None = None,
                     idempotency_key: str | None = None) -> int:
        """Void an uncaptured authorisation or refund a captured payment, in full or
        `amount` of it; returns the amount refunded. Idempotent: a repeated
        `idempotency_key` (or a full refund of a refunded payment) changes nothing."""
        ...

    def verify_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """The event if `body` is signed by the gateway; raises WebhookError otherwise."""
        ...

    async def lookup(self, idempotency_key: str) -> GatewayPayment | None:
        """The payment made under this key (a declined one too), or None: what the
        reconciler asks instead of guessing."""
        ...

    async def payment(self, ref: str) -> GatewayPayment | None: ...


LedgerKind = Literal["authorise", "pending", "decline", "capture", "void", "refund", "failed"]


class LedgerEntry(msgspec.Struct, frozen=True):
    kind: LedgerKind
    ref: str
    amount: int
    currency: str
    last4: str
    idempotency_key: str
    at: datetime


@dataclass
class SandboxGateway:
    """An in-process gateway with test cards and a ledger (per web process)."""

    ledger: list[LedgerEntry] = field(default_factory=list)
    down: bool = False          # simulate an unreachable gateway: every call fails
    hang_s: float = 120.0       # how long the TIMES_OUT card makes authorise hang
    webhook_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    calls: int = 0              # calls that reached the gateway (tests: breaker fast path)
    _by_key: dict[str, Authorisation | CardDeclined] = field(default_factory=dict)
    _state: dict[str, str] = field(default_factory=dict)   # ref -> authorised/captured/...
    _auths: dict[str, Authorisation] = field(default_factory=dict)
    _refunded: dict[str, int] = field(default_factory=dict)     # ref -> amount refunded
    _refund_keys: dict[str, int] = field(default_factory=dict)  # idempotency key -> amount
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _reach(self) -> None:
        self.calls += 1
        if self.down:
            raise GatewayUnavailable("sandbox gateway is down (connection refused)")

    async def authorise(
        self, *, amount: int, currency: str, card: CardDetails, idempotency_key: str
    ) -> Authorisation:
        self._reach()
        if card.number == TIMES_OUT and idempotency_key not in self._by_key:
            await asyncio.sleep(self.hang_s)  # outside the lock: hangs only this call
        async with self._lock:
            known = self._by_key.get(idempotency_key)
            if isinstance(known, CardDeclined):
                raise known
            if known is not None:
                return known
            _check_card(card)  # invalid details are not recorded: fix them and retry
            last4 = card.number[-4:]
            ref = f"sbx_{secrets.token_hex(8)}"
            if card.number == DECLINES:
                declined = CardDeclined("card_declined", "the card was declined by its issuer")
                self._by_key[idempotency_key] = declined
                self._record("decline", ref, amount, currency, last4, idempotency_key)
                raise declined
            pending = card.number == PENDING
            auth = Authorisation(ref, f"tok_{secrets.token_hex(8)}", last4, "visa", amount,
                                 currency, "pending" if pending else "authorised")
            self._by_key[idempotency_key] = auth
            self._auths[ref] = auth
            self._state[ref] = "pending" if pending else "authorised"
            self._record("pending" if pending else "authorise", ref, amount, currency, last4,
                         idempotency_key)
            return auth

    async def capture(self, ref: str) -> None:
        self._reach()
        async with self._lock:
            state = self._state.get(ref)
            if state == "captured":
                return
            if state != "authorised":
                raise PaymentError("capture_failed", f"payment {ref} cannot be captured ({state})")
            self._state[ref] = "captured"
            self._record_auth("capture", ref)

    async def refund(self, ref: str, amount: int | None = None,
                     idempotency_key: str | None = None) -> int:
        self._reach()
        async with self._lock:
            if idempotency_key is not None and idempotency_key in self._refund_keys:
                return self._refund_keys[idempotency_key]
            state = self._state.get(ref)
            done = 0
            if state in ("authorised", "pending"):
                self._state[ref] = "voided"
                self._record_auth("void", ref)
                done = self._auths[ref].amount
            elif state in ("captured", "partially_refunded"):
                left = self._auths[ref].amount - self._refunded.get(ref, 0)
                done = left if amount is None else amount
                if not 0 <= done <= left:
                    raise PaymentError("refund_failed",
                                       f"cannot refund {done} of payment {ref} ({left} left)")
                if done:
                    self._refunded[ref] = self._refunded.get(ref, 0) + done
                    self._state[ref] = "refunded" if done == left else "partially_refunded"
                    self._record_auth("refund", ref, done)
            elif state is None:
                raise PaymentError("refund_failed", f"no payment {ref}")
            if idempotency_key is not None:
                self._refund_keys[idempotency_key] = done
            return done

    async def lookup(self, idempotency_key: str) -> GatewayPayment | None:
        self._reach()
        known = self._by_key.get(idempotency_key)
        if isinstance(known, CardDeclined):
            return GatewayPayment("", idempotency_key, "declined", 0, "", "", "", "")
        return None if known is None else await self.payment(known.ref)

    async def payment(self, ref: str) -> GatewayPayment | None:
        self._reach()
        a = self._auths.get(ref)
        if a is None:
            return None
        key = next(k for k, v in self._by_key.items() if v is a)
        return GatewayPayment(ref, key, self._state[ref], a.amount, a.currency, a.last4,
                              a.brand, a.card_token, self._refunded.get(ref, 0))

    # --- webhooks --------------------------------------------------------------------

    def webhook(self, ref: str, outcome: Literal["succeeded", "failed"],
                at: float | None = None) -> tuple[bytes, dict[str, str]]:
        """Settle a pending payment and return the signed webhook (body, headers) the
        gateway would POST to /api/payments/webhook."""
        state = self._state.get(ref)
        if state == "pending":
            self._state[ref] = "authorised" if outcome == "succeeded" else "failed"
            if outcome == "failed":
                self._record_auth("failed", ref)
        ts = int(at if at is not None else time.time())
        body = msgspec.json.encode(WebhookEvent(f"wh_{secrets.token_hex(8)}",
                                                f"payment.{outcome}", ref, ts))
        return body, {WEBHOOK_HEADER: sign_webhook(self.webhook_secret, body, ts),
                      "Content-Type": "application/json"}

    def verify_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        return verify_webhook(self.webhook_secret, body, headers.get(WEBHOOK_HEADER))

    # --- ledger queries (tests, admin) -------------------------------------------------

    def entries(self, ref: str | None = None, kind: LedgerKind | None = None) -> list[LedgerEntry]:
        return [e for e in self.ledger
                if (ref is None or e.ref == ref) and (kind is None or e.kind == kind)]

    def state(self, ref: str) -> str | None:
        return self._state.get(ref)

    def _record_auth(self, kind: LedgerKind, ref: str, amount: int | None = None) -> None:
        a = self._auths[ref]
        key = next(k for k, v in self._by_key.items() if v is a)
        self._record(kind, ref, a.amount if amount is None else amount, a.currency, a.last4, key)

    def _record(self, kind: LedgerKind, ref: str, amount: int, currency: str, last4: str,
                key: str) -> None:
        self.ledger.append(LedgerEntry(kind, ref, amount, currency, last4, key,
                                       datetime.now(UTC)))


def sign_webhook(secret: str, body: bytes, ts: int) -> str:
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify_webhook(secret: str, body: bytes, header: str | None,
                   now: float | None = None) -> WebhookEvent:
    if not header:
        raise WebhookError(401, "signature_required", f"the {WEBHOOK_HEADER} header is missing")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        raise WebhookError(400, "bad_signature_header",
                           f"{WEBHOOK_HEADER} must be t=<unix>,v1=<hex>") from None
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.encode()):  # bytes: any input
        raise WebhookError(401, "bad_signature", "the webhook signature does not match")
    if abs((now if now is not None else time.time()) - ts) > WEBHOOK_TOLERANCE_S:
        raise WebhookError(401, "stale_webhook", "the webhook timestamp is too old")
    try:
        return msgspec.json.decode(body, type=WebhookEvent)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WebhookError(400, "bad_webhook", f"the webhook body is not valid: {exc}") from None


# --- resilience: timeout + circuit breaker -------------------------------------------------

class GatewayGuard:
    """Timeout and circuit breaker around gateway calls (one per web process)."""

    def __init__(self, *, timeout_s: float = 10.0, failure_threshold: int = 5,
                 cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 min_sources: int = 3) -> None:
        self.timeout_s = timeout_s
        # Timeouts open it only from at least `min_sources` client networks: one customer
        # timing out their own payments cannot fail everyone's (M9).
        self.breaker = CircuitBreaker("payment gateway", failure_threshold=failure_threshold,
                                      cooldown_s=cooldown_s, clock=clock,
                                      min_sources=min_sources)

    async def call(self, fn: Callable[[], Awaitable[T]], source: str = "") -> T:
        """Run `fn()` with the timeout, through the breaker. Raises CircuitOpen (not
        called), GatewayTimeout or GatewayUnavailable; the gateway's own answers
        (PaymentError and subclasses) pass through and do not trip the breaker."""

        async def timed() -> T:
            try:
                return await asyncio.wait_for(fn(), self.timeout_s)
            except TimeoutError:
                raise GatewayTimeout(
                    f"the payment gateway did not answer within {self.timeout_s:g}s") from None
            except (OSError, ConnectionError) as exc:
                raise GatewayUnavailable(f"the payment gateway is unreachable: {exc}") from None

        # A timeout can be the caller's own doing (a card that makes the gateway hang);
        # a refused connection or a 5xx is the gateway's.
        return await self.breaker.call(
            timed, failures=(GatewayUnavailable,),
            blame=lambda exc: source if isinstance(exc, GatewayTimeout) else None)


def _check_card(card: CardDetails) -> None:
    if not card.number.isdigit() or card.number not in TEST_CARDS:
        raise CardInvalid("card_invalid", "the card number is not valid "
                          "(sandbox: use 4242424242424242 or 4000000000000002)")
    if not 1 <= card.exp_month <= 12:
        raise CardInvalid("card_invalid", "the expiry month must be 1-12")
    now = time.gmtime()
    if (card.exp_year, card.exp_month) < (now.tm_year, now.tm_mon):
        raise CardInvalid("card_expired", "the card has expired")
    if not (card.cvc.isdigit() and len(card.cvc) in (3, 4)):
        raise CardInvalid("card_invalid", "the CVC must be 3 or 4 digits")
