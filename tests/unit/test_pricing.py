"""The pricing service (server/commerce/pricing.py): every rule, scope, combination and rounding."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.commerce.pricing import (
    NthTicket, Offer, PricingConfig, PromoCode, Scope, SeatPrice, ShowFacts, TimeWindow,
    in_window, make_quote, percent_of, promo_problem,
)

NOW = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
# Saturday 2030-03-02, 14:30 in Kolkata (UTC+5:30) = 09:00 UTC: an afternoon show there.
AFTERNOON = ShowFacts("s1", "mv1", "th1", "Mumbai", "p1",
                      datetime(2030, 3, 2, 9, 0, tzinfo=UTC), "Asia/Kolkata")
# 20:00 local the same day.
EVENING = msgspec.structs.replace(AFTERNOON, starts_at=datetime(2030, 3, 2, 14, 30, tzinfo=UTC))

THIRD_HALF = Offer("of_third", "50% off the third ticket", NthTicket(3, 50))
AFTERNOON_20 = Offer("of_noon", "20% off afternoon shows", TimeWindow("12:00", "17:00", 20))


def seats(*bases: int, category: str = "gold") -> list[SeatPrice]:
    return [SeatPrice(f"A{i + 1}", category, b) for i, b in enumerate(bases)]


def q(show: ShowFacts = AFTERNOON, prices: list[SeatPrice] | None = None, **kw):  # noqa: ANN201
    kw.setdefault("now", NOW)
    return make_quote(show, prices if prices is not None else seats(10000), "INR", **kw)


# --- rounding, fee and tax -------------------------------------------------------------

@pytest.mark.parametrize(("amount", "bp", "expected"), [
    (15, 1000, 2),       # 1.5 -> 2 (half up)
    (25, 1000, 3),       # 2.5 -> 3 (half up, not banker's)
    (14, 1000, 1),       # 1.4 -> 1
    (99, 5000, 50),      # 49.5 -> 50
    (0, 1800, 0),
    (33333, 1800, 6000),  # 5999.94 -> 6000
])
def test_percent_of_rounds_half_up(amount: int, bp: int, expected: int) -> None:
    assert percent_of(amount, bp) == expected


def test_no_offers_no_fee_is_the_base_price() -> None:
    quote = q(prices=seats(45000, 25000))
    assert [(x.base, x.discount, x.fee, x.tax, x.total) for x in quote.lines] == [
        (45000, 0, 0, 0, 45000), (25000, 0, 0, 0, 25000)]
    assert quote.total == 70000 and quote.currency == "INR" and quote.promo_code is None


def test_fee_fixed_and_percent_then_tax_on_price_plus_fee_rounded_per_line() -> None:
    config = PricingConfig(fee_fixed=1000, fee_bp=250, tax_bp=1800)
    quote = q(prices=seats(333, 333, 333), config=config)
    line = quote.lines[0]
    # fee = 1000 + 2.5 % of 333 (8.325 -> 8); tax = 18 % of 333 + 1008 (241.38 -> 241)
    assert (line.fee, line.tax, line.total) == (1008, 241, 333 + 1008 + 241)
    # totals are sums of the rounded lines (not a rounding of the sum)
    assert quote.fee == 3 * 1008 and quote.tax == 3 * 241 and quote.total == 3 * line.total


def test_fee_and_tax_apply_after_discounts() -> None:
    config = PricingConfig(fee_bp=1000, tax_bp=1000)
    line = q(prices=seats(10000), offers=[AFTERNOON_20], config=config).lines[0]
    assert (line.discount, line.fee, line.tax) == (2000, 800, 880)
    assert line.total == 8000 + 800 + 880


def test_free_ticket_still_pays_the_fixed_fee_and_its_tax() -> None:
    promo = PromoCode("FREE", "free", percent_off=100)
    line = q(promo=promo, config=PricingConfig(fee_fixed=500, tax_bp=1000)).lines[0]
    assert (line.discount, line.fee, line.tax, line.total) == (10000, 500, 50, 550)


# --- rules -----------------------------------------------------------------------------

def test_third_ticket_half_off_discounts_the_cheapest_of_three() -> None:
    quote = q(prices=[SeatPrice("A1", "gold", 45000), SeatPrice("C1", "silver", 25000),
                      SeatPrice("A2", "gold", 45000)], offers=[THIRD_HALF])
    assert [x.discount for x in quote.lines] == [0, 12500, 0]
    assert quote.lines[1].applied[0].id == "of_third"


@pytest.mark.parametrize(("count", "discounted"), [(1, 0), (2, 0), (3, 1), (5, 1), (6, 2)])
def test_nth_ticket_counts_every_nth(count: int, discounted: int) -> None:
    quote = q(prices=seats(*[10000] * count), offers=[THIRD_HALF])
    assert sum(1 for x in quote.lines if x.discount) == discounted
    assert quote.discount == discounted * 5000


def test_nth_ticket_ties_go_to_the_earlier_seats_whatever_the_order() -> None:
    quote = q(prices=seats(20000, 10000, 10000, 20000, 10000, 10000), offers=[THIRD_HALF])
    assert [x.discount for x in quote.lines] == [0, 5000, 5000, 0, 0, 0]


def test_nth_ticket_counts_only_seats_in_its_categories() -> None:
    offer = Offer("of_3g", "third gold", NthTicket(3, 50), Scope(categories=["gold"]))
    mixed = seats(100, 100) + [SeatPrice("C1", "silver", 80)]
    assert q(prices=mixed, offers=[offer]).discount == 0
    three_gold = seats(100, 100, 100) + [SeatPrice("C1", "silver", 80)]
    assert [x.discount for x in q(prices=three_gold, offers=[offer]).lines] == [50, 0, 0, 0]


def test_time_window_uses_theatre_local_time() -> None:
    assert q(AFTERNOON, offers=[AFTERNOON_20]).discount == 2000   # 14:30 IST
    assert q(EVENING, offers=[AFTERNOON_20]).discount == 0        # 20:00 IST
    # the same instant in a UTC theatre is 09:00: not afternoon
    utc_show = msgspec.structs.replace(AFTERNOON, timezone="UTC")
    assert q(utc_show, offers=[AFTERNOON_20]).discount == 0


@pytest.mark.parametrize(("at", "inside"), [
    ("11:59", False), ("12:00", True), ("16:59", True), ("17:00", False)])
def test_time_window_is_start_inclusive_end_exclusive(at: str, inside: bool) -> None:
    hour, minute = map(int, at.split(":"))
    assert in_window("12:00", "17:00", datetime(2030, 1, 1, hour, minute).time()) is inside


def test_time_window_can_wrap_midnight() -> None:
    t = lambda h, m=0: datetime(2030, 1, 1, h, m).time()  # noqa: E731
    assert in_window("22:00", "02:00", t(23)) and in_window("22:00", "02:00", t(1, 59))
    assert not in_window("22:00", "02:00", t(2)) and not in_window("22:00", "02:00", t(21))


# --- scope and validity ----------------------------------------------------------------

@pytest.mark.parametrize(("scope", "applies"), [
    (Scope(), True),
    (Scope(cities=["mumbai"]), True),             # case-insensitive
    (Scope(cities=["Pune"]), False),
    (Scope(theatre_ids=["th1", "th9"]), True),
    (Scope(theatre_ids=["th9"]), False),
    (Scope(movie_ids=["mv1"]), True),
    (Scope(movie_ids=["mv2"]), False),
    (Scope(dates_from=date(2030, 3, 2), dates_to=date(2030, 3, 2)), True),
    (Scope(dates_from=date(2030, 3, 3)), False),
    (Scope(dates_to=date(2030, 3, 1)), False),
    (Scope(weekdays=["sat", "sun"]), True),
    (Scope(weekdays=["mon"]), False),
    (Scope(categories=["silver"]), False),       # the seat is gold
])
def test_scope(scope: Scope, applies: bool) -> None:
    offer = Offer("of_s", "scoped", TimeWindow("00:00", "24:00", 10), scope)
    assert (q(offers=[offer]).discount == 1000) is applies


def test_local_date_decides_dates_and_weekdays() -> None:
    # 2030-03-02 20:00 UTC is already Sunday 03-03 01:30 in Kolkata
    late = msgspec.structs.replace(AFTERNOON, starts_at=datetime(2030, 3, 2, 20, 0, tzinfo=UTC))
    offer = Offer("of_sun", "sunday", TimeWindow("00:00", "24:00", 10), Scope(weekdays=["sun"]))
    assert q(late, offers=[offer]).discount == 1000
    assert q(AFTERNOON, offers=[offer]).discount == 0


def test_validity_period_and_disabled_offers() -> None:
    rule = TimeWindow("00:00", "24:00", 10)
    later = Offer("a", "later", rule, valid_from=NOW + timedelta(seconds=1))
    ended = Offer("b", "ended", rule, valid_until=NOW)
    current = Offer("c", "now", rule, valid_from=NOW, valid_until=NOW + timedelta(days=1))
    off = Offer("d", "off", rule, active=False)
    assert q(offers=[later]).discount == 0
    assert q(offers=[ended]).discount == 0
    assert q(offers=[off]).discount == 0
    assert q(offers=[current]).discount == 1000


def test_a_partners_offer_applies_only_to_its_own_shows() -> None:
    mine = Offer("a", "mine", TimeWindow("00:00", "24:00", 10), partner_id="p1")
    theirs = Offer("b", "theirs", TimeWindow("00:00", "24:00", 30), partner_id="p2")
    assert q(offers=[mine, theirs]).discount == 1000


# --- combining -------------------------------------------------------------------------

def test_automatic_offers_do_not_stack_each_seat_gets_the_best_one() -> None:
    quote = q(prices=seats(10000, 10000, 10000), offers=[THIRD_HALF, AFTERNOON_20])
    # the "third" ticket is the cheapest (a tie: the earliest), A1: 50 % beats 20 % and
    # does not add up to 70 %; A2 and A3 get the afternoon 20 %
    assert [x.discount for x in quote.lines] == [5000, 2000, 2000]
    assert [[a.id for a in x.applied] for x in quote.lines] == [
        ["of_third"], ["of_noon"], ["of_noon"]]


def test_equal_offers_tie_to_the_smaller_offer_id() -> None:
    a = Offer("of_b", "B", TimeWindow("00:00", "24:00", 10))
    b = Offer("of_a", "A", TimeWindow("00:00", "24:00", 10))
    assert q(offers=[a, b]).lines[0].applied[0].id == "of_a"


def test_promo_percent_stacks_after_the_automatic_offer() -> None:
    promo = PromoCode("SAVE10", "10 % off", percent_off=10)
    line = q(offers=[AFTERNOON_20], promo=promo).lines[0]
    # 20 % of 10000 = 2000; then 10 % of the remaining 8000 = 800
    assert line.discount == 2800
    assert [(a.kind, a.id, a.amount) for a in line.applied] == [
        ("offer", "of_noon", 2000), ("promo", "SAVE10", 800)]
    assert q(offers=[AFTERNOON_20], promo=promo).promo_code == "SAVE10"


def test_promo_amount_is_per_ticket_and_capped_at_what_is_left() -> None:
    promo = PromoCode("FLAT", "flat 90", amount_off=9000)
    quote = q(prices=seats(10000, 5000), offers=[AFTERNOON_20], promo=promo)
    # seat 1: 2000 auto + 8000 left -> 8000 (capped); seat 2: 1000 auto + 4000 left -> 4000
    assert [x.discount for x in quote.lines] == [10000, 5000]
    assert all(x.total == 0 for x in quote.lines)


def test_promo_limited_to_categories_skips_other_seats() -> None:
    promo = PromoCode("GOLD", "gold only", percent_off=50, scope=Scope(categories=["gold"]))
    prices = seats(10000) + [SeatPrice("C1", "silver", 6000)]
    assert [x.discount for x in q(prices=prices, promo=promo).lines] == [5000, 0]
    assert promo_problem(promo, AFTERNOON, [SeatPrice("C1", "silver", 6000)], NOW)


def test_promo_problems() -> None:
    ok = PromoCode("OK", "ok", percent_off=10)
    assert promo_problem(ok, AFTERNOON, seats(1), NOW) is None
    assert promo_problem(msgspec.structs.replace(ok, active=False), AFTERNOON, seats(1), NOW)
    assert promo_problem(msgspec.structs.replace(ok, valid_until=NOW), AFTERNOON, seats(1), NOW)
    assert promo_problem(msgspec.structs.replace(ok, partner_id="p2"), AFTERNOON, seats(1), NOW)
    assert promo_problem(msgspec.structs.replace(ok, scope=Scope(movie_ids=["x"])),
                         AFTERNOON, seats(1), NOW)
    # an invalid promo is not applied even if passed
    assert q(promo=msgspec.structs.replace(ok, active=False)).discount == 0


def test_wire_shape_of_a_rule() -> None:
    offer = msgspec.json.decode(
        b'{"offer_id":"x","name":"n","rule":{"type":"nth_ticket","n":3,"percent_off":50}}',
        type=Offer)
    assert offer.rule == NthTicket(3, 50)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"type":"time_window","start":"25:00","end":"17:00",'
                            b'"percent_off":20}', type=TimeWindow)


# --- properties ------------------------------------------------------------------------

rules = st.one_of(
    st.builds(NthTicket, n=st.integers(2, 5), percent_off=st.integers(1, 100)),
    st.builds(TimeWindow, start=st.sampled_from(["00:00", "12:00", "22:00"]),
              end=st.sampled_from(["17:00", "24:00", "02:00"]), percent_off=st.integers(1, 100)),
)
offers = st.lists(st.builds(Offer, offer_id=st.text("abc", min_size=1, max_size=3),
                            name=st.just("o"), rule=rules,
                            scope=st.sampled_from([Scope(), Scope(categories=["gold"])])),
                  max_size=4)
promos = st.none() | st.builds(PromoCode, code=st.just("P"), name=st.just("p"),
                               percent_off=st.integers(1, 100)) | st.builds(
    PromoCode, code=st.just("P"), name=st.just("p"), amount_off=st.integers(1, 200_000))
seat_lists = st.lists(st.builds(SeatPrice, seat=st.text("AB12", min_size=1, max_size=3),
                                category=st.sampled_from(["gold", "silver"]),
                                base=st.integers(0, 1_000_000)), min_size=1, max_size=12)
configs = st.builds(PricingConfig, fee_fixed=st.integers(0, 5000), fee_bp=st.integers(0, 3000),
                    tax_bp=st.integers(0, 3000))
starts = st.datetimes(datetime(2030, 1, 1), datetime(2031, 1, 1), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None)
@given(seat_lists, offers, promos, configs, starts)
def test_quote_properties(prices, offer_list, promo, config, start) -> None:
    show = msgspec.structs.replace(AFTERNOON, starts_at=start)
    quote = make_quote(show, prices, "INR", offers=offer_list, promo=promo, config=config,
                       now=NOW)
    assert [x.seat for x in quote.lines] == [s.seat for s in prices]
    for line, seat in zip(quote.lines, prices, strict=True):
        assert line.base == seat.base
        assert 0 <= line.discount <= line.base
        assert line.discount == sum(a.amount for a in line.applied)
        assert sum(1 for a in line.applied if a.kind == "offer") <= 1   # offers never stack
        assert line.fee >= 0 and line.tax >= 0 and line.total >= 0
        assert line.total == line.base - line.discount + line.fee + line.tax
    for field in ("base", "discount", "fee", "tax", "total"):
        assert getattr(quote, field) == sum(getattr(x, field) for x in quote.lines)
    # a promo never makes the price higher than without it
    without = make_quote(show, prices, "INR", offers=offer_list, config=config, now=NOW)
    assert quote.discount >= without.discount
    assert quote.total <= without.total
