"""In-process ports for the booking use cases (server/booking/ports.py): the real seat map
(actors/seatmap.py, the show actor's pure core) behind `Shows`, dictionaries behind the
stores, the sandbox payment gateway and its guard, and a clock the test moves. No Redis,
Ray or HTTP: these tests are about the use cases' decisions."""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import msgspec

from actors import commands as c
from actors.layout import Layout, Rules, ShowConfig, grid_layout
from actors.seatmap import SeatMap, SeatPlan

from server.booking.ports import Booking, Holder
from server.booking.intents import Busy, PaymentIntent
from server.booking.records import BookingRecord, BulkRecord, HoldRecord
from server.catalog.model import Money, Show
from server.catalog.show_cache import CachedShow
from server.commerce.payments import CardDetails, GatewayGuard, SandboxGateway
from server.commerce.pricing import Offer, PricingConfig, PromoCode
from server.commerce.quoting import quote_hold
from server.core.refusals import Refused
from server.core.settings import Settings

T0 = 1_900_000_000_000  # 2030-03-17, ms
CARD = CardDetails("4242424242424242", 12, 2099, "123")
DECLINED = CardDetails("4000000000000002", 12, 2099, "123")


@dataclass
class ManualClock:
    now: int = T0

    def now_ms(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class SeatMaps:
    """`Shows`: one `SeatMap` per show, swept for expired holds before each command (what
    the actor's timer does)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.maps: dict[str, SeatMap] = {}
        self.commands: list[c.Command] = []

    async def submit(self, show_id: str, cmd: c.Command) -> c.Result:
        seat_map = self.maps[show_id]
        seat_map.apply(c.Expire(f"sweep-{uuid.uuid4().hex}"), self.clock.now_ms())
        self.commands.append(cmd)
        return seat_map.apply(cmd, self.clock.now_ms()).result

    def status(self, show_id: str, seats: list[str]) -> dict[str, str]:
        return {s: self.maps[show_id].status[s] for s in seats}

    def counts(self, show_id: str) -> dict[str, int]:
        return self.maps[show_id].counts()


class Catalog:
    def __init__(self) -> None:
        self.shows: dict[str, CachedShow] = {}

    async def get(self, show_id: str) -> CachedShow:
        return self.shows.get(show_id, CachedShow(None, None, {}, math.inf))


class Promos:
    """The promo rules of commerce/offers.py's Lua, over dictionaries: a hold reserves a
    use, a checkout consumes it, a failure gives it back."""

    def __init__(self) -> None:
        self.codes: dict[str, PromoCode] = {}
        self.offers: list[Offer] = []
        self.reserved: dict[str, dict[str, tuple[str, int]]] = {}  # code -> hold -> who, until
        self.used: dict[str, dict[str, str]] = {}                  # code -> hold -> who

    async def pricing_inputs(self, theatre_id: str, partner_id: str
                             ) -> tuple[str, list[Offer]]:
        return "UTC", self.offers

    async def get(self, code: str) -> PromoCode | None:
        return self.codes.get(code)

    def _taken(self, code: str, now_ms: int, who: str | None = None,
               but: str | None = None) -> int:
        live = [w for h, (w, until) in self.reserved.get(code, {}).items()
                if until > now_ms and h != but]
        used = [w for h, w in self.used.get(code, {}).items() if h != but]
        return sum(1 for w in live + used if who is None or w == who)

    def _verdict(self, promo: PromoCode, hold_id: str, who: str, now_ms: int) -> str:
        if promo.max_uses is not None and self._taken(promo.code, now_ms, but=hold_id) \
                >= promo.max_uses:
            return "exhausted"
        if promo.max_uses_per_customer is not None and \
                self._taken(promo.code, now_ms, who, but=hold_id) >= promo.max_uses_per_customer:
            return "customer_limit"
        return "ok"

    async def reserve(self, promo: PromoCode, hold_id: str, who: str, now_ms: int,
                      until_ms: int) -> str:
        verdict = self._verdict(promo, hold_id, who, now_ms)
        if verdict == "ok":
            self.reserved.setdefault(promo.code, {})[hold_id] = (who, until_ms)
        return verdict

    async def extend(self, code: str, hold_id: str, until_ms: int) -> None:
        who, _ = self.reserved[code][hold_id]
        self.reserved[code][hold_id] = (who, until_ms)

    async def release(self, code: str, hold_id: str, now_ms: int) -> None:
        self.reserved.get(code, {}).pop(hold_id, None)

    async def consume(self, promo: PromoCode, hold_id: str, who: str, now_ms: int) -> str:
        if hold_id in self.used.get(promo.code, {}):
            return "repeat"
        mine = self.reserved.get(promo.code, {}).get(hold_id)
        if mine is not None and mine[0] != who:
            return "wrong_customer"
        verdict = self._verdict(promo, hold_id, who, now_ms)
        if verdict == "ok":
            self.reserved.get(promo.code, {}).pop(hold_id, None)
            self.used.setdefault(promo.code, {})[hold_id] = who
        return verdict

    async def unconsume(self, code: str, hold_id: str, who: str, until_ms: int | None
                        ) -> None:
        self.used.get(code, {}).pop(hold_id, None)
        if until_ms is not None:
            self.reserved.setdefault(code, {})[hold_id] = (who, until_ms)


class Checkouts:
    """The intents in a dict, with the same claim rules as booking/intents.py: one key
    one intent, one open intent per hold, a lease per intent."""

    def __init__(self) -> None:
        self.intents: dict[str, PaymentIntent] = {}
        self.hold_locks: dict[str, str] = {}
        self.leases: set[str] = set()
        self.bookings: dict[str, BookingRecord] = {}
        self.events: list[tuple[str, str]] = []
        self.replica_behind = False  # a replica has not caught up with the primary

    async def claim(self, intent: PaymentIntent) -> PaymentIntent | None:
        if intent.key in self.intents:
            return self.intents[intent.key]
        other = self.hold_locks.get(intent.hold_id)
        if other is not None and other != intent.key and self.intents[other].open:
            raise Busy(other)
        self.intents[intent.key] = intent
        self.hold_locks[intent.hold_id] = intent.key
        self.leases.add(intent.key)
        return None

    async def load(self, key: str) -> PaymentIntent | None:
        found = self.intents.get(key)
        return None if found is None else msgspec.structs.replace(found)

    async def save(self, intent: PaymentIntent) -> None:
        self.intents[intent.key] = msgspec.structs.replace(intent)
        if not intent.open and self.hold_locks.get(intent.hold_id) == intent.key:
            del self.hold_locks[intent.hold_id]

    async def forget(self, intent: PaymentIntent) -> None:
        self.intents.pop(intent.key, None)
        self.leases.discard(intent.key)
        if self.hold_locks.get(intent.hold_id) == intent.key:
            del self.hold_locks[intent.hold_id]

    async def take_lease(self, key: str, owner: str) -> bool:
        if key in self.leases:
            return False
        self.leases.add(key)
        return True

    async def drop_lease(self, key: str) -> None:
        self.leases.discard(key)

    async def load_booking(self, booking_id: str) -> BookingRecord | None:
        return self.bookings.get(booking_id)

    async def booked(self, booking: BookingRecord) -> None:
        self.bookings[booking.booking_id] = booking
        self.events.append(("booking.confirmed", booking.booking_id))

    async def after_booking(self, booking: BookingRecord) -> None:
        self.events.append(("after_booking", booking.booking_id))

    async def pending(self, intent: PaymentIntent) -> None:
        intent.state, intent.status = "pending", 202
        intent.body = msgspec.Raw(b'{"state": "pending"}')
        await self.save(intent)

    async def gateway_down(self, hold: HoldRecord, exc: Exception) -> Refused:
        return Refused("payment_unavailable", str(exc), status=503)

    async def replicated(self, key: str) -> bool:
        return not self.replica_behind


class Bulks:
    def __init__(self) -> None:
        self.saved: list[BulkRecord] = []
        self.announced: list[str] = []

    async def save(self, bookings: list[BookingRecord], bulk: BulkRecord) -> None:
        self.saved.append(bulk)

    async def announce(self, show: Show, bulk: BulkRecord, bookings: list[BookingRecord]
                       ) -> None:
        self.announced.append(bulk.bulk_id)


@dataclass
class Visitor:
    """`Customer`: a guest (or a logged-in customer), admitted unless told otherwise."""

    user: str | None = None
    cap: int = 0
    admitted: bool = True

    device: str = ""
    network: str = ""

    async def holder(self, show_id: str) -> Holder:
        if not self.admitted:
            raise Refused("queue_required", "join the queue for this show first")
        return Holder(f"user:{self.user}" if self.user else "", self.cap, self.device,
                      self.network)

    async def user_id(self) -> str | None:
        return self.user

    async def customer_id(self) -> str | None:
        return self.user


@dataclass
class World:
    """A `ports.Booking` over the fakes, plus handles on each fake."""

    clock: ManualClock = field(default_factory=ManualClock)
    catalog: Catalog = field(default_factory=Catalog)
    promos: Promos = field(default_factory=Promos)
    checkouts: Checkouts = field(default_factory=Checkouts)
    bulks: Bulks = field(default_factory=Bulks)
    gateway: SandboxGateway = field(default_factory=SandboxGateway)
    shows: SeatMaps = field(init=False)
    booking: Booking = field(init=False)

    def __post_init__(self) -> None:
        self.shows = SeatMaps(self.clock)
        self.booking = Booking(
            shows=self.shows, catalog=self.catalog, promos=self.promos,
            checkouts=self.checkouts, bulks=self.bulks, payments=self.gateway,
            payment_guard=GatewayGuard(timeout_s=5), fees=PricingConfig(fee_fixed=30),
            settings=Settings(), clock=self.clock)

    def add_show(self, layout: Layout | None = None, rules: Rules | None = None,
                 prices: dict[str, int] | None = None, starts_in_s: int = 86_400,
                 status: str = "scheduled") -> Show:
        show_id = f"s-{uuid.uuid4().hex[:10]}"
        config = ShowConfig(show_id, layout or grid_layout(5, 10), rules or Rules())
        starts = datetime.fromtimestamp(self.clock.now / 1000, timezone.utc) \
            + timedelta(seconds=starts_in_s)
        show = Show(show_id, "m1", "sc1", starts, "en", "2D",
                    {k: Money(v, "INR") for k, v in (prices or {"standard": 250}).items()},
                    partner_id="p1", theatre_id="t1", city="pune", status=status)  # type: ignore[arg-type]
        self.shows.maps[show_id] = SeatMap(config, SeatPlan(config.layout, quote_hold))
        self.catalog.shows[show_id] = CachedShow(
            show, config, {s.id: s.category for s in config.layout.seats}, math.inf)
        return show
