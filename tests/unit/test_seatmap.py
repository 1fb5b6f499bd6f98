"""The seat map's rules, one command at a time: pure domain, no Ray, no Redis."""
from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest

from actors import commands as c
from actors.layout import Layout, Rules, Seat, ShowConfig, grid_layout
from actors.seatmap import ANSWER_MEMORY_MS, SNAPSHOT_ANSWERS, Outcome, SeatMap, Snapshot

TTL = Rules().hold_ttl_ms
LIFETIME = Rules().hold_max_lifetime_ms

_ids = itertools.count()


def cid() -> str:
    """A fresh command id (the client's retry key)."""
    return f"cmd-{next(_ids)}"


def new_map(rows: int = 3, per_row: int = 8, rules: Rules = Rules(),
            layout: Layout | None = None) -> SeatMap:
    return SeatMap(ShowConfig("show-1", layout or grid_layout(rows, per_row), rules))


def hold(m: SeatMap, seats: list[str], hold_id: str = "h1", token: str = "alice",
         at: int = 0) -> Outcome:
    return m.apply(c.Hold(cid(), hold_id, token, seats), at)


def confirm(m: SeatMap, hold_id: str = "h1", token: str = "alice", booking_id: str = "b1",
            at: int = 0) -> Outcome:
    return m.apply(c.Confirm(cid(), hold_id, token, booking_id, "pay-1"), at)


def rejected(outcome: Outcome, code: str) -> c.Rejected:
    """Assert a rejection with this code that changed nothing, and return it."""
    assert isinstance(outcome.result, c.Rejected), outcome.result
    assert outcome.result.code == code, outcome.result
    assert outcome.changes == [] and not outcome.changed
    return outcome.result


def state(m: SeatMap, *, next_expiry: bool = True) -> dict[str, Any]:
    """Everything observable about a seat map, in comparable form (without the next expiry
    when `next_expiry` is false)."""
    seen = {
        "version": m.version,
        "status": dict(m.status),
        "holder": dict(m.holder),
        "holds": msgspec.to_builtins(m.holds),
        "bookings": msgspec.to_builtins(m.bookings),
        "answers": msgspec.to_builtins(list(m._answers.items())),
        "expired": msgspec.to_builtins(m.expired),
        "cancelled": dict(m.cancelled),
    }
    if next_expiry:
        seen["next_expiry"] = m.next_expiry_ms()
    return seen


def changes(*pairs: tuple[str, str]) -> list[c.SeatChange]:
    return [c.SeatChange(seat, status) for seat, status in pairs]  # type: ignore[arg-type]


# --- a fresh map -----------------------------------------------------------------------

def test_fresh_map_is_all_free_at_version_zero() -> None:
    m = new_map(2, 3)
    assert m.version == 0
    assert m.counts() == {"free": 6, "held": 0, "booked": 0, "blocked": 0}
    assert m.next_expiry_ms() is None


def test_out_of_service_seats_start_blocked() -> None:
    layout = Layout([Seat("A1", "A", 1, "std", 0, 0),
                     Seat("A2", "A", 2, "std", 1, 0, blocked=True)], focal_x=0.5, focal_y=0)
    m = new_map(layout=layout)
    assert m.status == {"A1": "free", "A2": "blocked"}


# --- hold explicit seats ---------------------------------------------------------------

def test_hold_takes_the_seats_until_ttl() -> None:
    m = new_map()
    out = hold(m, ["A1", "A2"], at=1_000)
    assert out.result == c.Held("h1", ["A1", "A2"], 1_000 + TTL)
    assert out.changes == changes(("A1", "held"), ("A2", "held"))
    assert m.status["A1"] == m.status["A2"] == "held"
    assert m.holder == {"A1": "h1", "A2": "h1"}
    assert m.holds["h1"].token == "alice"
    assert m.version == 1


def test_hold_names_a_seat_twice_counts_it_once() -> None:
    m = new_map()
    out = hold(m, ["A1", "A1", "A2"])
    assert out.result == c.Held("h1", ["A1", "A2"], TTL)
    assert len(out.changes) == 2


def test_hold_unknown_seats_lists_only_the_unknown_ones() -> None:
    m = new_map()
    r = rejected(hold(m, ["A1", "Z9", "A2", "Q1"]), "unknown_seats")
    assert r.seats == ["Z9", "Q1"]
    # All or nothing: the known seats were not held either.
    assert m.status["A1"] == "free" and m.version == 0


def test_hold_taken_seats_lists_exactly_the_taken_ones() -> None:
    m = new_map()
    hold(m, ["A2"], hold_id="other", token="bob")
    hold(m, ["A4"], hold_id="h-booked", token="bob")
    confirm(m, "h-booked", "bob", "b-bob")
    m.apply(c.Block(cid(), ["A6"]), 0)
    version = m.version
    r = rejected(hold(m, ["A1", "A2", "A3", "A4", "A5", "A6"]), "seats_unavailable")
    assert r.seats == ["A2", "A4", "A6"]
    assert m.status["A1"] == m.status["A3"] == m.status["A5"] == "free"
    assert m.version == version


def test_hold_of_an_out_of_service_seat_is_unavailable() -> None:
    layout = Layout([Seat("A1", "A", 1, "std", 0, 0, blocked=True)], focal_x=0, focal_y=0)
    assert rejected(hold(new_map(layout=layout), ["A1"]), "seats_unavailable").seats == ["A1"]


def test_hold_more_than_the_maximum_is_too_many() -> None:
    m = new_map(2, 12)
    rejected(hold(m, [f"A{n}" for n in range(1, 12)]), "too_many_seats")
    assert m.counts()["held"] == 0


def test_hold_exactly_the_maximum_is_fine() -> None:
    m = new_map(2, 12)
    assert isinstance(hold(m, [f"A{n}" for n in range(1, 11)]).result, c.Held)


def test_hold_maximum_counts_distinct_seats() -> None:
    # Twelve names but only two seats: within the limit.
    m = new_map(rules=Rules(max_seats_per_hold=2))
    assert isinstance(hold(m, ["A1", "A2"] * 6).result, c.Held)


def test_hold_maximum_comes_from_the_show_rules() -> None:
    m = new_map(rules=Rules(max_seats_per_hold=2))
    rejected(hold(m, ["A1", "A2", "A3"]), "too_many_seats")


def test_hold_nothing_is_invalid() -> None:
    m = new_map()
    rejected(hold(m, []), "invalid")
    assert m.version == 0


def test_hold_id_in_use_by_a_hold_is_duplicate() -> None:
    m = new_map()
    hold(m, ["A1"])
    rejected(hold(m, ["A2"], token="bob"), "duplicate_id")
    assert m.status["A2"] == "free"
    assert m.holds["h1"].seats == ["A1"]


def test_hold_id_in_use_by_a_booking_is_duplicate() -> None:
    m = new_map()
    hold(m, ["A1"], hold_id="h1")
    confirm(m, "h1", booking_id="x")
    rejected(hold(m, ["A2"], hold_id="x"), "duplicate_id")


def test_hold_id_can_be_reused_once_the_hold_is_gone() -> None:
    m = new_map()
    hold(m, ["A1"])
    m.apply(c.Release(cid(), "h1", "alice"), 0)
    assert isinstance(hold(m, ["A2"]).result, c.Held)


def test_explicit_hold_may_take_an_accessible_seat() -> None:
    # Only best-available skips wheelchair spaces; naming one is a deliberate choice.
    layout = Layout([Seat("W1", "A", 1, "std", 0, 0, accessible=True)], focal_x=0, focal_y=0)
    assert isinstance(hold(new_map(layout=layout), ["W1"]).result, c.Held)


# --- hold best available (the seat map's checks; the picking is in test_best_available) --

def hold_best(m: SeatMap, count: int, hold_id: str = "hb", token: str = "alice",
              category: str | None = None, accessible: bool = False, at: int = 0) -> Outcome:
    return m.apply(c.HoldBest(cid(), hold_id, token, count, category, accessible), at)


def test_hold_best_holds_count_free_seats() -> None:
    m = new_map()
    out = hold_best(m, 3, at=5)
    assert isinstance(out.result, c.Held)
    assert len(out.result.seats) == 3 and out.result.expires_at_ms == 5 + TTL
    assert out.changes == [c.SeatChange(s, "held") for s in out.result.seats]
    assert all(m.holder[s] == "hb" for s in out.result.seats)


def test_hold_best_never_takes_unavailable_seats() -> None:
    m = new_map(1, 4)
    hold(m, ["A1", "A2"], hold_id="x")
    m.apply(c.Block(cid(), ["A3"]), 0)
    assert hold_best(m, 1).result.seats == ["A4"]  # type: ignore[union-attr]


@pytest.mark.parametrize("count", [0, -1])
def test_hold_best_count_below_one_is_invalid(count: int) -> None:
    rejected(hold_best(new_map(), count), "invalid")


def test_hold_best_over_the_maximum_is_too_many() -> None:
    rejected(hold_best(new_map(3, 20), 11), "too_many_seats")


def test_hold_best_unknown_category_is_invalid() -> None:
    rejected(hold_best(new_map(), 1, category="imax"), "invalid")


def test_hold_best_not_enough_free_seats() -> None:
    m = new_map(1, 4)
    hold(m, ["A1", "A2"], hold_id="x")
    rejected(hold_best(m, 3), "not_enough_seats")
    assert m.counts()["held"] == 2


def test_hold_best_not_enough_in_the_category() -> None:
    m = new_map(layout=grid_layout(3, 4, bands=[("premium", 1), ("standard", 2)]))
    rejected(hold_best(m, 5, category="premium"), "not_enough_seats")


def test_hold_best_duplicate_hold_id() -> None:
    m = new_map()
    hold(m, ["A1"], hold_id="hb")
    rejected(hold_best(m, 1), "duplicate_id")


# --- extend ----------------------------------------------------------------------------

def extend(m: SeatMap, extra: int, at: int = 0, token: str = "alice",
           hold_id: str = "h1") -> Outcome:
    return m.apply(c.Extend(cid(), hold_id, token, extra), at)


def test_extend_pushes_the_expiry_back() -> None:
    m = new_map()
    hold(m, ["A1"])
    out = extend(m, 60_000, at=100)
    assert out.result == c.Extended("h1", TTL + 60_000, ["A1"])
    assert m.holds["h1"].expires_ms == TTL + 60_000
    assert m.next_expiry_ms() == TTL + 60_000


def test_extend_changes_state_but_no_seat() -> None:
    # It is versioned (so the actor logs it and replay restores it) but no seat changed
    # colour, so the live map gets no seat changes.
    m = new_map()
    hold(m, ["A1"])
    out = extend(m, 1)
    assert out.changed and out.changes == []
    assert m.version == 2


def test_extend_by_someone_else_is_not_owner() -> None:
    m = new_map()
    hold(m, ["A1"])
    rejected(extend(m, 60_000, token="mallory"), "not_owner")
    assert m.holds["h1"].expires_ms == TTL


def test_extend_unknown_hold_is_not_found() -> None:
    rejected(extend(new_map(), 1, hold_id="nope"), "not_found")


@pytest.mark.parametrize("extra", [0, -5])
def test_extend_needs_positive_extra_time(extra: int) -> None:
    m = new_map()
    hold(m, ["A1"])
    rejected(extend(m, extra), "invalid")
    assert m.holds["h1"].expires_ms == TTL


def test_extend_is_capped_at_the_maximum_lifetime() -> None:
    m = new_map()
    hold(m, ["A1"], at=1_000)
    out = extend(m, 10 * LIFETIME, at=2_000)
    assert out.result == c.Extended("h1", 1_000 + LIFETIME, ["A1"])


def test_extend_at_the_cap_is_lifetime_exceeded() -> None:
    m = new_map()
    hold(m, ["A1"], at=1_000)
    extend(m, LIFETIME)
    version = m.version
    rejected(extend(m, 1), "lifetime_exceeded")
    assert m.holds["h1"].expires_ms == 1_000 + LIFETIME and m.version == version


def test_extend_step_by_step_reaches_the_cap_exactly() -> None:
    m = new_map()
    hold(m, ["A1"])
    for _ in range(int(LIFETIME / 7 / 60_000) + 5):
        extend(m, 7 * 60_000)
    assert m.holds["h1"].expires_ms == LIFETIME


def test_extend_of_an_expired_hold_is_too_late() -> None:
    m = new_map()
    hold(m, ["A1"])
    rejected(extend(m, 60_000, at=TTL), "hold_expired")


# --- release ---------------------------------------------------------------------------

def test_release_frees_the_seats() -> None:
    m = new_map()
    hold(m, ["A1", "A2"])
    out = m.apply(c.Release(cid(), "h1", "alice"), 10)
    assert out.result == c.Released("h1", ["A1", "A2"])
    assert out.changes == changes(("A1", "free"), ("A2", "free"))
    assert m.status["A1"] == "free" and m.holder == {} and m.holds == {}
    assert m.next_expiry_ms() is None


def test_release_by_someone_else_is_not_owner() -> None:
    m = new_map()
    hold(m, ["A1"])
    rejected(m.apply(c.Release(cid(), "h1", "mallory"), 0), "not_owner")
    assert m.status["A1"] == "held"


def test_release_twice_is_not_found_the_second_time() -> None:
    m = new_map()
    hold(m, ["A1"])
    m.apply(c.Release(cid(), "h1", "alice"), 0)
    rejected(m.apply(c.Release(cid(), "h1", "alice"), 0), "not_found")


# --- confirm ---------------------------------------------------------------------------

def test_confirm_books_the_held_seats() -> None:
    m = new_map()
    hold(m, ["A1", "A2"])
    out = confirm(m, at=500)
    assert out.result == c.Confirmed("b1", "h1", ["A1", "A2"])
    assert out.changes == changes(("A1", "booked"), ("A2", "booked"))
    assert m.holds == {} and m.holder == {"A1": "b1", "A2": "b1"}
    booking = m.bookings["b1"]
    assert (booking.token, booking.hold_id, booking.payment_ref, booking.booked_ms) == (
        "alice", "h1", "pay-1", 500)


def test_confirm_by_someone_else_is_not_owner() -> None:
    m = new_map()
    hold(m, ["A1"])
    rejected(confirm(m, token="mallory"), "not_owner")
    assert m.status["A1"] == "held" and m.bookings == {}


def test_confirm_without_a_hold_is_not_found() -> None:
    rejected(confirm(new_map()), "not_found")


def test_confirm_after_the_hold_ran_out_is_expired() -> None:
    # Even before the sweep freed the seats, a late payment must not book them.
    m = new_map()
    hold(m, ["A1", "A2"], at=0)
    r = rejected(confirm(m, at=TTL), "hold_expired")
    assert r.seats == ["A1", "A2"]
    assert m.bookings == {}


def test_confirm_just_before_expiry_books() -> None:
    m = new_map()
    hold(m, ["A1"], at=0)
    assert isinstance(confirm(m, at=TTL - 1).result, c.Confirmed)


def test_confirm_after_extend_uses_the_new_expiry() -> None:
    m = new_map()
    hold(m, ["A1"])
    extend(m, 60_000)
    assert isinstance(confirm(m, at=TTL + 59_999).result, c.Confirmed)


def test_confirm_twice_with_new_ids_is_checked_out() -> None:
    m = new_map()
    hold(m, ["A1"])
    confirm(m)
    assert rejected(confirm(m, booking_id="b2"), "hold_checked_out").booking_id == "b1"


def test_confirm_with_a_booking_id_in_use_is_duplicate() -> None:
    m = new_map()
    hold(m, ["A1"], hold_id="h1")
    confirm(m, "h1", booking_id="b1")
    hold(m, ["A2"], hold_id="h2")
    rejected(confirm(m, "h2", booking_id="b1"), "duplicate_id")
    assert m.status["A2"] == "held" and m.bookings["b1"].seats == ["A1"]


def test_confirm_with_a_booking_id_used_by_another_hold_is_duplicate() -> None:
    # Holds and bookings share one id space (seat -> holder id must be unambiguous).
    m = new_map()
    hold(m, ["A1"], hold_id="h1")
    hold(m, ["A2"], hold_id="h2")
    rejected(confirm(m, "h1", booking_id="h2"), "duplicate_id")


# --- cancel ----------------------------------------------------------------------------

def test_cancel_frees_the_booked_seats() -> None:
    m = new_map()
    hold(m, ["A1", "A2"])
    confirm(m)
    out = m.apply(c.Cancel(cid(), "b1", "alice"), 0)
    assert out.result == c.Cancelled("b1", ["A1", "A2"])
    assert out.changes == changes(("A1", "free"), ("A2", "free"))
    assert m.bookings == {} and m.holder == {}
    assert isinstance(hold(m, ["A1"], hold_id="h9", token="bob").result, c.Held)


def test_cancel_by_someone_else_is_not_owner() -> None:
    m = new_map()
    hold(m, ["A1"])
    confirm(m)
    rejected(m.apply(c.Cancel(cid(), "b1", "mallory"), 0), "not_owner")
    assert m.status["A1"] == "booked"


def test_cancel_unknown_booking_is_not_found() -> None:
    rejected(new_map().apply(c.Cancel(cid(), "nope", "alice"), 0), "not_found")


def test_cancel_a_hold_id_is_not_found() -> None:
    # Cancel is for bookings; a hold is released instead.
    m = new_map()
    hold(m, ["A1"])
    rejected(m.apply(c.Cancel(cid(), "h1", "alice"), 0), "not_found")


# --- block / unblock -------------------------------------------------------------------

def block(m: SeatMap, seats: list[str]) -> Outcome:
    return m.apply(c.Block(cid(), seats), 0)


def unblock(m: SeatMap, seats: list[str]) -> Outcome:
    return m.apply(c.Unblock(cid(), seats), 0)


def test_block_takes_free_seats_off_sale() -> None:
    m = new_map()
    out = block(m, ["A1", "A2"])
    assert out.result == c.BlockedSeats(["A1", "A2"])
    assert out.changes == changes(("A1", "blocked"), ("A2", "blocked"))
    rejected(hold(m, ["A1"]), "seats_unavailable")


def test_block_held_or_booked_seats_is_refused() -> None:
    m = new_map()
    hold(m, ["A1"], hold_id="h1")
    hold(m, ["A2"], hold_id="h2")
    confirm(m, "h2", booking_id="b2")
    r = rejected(block(m, ["A1", "A2", "A3"]), "seats_unavailable")
    assert r.seats == ["A1", "A2"]
    assert m.status["A3"] == "free"


def test_block_reports_only_seats_that_changed() -> None:
    m = new_map()
    block(m, ["A1"])
    out = block(m, ["A1", "A2"])
    assert out.changes == changes(("A2", "blocked"))
    assert m.version == 2


def test_block_of_blocked_seats_changes_nothing() -> None:
    m = new_map()
    block(m, ["A1"])
    out = block(m, ["A1"])
    assert out.result == c.BlockedSeats(["A1"]) and out.changes == [] and m.version == 1


def test_block_unknown_seats() -> None:
    assert rejected(block(new_map(), ["A1", "ZZ1"]), "unknown_seats").seats == ["ZZ1"]


def test_block_nothing_is_invalid() -> None:
    rejected(block(new_map(), []), "invalid")


def test_unblock_puts_seats_back_on_sale() -> None:
    m = new_map()
    block(m, ["A1", "A2"])
    out = unblock(m, ["A1"])
    assert out.result == c.UnblockedSeats(["A1"])
    assert out.changes == changes(("A1", "free"))
    assert m.status["A1"] == "free" and m.status["A2"] == "blocked"


def test_unblock_leaves_held_and_free_seats_alone() -> None:
    m = new_map()
    hold(m, ["A1"])
    out = unblock(m, ["A1", "A2"])
    assert out.changes == [] and m.status["A1"] == "held" and m.version == 1


def test_unblock_cannot_sell_an_out_of_service_seat() -> None:
    # A seat the layout marks blocked (broken, camera spot) is not partner inventory.
    layout = Layout([Seat("A1", "A", 1, "std", 0, 0, blocked=True),
                     Seat("A2", "A", 2, "std", 1, 0)], focal_x=0.5, focal_y=0)
    m = new_map(layout=layout)
    block(m, ["A2"])
    r = rejected(unblock(m, ["A1", "A2"]), "seats_unavailable")
    assert r.seats == ["A1"]
    assert m.status == {"A1": "blocked", "A2": "blocked"}


def test_unblock_unknown_and_empty() -> None:
    m = new_map()
    assert rejected(unblock(m, ["nope"]), "unknown_seats").seats == ["nope"]
    rejected(unblock(m, []), "invalid")


# --- expire ----------------------------------------------------------------------------

def test_expire_frees_holds_that_are_due_and_nothing_else() -> None:
    m = new_map()
    hold(m, ["A1"], hold_id="early", at=0)
    hold(m, ["A2", "A3"], hold_id="on-time", at=100)
    hold(m, ["A4"], hold_id="late", at=101)
    hold(m, ["A5"], hold_id="paid", at=0)
    confirm(m, "paid", booking_id="b")
    block(m, ["A6"])
    out = m.apply(c.Expire(cid()), 100 + TTL)  # exactly on-time's expiry: due
    assert out.result == c.ExpiredHolds(["early", "on-time"], ["A1", "A2", "A3"])
    assert out.changes == changes(("A1", "free"), ("A2", "free"), ("A3", "free"))
    assert list(m.holds) == ["late"]
    assert m.status["A4"] == "held" and m.status["A5"] == "booked" and m.status["A6"] == "blocked"
    assert m.next_expiry_ms() == 101 + TTL


def test_expire_with_nothing_due_changes_nothing() -> None:
    m = new_map()
    hold(m, ["A1"])
    out = m.apply(c.Expire(cid()), TTL - 1)
    assert out.result == c.ExpiredHolds([], []) and not out.changed and m.version == 1


def test_expire_counts_as_one_version_for_many_holds() -> None:
    m = new_map()
    hold(m, ["A1"], hold_id="h1")
    hold(m, ["A2"], hold_id="h2")
    m.apply(c.Expire(cid()), TTL)
    assert m.version == 3


def test_expire_is_not_answered_from_the_retry_cache() -> None:
    # The actor sweeps with a fixed id every batch; a client command that happened to
    # use that id must not turn the sweep into a replayed answer (holds would never end).
    m = new_map()
    hold(m, ["A1"], hold_id="h1")
    m.apply(c.Hold("expire", "h2", "bob", ["A2"]), 0)
    out = m.apply(c.Expire("expire"), TTL)
    assert out.result == c.ExpiredHolds(["h1", "h2"], ["A1", "A2"])
    assert m.holds == {}


def test_expire_sweeps_repeat_with_the_same_id() -> None:
    m = new_map()
    hold(m, ["A1"], hold_id="h1", at=0)
    m.apply(c.Expire("sweep"), TTL)
    hold(m, ["A1"], hold_id="h2", at=TTL)
    assert m.apply(c.Expire("sweep"), 2 * TTL).result == c.ExpiredHolds(["h2"], ["A1"])


# --- idempotency -----------------------------------------------------------------------

def test_repeated_cmd_id_returns_the_first_answer_and_changes_nothing() -> None:
    m = new_map()
    cmd = c.Hold("same", "h1", "alice", ["A1"])
    first = m.apply(cmd, 0)
    before = state(m)
    again = m.apply(cmd, 5)
    assert again.result == first.result and again.changes == []
    assert state(m) == before


def test_repeated_cmd_id_is_answered_even_after_the_state_moved_on() -> None:
    m = new_map()
    first = m.apply(c.Hold("same", "h1", "alice", ["A1"]), 0)
    m.apply(c.Release(cid(), "h1", "alice"), 0)
    # Applied afresh this would hold A1 again; a retry must not.
    again = m.apply(c.Hold("same", "h1", "alice", ["A1"]), 0)
    assert again.result == first.result
    assert m.status["A1"] == "free" and m.holds == {}


def test_repeated_rejected_cmd_id_stays_rejected() -> None:
    m = new_map()
    hold(m, ["A1"], hold_id="x", token="bob")
    first = m.apply(c.Hold("same", "h1", "alice", ["A1"]), 0)
    m.apply(c.Release(cid(), "x", "bob"), 0)
    before = state(m)
    again = m.apply(c.Hold("same", "h1", "alice", ["A1"]), 0)
    assert isinstance(first.result, c.Rejected) and again.result == first.result
    assert state(m) == before


def test_answers_are_remembered_by_time_not_by_count() -> None:
    m = new_map(1, 1)
    m.apply(c.Block("oldest", ["A1"]), 0)
    for i in range(20_000):  # a rush: far more answers than any count window kept
        m.apply(c.Unblock(f"filler-{i}", ["A1"]), ANSWER_MEMORY_MS - 1)
    assert "oldest" in m._answers
    m.apply(c.Unblock("later", ["A1"]), ANSWER_MEMORY_MS + 1)
    assert "oldest" not in m._answers and "later" in m._answers
    assert "filler-0" in m._answers  # given within the window of the newest


def test_a_snapshot_carries_the_newest_answers() -> None:
    m = new_map(1, 1)
    for i in range(SNAPSHOT_ANSWERS + 10):
        m.apply(c.Unblock(f"u-{i}", ["A1"]), i)
    back = SeatMap.from_snapshot(m.snapshot())
    assert list(back._answers) == list(m._answers)[-SNAPSHOT_ANSWERS:]
    again = back.apply(c.Unblock(f"u-{SNAPSHOT_ANSWERS + 9}", ["A1"]), 0)
    assert again.result == c.UnblockedSeats(["A1"]) and not again.changed


def test_a_confirm_resent_after_its_answer_is_forgotten_is_still_confirmed() -> None:
    m = new_map()
    hold(m, ["A1"], hold_id="h", token="t")
    first = m.apply(c.Confirm("conf", "h", "t", "b1", "pay", booking=b"facts"), 0)
    assert isinstance(first.result, c.Confirmed)
    m.apply(c.Block(cid(), ["B1"]), 3 * ANSWER_MEMORY_MS)  # the answer is forgotten
    assert "conf" not in m._answers
    before = state(m)
    again = m.apply(c.Confirm("conf", "h", "t", "b1", "pay", booking=b"facts"),
                    3 * ANSWER_MEMORY_MS)
    assert again.result == first.result and not again.changed
    assert state(m)["bookings"] == before["bookings"]
    # another booking id for the same hold is not the same confirm
    other = m.apply(c.Confirm(cid(), "h", "t", "b2", "pay"), 3 * ANSWER_MEMORY_MS)
    assert isinstance(other.result, c.Rejected) and other.result.code == "hold_checked_out"
    listed = m.apply(c.ListBookings(cid()), 0)
    assert isinstance(listed.result, c.Bookings) and not listed.changed
    assert [(b.booking_id, b.seats, b.booking) for b in listed.result.bookings] == [
        ("b1", ["A1"], b"facts")]


def test_a_cancel_resent_after_its_answer_is_forgotten_is_still_cancelled() -> None:
    m = new_map()
    hold(m, ["A1"], hold_id="h", token="t")
    m.apply(c.Confirm(cid(), "h", "t", "b1", "pay"), 0)
    first = m.apply(c.Cancel("cancel", "b1", "t"), 0)
    assert isinstance(first.result, c.Cancelled)
    m.apply(c.Block(cid(), ["B1"]), 3 * ANSWER_MEMORY_MS)
    again = m.apply(c.Cancel("cancel", "b1", "t"), 3 * ANSWER_MEMORY_MS)
    assert again.result == first.result and not again.changed
    # and the cancelled id cannot be booked again
    hold(m, ["A2"], hold_id="h2", token="t", at=3 * ANSWER_MEMORY_MS)
    dup = m.apply(c.Confirm(cid(), "h2", "t", "b1", "pay"), 3 * ANSWER_MEMORY_MS)
    assert isinstance(dup.result, c.Rejected) and dup.result.code == "duplicate_id"


# --- versions and events ---------------------------------------------------------------

def test_version_counts_changing_commands_only() -> None:
    m = new_map()
    steps: list[tuple[c.Command, bool]] = [
        (c.Hold(cid(), "h1", "alice", ["A1", "A2"]), True),
        (c.Hold(cid(), "h2", "bob", ["A2"]), False),            # taken
        (c.Extend(cid(), "h1", "alice", 1_000), True),
        (c.Extend(cid(), "h1", "bob", 1_000), False),           # not owner
        (c.Confirm(cid(), "h1", "alice", "b1", "p"), True),
        (c.Cancel(cid(), "b1", "bob"), False),                  # not owner
        (c.Block(cid(), ["B1"]), True),
        (c.Block(cid(), ["B1"]), False),                        # no-op
        (c.Unblock(cid(), ["B2"]), False),                      # no-op
        (c.Expire(cid()), False),                               # nothing due
        (c.Cancel(cid(), "b1", "alice"), True),
    ]
    expected = 0
    for cmd, changes_state in steps:
        out = m.apply(cmd, 0)
        expected += changes_state
        assert out.changed == changes_state, cmd
        assert m.version == expected, cmd


def test_seat_changes_list_exactly_the_seats_whose_status_changed() -> None:
    m = new_map()
    seen = dict(m.status)
    for cmd in [
        c.Block(cid(), ["A3"]),
        c.Hold(cid(), "h1", "alice", ["A1", "A2"]),
        c.Block(cid(), ["A3", "A4"]),
        c.Unblock(cid(), ["A3", "A5"]),
        c.Extend(cid(), "h1", "alice", 10),
        c.Confirm(cid(), "h1", "alice", "b1", "p"),
        c.Hold(cid(), "h2", "bob", ["B1"]),
        c.Expire(cid()),
    ]:
        out = m.apply(cmd, TTL + 20 if isinstance(cmd, c.Expire) else 0)
        diff = {s: st for s, st in m.status.items() if seen[s] != st}
        assert {ch.seat: ch.status for ch in out.changes} == diff, cmd
        assert len(out.changes) == len(diff), cmd  # no seat listed twice
        seen = dict(m.status)


# --- snapshots and replay --------------------------------------------------------------

def busy_history() -> list[tuple[c.Command, int]]:
    """Commands touching every kind of state, including rejected ones and a retry."""
    return [
        (c.Hold("1", "h1", "alice", ["A1", "A2"]), 0),
        (c.Hold("2", "h2", "bob", ["A2", "A3"]), 10),         # rejected
        (c.HoldBest("3", "h3", "carol", 3), 20),
        (c.Extend("4", "h1", "alice", 120_000), 30),
        (c.Confirm("5", "h3", "carol", "b3", "pay-3"), 40),
        (c.Block("6", ["C1", "C2"]), 50),
        (c.Hold("7", "h4", "dave", ["B8"]), 60),
        (c.Hold("7", "h4", "dave", ["B8"]), 61),               # a retry
        (c.Unblock("8", ["C2"]), 70),
        (c.Hold("9", "h5", "erin", ["C8"]), 80),
        (c.Expire("sweep"), 80 + TTL),                          # h4, h5 run out
        (c.Hold("10", "h6", "frank", ["B8"]), 90 + TTL),
    ]


def test_snapshot_round_trip_keeps_state() -> None:
    m = new_map()
    for cmd, at in busy_history():
        m.apply(cmd, at)
    wire = msgspec.msgpack.encode(m.snapshot())  # the way the store keeps it
    copy = SeatMap.from_snapshot(msgspec.msgpack.decode(wire, type=Snapshot))
    assert state(copy) == state(m)


def test_snapshot_round_trip_keeps_behaviour() -> None:
    m = new_map()
    for cmd, at in busy_history():
        m.apply(cmd, at)
    copy = SeatMap.from_snapshot(m.snapshot())
    later: list[tuple[c.Command, int]] = [
        (c.Hold("1", "h1", "alice", ["A1"]), 0),                # a retry: old answer
        (c.Hold("2", "h2", "bob", ["A2", "A3"]), 10),           # a rejected retry
        (c.Extend("11", "h1", "alice", LIFETIME), 100),
        (c.HoldBest("12", "h7", "gina", 4), 100),
        (c.Unblock("13", ["C1"]), 100),
        (c.Expire("sweep"), 2 * LIFETIME),
        (c.Cancel("14", "b3", "carol"), 2 * LIFETIME),
        (c.HoldBest("15", "h8", "hank", 8), 2 * LIFETIME),
    ]
    for cmd, at in later:
        assert copy.apply(cmd, at) == m.apply(cmd, at), cmd
    assert state(copy) == state(m)


def test_snapshot_is_not_changed_by_later_commands() -> None:
    m = new_map()
    hold(m, ["A1"])
    snap = m.snapshot()
    extend(m, 60_000)
    block(m, ["B1"])
    restored = SeatMap.from_snapshot(snap)
    assert restored.holds["h1"].expires_ms == TTL
    assert restored.status["B1"] == "free" and restored.version == 1


def test_snapshot_restores_out_of_service_seats() -> None:
    layout = Layout([Seat("A1", "A", 1, "std", 0, 0, blocked=True),
                     Seat("A2", "A", 2, "std", 1, 0)], focal_x=0.5, focal_y=0)
    m = new_map(layout=layout)
    copy = SeatMap.from_snapshot(m.snapshot())
    assert copy.status == {"A1": "blocked", "A2": "free"}


def test_replay_rebuilds_the_same_state() -> None:
    # The actor recovers by applying its log to a fresh seat map.
    live = new_map()
    for cmd, at in busy_history():
        live.apply(cmd, at)
    replayed = new_map()
    for cmd, at in busy_history():
        replayed.apply(cmd, at)
    assert state(replayed) == state(live)


def test_replay_of_only_the_changing_commands_rebuilds_the_seats() -> None:
    # What the actor's log holds: only commands that changed something, via the wire.
    live = new_map()
    log: list[tuple[bytes, int]] = []
    for cmd, at in busy_history():
        if live.apply(cmd, at).changed:
            log.append((c.command_encoder.encode(cmd), at))
    replayed = new_map()
    for raw, at in log:
        replayed.apply(c.command_decoder.decode(raw), at)
    mine, theirs = state(live), state(replayed)
    del mine["answers"], theirs["answers"]  # rejected answers are not logged
    assert theirs == mine


# --- wire names (other components code against them) ------------------------------

@pytest.mark.parametrize(("cmd", "tag"), [
    (c.Hold("1", "h", "t", ["A1"]), "hold"),
    (c.HoldBest("1", "h", "t", 2), "hold_best"),
    (c.Extend("1", "h", "t", 5), "extend"),
    (c.Release("1", "h", "t"), "release"),
    (c.Confirm("1", "h", "t", "b", "p"), "confirm"),
    (c.Cancel("1", "b", "t"), "cancel"),
    (c.Block("1", ["A1"]), "block"),
    (c.Unblock("1", ["A1"]), "unblock"),
    (c.Expire("1"), "expire"),
])
def test_commands_round_trip_with_stable_tags(cmd: c.Command, tag: str) -> None:
    raw = c.command_encoder.encode(cmd)
    assert msgspec.msgpack.decode(raw)["type"] == tag
    assert c.command_decoder.decode(raw) == cmd


def test_results_round_trip_as_a_batch() -> None:
    results: list[c.Result] = [
        c.Held("h", ["A1"], 5), c.Extended("h", 6), c.Released("h", ["A1"]),
        c.Confirmed("b", "h", ["A1"]), c.Cancelled("b", ["A1"]), c.BlockedSeats(["A1"]),
        c.UnblockedSeats(["A1"]), c.ExpiredHolds(["h"], ["A1"]),
        c.Rejected("seats_unavailable", "taken", ["A1"]),
    ]
    assert c.results_decoder.decode(c.command_encoder.encode(results)) == results


def test_seat_change_is_a_pair_on_the_wire() -> None:
    # The live page expects ["A1", "held"], not an object.
    assert msgspec.json.encode(c.SeatChange("A1", "held")) == b'["A1","held"]'


# --- holder caps and the show's hold period (issue 15) ----------------------------------

def test_device_and_network_caps_count_every_hold_of_their_holder() -> None:
    m = new_map()

    def hold_as(hold_id: str, seats: list[str], device: str, network: str = "n1") -> Outcome:
        return m.apply(c.Hold(cid(), hold_id, "t", seats, device=device, device_max_seats=3,
                              network=network, network_max_seats=5), 0)

    assert isinstance(hold_as("h1", ["A1", "A2"], "d1").result, c.Held)
    assert rejected(hold_as("h2", ["A3", "A4"], "d1"), "device_limit")  # 2 + 2 > 3
    assert isinstance(hold_as("h3", ["A3"], "d1").result, c.Held)       # 3, at the cap
    # a new device (cookies dropped) on the same network: the network's cap binds
    assert isinstance(hold_as("h4", ["B1", "B2"], "d2").result, c.Held)  # network at 5
    assert rejected(hold_as("h5", ["B3"], "d3"), "network_limit")
    assert isinstance(hold_as("h6", ["B3"], "d3", network="n2").result, c.Held)
    # freed seats count no more, and a snapshot rebuilds the counts
    m.apply(c.Release(cid(), "h1", "t"), 0)
    back = SeatMap.from_snapshot(m.snapshot())
    assert back.held_by == m.held_by == {"d1": 1, "d2": 2, "d3": 1, "n1": 3, "n2": 1}


def test_a_hold_lasts_the_period_and_lifetime_its_command_carries() -> None:
    m = new_map()
    out = m.apply(c.Hold(cid(), "h", "t", ["A1"], ttl_ms=120_000, max_lifetime_ms=300_000), 1_000)
    assert isinstance(out.result, c.Held) and out.result.expires_at_ms == 121_000
    ext = m.apply(c.Extend(cid(), "h", "t", 1_000_000), 2_000)
    assert isinstance(ext.result, c.Extended) and ext.result.expires_at_ms == 301_000
    rejected(m.apply(c.Extend(cid(), "h", "t", 1_000), 3_000), "lifetime_exceeded")
    peek = m.apply(c.Peek(cid(), "h", "t"), 3_000).result
    assert isinstance(peek, c.HoldInfo) and peek.max_expires_ms == 301_000
