"""A hold's price: the quote's inputs (offers, promo code, fees; server/pricing.py) and the
promo code's use, reserved with the hold, consumed at checkout, given back if it fails
(server/offers.py)."""
from __future__ import annotations

from datetime import UTC

import msgspec
from aiohttp import web

from actors import commands as c
from actors.layout import ShowConfig

from server.commerce import offers as promos
from server.accounts.users import current_user
from server.booking.records import HoldRecord, Quote
from server.catalog.model import Show
from server.core.errors import ApiError
from server.booking.holds import cmd_id, now_ms, services, utcnow
from server.commerce.pricing import Offer, PricingConfig, PromoCode, SeatPrice, ShowFacts, make_quote, promo_problem


class Pricing(msgspec.Struct):
    facts: ShowFacts
    offers: list[Offer]
    promo: PromoCode | None
    who: str | None  # the customer a promo code's use counts against
    config: PricingConfig


def customer_of(user: object, email: str | None) -> str | None:
    """Whom a promo code's per-customer limit counts: the logged-in customer, or a
    guest's e-mail address (lower-cased)."""
    user_id = getattr(user, "user_id", None)
    if user_id:
        return f"user:{user_id}"
    return f"email:{email.strip().lower()}" if email else None


async def price_inputs(request: web.Request, show: Show, code: str | None, email: str | None
                       ) -> Pricing:
    """Everything the quote needs (one Redis round trip); a bad promo code is a 4xx before
    any seat is held."""
    settings = services(request).settings
    timezone, offers, promo, found = await promos.pricing_inputs(
        services(request).redis, show.theatre_id, show.partner_id, code)
    starts_at = show.starts_at if show.starts_at.tzinfo else show.starts_at.replace(tzinfo=UTC)
    facts = ShowFacts(show.show_id, show.movie_id, show.theatre_id, show.city, show.partner_id,
                      starts_at, timezone)
    who = None
    if code is not None:
        if not found:
            raise ApiError(422, "promo_unknown", f"no promo code {code!r}")
        problem = promo_problem(promo, facts, None, utcnow())
        if problem:
            raise ApiError(422, "promo_not_applicable", problem)
        who = customer_of(await current_user(request), email)
        if who is None:
            raise ApiError(422, "email_required",
                           "give the e-mail address you will check out with to use a promo code")
    config = PricingConfig(settings.fee_fixed, settings.fee_bp, settings.tax_bp)
    return Pricing(facts, offers, promo, who, config)


def quote_seats(show: Show, config: ShowConfig, seats: list[str], pricing: Pricing) -> Quote | None:
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
                      promo=pricing.promo, config=pricing.config, now=utcnow())


async def reserve_promo(request: web.Request, pricing: Pricing, quote: Quote, held: c.Held,
                         show_id: str, hold_id: str, digest: str) -> None:
    """Reserve one use of the promo code for this hold (atomic; limits never exceeded), or
    release the seats and refuse."""
    assert pricing.promo is not None and pricing.who is not None
    error = None
    if quote.promo_code is None:
        error = ApiError(422, "promo_not_applicable", "this promo code does not apply to these seats")
    else:
        verdict = await promos.reserve(services(request).redis, pricing.promo, hold_id,
                                       pricing.who, now_ms(), held.expires_at_ms)
        if verdict == "exhausted":
            error = ApiError(409, "promo_exhausted", "this promo code has been used up")
        elif verdict != "ok":
            error = ApiError(409, "promo_limit_reached",
                             "you have used this promo code as often as it allows")
    if error is not None:
        await services(request).shows.submit(show_id, c.Release(cmd_id(), hold_id, digest))
        raise error


async def consume_promo(request: web.Request, hold: HoldRecord, email: str) -> str | None:
    """At checkout: turn the hold's promo reservation into a use. Returns the customer key
    if a use was consumed by this call (to give back if the checkout fails)."""
    code = hold.quote.promo_code
    if not code or hold.state != "active":
        return None
    redis = services(request).redis
    promo = await promos.get_promo(redis, code)
    if promo is None:  # deleted meanwhile: the quote stands, there is nothing to count
        return None
    who = customer_of(await current_user(request), email) or ""
    verdict = await promos.consume(redis, promo, hold.hold_id, who, now_ms())
    if verdict == "repeat":
        return None
    if verdict == "wrong_customer":
        raise ApiError(409, "promo_customer_mismatch",
                       "check out with the e-mail address (or account) the promo code was "
                       "applied for")
    if verdict != "ok":
        raise ApiError(409, "promo_exhausted", "this promo code has been used up meanwhile")
    return who


async def unconsume_promo(request: web.Request, hold: HoldRecord, who: str | None) -> None:
    if who is None or not hold.quote.promo_code:
        return
    live = hold.state == "active" and hold.expires_ms > now_ms()
    await promos.unconsume(services(request).redis, hold.quote.promo_code, hold.hold_id, who,
                           hold.expires_ms if live else None)
