"""The per-customer seat cap in the seat map (pure domain): holds count, releases, expiry and
checkout give seats back, other customers and anonymous holds are unaffected, replay from a
snapshot keeps the count."""
from __future__ import annotations

import itertools

import msgspec

from actors import commands as c
from actors.layout import Rules, ShowConfig, grid_layout
from actors.seatmap import Outcome, SeatMap, Snapshot

_ids = itertools.count()
TTL = Rules().hold_ttl_ms


def new_map() -> SeatMap:
    return SeatMap(ShowConfig("show-cap", grid_layout(3, 8), Rules()))


def hold(m: SeatMap, seats: list[str], hold_id: str, who: str = "u:ann", cap: int = 4,
         at: int = 0) -> Outcome:
    return m.apply(c.Hold(f"c{next(_ids)}", hold_id, "tok", seats, customer=who,
                          customer_max_seats=cap), at)


def best(m: SeatMap, count: int, hold_id: str, who: str = "u:ann", cap: int = 4) -> Outcome:
    return m.apply(c.HoldBest(f"c{next(_ids)}", hold_id, "tok", count, customer=who,
                              customer_max_seats=cap), 0)


def code(outcome: Outcome) -> str:
    return outcome.result.code if isinstance(outcome.result, c.Rejected) else "ok"


def test_cap_counts_seats_across_holds_and_best_available() -> None:
    m = new_map()
    assert code(hold(m, ["A1", "A2"], "h1")) == "ok"
    assert code(best(m, 2, "h2")) == "ok"
    refused = hold(m, ["C1"], "h3")
    assert code(refused) == "customer_limit"
    assert not refused.changed and m.status["C1"] == "free"
    assert code(best(m, 1, "h4")) == "customer_limit"
    assert m.held_by == {"u:ann": 4}


def test_one_request_over_the_cap_is_refused_whole() -> None:
    m = new_map()
    assert code(hold(m, ["A1", "A2", "A3"], "h1", cap=2)) == "customer_limit"
    assert m.held_by == {} and m.counts()["held"] == 0


def test_other_customers_and_anonymous_holds_are_not_capped() -> None:
    m = new_map()
    assert code(hold(m, ["A1", "A2", "A3", "A4"], "h1")) == "ok"
    assert code(hold(m, ["B1", "B2", "B3", "B4"], "h2", who="v:bob")) == "ok"
    assert code(hold(m, ["C1", "C2", "C3", "C4", "C5"], "h3", who="")) == "ok"
    assert code(hold(m, ["C6"], "h4", cap=0)) == "ok"  # no cap given: none applies


def test_release_expiry_and_checkout_give_seats_back() -> None:
    m = new_map()
    assert code(hold(m, ["A1", "A2"], "h1")) == "ok"
    assert code(hold(m, ["A3", "A4"], "h2", at=1000)) == "ok"
    m.apply(c.Release("r1", "h1", "tok"), 10)
    assert m.held_by == {"u:ann": 2}
    m.apply(c.Confirm("k1", "h2", "tok", "b1", "pay"), 20)
    assert m.held_by == {}  # booked seats are not held any more
    assert code(hold(m, ["B1", "B2", "B3", "B4"], "h3", at=100)) == "ok"
    m.apply(c.Expire("e1"), 100 + TTL)
    assert m.held_by == {} and m.status["B1"] == "free"
    assert code(hold(m, ["C1", "C2", "C3", "C4"], "h4", at=200 + TTL)) == "ok"


def test_snapshot_round_trip_keeps_the_count_and_old_snapshots_still_load() -> None:
    m = new_map()
    hold(m, ["A1", "A2", "A3"], "h1")
    raw = msgspec.msgpack.encode(m.snapshot())
    again = SeatMap.from_snapshot(msgspec.msgpack.decode(raw, type=Snapshot))
    assert again.held_by == {"u:ann": 3}
    assert code(hold(again, ["B1", "B2"], "h2")) == "customer_limit"
    # a snapshot written before holds had a customer decodes with customer ""
    old = msgspec.msgpack.encode({"token": "t", "seats": ["A1"], "created_ms": 0,
                                  "expires_ms": 5})
    from actors.seatmap import HoldRecord
    assert msgspec.msgpack.decode(old, type=HoldRecord).customer == ""


def test_commands_without_the_new_fields_decode_and_encode_compactly() -> None:
    plain = c.Hold("c1", "h1", "tok", ["A1"])
    raw = c.command_encoder.encode(plain)
    assert b"customer" not in raw  # defaults are left out of the log
    assert c.command_decoder.decode(raw) == plain
