"""The hold use cases: place, extend and release a hold; the partner's house seats (block,
unblock). Plain inputs in, records out, `Refused` for every no (its code decides the HTTP
status, `core.refusals`). No aiohttp: the handlers (booking/api.py, partner/feed_api.py)
gather the request's facts and encode the answers; the ports come from the composition
root (`ports.Booking`)."""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import msgspec

from actors import commands as c
from actors.layout import ShowConfig

from server.booking.ports import Booking, Customer
from server.booking.records import HoldRecord, Quote, token_hash
from server.catalog.model import Show
from server.commerce.pricing import (
    Offer, PricingConfig, PromoCode, SeatPrice, ShowFacts, make_quote, promo_problem,
)
from server.core.clock import cmd_id, from_ms, new_id
from server.core.refusals import Refused


def refusal(result: c.Rejected) -> Refused:
    """A show actor's rejection as the use cases' refusal (naming the seats, if any)."""
    details = {"seats": result.seats} if result.seats else {}
    return Refused(result.code, result.message, **details)


# --- placing a hold -----------------------------------------------------------------------

@dataclass(frozen=True)
class BestSeats:
    count: int
    category: str | None = None
    accessible: bool = False


@dataclass(frozen=True)
class HoldAsk:
    """What the customer asked for: exactly one of `seats` and `best`."""

    show_id: str
    seats: list[str] | None = None
    best: BestSeats | None = None
    promo_code: str | None = None
    email: str | None = None  # a guest's, for a promo code's per-customer limit


class Pricing(msgspec.Struct):
    facts: ShowFacts
    offers: list[Offer]
    promo: PromoCode | None
    who: str | None  # the customer a promo code's use counts against
    config: PricingConfig


def promo_customer(user_id: str | None, email: str | None) -> str | None:
    """Whom a promo code's per-customer limit counts: the logged-in user, or a guest's
    e-mail address (lower-cased)."""
    if user_id:
        return f"user:{user_id}"
    return f"email:{email.strip().lower()}" if email else None


async def place_hold(booking: Booking, ask: HoldAsk, who: Customer) -> tuple[HoldRecord, str]:
    """Hold the seats asked for (or the best free ones), priced: the hold record and its
    holder token (given out once)."""
    if (ask.seats is None) == (ask.best is None):
        raise Refused("invalid", 'give exactly one of "seats" or "best"')
    show_id = ask.show_id
    cached = await booking.catalog.get(show_id)
    show, config, known = cached.show, cached.config, cached.category
    if show is None:
        raise Refused("not_found", f"no show {show_id!r}")
    if show.status == "cancelled":
        raise Refused("not_found", f"show {show_id!r} was cancelled")
    if show.starts_at_utc <= from_ms(booking.clock.now_ms()):
        raise Refused("show_started", "this show has started; seats can no longer be held")
    if config is None:
        raise Refused("not_found", f"show {show_id!r} has no seat layout")
    seats: list[str] = []
    if ask.seats is not None:
        seats = list(dict.fromkeys(ask.seats))
        unknown = [s for s in seats if s not in known]
        if unknown:
            raise Refused("unknown_seats", "no such seats in this show", seats=unknown)
        unpriced = [s for s in seats if known[s] not in show.prices]
        if unpriced:
            raise Refused("not_for_sale", "these seats are not on sale", seats=unpriced)
    elif ask.best is not None and ask.best.category is not None \
            and ask.best.category not in show.prices:
        raise Refused("invalid", f"no seat category {ask.best.category!r} on sale")

    # A show in its waiting room refuses here without this visitor's admission; the
    # customer and their seat cap go to the actor, which enforces the cap in order.
    customer, cap = await who.admission(show_id)
    pricing = await price_inputs(booking, show, ask.promo_code, ask.email, who)
    hold_id, token = new_id(show_id), secrets.token_urlsafe(24)
    digest = token_hash(token)
    cmd: c.Command
    if ask.best is None:
        cmd = c.Hold(cmd_id(), hold_id, digest, seats, customer=customer, customer_max_seats=cap)
    else:
        cmd = c.HoldBest(cmd_id(), hold_id, digest, ask.best.count, ask.best.category,
                         ask.best.accessible, customer=customer, customer_max_seats=cap)
    result = await booking.shows.submit(show_id, cmd)
    if isinstance(result, c.Rejected):
        raise refusal(result)
    assert isinstance(result, c.Held)

    quote = quote_seats(booking, show, config, result.seats, pricing)
    if quote is None:  # best-available picked a category without a price
        await booking.shows.submit(show_id, c.Release(cmd_id(), hold_id, digest))
        raise Refused("not_for_sale", "some of the free seats are not on sale; pick seats",
                      status=409)
    if pricing.promo is not None:
        await _reserve_promo(booking, pricing, quote, result, show_id, hold_id, digest)
    now = booking.clock.now_ms()
    record = HoldRecord(hold_id, show_id, digest, result.seats, quote, now, result.expires_at_ms,
                        now + config.rules.hold_max_lifetime_ms)
    try:
        await booking.holds.save(record)
    except Exception:
        await booking.shows.submit(show_id, c.Release(cmd_id(), hold_id, digest))
        if quote.promo_code:
            await booking.promos.release(quote.promo_code, hold_id, booking.clock.now_ms())
        raise Refused("unavailable", "the hold could not be saved; try again") from None
    return record, token


async def price_inputs(booking: Booking, show: Show, code: str | None, email: str | None,
                       who: Customer) -> Pricing:
    """Everything the quote needs (one Redis round trip); a bad promo code is refused
    before any seat is held."""
    timezone, offers, promo, found = await booking.promos.pricing_inputs(
        show.theatre_id, show.partner_id, code)
    facts = ShowFacts(show.show_id, show.movie_id, show.theatre_id, show.city, show.partner_id,
                      show.starts_at_utc, timezone)
    customer = None
    if code is not None:
        if not found:
            raise Refused("promo_unknown", f"no promo code {code!r}")
        problem = promo_problem(promo, facts, None, from_ms(booking.clock.now_ms()))
        if problem:
            raise Refused("promo_not_applicable", problem)
        customer = promo_customer(await who.user_id(), email)
        if customer is None:
            raise Refused("email_required",
                          "give the e-mail address you will check out with to use a promo code")
    return Pricing(facts, offers, promo, customer, booking.fees)


def quote_seats(booking: Booking, show: Show, config: ShowConfig, seats: list[str],
                pricing: Pricing) -> Quote | None:
    """The itemised quote for the held seats; None if a seat's category has no price."""
    wanted = set(seats)
    category = {s.id: s.category for s in config.layout.seats if s.id in wanted}
    priced: list[SeatPrice] = []
    currency = None
    for seat in seats:
        price = show.prices.get(category[seat])
        if price is None or currency not in (None, price.currency):
            return None
        currency = price.currency
        priced.append(SeatPrice(seat, category[seat], price.amount))
    return make_quote(pricing.facts, priced, currency or "", offers=pricing.offers,
                      promo=pricing.promo, config=pricing.config,
                      now=from_ms(booking.clock.now_ms()))


async def _reserve_promo(booking: Booking, pricing: Pricing, quote: Quote, held: c.Held,
                         show_id: str, hold_id: str, digest: str) -> None:
    """Reserve one use of the promo code for this hold (atomic; limits never exceeded), or
    release the seats and refuse."""
    assert pricing.promo is not None and pricing.who is not None
    error = None
    if quote.promo_code is None:
        error = Refused("promo_not_applicable", "this promo code does not apply to these seats")
    else:
        verdict = await booking.promos.reserve(pricing.promo, hold_id, pricing.who,
                                               booking.clock.now_ms(), held.expires_at_ms)
        if verdict == "exhausted":
            error = Refused("promo_exhausted", "this promo code has been used up")
        elif verdict != "ok":
            error = Refused("promo_limit_reached",
                            "you have used this promo code as often as it allows")
    if error is not None:
        await booking.shows.submit(show_id, c.Release(cmd_id(), hold_id, digest))
        raise error


# --- the holder's hold ----------------------------------------------------------------------

async def holders_hold(booking: Booking, hold_id: str, token: str) -> HoldRecord:
    """The hold record, if `token` is its holder token: refused otherwise."""
    hold = await booking.holds.load(hold_id)
    if hold is None:
        raise Refused("not_found", f"no hold {hold_id!r}")
    if not secrets.compare_digest(hold.token_hash, token_hash(token)):
        raise Refused("not_owner", "this hold belongs to someone else")
    return hold


def require_active(hold: HoldRecord, now_ms: int) -> None:
    """Refused if checked out or being paid for, released, or its time is up."""
    if hold.state == "booked":
        raise Refused("hold_checked_out", "this hold was checked out already",
                      booking_id=hold.booking_id)
    if hold.state == "pending":
        raise Refused("payment_pending", "a payment for this hold is being processed",
                      booking_id=hold.booking_id)
    if hold.state == "released":
        raise Refused("not_found", f"hold {hold.hold_id!r} was released")
    if hold.expires_ms <= now_ms:
        raise Refused("hold_expired", "the hold's time is up", seats=hold.seats)


def gone_or_expired(result: c.Rejected, hold: HoldRecord) -> Refused:
    # The record says the hold is ours and live; the actor no longer has it: the actor's
    # clock expired it a moment before ours did.
    if result.code == "not_found":
        return Refused("hold_expired", "the hold's time is up", seats=hold.seats)
    return refusal(result)


async def extend_hold(booking: Booking, hold_id: str, token: str, extra_s: int) -> HoldRecord:
    """More time on a live hold (capped at its lifetime); its promo reservation follows."""
    hold = await holders_hold(booking, hold_id, token)
    require_active(hold, booking.clock.now_ms())
    result = await booking.shows.submit(
        hold.show_id, c.Extend(cmd_id(), hold_id, hold.token_hash, extra_s * 1000))
    if isinstance(result, c.Rejected):
        raise gone_or_expired(result, hold)
    assert isinstance(result, c.Extended)
    hold.expires_ms = result.expires_at_ms
    await booking.holds.save(hold)
    if hold.quote.promo_code:  # the promo code's reservation lasts as long as the hold
        await booking.promos.extend(hold.quote.promo_code, hold_id, hold.expires_ms)
    return hold


async def release_hold(booking: Booking, hold_id: str, token: str) -> list[str]:
    """Free the held seats at once: the seats freed."""
    hold = await holders_hold(booking, hold_id, token)
    require_active(hold, booking.clock.now_ms())
    result = await booking.shows.submit(
        hold.show_id, c.Release(cmd_id(), hold_id, hold.token_hash))
    if isinstance(result, c.Rejected):
        raise gone_or_expired(result, hold)
    assert isinstance(result, c.Released)
    hold.state = "released"
    await booking.holds.save(hold)
    if hold.quote.promo_code:  # the promo code's use is free for others again
        await booking.promos.release(hold.quote.promo_code, hold_id, booking.clock.now_ms())
    return result.seats


# --- the partner's house seats --------------------------------------------------------------

async def set_house_seats(booking: Booking, show: Show, seats: list[str], *, block: bool,
                          command_id: str) -> list[str]:
    """Block seats for the house (or free them again) through the show's actor: the seats
    changed. Refused for a cancelled show, and for seats customers hold or have booked."""
    if show.status != "scheduled":
        raise Refused("show_cancelled", f"show {show.show_id!r} is cancelled")
    wanted = list(dict.fromkeys(seats))
    cmd = c.Block(command_id, wanted) if block else c.Unblock(command_id, wanted)
    result = await booking.shows.submit(show.show_id, cmd)
    if isinstance(result, c.Rejected):
        raise Refused(result.code, result.message, seats=list(result.seats))
    assert isinstance(result, c.BlockedSeats | c.UnblockedSeats)
    return list(result.seats)
