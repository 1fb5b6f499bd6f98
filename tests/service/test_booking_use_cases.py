"""The booking use cases (server/booking/holding.py, checkout.py, bulk.py) over in-process
ports: no Redis, Ray or HTTP, so every branch of the decisions is cheap to reach. The real
parts are exercised by tests/api and tests/cluster."""
from __future__ import annotations

import asyncio

import pytest

from actors import commands as c
from actors.layout import Rules, grid_layout

from server.booking import holding
from server.booking.bulk import BulkAsk, bulk_book
from server.booking.checkout import Answered, Booked, CheckoutAsk, checkout, drive
from server.booking.holding import BestSeats, HoldAsk
from server.booking.records import token_hash
from server.commerce.payments import GatewayTimeout
from server.commerce.pricing import PromoCode
from server.core.refusals import REFUSAL_STATUS, Refused

from .fakes import CARD, DECLINED, Visitor, World

GUEST = Visitor()


@pytest.fixture
def world() -> World:
    return World()


async def refused(coro) -> Refused:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused) as info:
        await coro
    return info.value


def ask(email: str = "a@example.com", card=CARD) -> CheckoutAsk:  # type: ignore[no-untyped-def]
    return CheckoutAsk(card, email, "A Customer")


# --- placing a hold ---------------------------------------------------------------------

async def test_a_hold_on_named_seats_is_priced_and_held(world: World):
    show = world.add_show()
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1", "A2"]),
                                           GUEST)
    assert hold.seats == ["A1", "A2"] and hold.state == "active"
    assert world.shows.status(show.show_id, ["A1", "A2", "A3"]) == {
        "A1": "held", "A2": "held", "A3": "free"}
    assert [line.base for line in hold.quote.lines] == [250, 250]
    assert hold.quote.total == 2 * (250 + 30)  # the fixed fee per ticket
    # the show's actor has the hold (priced, in its logged command): nothing else is kept
    assert await holding.holders_hold(world.booking, hold.hold_id, token) == hold
    cmd, peek = world.shows.commands
    assert isinstance(peek, c.Peek) and isinstance(cmd, c.Hold) and cmd.pricing and cmd.token == hold.token_hash


async def test_best_seats_come_from_the_actor(world: World):
    show = world.add_show()
    hold, _ = await holding.place_hold(
        world.booking, HoldAsk(show.show_id, best=BestSeats(3)), GUEST)
    assert len(hold.seats) == 3
    assert world.shows.counts(show.show_id)["held"] == 3


async def test_exactly_one_of_seats_and_best(world: World):
    show = world.add_show()
    for bad in (HoldAsk(show.show_id), HoldAsk(show.show_id, ["A1"], BestSeats(1))):
        err = await refused(holding.place_hold(world.booking, bad, GUEST))
        assert (err.code, err.status) == ("invalid", 422)
    assert world.shows.commands == []


async def test_unknown_and_unpriced_seats_are_named(world: World):
    layout = grid_layout(4, 5, bands=[("standard", 2), ("recliner", 2)])
    show = world.add_show(layout, prices={"standard": 200})
    err = await refused(holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1", "Z9"]),
                                           GUEST))
    assert (err.code, err.details["seats"]) == ("unknown_seats", ["Z9"])
    err = await refused(holding.place_hold(world.booking, HoldAsk(show.show_id, ["C1"]), GUEST))
    assert (err.code, err.details["seats"]) == ("not_for_sale", ["C1"])
    assert world.shows.commands == []  # refused before the actor is asked


async def test_best_seats_in_an_unpriced_category_are_given_back(world: World):
    # every free seat is in a category without a price: the actor's pick is released, 409
    show = world.add_show(grid_layout(4, 5, bands=[("front", 4)]), prices={"balcony": 100})
    err = await refused(holding.place_hold(world.booking, HoldAsk(show.show_id, best=BestSeats(2)),
                                           GUEST))
    assert (err.code, err.status) == ("not_for_sale", 409)
    assert world.shows.counts(show.show_id)["held"] == 0


async def test_no_hold_on_a_missing_cancelled_or_started_show(world: World):
    err = await refused(holding.place_hold(world.booking, HoldAsk("nope", ["A1"]), GUEST))
    assert (err.code, err.status) == ("not_found", 404)
    cancelled = world.add_show(status="cancelled")
    err = await refused(holding.place_hold(world.booking, HoldAsk(cancelled.show_id, ["A1"]),
                                           GUEST))
    assert err.code == "not_found"
    show = world.add_show(starts_in_s=60)
    world.clock.advance(60_000)
    err = await refused(holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST))
    assert (err.code, err.status) == ("show_started", REFUSAL_STATUS["show_started"])


async def test_a_taken_seat_is_refused_by_the_actor(world: World):
    show = world.add_show()
    await holding.place_hold(world.booking, HoldAsk(show.show_id, ["B2"]), GUEST)
    err = await refused(holding.place_hold(world.booking, HoldAsk(show.show_id, ["B1", "B2"]),
                                           GUEST))
    assert (err.code, err.status, err.details["seats"]) == ("seats_unavailable", 409, ["B2"])
    assert world.shows.status(show.show_id, ["B1"]) == {"B1": "free"}


async def test_the_waiting_room_and_the_customer_cap(world: World):
    show = world.add_show()
    err = await refused(holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]),
                                           Visitor(admitted=False)))
    assert err.code == "queue_required"
    fan = Visitor(user="u1", cap=3)
    await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1", "A2"]), fan)
    err = await refused(holding.place_hold(world.booking, HoldAsk(show.show_id, ["A3", "A4"]),
                                           fan))
    assert err.code == "customer_limit"


async def test_best_seats_are_priced_where_they_are_picked(world: World):
    show = world.add_show(layout=grid_layout(2, 4, [("gold", 1), ("silver", 1)]),
                          prices={"gold": 400})
    hold, _ = await holding.place_hold(
        world.booking, HoldAsk(show.show_id, best=BestSeats(2, "gold")), GUEST)
    assert [line.base for line in hold.quote.lines] == [400, 400]
    # without a category the picker may land on unpriced seats: refused, nothing held
    rest = [s for s in ("A1", "A2", "A3", "A4") if s not in hold.seats]
    world.shows.maps[show.show_id].apply(c.Block("blk", rest), 0)
    err = await refused(holding.place_hold(world.booking, HoldAsk(show.show_id,
                                                                  best=BestSeats(2)), GUEST))
    assert (err.code, err.status) == ("not_for_sale", 409)
    assert world.shows.counts(show.show_id)["held"] == 2


# --- promo codes ---------------------------------------------------------------------------

async def test_a_promo_code_is_reserved_with_the_hold_and_used_up(world: World):
    world.promos.codes["TEN"] = PromoCode("TEN", "Ten off", percent_off=10, max_uses=1)
    show = world.add_show()
    hold, token = await holding.place_hold(
        world.booking, HoldAsk(show.show_id, ["A1"], promo_code="TEN", email="x@example.com"),
        GUEST)
    assert hold.quote.promo_code == "TEN" and hold.quote.lines[0].discount == 25
    err = await refused(holding.place_hold(
        world.booking, HoldAsk(show.show_id, ["A2"], promo_code="TEN", email="y@example.com"),
        GUEST))
    assert err.code == "promo_exhausted"
    assert world.shows.status(show.show_id, ["A2"]) == {"A2": "free"}  # given back
    err = await refused(holding.place_hold(
        world.booking, HoldAsk(show.show_id, ["A3"], promo_code="NOPE", email="y@example.com"),
        GUEST))
    assert err.code == "promo_unknown"
    err = await refused(holding.place_hold(
        world.booking, HoldAsk(show.show_id, ["A3"], promo_code="TEN"), GUEST))
    assert err.code == "email_required"
    # released: the use is free for the next customer
    await holding.release_hold(world.booking, hold.hold_id, token)
    await holding.place_hold(
        world.booking, HoldAsk(show.show_id, ["A2"], promo_code="TEN", email="y@example.com"),
        GUEST)


# --- extend, release, expiry ------------------------------------------------------------------

async def test_extend_is_capped_by_the_lifetime_and_release_frees(world: World):
    rules = Rules(hold_ttl_ms=60_000, hold_max_lifetime_ms=90_000)
    show = world.add_show(rules=rules)
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    longer = await holding.extend_hold(world.booking, hold.hold_id, token, 600)
    assert longer.expires_ms == hold.created_ms + 90_000
    err = await refused(holding.extend_hold(world.booking, hold.hold_id, "wrong", 10))
    assert (err.code, err.status) == ("not_owner", 403)
    freed = await holding.release_hold(world.booking, hold.hold_id, token)
    assert freed == ["A1"] and world.shows.status(show.show_id, ["A1"]) == {"A1": "free"}
    err = await refused(holding.release_hold(world.booking, hold.hold_id, token))
    assert (err.code, err.status) == ("not_found", 404)


async def test_an_expired_hold_frees_its_seats_and_says_so(world: World):
    show = world.add_show(rules=Rules(hold_ttl_ms=60_000))
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    world.clock.advance(60_001)
    err = await refused(holding.extend_hold(world.booking, hold.hold_id, token, 60))
    assert (err.code, err.status, err.details["seats"]) == ("hold_expired", 410, ["A1"])
    other, _ = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    assert other.seats == ["A1"]


async def test_an_expired_hold_reads_as_expired_and_a_released_one_as_gone(world: World):
    show = world.add_show(rules=Rules(hold_ttl_ms=60_000))
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    world.clock.advance(60_001)
    err = await refused(holding.release_hold(world.booking, hold.hold_id, token))
    assert (err.code, err.status, err.details["seats"]) == ("hold_expired", 410, ["A1"])
    err = await refused(holding.release_hold(world.booking, hold.hold_id, "not-the-token"))
    assert err.code == "not_owner"
    again, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    assert await holding.release_hold(world.booking, again.hold_id, token) == ["A1"]
    err = await refused(holding.release_hold(world.booking, again.hold_id, token))
    assert (err.code, err.status) == ("not_found", 404)


# --- checkout -----------------------------------------------------------------------------

async def test_checkout_books_once_per_key(world: World):
    show = world.add_show()
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1", "A2"]),
                                           Visitor(user="u9"))
    done = await checkout(world.booking, hold.hold_id, token, "k1", ask(), Visitor(user="u9"))
    assert isinstance(done, Booked)
    booking = done.booking
    assert booking.seats == ["A1", "A2"] and booking.customer_id == "u9"
    assert world.shows.status(show.show_id, ["A1", "A2"]) == {"A1": "booked", "A2": "booked"}
    assert world.gateway.state(booking.payment.ref) == "captured"
    err = await refused(holding.holders_hold(world.booking, hold.hold_id, token))
    assert (err.code, err.details["booking_id"]) == ("hold_checked_out", booking.booking_id)
    assert world.checkouts.events == [("booking.confirmed", booking.booking_id),
                                      ("after_booking", booking.booking_id)]
    again = await checkout(world.booking, hold.hold_id, token, "k1", ask(), GUEST)
    assert isinstance(again, Booked) and again.booking == booking  # replayed, not re-paid
    assert len(world.gateway.entries(kind="authorise")) == 1
    err = await refused(checkout(world.booking, hold.hold_id, token, "k1",
                                 ask("b@example.com"), GUEST))
    assert (err.code, err.status) == ("idempotency_key_reused", 422)
    err = await refused(checkout(world.booking, hold.hold_id, token, "k2", ask(), GUEST))
    assert (err.code, err.details["booking_id"]) == ("hold_checked_out", booking.booking_id)


async def test_a_booking_is_not_acknowledged_before_a_replica_has_it(world: World):
    """With asynchronous replicas (a Redis Cluster) the booking is on the primary before
    any replica: the answer waits for one, else 503 and the same key answers later."""
    show = world.add_show()
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    world.checkouts.replica_behind = True
    err = await refused(checkout(world.booking, hold.hold_id, token, "k1", ask(), GUEST))
    assert (err.code, err.status) == ("unavailable", 503)
    assert world.shows.status(show.show_id, ["A1"]) == {"A1": "booked"}  # done, not said
    world.checkouts.replica_behind = False
    done = await checkout(world.booking, hold.hold_id, token, "k1", ask(), GUEST)
    assert isinstance(done, Booked) and done.booking.seats == ["A1"]
    assert len(world.gateway.entries(kind="authorise")) == 1


async def test_a_declined_card_is_remembered_and_the_hold_stays(world: World):
    show = world.add_show()
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    out = await checkout(world.booking, hold.hold_id, token, "k1", ask(card=DECLINED), GUEST)
    assert isinstance(out, Answered) and out.status == 402 and b"card_declined" in out.body
    again = await checkout(world.booking, hold.hold_id, token, "k1", ask(card=DECLINED), GUEST)
    assert again == out
    assert world.shows.status(show.show_id, ["A1"]) == {"A1": "held"}
    paid = await checkout(world.booking, hold.hold_id, token, "k2", ask(), GUEST)
    assert isinstance(paid, Booked)


async def test_an_expired_hold_is_not_paid_for(world: World):
    show = world.add_show(rules=Rules(hold_ttl_ms=60_000))
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    world.clock.advance(60_001)
    err = await refused(checkout(world.booking, hold.hold_id, token, "k1", ask(), GUEST))
    assert err.code == "hold_expired"
    assert world.gateway.ledger == [] and world.checkouts.intents == {}  # key free again


async def test_a_confirm_the_actor_refuses_is_refunded(world: World):
    show = world.add_show(rules=Rules(hold_ttl_ms=60_000))
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    submit = world.shows.submit

    async def late(show_id: str, cmd: c.Command) -> c.Result:
        if isinstance(cmd, c.Confirm):  # the hold runs out while the card is authorised
            world.clock.advance(60_001)
        return await submit(show_id, cmd)

    world.shows.submit = late  # type: ignore[method-assign]
    out = await checkout(world.booking, hold.hold_id, token, "k1", ask(), GUEST)
    assert isinstance(out, Answered) and out.status == 410 and b'"refunded":true' in out.body
    [auth] = world.gateway.entries(kind="authorise")
    assert world.gateway.state(auth.ref) == "voided"
    assert world.checkouts.bookings == {}


async def test_a_gateway_outage_is_a_503_and_frees_the_key(world: World):
    show = world.add_show()
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    world.gateway.down = True
    err = await refused(checkout(world.booking, hold.hold_id, token, "k1", ask(), GUEST))
    assert (err.code, err.status) == ("payment_unavailable", 503)
    world.gateway.down = False
    assert isinstance(await checkout(world.booking, hold.hold_id, token, "k1", ask(), GUEST),
                      Booked)


async def test_a_failed_checkout_gives_the_promo_use_back(world: World):
    world.promos.codes["ONE"] = PromoCode("ONE", "One", amount_off=50, max_uses=1)
    show = world.add_show()
    hold, token = await holding.place_hold(
        world.booking, HoldAsk(show.show_id, ["A1"], promo_code="ONE", email="a@example.com"),
        GUEST)
    err = await refused(checkout(world.booking, hold.hold_id, token, "k0",
                                 ask("other@example.com"), GUEST))
    assert err.code == "promo_customer_mismatch"
    out = await checkout(world.booking, hold.hold_id, token, "k1", ask(card=DECLINED), GUEST)
    assert isinstance(out, Answered) and out.status == 402
    assert world.promos.used.get("ONE", {}) == {}
    assert hold.hold_id in world.promos.reserved["ONE"]  # still the live hold's
    done = await checkout(world.booking, hold.hold_id, token, "k2", ask(), GUEST)
    assert isinstance(done, Booked) and done.booking.quote.promo_code == "ONE"
    assert world.promos.used["ONE"] == {hold.hold_id: "email:a@example.com"}


def _one_use_hold(world: World):  # type: ignore[no-untyped-def]
    world.promos.codes["ONE"] = PromoCode("ONE", "One", amount_off=50, max_uses=1)
    show = world.add_show()
    return show, holding.place_hold(
        world.booking, HoldAsk(show.show_id, ["A1"], promo_code="ONE", email="a@example.com"),
        GUEST)


async def test_two_keys_cannot_check_one_hold_out_at_once_and_the_promo_use_counts(
        world: World):
    # The review's race: a second key while the first is paying used to consume "repeat",
    # and the first's failure gave the use back under the second's discounted booking.
    show, placing = _one_use_hold(world)
    hold, token = await placing
    entered, go_on = asyncio.Event(), asyncio.Event()
    authorise = world.gateway.authorise

    async def slow(**kw):  # type: ignore[no-untyped-def]
        entered.set()
        await go_on.wait()
        return await authorise(**kw)

    world.gateway.authorise = slow  # type: ignore[method-assign]
    first = asyncio.create_task(checkout(world.booking, hold.hold_id, token, "k1",
                                         ask(card=DECLINED), GUEST))
    await entered.wait()
    err = await refused(checkout(world.booking, hold.hold_id, token, "k2", ask(), GUEST))
    assert (err.code, err.status) == ("checkout_in_progress", 409)
    go_on.set()
    out = await first
    assert isinstance(out, Answered) and out.status == 402
    world.gateway.authorise = authorise  # type: ignore[method-assign]
    done = await checkout(world.booking, hold.hold_id, token, "k2", ask(), GUEST)
    assert isinstance(done, Booked) and done.booking.quote.promo_code == "ONE"
    assert world.promos.used["ONE"] == {hold.hold_id: "email:a@example.com"}


async def test_a_new_key_finishes_an_attempt_that_met_a_timeout_first(world: World):
    show, placing = _one_use_hold(world)
    hold, token = await placing
    authorise = world.gateway.authorise

    async def times_out(**kw):  # type: ignore[no-untyped-def]
        raise GatewayTimeout("the payment gateway did not answer")

    world.gateway.authorise = times_out  # type: ignore[method-assign]
    err = await refused(checkout(world.booking, hold.hold_id, token, "k1", ask(), GUEST))
    assert err.status == 503
    world.gateway.authorise = authorise  # type: ignore[method-assign]
    # k1 never reached the gateway (lookup by its key finds nothing): it is abandoned,
    # its promo use given back, and k2 books with the use counted once.
    done = await checkout(world.booking, hold.hold_id, token, "k2", ask(), GUEST)
    assert isinstance(done, Booked)
    assert world.promos.used["ONE"] == {hold.hold_id: "email:a@example.com"}
    [k1] = [i for i in world.checkouts.intents.values() if i.booking_id != done.booking.booking_id]
    assert k1.state == "abandoned"


async def test_an_authorised_attempt_is_finished_from_its_intent_alone(world: World):
    # What the reconciler does after a crash: no card, no request, only the intent.
    show = world.add_show()
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    capture = world.gateway.capture

    class Died(BaseException):
        """The process "dies" after the confirm (nothing below catches a BaseException)."""

    async def dies(ref: str) -> None:
        raise Died

    world.gateway.capture = dies  # type: ignore[method-assign]
    with pytest.raises(Died):
        await checkout(world.booking, hold.hold_id, token, "k1", ask(), GUEST)
    [intent] = world.checkouts.intents.values()
    assert intent.state == "confirmed" and world.checkouts.bookings == {}
    world.gateway.capture = capture  # type: ignore[method-assign]
    out = await drive(world.booking, intent, None, None)
    assert isinstance(out, Booked) and intent.state == "done"
    assert world.gateway.state(out.booking.payment.ref) == "captured"
    assert list(world.checkouts.bookings) == [out.booking.booking_id]
    # the confirm in the show's log carries the booking
    [confirm] = [cmd for cmd in world.shows.commands if isinstance(cmd, c.Confirm)]
    assert b"a@example.com" in confirm.booking


async def test_no_checkout_after_the_show_started_or_was_cancelled(world: World):
    show = world.add_show(starts_in_s=120)
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    world.catalog.shows[show.show_id].show.status = "cancelled"  # type: ignore[union-attr]
    err = await refused(checkout(world.booking, hold.hold_id, token, "k1", ask(), GUEST))
    assert err.code == "show_cancelled"
    world.catalog.shows[show.show_id].show.status = "scheduled"  # type: ignore[union-attr]
    world.clock.advance(121_000)
    err = await refused(checkout(world.booking, hold.hold_id, token, "k1", ask(), GUEST))
    assert err.code in ("show_started", "hold_expired")
    assert world.gateway.ledger == []


# --- house seats and bulk bookings ------------------------------------------------------------

async def test_house_seats_block_and_unblock(world: World):
    show = world.add_show()
    changed = await holding.set_house_seats(world.booking, show, ["A1", "A1", "A2"], block=True,
                                            command_id="b1")
    assert changed == ["A1", "A2"]
    err = await refused(holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST))
    assert err.code == "seats_unavailable"
    await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A3"]), GUEST)
    err = await refused(holding.set_house_seats(world.booking, show, ["A3"], block=True,
                                                command_id="b2"))
    assert err.details["seats"] == ["A3"]
    assert await holding.set_house_seats(world.booking, show, ["A1"], block=False,
                                         command_id="u1") == ["A1"]


async def test_a_bulk_booking_is_all_or_nothing(world: World):
    show = world.add_show(rules=Rules(max_seats_per_hold=4))
    await holding.place_hold(world.booking, HoldAsk(show.show_id, ["C5"]), GUEST)
    seats = [f"C{n}" for n in range(1, 11)]  # three chunks; one has the held C5
    err = await refused(bulk_book(world.booking, show, BulkAsk("p@example.com", "P",
                                                                seats=seats)))
    assert (err.code, err.details["seats"]) == ("seats_unavailable", ["C5"])
    assert world.shows.counts(show.show_id) == {"free": 49, "held": 1, "booked": 0,
                                                "blocked": 0}
    assert world.bulks.saved == []
    bulk, bookings = await bulk_book(world.booking, show, BulkAsk("p@example.com", "P",
                                                                  count=9))
    assert len(bookings) == 3 and sorted(bulk.seats) == sorted(s for b in bookings
                                                                for s in b.seats)
    assert len(bulk.seats) == 9 and bulk.amount.amount == 9 * 250
    assert world.shows.counts(show.show_id)["booked"] == 9
    assert world.bulks.saved == [bulk] and world.bulks.announced == [bulk.bulk_id]


async def test_commands_carry_the_hash_not_the_token(world: World):
    show = world.add_show()
    hold, token = await holding.place_hold(world.booking, HoldAsk(show.show_id, ["A1"]), GUEST)
    [cmd] = world.shows.commands
    assert isinstance(cmd, c.Hold) and cmd.token == hold.token_hash != token


async def test_a_hold_from_before_host_pricing_is_extended_but_not_paid_for(world: World):
    # an unpriced hold (its command carried no pricing inputs) can be released and
    # extended; checkout asks for a new hold rather than charging nothing
    show = world.add_show()
    await world.shows.submit(show.show_id, c.Hold("old-cmd", f"{show.show_id}.old",
                                                  token_hash("tok"), ["A1"]))
    hold = await holding.extend_hold(world.booking, f"{show.show_id}.old", "tok", 60)
    assert hold.seats == ["A1"]
    err = await refused(checkout(world.booking, f"{show.show_id}.old", "tok", "k1", ask(), GUEST))
    assert (err.code, err.status) == ("hold_expired", 410)
    assert world.gateway.ledger == []
    assert await holding.release_hold(world.booking, f"{show.show_id}.old", "tok") == ["A1"]
