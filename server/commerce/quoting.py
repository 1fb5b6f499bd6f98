"""Pricing a hold where its seats are decided: inside the show's host.

The web tier packs what a quote needs (`PriceInputs`: the show's facts and prices, the
offers that may apply, the promo code, the fees) into the hold command; the host's seat
map calls `quote_hold` with the seats it picked (`actors.seatmap.Quoter`), so the quote
is part of the logged hold, best-available picks are priced as they are made, and a
replay prices each hold exactly as the first time (its inputs are in the log).
"""
from __future__ import annotations

from functools import lru_cache

import msgspec

from server.catalog.model import Money
from server.commerce.pricing import (
    Offer, PricingConfig, PromoCode, Quote, SeatPrice, ShowFacts, make_quote,
)
from server.core.clock import from_ms


class PriceInputs(msgspec.Struct, frozen=True, array_like=True):
    facts: ShowFacts
    prices: dict[str, Money]  # seat category -> price
    offers: list[Offer]
    promo: PromoCode | None
    config: PricingConfig


_inputs_encoder = msgspec.msgpack.Encoder()
_inputs_decoder = msgspec.msgpack.Decoder(PriceInputs)
_quote_encoder = msgspec.msgpack.Encoder()
_quote_decoder = msgspec.msgpack.Decoder(Quote)


def pack(inputs: PriceInputs) -> bytes:
    return _inputs_encoder.encode(inputs)


@lru_cache(maxsize=1024)
def _unpack(raw: bytes) -> PriceInputs:
    # A show's holds carry the same inputs until its offers change: decode them once.
    return _inputs_decoder.decode(raw)


def quote_hold(raw: bytes, seats: list[tuple[str, str]], now_ms: int) -> bytes | None:
    """The encoded quote for these (seat, category) pairs; None if a category has no price
    (or two are in different currencies)."""
    inputs = _unpack(raw)
    priced: list[SeatPrice] = []
    currency = None
    for seat, category in seats:
        price = inputs.prices.get(category)
        if price is None or currency not in (None, price.currency):
            return None
        currency = price.currency
        priced.append(SeatPrice(seat, category, price.amount))
    quote = make_quote(inputs.facts, priced, currency or "", offers=inputs.offers,
                       promo=inputs.promo, config=inputs.config, now=from_ms(now_ms))
    return _quote_encoder.encode(quote)


def read_quote(raw: bytes) -> Quote:
    return _quote_decoder.decode(raw)


class _PromoOf(msgspec.Struct):
    promo_code: str | None = None


_promo_decoder = msgspec.msgpack.Decoder(_PromoOf)


def promo_of(raw: bytes) -> str | None:
    """The promo code of a packed quote, without building the quote (a release needs
    only that)."""
    return _promo_decoder.decode(raw).promo_code if raw else None
