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
    any other number     is invalid (422)
"""
from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

import msgspec

SUCCEEDS = "4242424242424242"
DECLINES = "4000000000000002"


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


class Authorisation(msgspec.Struct, frozen=True):
    ref: str          # the gateway's reference for this payment
    card_token: str   # opaque token for the card (what we store instead of the number)
    last4: str
    brand: str
    amount: int       # minor units
    currency: str


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

    async def refund(self, ref: str) -> None:
        """Void an uncaptured authorisation or refund a captured payment (idempotent)."""
        ...


LedgerKind = Literal["authorise", "decline", "capture", "void", "refund"]


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
    _by_key: dict[str, Authorisation | CardDeclined] = field(default_factory=dict)
    _state: dict[str, str] = field(default_factory=dict)   # ref -> authorised/captured/...
    _auths: dict[str, Authorisation] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def authorise(
        self, *, amount: int, currency: str, card: CardDetails, idempotency_key: str
    ) -> Authorisation:
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
            auth = Authorisation(ref, f"tok_{secrets.token_hex(8)}", last4, "visa", amount, currency)
            self._by_key[idempotency_key] = auth
            self._auths[ref] = auth
            self._state[ref] = "authorised"
            self._record("authorise", ref, amount, currency, last4, idempotency_key)
            return auth

    async def capture(self, ref: str) -> None:
        async with self._lock:
            state = self._state.get(ref)
            if state == "captured":
                return
            if state != "authorised":
                raise PaymentError("capture_failed", f"payment {ref} cannot be captured ({state})")
            self._state[ref] = "captured"
            self._record_auth("capture", ref)

    async def refund(self, ref: str) -> None:
        async with self._lock:
            state = self._state.get(ref)
            if state == "authorised":
                self._state[ref] = "voided"
                self._record_auth("void", ref)
            elif state == "captured":
                self._state[ref] = "refunded"
                self._record_auth("refund", ref)
            elif state is None:
                raise PaymentError("refund_failed", f"no payment {ref}")

    # --- ledger queries (tests, admin) -------------------------------------------------

    def entries(self, ref: str | None = None, kind: LedgerKind | None = None) -> list[LedgerEntry]:
        return [e for e in self.ledger
                if (ref is None or e.ref == ref) and (kind is None or e.kind == kind)]

    def state(self, ref: str) -> str | None:
        return self._state.get(ref)

    def _record_auth(self, kind: LedgerKind, ref: str) -> None:
        a = self._auths[ref]
        key = next(k for k, v in self._by_key.items() if v is a)
        self._record(kind, ref, a.amount, a.currency, a.last4, key)

    def _record(self, kind: LedgerKind, ref: str, amount: int, currency: str, last4: str,
                key: str) -> None:
        self.ledger.append(LedgerEntry(kind, ref, amount, currency, last4, key,
                                       datetime.now(UTC)))


def _check_card(card: CardDetails) -> None:
    if not card.number.isdigit() or card.number not in (SUCCEEDS, DECLINES):
        raise CardInvalid("card_invalid", "the card number is not valid "
                          "(sandbox: use 4242424242424242 or 4000000000000002)")
    if not 1 <= card.exp_month <= 12:
        raise CardInvalid("card_invalid", "the expiry month must be 1-12")
    now = time.gmtime()
    if (card.exp_year, card.exp_month) < (now.tm_year, now.tm_mon):
        raise CardInvalid("card_expired", "the card has expired")
    if not (card.cvc.isdigit() and len(card.cvc) in (3, 4)):
        raise CardInvalid("card_invalid", "the CVC must be 3 or 4 digits")
