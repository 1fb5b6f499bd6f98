"""What the booking use cases (`holding.py`, `checkout.py`) need from the world, as
Protocols. The app's composition root hands in the Redis + Ray adapters
(`booking/adapters.py`); the unit tests hand in an in-process seat map and in-memory
stores (tests/service). Nothing here does I/O."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from actors import commands as c

if TYPE_CHECKING:
    from server.booking.intents import PaymentIntent
    from server.booking.records import BookingRecord, BulkRecord, HoldRecord
    from server.catalog.model import Show
    from server.catalog.show_cache import CachedShow
    from server.commerce.payments import GatewayGuard, PaymentGateway
    from server.commerce.pricing import Offer, PricingConfig, PromoCode
    from server.core.refusals import Refused
    from server.core.settings import Settings


class Shows(Protocol):
    """The show actors: one command in, its result out (serialised per show)."""

    async def submit(self, show_id: str, cmd: c.Command) -> c.Result: ...


class ShowSource(Protocol):
    """The show record and seat layout as the hold path reads them (a cache)."""

    async def get(self, show_id: str) -> CachedShow: ...


class Promos(Protocol):
    """Offers and promo codes, and a promo code's uses: reserved with a hold, consumed at
    checkout, given back when either fails (commerce/offers.py has the rules)."""

    async def pricing_inputs(self, theatre_id: str, partner_id: str
                             ) -> tuple[str, list[Offer]]:
        """The theatre's time zone and the offers that may apply to its shows."""

    async def get(self, code: str) -> PromoCode | None: ...

    async def reserve(self, promo: PromoCode, hold_id: str, who: str, now_ms: int,
                      until_ms: int) -> str: ...

    async def extend(self, code: str, hold_id: str, until_ms: int) -> None: ...

    async def release(self, code: str, hold_id: str, now_ms: int) -> None: ...

    async def consume(self, promo: PromoCode, hold_id: str, who: str, now_ms: int) -> str: ...

    async def unconsume(self, code: str, hold_id: str, who: str, until_ms: int | None
                        ) -> None: ...


class Checkouts(Protocol):
    """Checkout's records: the payment intents (booking/intents.py), the booking and its
    events, and the slower paths the booking lifecycle owns (pending payments, a gateway
    outage)."""

    async def claim(self, intent: PaymentIntent) -> PaymentIntent | None:
        """Write a new intent (None), or return the one that has its key already; raises
        `intents.Busy` while another key checks the same hold out."""

    async def load(self, key: str) -> PaymentIntent | None: ...

    async def save(self, intent: PaymentIntent) -> None: ...

    async def forget(self, intent: PaymentIntent) -> None:
        """Nothing happened under this key: drop the intent, free the key and the hold."""

    async def take_lease(self, key: str, owner: str) -> bool: ...

    async def drop_lease(self, key: str) -> None: ...

    async def load_booking(self, booking_id: str) -> BookingRecord | None: ...

    async def booked(self, booking: BookingRecord) -> None:
        """Save the booking, link it to its customer, publish `booking.confirmed`: each
        idempotent (the event id is the booking's)."""

    async def after_booking(self, booking: BookingRecord) -> None:
        """Sold out now? Show cancelled meanwhile (then the booking is refunded)?"""

    async def pending(self, intent: PaymentIntent) -> None:
        """An asynchronous payment: lock the hold for it, record the pending booking, and
        move the intent to `pending` (its webhook settles it)."""

    async def gateway_down(self, hold: HoldRecord, exc: Exception) -> Refused: ...

    async def replicated(self, key: str) -> bool:
        """Whether the intent's writes so far would survive the loss of its store's
        primary (with asynchronous replicas: whether a replica has them)."""


class Bulks(Protocol):
    """A partner's bulk bookings."""

    async def save(self, bookings: list[BookingRecord], bulk: BulkRecord) -> None:
        """The bookings and their bulk record, all or none."""

    async def announce(self, show: Show, bulk: BulkRecord, bookings: list[BookingRecord]
                       ) -> None:
        """`booking.confirmed` for each booking, then `show.sold_out` if it is."""


@dataclass(frozen=True)
class Holder:
    """Who would hold seats: the customer (an account or a queued visitor; "" anonymous)
    with the platform's cap on them (0 = none), their device and their network (opaque
    keys, server/onsale/identity.py)."""

    customer: str
    customer_cap: int
    device: str = ""
    network: str = ""


class Customer(Protocol):
    """Who is asking, read from the request only when a use case needs it (most holds
    never need the account, which costs a Redis read)."""

    async def holder(self, show_id: str) -> Holder:
        """Who holds on this show; refuses without admission to a show in its waiting
        room."""

    async def user_id(self) -> str | None:
        """The logged-in user, if any (promo codes count their uses per customer)."""

    async def customer_id(self) -> str | None:
        """The logged-in *customer* ("my bookings"), None for guests and partners."""


class Clock(Protocol):
    def now_ms(self) -> int: ...


@dataclass
class Booking:
    """The ports of the booking flows, built once per process by the composition root."""

    shows: Shows
    catalog: ShowSource
    promos: Promos
    checkouts: Checkouts
    bulks: Bulks
    payments: PaymentGateway
    payment_guard: GatewayGuard
    fees: PricingConfig
    settings: Settings
    clock: Clock
