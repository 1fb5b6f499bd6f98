"""The hold use cases: place, extend and release a hold; the partner's house seats (block,
unblock). Plain inputs in, records out, `Refused` for every no (its code decides the HTTP
status, `core.refusals`). No aiohttp: the handlers (booking/api.py, partner/feed_api.py)
gather the request's facts and encode the answers; the ports come from the composition
root (`ports.Booking`)."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import msgspec

from actors import commands as c

from server.booking.ports import Booking, Customer, Holder
from server.booking.records import HoldRecord, HoldState, Quote, show_of, token_hash
from server.catalog.model import HoldPolicy, Show
from server.catalog.show_cache import CachedShow
from server.commerce.pricing import PromoCode, ShowFacts, promo_problem
from server.commerce.quoting import PriceInputs, pack, promo_of, read_quote
from server.core.clock import cmd_id, from_ms, new_id
from server.core.refusals import Refused


def refusal(result: c.Rejected) -> Refused:
    """A show actor's rejection as the use cases' refusal (naming the seats, and the
    booking, if any)."""
    details: dict[str, object] = {"seats": result.seats} if result.seats else {}
    if result.booking_id:
        details["booking_id"] = result.booking_id
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


def promo_customer(user_id: str | None, email: str | None) -> str | None:
    """Whom a promo code's per-customer limit counts: the logged-in user, or a guest's
    e-mail address (lower-cased)."""
    if user_id:
        return f"user:{user_id}"
    return f"email:{email.strip().lower()}" if email else None


async def place_hold(booking: Booking, ask: HoldAsk, who: Customer) -> tuple[HoldRecord, str]:
    """Hold the seats asked for (or the best free ones), priced by the show's host in the
    same logged command: the hold and its holder token (given out once). Nothing else is
    written: the show's log is the hold's record."""
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
        seats = named_seats(show, known, ask.seats)
    elif ask.best is not None and ask.best.category is not None \
            and ask.best.category not in show.prices:
        raise Refused("invalid", f"no seat category {ask.best.category!r} on sale")

    # A show in its waiting room refuses here without this visitor's admission; the
    # holder (customer, device, network) and the show's caps go to the actor, which
    # enforces them in order.
    holder = await who.holder(show_id)
    caps = holder_caps(show, holder, booking.settings.holder_caps)
    base, pricing = await pricing_inputs(booking, cached)
    promo, promo_who = await promo_inputs(booking, base.facts, ask.promo_code, ask.email, who)
    if promo is not None:
        pricing = pack(msgspec.structs.replace(base, promo=promo))
    hold_id, token = new_id(show_id), secrets.token_urlsafe(24)
    digest = token_hash(token)
    cmd: c.Command
    if ask.best is None:
        cmd = c.Hold(cmd_id(), hold_id, digest, seats, pricing=pricing, **caps)
    else:
        cmd = c.HoldBest(cmd_id(), hold_id, digest, ask.best.count, ask.best.category,
                         ask.best.accessible, pricing=pricing, **caps)
    result = await booking.shows.submit(show_id, cmd)
    if isinstance(result, c.Rejected):
        if result.code == "not_for_sale" and ask.best is not None:
            raise Refused("not_for_sale", "some of the free seats are not on sale; pick seats",
                          status=409)
        raise refusal(result)
    assert isinstance(result, c.Held)
    quote = read_quote(result.quote)
    if promo is not None:
        assert promo_who is not None
        await _reserve_promo(booking, promo, promo_who, quote, result, show_id, hold_id, digest)
    now = booking.clock.now_ms()
    return HoldRecord(hold_id, show_id, digest, result.seats, quote, now, result.expires_at_ms,
                      now + (caps.get("max_lifetime_ms") or config.rules.hold_max_lifetime_ms)
                      ), token


def holder_caps(show: Show, holder: Holder, device_network_caps: bool) -> dict[str, Any]:
    """The hold command's holder fields: who, the show's caps on each, its hold period."""
    policy = show.hold_policy or HoldPolicy()
    caps: dict[str, Any] = {
        "customer": holder.customer,
        "customer_max_seats": min(holder.customer_cap, policy.seats_per_customer)
        if holder.customer and holder.customer_cap else 0}
    if device_network_caps:
        caps.update(device=holder.device, device_max_seats=policy.seats_per_device,
                    network=holder.network, network_max_seats=policy.seats_per_network)
    if show.hold_policy is not None:  # else the show's rules decide (and the tests' short ones)
        caps.update(ttl_ms=policy.hold_minutes * 60_000,
                    max_lifetime_ms=policy.max_hold_minutes * 60_000)
    return caps


def named_seats(show: Show, category_of: dict[str, str], asked: list[str]) -> list[str]:
    """The seats asked for by name, each once, in order: refused if any is not in the
    show's layout or not on sale."""
    seats = list(dict.fromkeys(asked))
    unknown = [s for s in seats if s not in category_of]
    if unknown:
        raise Refused("unknown_seats", "no such seats in this show", seats=unknown)
    unpriced = [s for s in seats if category_of[s] not in show.prices]
    if unpriced:
        raise Refused("not_for_sale", "these seats are not on sale", seats=unpriced)
    return seats


_MEMO = "booking.pricing"
_UNPRICED = Quote("", [], 0, 0, 0, 0, 0)  # a hold from before the host priced holds


async def pricing_inputs(booking: Booking, cached: CachedShow) -> tuple[PriceInputs, bytes]:
    """The show's pricing inputs and their packing, kept with the cached show (dropped
    with it when the show or any offer changes): no Redis read on the hot path."""
    packed = cached.memo.get(_MEMO)
    base: PriceInputs
    if isinstance(packed, tuple):
        base, raw = packed
    else:
        show = cached.show
        assert show is not None
        timezone, offers = await booking.promos.pricing_inputs(show.theatre_id,
                                                               show.partner_id)
        facts = ShowFacts(show.show_id, show.movie_id, show.theatre_id, show.city,
                          show.partner_id, show.starts_at_utc, timezone)
        base = PriceInputs(facts, dict(show.prices), offers, None, booking.fees)
        raw = pack(base)
        cached.memo[_MEMO] = (base, raw)
    return base, raw


async def promo_inputs(booking: Booking, facts: ShowFacts, code: str | None,
                       email: str | None, who: Customer) -> tuple[PromoCode | None, str | None]:
    """The promo code and whom its use counts against; a bad code is refused before any
    seat is held."""
    if code is None:
        return None, None
    promo = await booking.promos.get(code)
    if promo is None:
        raise Refused("promo_unknown", f"no promo code {code!r}")
    problem = promo_problem(promo, facts, None, from_ms(booking.clock.now_ms()))
    if problem:
        raise Refused("promo_not_applicable", problem)
    customer = promo_customer(await who.user_id(), email)
    if customer is None:
        raise Refused("email_required",
                      "give the e-mail address you will check out with to use a promo code")
    return promo, customer


async def _reserve_promo(booking: Booking, promo: PromoCode, who: str, quote: Quote,
                         held: c.Held, show_id: str, hold_id: str, digest: str) -> None:
    """Reserve one use of the promo code for this hold (atomic; limits never exceeded), or
    release the seats and refuse."""
    error = None
    if quote.promo_code is None:
        error = Refused("promo_not_applicable", "this promo code does not apply to these seats")
    else:
        verdict = await booking.promos.reserve(promo, hold_id, who, booking.clock.now_ms(),
                                               held.expires_at_ms)
        if verdict == "exhausted":
            error = Refused("promo_exhausted", "this promo code has been used up")
        elif verdict != "ok":
            error = Refused("promo_limit_reached",
                            "you have used this promo code as often as it allows")
    if error is not None:
        await booking.shows.submit(show_id, c.Release(cmd_id(), hold_id, digest))
        raise error


# --- the holder's hold ----------------------------------------------------------------------

def _show_of(hold_id: str) -> str:
    show_id = show_of(hold_id)
    if show_id is None:
        raise Refused("not_found", f"no hold {hold_id!r}")
    return show_id


async def holders_hold(booking: Booking, hold_id: str, token: str) -> HoldRecord:
    """The hold as its show's actor has it, if `token` is its holder token: refused
    otherwise (404 never made or released, 410 expired, 409 checked out)."""
    show_id = _show_of(hold_id)
    digest = token_hash(token)
    result = await booking.shows.submit(show_id, c.Peek(cmd_id(), hold_id, digest))
    if isinstance(result, c.Rejected):
        raise refusal(result)
    assert isinstance(result, c.HoldInfo)
    if not result.quote:  # held before holds were priced by the host (an upgrade)
        raise Refused("hold_expired", "this hold has no price quote; hold the seats again",
                      seats=result.seats)
    state: HoldState = "pending" if result.state == "paying" else result.state
    return HoldRecord(hold_id, show_id, digest, result.seats, read_quote(result.quote),
                      result.created_ms, result.expires_at_ms, result.max_expires_ms, state,
                      result.booking_id or None)


def require_active(hold: HoldRecord, now_ms: int) -> None:
    """Refused if being paid for or its time is up."""
    if hold.state == "pending":
        raise Refused("payment_pending", "a payment for this hold is being processed",
                      booking_id=hold.booking_id)
    if hold.expires_ms <= now_ms:
        raise Refused("hold_expired", "the hold's time is up", seats=hold.seats)


async def extend_hold(booking: Booking, hold_id: str, token: str, extra_s: int) -> HoldRecord:
    """More time on a live hold (capped at its lifetime); its promo reservation follows.
    One actor call: the actor checks the holder token."""
    show_id = _show_of(hold_id)
    digest = token_hash(token)
    result = await booking.shows.submit(show_id, c.Extend(cmd_id(), hold_id, digest,
                                                         extra_s * 1000))
    if isinstance(result, c.Rejected):
        raise refusal(result)
    assert isinstance(result, c.Extended)
    quote = read_quote(result.quote) if result.quote else _UNPRICED
    if quote.promo_code:  # the promo code's reservation lasts as long as the hold
        await booking.promos.extend(quote.promo_code, hold_id, result.expires_at_ms)
    return HoldRecord(hold_id, show_id, digest, result.seats, quote, 0, result.expires_at_ms, 0)


async def release_hold(booking: Booking, hold_id: str, token: str) -> list[str]:
    """Free the held seats at once: the seats freed. One actor call: the actor checks the
    holder token (and refuses while the hold is being paid for)."""
    show_id = _show_of(hold_id)
    result = await booking.shows.submit(show_id, c.Release(cmd_id(), hold_id, token_hash(token)))
    if isinstance(result, c.Rejected):
        raise refusal(result)
    assert isinstance(result, c.Released)
    if code := promo_of(result.quote):
        await booking.promos.release(code, hold_id, booking.clock.now_ms())
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
