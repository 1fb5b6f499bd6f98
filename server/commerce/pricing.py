"""Pricing: rules in, itemised quote out. Pure: no I/O, no clock (the caller passes `now`).

A quote has one line per seat and every amount is an integer in minor units (paise, cents):

    base      the show's price for the seat's category
    discount  automatic offer + promo code, never more than `base`
    fee       platform convenience fee: `fee_fixed` per ticket + `fee_bp` of (base - discount)
    tax       `tax_bp` of (base - discount + fee)
    total     base - discount + fee + tax

`*_bp` are basis points (1800 = 18 %). Every percentage is computed per line and rounded
**half up** to a whole minor unit (`percent_of`); the quote's totals are the sums of its
lines, so a quote always adds up, line by line and in total.

How offers combine (the rule, tested in tests/unit/test_pricing.py):

1. **Automatic offers do not stack.** Every offer that applies to the show (active, valid at
   `now`, in scope) proposes a discount per seat; each seat gets the **single largest** one
   (a tie goes to the offer with the smaller `offer_id`). A seat gets at most one offer.
2. **A promo code stacks after the automatic offer**: it applies to what is left of the
   seat's base after the automatic discount (a percentage of the remainder, or a fixed
   amount capped at the remainder). So discount = automatic + promo <= base, always.
3. Fee and tax come after all discounts; a free (100 %-off) ticket still pays the
   per-ticket fee and its tax.

Rules:

- `NthTicket(n, percent_off)`: "50 % off the third ticket". Of the hold's seats that are in
  the offer's scope, every n-th ticket is discounted: with k = count // n, the k cheapest
  in-scope seats (ties: earlier in the hold first) get `percent_off`. Which seats are
  discounted therefore does not depend on the order the customer picked them in.
- `TimeWindow(start, end, percent_off)`: "20 % off afternoon shows (12:00–17:00)": every
  in-scope seat when the show starts at theatre-local time `start <= t < end` (a window with
  start > end wraps past midnight).

Scope (`Scope`, every list empty = any): cities, theatres, movies, seat categories, the
show's theatre-local date range (`dates_from`..`dates_to`, inclusive) and weekdays. Offers and
promo codes made by a partner (`partner_id` set) apply only to that partner's shows; the
platform's own (`partner_id` None) apply to every show in scope. `valid_from`/`valid_until`
bound *when* the offer can be quoted (UTC, `valid_from <= now < valid_until`).

A quote is made once, when the seats are held, stored on the hold and charged unchanged at
checkout: re-pricing a show or ending an offer does not touch a hold already quoted.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from server.core.clock import as_utc

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Percent = Annotated[int, msgspec.Meta(ge=1, le=100)]
ClockTime = Annotated[str, msgspec.Meta(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]
BasisPoints = Annotated[int, msgspec.Meta(ge=0, le=100_000)]
MinorUnits = Annotated[int, msgspec.Meta(ge=0)]


def percent_of(amount: int, bp: int) -> int:
    """`amount * bp / 10_000` rounded half up (amount, bp >= 0): 1.5 -> 2, 2.5 -> 3."""
    return (amount * bp + 5_000) // 10_000


# --- rules -----------------------------------------------------------------------------

class Scope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where an offer applies; an empty list means "any"."""

    cities: list[str] = []
    theatre_ids: list[str] = []
    movie_ids: list[str] = []
    categories: list[str] = []   # seat categories ("gold", ...)
    dates_from: date | None = None  # the show's theatre-local date, inclusive
    dates_to: date | None = None
    weekdays: list[Weekday] = []    # the show's theatre-local weekday


class NthTicket(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="nth_ticket"):
    """`percent_off` the n-th, 2n-th, ... ticket (the cheapest in-scope seats)."""

    n: Annotated[int, msgspec.Meta(ge=2, le=100)]
    percent_off: Percent


class TimeWindow(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="time_window"):
    """`percent_off` every ticket of shows starting at local `start <= t < end`."""

    start: ClockTime
    end: ClockTime
    percent_off: Percent


Rule = NthTicket | TimeWindow


class Offer(msgspec.Struct, frozen=True):
    """An automatic offer: applied to every quote it is in scope for."""

    offer_id: str
    name: str
    rule: Rule
    scope: Scope = Scope()
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    partner_id: str | None = None  # None: the platform's own offer
    active: bool = True


class PromoCode(msgspec.Struct, frozen=True):
    """A code the customer types: exactly one of `percent_off` / `amount_off` (per ticket)."""

    code: str
    name: str
    percent_off: int | None = None
    amount_off: int | None = None   # minor units per ticket, in the show's currency
    scope: Scope = Scope()
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    max_uses: int | None = None              # bookings in total (None: unlimited)
    max_uses_per_customer: int | None = None  # bookings per customer / e-mail
    partner_id: str | None = None
    active: bool = True


class PricingConfig(msgspec.Struct, frozen=True):
    """Platform fee and tax (from Settings: BMM_FEE_FIXED, BMM_FEE_BP, BMM_TAX_BP)."""

    fee_fixed: MinorUnits = 0   # per ticket
    fee_bp: BasisPoints = 0     # of the ticket's price after discounts
    tax_bp: BasisPoints = 0     # of price after discounts + fee


# --- the show and its seats as pricing sees them ---------------------------------------

class ShowFacts(msgspec.Struct, frozen=True):
    show_id: str
    movie_id: str
    theatre_id: str
    city: str
    partner_id: str
    starts_at: datetime   # aware (UTC)
    timezone: str = "UTC"  # the theatre's IANA zone

    def local_start(self) -> datetime:
        starts = as_utc(self.starts_at)
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("UTC")
        return starts.astimezone(zone)


class SeatPrice(msgspec.Struct, frozen=True):
    seat: str
    category: str
    base: int  # minor units


# --- the quote -------------------------------------------------------------------------

class Applied(msgspec.Struct, frozen=True):
    """A discount on one line: which offer or promo code, and how much."""

    kind: Literal["offer", "promo"]
    id: str
    name: str
    amount: int


class QuoteLine(msgspec.Struct, frozen=True):
    seat: str
    category: str
    base: int
    discount: int
    fee: int
    tax: int
    total: int  # base - discount + fee + tax
    applied: list[Applied] = []


class Quote(msgspec.Struct, frozen=True):
    """What the held seats cost, per seat and in total (sums of the lines), one currency."""

    currency: str
    lines: list[QuoteLine]
    base: int
    discount: int
    fee: int
    tax: int
    total: int
    promo_code: str | None = None  # the promo code applied (reserved for this hold)


def _valid(valid_from: datetime | None, valid_until: datetime | None, now: datetime) -> bool:
    return (valid_from is None or valid_from <= now) and (valid_until is None or now < valid_until)


def show_in_scope(scope: Scope, show: ShowFacts) -> bool:
    """The show-level part of a scope (everything but seat categories)."""
    local = show.local_start()
    day = local.date()
    return ((not scope.cities or show.city.casefold() in {c.casefold() for c in scope.cities})
            and (not scope.theatre_ids or show.theatre_id in scope.theatre_ids)
            and (not scope.movie_ids or show.movie_id in scope.movie_ids)
            and (scope.dates_from is None or scope.dates_from <= day)
            and (scope.dates_to is None or day <= scope.dates_to)
            and (not scope.weekdays or WEEKDAYS[day.weekday()] in scope.weekdays))


def _owner_ok(partner_id: str | None, show: ShowFacts) -> bool:
    return partner_id is None or partner_id == show.partner_id


def offer_applies(offer: Offer, show: ShowFacts, now: datetime) -> bool:
    return (offer.active and _owner_ok(offer.partner_id, show)
            and _valid(offer.valid_from, offer.valid_until, now)
            and show_in_scope(offer.scope, show))


def promo_problem(promo: PromoCode, show: ShowFacts, seats: Iterable[SeatPrice] | None,
                  now: datetime) -> str | None:
    """Why `promo` cannot be used for these seats of this show (None: it can); `seats`
    None: for the show, whatever seats (checked before seats are held)."""
    if not promo.active:
        return "this promo code is no longer available"
    if not _valid(promo.valid_from, promo.valid_until, now):
        return "this promo code is not valid now"
    if not _owner_ok(promo.partner_id, show) or not show_in_scope(promo.scope, show):
        return "this promo code does not apply to this show"
    if (seats is not None and promo.scope.categories
            and not any(s.category in promo.scope.categories for s in seats)):
        return "this promo code does not apply to these seats"
    return None


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def in_window(start: str, end: str, at: time) -> bool:
    t, a, b = at.hour * 60 + at.minute, _minutes(start), _minutes(end)
    return a <= t < b if a <= b else (t >= a or t < b)


def rule_discounts(rule: Rule, show: ShowFacts, seats: Sequence[SeatPrice]) -> list[int]:
    """The discount `rule` gives each seat (0 where it gives none); seats already in scope."""
    if isinstance(rule, TimeWindow):
        if not in_window(rule.start, rule.end, show.local_start().time()):
            return [0] * len(seats)
        return [percent_of(s.base, rule.percent_off * 100) for s in seats]
    # NthTicket: the k cheapest seats, k = count // n (ties: earlier seat first)
    k = len(seats) // rule.n
    cheapest = sorted(range(len(seats)), key=lambda i: (seats[i].base, i))[:k]
    out = [0] * len(seats)
    for i in cheapest:
        out[i] = percent_of(seats[i].base, rule.percent_off * 100)
    return out


def _best_offers(offers: Iterable[Offer], show: ShowFacts, seats: Sequence[SeatPrice],
                 now: datetime) -> list[tuple[int, Offer | None]]:
    best: list[tuple[int, Offer | None]] = [(0, None)] * len(seats)
    for offer in sorted((o for o in offers if offer_applies(o, show, now)),
                        key=lambda o: o.offer_id):
        cats = offer.scope.categories
        idx = [i for i, s in enumerate(seats) if not cats or s.category in cats]
        amounts = rule_discounts(offer.rule, show, [seats[i] for i in idx])
        for i, amount in zip(idx, amounts, strict=True):
            amount = min(amount, seats[i].base)
            if amount > best[i][0]:  # strictly larger: a tie keeps the smaller offer_id
                best[i] = (amount, offer)
    return best


def _promo_discount(promo: PromoCode, remaining: int) -> int:
    if promo.percent_off is not None:
        return min(remaining, percent_of(remaining, promo.percent_off * 100))
    return min(remaining, promo.amount_off or 0)


def make_quote(show: ShowFacts, seats: Sequence[SeatPrice], currency: str, *,
               offers: Iterable[Offer] = (), promo: PromoCode | None = None,
               config: PricingConfig = PricingConfig(), now: datetime) -> Quote:
    """Price `seats` (in hold order) for `show`: the itemised quote. `promo` is applied
    as given (check `promo_problem` first); a promo not valid for a seat skips that seat."""
    best = _best_offers(offers, show, seats, now)
    promo_ok = promo is not None and promo_problem(promo, show, seats, now) is None
    lines: list[QuoteLine] = []
    for seat, (auto, offer) in zip(seats, best, strict=True):
        applied: list[Applied] = []
        if offer is not None and auto > 0:
            applied.append(Applied("offer", offer.offer_id, offer.name, auto))
        promo_amount = 0
        if promo_ok and (not promo.scope.categories or seat.category in promo.scope.categories):
            promo_amount = _promo_discount(promo, seat.base - auto)
            if promo_amount > 0:
                applied.append(Applied("promo", promo.code, promo.name, promo_amount))
        discount = auto + promo_amount
        net = seat.base - discount
        fee = config.fee_fixed + percent_of(net, config.fee_bp)
        tax = percent_of(net + fee, config.tax_bp)
        lines.append(QuoteLine(seat.seat, seat.category, seat.base, discount, fee, tax,
                               net + fee + tax, applied))
    return Quote(
        currency=currency, lines=lines,
        base=sum(x.base for x in lines), discount=sum(x.discount for x in lines),
        fee=sum(x.fee for x in lines), tax=sum(x.tax for x in lines),
        total=sum(x.total for x in lines),
        promo_code=promo.code if promo_ok else None,
    )


def list_price_quote(currency: str, seats: Sequence[SeatPrice]) -> Quote:
    """A quote at the seats' list prices: no offers, no fee, no tax (e.g. an invoiced
    partner or corporate bulk booking)."""
    lines = [QuoteLine(s.seat, s.category, s.base, 0, 0, 0, s.base) for s in seats]
    total = sum(s.base for s in seats)
    return Quote(currency, lines, total, 0, 0, 0, total)
