"""Random command sequences against a trivially correct model of the seat map.

The model keeps plain dicts (hold id -> seats, booking id -> seats, blocked set) and
re-derives every answer from the rules in the issue; after every step the real seat map
must agree on the answer, on every seat's status and on the version. Holds carry their
holder data (token hash, pricing inputs -> quote, a payment lock): the answers carry the
quote, and the snapshot and a replay rebuild it byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors import commands as c
from actors.layout import Layout, Rules, Seat, ShowConfig
from actors.seatmap import ANSWER_MEMORY_MS, EXPIRED_MEMORY_MS, Outcome, SeatMap, SeatPlan, Snapshot

from .test_seatmap import state

RULES = Rules(max_seats_per_hold=4, hold_ttl_ms=10_000, hold_max_lifetime_ms=25_000)


def _layout() -> Layout:
    """Two small rows of "front", one of "back"; an aisle after seat 2; a wheelchair space
    and its companion seat; one seat out of service."""
    seats: list[Seat] = []
    for y, (name, category) in enumerate([("A", "front"), ("B", "front"), ("C", "back")]):
        for n in range(1, 6):
            x = n - 1 if n <= 2 else n  # aisle between 2 and 3
            seats.append(Seat(
                f"{name}{n}", name, n, category, x, y,
                accessible=(name, n) == ("C", 1),
                companion=(name, n) == ("C", 2),
                blocked=(name, n) == ("B", 5),
            ))
    return Layout(seats, focal_x=2.5, focal_y=1)


def quoter(pricing: bytes, seats: list[tuple[str, str]], now_ms: int) -> bytes | None:
    """A pure stand-in for the web tier's pricing: b"front-only" has no price for "back"."""
    if pricing == b"front-only" and any(cat == "back" for _, cat in seats):
        return None
    return b"%s|%s|%d" % (pricing, ",".join(f"{s}:{c_}" for s, c_ in seats).encode(), now_ms)


LAYOUT = _layout()
PLAN = SeatPlan(LAYOUT, quoter)
CONFIG = ShowConfig("stateful", LAYOUT, RULES)
SEATS = {s.id: s for s in LAYOUT.seats}
OUT_OF_SERVICE = {s.id for s in LAYOUT.seats if s.blocked}

seat_ids = st.sampled_from([*SEATS, "Z9"])  # Z9 is not in the layout
seat_lists = st.lists(seat_ids, max_size=5)  # 5 distinct seats is one too many
ids = st.sampled_from(["x0", "x1", "x2", "x3", "x4"])  # holds and bookings share them
tokens = st.sampled_from(["alice", "bob"])
pricings = st.sampled_from([b"", b"p", b"front-only"])


@dataclass
class MHold:
    token: str
    seats: list[str]
    created: int
    expires: int
    quote: bytes = b""
    lock: str = ""


class SeatMapMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sut = SeatMap(CONFIG, PLAN)
        self.now = 0
        self.n = 0
        # The model.
        self.holds: dict[str, MHold] = {}
        self.bookings: dict[str, tuple[str, list[str]]] = {}
        self.booked_hold: dict[str, str] = {}  # booking id -> the hold it was
        self.expired: dict[str, tuple[str, list[str], int]] = {}  # hold -> token, seats, at
        self.blocked: set[str] = set()
        self.version = 0
        # Every command applied, for retries and the replay check.
        self.history: list[tuple[c.Command, int]] = []
        self.answers: dict[str, c.Result] = {}
        self.answered_at: dict[str, int] = {}
        self.cancelled: dict[str, list[str]] = {}  # booking id -> its seats
        # Seat statuses before the last command, and its outcome (for check_changes).
        nothing = Outcome(c.ExpiredHolds([], []), [], False)
        self._pending: tuple[dict[str, str], Outcome] = ({}, nothing)

    # --- model helpers ---------------------------------------------------------------

    def status(self, seat: str) -> str:
        if seat in OUT_OF_SERVICE or seat in self.blocked:
            return "blocked"
        if any(seat in h.seats for h in self.holds.values()):
            return "held"
        if any(seat in b[1] for b in self.bookings.values()):
            return "booked"
        return "free"

    def cid(self) -> str:
        self.n += 1
        return f"c{self.n}"

    def run(self, cmd: c.Command, expected: c.Result | str | None,
            changed: bool) -> c.Result:
        """Apply to the seat map; check the answer against the model's.

        `expected` is an exact result, a rejection code, or None (checked by the caller)."""
        before = dict(self.sut.status)  # equal to the model's: the invariants checked it
        out = self.sut.apply(cmd, self.now)
        self.history.append((cmd, self.now))
        if not isinstance(cmd, c.Expire | c.Peek):
            self.answers[cmd.cmd_id] = out.result
            self.answered_at[cmd.cmd_id] = self.now
        if isinstance(expected, str):
            assert isinstance(out.result, c.Rejected), (cmd, out.result)
            assert out.result.code == expected, (cmd, out.result)
        elif expected is not None:
            assert out.result == expected, (cmd, out.result)
        assert out.changed == changed, (cmd, out)
        self.version += changed
        self._pending = (before, out)
        return out.result

    def check_changes(self) -> None:
        """The seat changes list exactly the seats whose status changed in the model."""
        before, out = self._pending
        after = {s: self.status(s) for s in SEATS}
        diff = {s: st_ for s, st_ in after.items() if before[s] != st_}
        assert {ch.seat: ch.status for ch in out.changes} == diff
        assert len(out.changes) == len(diff)

    def live(self, hold_id: str, token: str) -> MHold | str:
        hold = self.holds.get(hold_id)
        if hold is None:
            if hold_id in self.expired:
                return "not_owner" if self.expired[hold_id][0] != token else "hold_expired"
            for booking_id, was in self.booked_hold.items():
                if was == hold_id and booking_id in self.bookings:
                    return ("not_owner" if self.bookings[booking_id][0] != token
                            else "hold_checked_out")
            return "not_found"
        if hold.token != token:
            return "not_owner"
        if hold.expires <= self.now:
            return "hold_expired"
        return hold

    def id_taken(self, some_id: str) -> bool:
        return some_id in self.holds or some_id in self.bookings

    def target(self, data: st.DataObject, owned: dict[str, str]) -> tuple[str, str]:
        """An id and token aimed mostly at something that exists and at its owner, so the
        success paths run as often as the refusals."""
        some_id = data.draw(st.sampled_from([*sorted(owned) * 4, "x0", "x4"]), label="id")
        owner = owned.get(some_id, "alice")
        token = data.draw(st.sampled_from([owner, owner, owner, "mallory"]), label="token")
        return some_id, token

    def hold_owners(self) -> dict[str, str]:
        return {h: r.token for h, r in self.holds.items()}

    # --- rules -----------------------------------------------------------------------

    def quote(self, pricing: bytes, seats: list[str]) -> bytes | None:
        return quoter(pricing, [(s, SEATS[s].category) for s in seats], self.now) \
            if pricing else b""

    @rule(seats=seat_lists, hold_id=ids, token=tokens, pricing=pricings)
    def hold(self, seats: list[str], hold_id: str, token: str, pricing: bytes) -> None:
        wanted = list(dict.fromkeys(seats))
        unknown = [s for s in wanted if s not in SEATS]
        taken = [s for s in wanted if s in SEATS and self.status(s) != "free"]
        expected: c.Result | str
        if not wanted:
            expected = "invalid"
        elif len(wanted) > RULES.max_seats_per_hold:
            expected = "too_many_seats"
        elif self.id_taken(hold_id):
            expected = "duplicate_id"
        elif unknown:
            expected = "unknown_seats"
        elif taken:
            expected = "seats_unavailable"
        elif (quote := self.quote(pricing, wanted)) is None:
            expected = "not_for_sale"
        else:
            expected = c.Held(hold_id, wanted, self.now + RULES.hold_ttl_ms, quote)
        result = self.run(c.Hold(self.cid(), hold_id, token, seats, pricing=pricing), expected,
                          isinstance(expected, c.Held))
        if isinstance(result, c.Rejected) and expected in ("unknown_seats", "seats_unavailable"):
            assert result.seats == (unknown or taken)  # exactly the offending seats
        if isinstance(expected, c.Held):
            self.holds[hold_id] = MHold(token, wanted, self.now, expected.expires_at_ms,
                                        expected.quote)
        self.check_changes()

    @rule(count=st.integers(0, 5), hold_id=ids, token=tokens,
          category=st.sampled_from([None, None, "front", "back", "balcony"]),
          accessible=st.booleans(), pricing=st.sampled_from([b"", b"p"]))
    def hold_best(self, count: int, hold_id: str, token: str, category: str | None,
                  accessible: bool, pricing: bytes) -> None:
        def eligible(s: Seat) -> bool:
            return (self.status(s.id) == "free"
                    and (category is None or s.category == category)
                    and (accessible or not (s.accessible or s.companion)))

        n_eligible = sum(eligible(s) for s in LAYOUT.seats)
        expected: str | None
        if count < 1:
            expected = "invalid"
        elif count > RULES.max_seats_per_hold:
            expected = "too_many_seats"
        elif self.id_taken(hold_id):
            expected = "duplicate_id"
        elif category == "balcony":
            expected = "invalid"
        elif n_eligible < count:
            expected = "not_enough_seats"
        else:
            expected = None
        cmd = c.HoldBest(self.cid(), hold_id, token, count, category, accessible,
                         pricing=pricing)
        result = self.run(cmd, expected, expected is None)
        if expected is None:
            # Which seats is the picker's business; that they are allowed is ours.
            assert isinstance(result, c.Held)
            assert len(result.seats) == count == len(set(result.seats))
            assert all(eligible(SEATS[s]) for s in result.seats)
            assert result.expires_at_ms == self.now + RULES.hold_ttl_ms
            assert result.quote == self.quote(pricing, result.seats)  # priced as picked
            self.holds[hold_id] = MHold(token, result.seats, self.now, result.expires_at_ms,
                                        result.quote)
        self.check_changes()

    @rule(data=st.data(), extra=st.sampled_from([0, 1_000, 7_000, 7_000, 30_000]),
          lock=st.sampled_from(["", "", "bk"]))
    def extend(self, data: st.DataObject, extra: int, lock: str) -> None:
        hold_id, token = self.target(data, self.hold_owners())
        expected: c.Result | str
        hold = self.live(hold_id, token)
        if extra <= 0:
            expected = "invalid"
        elif isinstance(hold, str):
            expected = hold
        elif hold.expires >= hold.created + RULES.hold_max_lifetime_ms:
            expected = "lifetime_exceeded"
        else:
            hold.expires = min(hold.expires + extra, hold.created + RULES.hold_max_lifetime_ms)
            hold.lock = lock or hold.lock
            expected = c.Extended(hold_id, hold.expires, hold.seats, hold.quote)
        self.run(c.Extend(self.cid(), hold_id, token, extra, lock=lock), expected,
                 isinstance(expected, c.Extended))
        self.check_changes()

    @rule(data=st.data(), unlock=st.sampled_from(["", "", "bk"]))
    def release(self, data: st.DataObject, unlock: str) -> None:
        hold_id, token = self.target(data, self.hold_owners())
        hold = self.live(hold_id, token)
        expected: c.Result | str
        if isinstance(hold, str):
            expected = hold
        elif hold.lock and hold.lock != unlock:
            expected = "payment_pending"
        else:
            expected = c.Released(hold_id, hold.seats, hold.quote)
            del self.holds[hold_id]
        self.run(c.Release(self.cid(), hold_id, token, unlock=unlock), expected,
                 isinstance(expected, c.Released))
        self.check_changes()

    @rule()
    def release_all(self) -> None:
        free = [h for h, rec in self.holds.items() if not rec.lock]
        expected = c.ReleasedAll(free, [s for h in free for s in self.holds[h].seats],
                                 [self.holds[h].quote for h in free])
        for h in free:
            del self.holds[h]
        self.run(c.ReleaseAll(self.cid()), expected, bool(expected.seats))
        self.check_changes()

    @rule(data=st.data())
    def peek(self, data: st.DataObject) -> None:
        hold_id, token = self.target(data, self.hold_owners())
        hold = self.live(hold_id, token)
        expected = hold if isinstance(hold, str) else c.HoldInfo(
            hold_id, hold.seats, hold.created, hold.expires,
            hold.created + RULES.hold_max_lifetime_ms, hold.quote,
            "paying" if hold.lock else "active", hold.lock)
        self.run(c.Peek(self.cid(), hold_id, token), expected, False)

    @rule(data=st.data(), booking_id=ids)
    def confirm(self, data: st.DataObject, booking_id: str) -> None:
        hold_id, token = self.target(data, self.hold_owners())
        hold = self.live(hold_id, token)
        expected: c.Result | str
        same = self.bookings.get(booking_id)
        if same is not None and self.booked_hold.get(booking_id) == hold_id \
                and same[0] == token:  # this booking of this hold again: from the books
            self.run(c.Confirm(self.cid(), hold_id, token, booking_id, "pay"),
                     c.Confirmed(booking_id, hold_id, same[1]), False)
            self.check_changes()
            return
        if isinstance(hold, str):
            expected = hold
        elif self.id_taken(booking_id) or booking_id in self.cancelled:
            expected = "duplicate_id"
        else:
            expected = c.Confirmed(booking_id, hold_id, hold.seats)
            del self.holds[hold_id]
            self.bookings[booking_id] = (token, hold.seats)
            self.booked_hold[booking_id] = hold_id
        self.run(c.Confirm(self.cid(), hold_id, token, booking_id, "pay"), expected,
                 isinstance(expected, c.Confirmed))
        self.check_changes()

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        booking_id, token = self.target(data, {b: r[0] for b, r in self.bookings.items()})
        booking = self.bookings.get(booking_id)
        expected: c.Result | str
        changed = False
        if booking is None and booking_id in self.cancelled:  # again: from the books
            expected = c.Cancelled(booking_id, self.cancelled[booking_id])
        elif booking is None:
            expected = "not_found"
        elif booking[0] != token:
            expected = "not_owner"
        else:
            expected = c.Cancelled(booking_id, booking[1])
            changed = True
            del self.bookings[booking_id]
            self.cancelled[booking_id] = booking[1]
        self.run(c.Cancel(self.cid(), booking_id, token), expected, changed)
        self.check_changes()

    @rule(seats=seat_lists)
    def block(self, seats: list[str]) -> None:
        wanted = list(dict.fromkeys(seats))
        unknown = [s for s in wanted if s not in SEATS]
        busy = [s for s in wanted if s in SEATS and self.status(s) in ("held", "booked")]
        fresh = [s for s in wanted if s in SEATS and self.status(s) == "free"]
        expected: c.Result | str = (
            "invalid" if not wanted else "unknown_seats" if unknown
            else "seats_unavailable" if busy else c.BlockedSeats(wanted)
        )
        if isinstance(expected, c.BlockedSeats):
            self.blocked |= set(fresh)
        result = self.run(c.Block(self.cid(), seats), expected,
                          isinstance(expected, c.BlockedSeats) and bool(fresh))
        if expected == "seats_unavailable":
            assert isinstance(result, c.Rejected) and result.seats == busy
        self.check_changes()

    @rule(seats=seat_lists)
    def unblock(self, seats: list[str]) -> None:
        wanted = list(dict.fromkeys(seats))
        unknown = [s for s in wanted if s not in SEATS]
        broken = [s for s in wanted if s in OUT_OF_SERVICE]
        freed = [s for s in wanted if s in self.blocked]
        expected: c.Result | str = (
            "invalid" if not wanted else "unknown_seats" if unknown
            else "seats_unavailable" if broken else c.UnblockedSeats(wanted)
        )
        if isinstance(expected, c.UnblockedSeats):
            self.blocked -= set(freed)
        self.run(c.Unblock(self.cid(), seats), expected,
                 isinstance(expected, c.UnblockedSeats) and bool(freed))
        self.check_changes()

    @rule(ms=st.sampled_from([1, 2_500, 5_000, 10_000, 12_000]))  # 10_000 == the TTL
    def tick(self, ms: int) -> None:
        # Time passes without a sweep: late confirms and extends must still be refused.
        self.now += ms

    @rule()
    def expire(self) -> None:
        due = [h for h, rec in self.holds.items() if rec.expires <= self.now]
        seats = [s for h in due for s in self.holds[h].seats]
        if due:
            self.expired = {h: e for h, e in self.expired.items()
                            if e[2] >= self.now - EXPIRED_MEMORY_MS}
        for h in due:
            rec = self.holds.pop(h)
            self.expired.pop(h, None)
            self.expired[h] = (rec.token, rec.seats, rec.expires)
        self.run(c.Expire(self.cid()), c.ExpiredHolds(due, seats), bool(due))
        self.check_changes()

    @precondition(lambda self: bool(self.answers))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        # A client retry: same command, same id, within the answers' memory (by time, not
        # by count; a client's retry window is far shorter). First answer, no change.
        recent = [cmd for cmd, _ in self.history if not isinstance(cmd, c.Expire | c.Peek)
                  and self.answered_at[cmd.cmd_id] >= self.now - ANSWER_MEMORY_MS]
        assume(recent)
        cmd = data.draw(st.sampled_from(recent))
        before = self.sut.version, dict(self.sut.status), msgspec.to_builtins(self.sut.holds)
        out = self.sut.apply(cmd, self.now)
        self.history.append((cmd, self.now))
        assert out.result == self.answers[cmd.cmd_id]
        assert out.changes == [] and not out.changed
        assert (self.sut.version, dict(self.sut.status),
                msgspec.to_builtins(self.sut.holds)) == before

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def seats_agree_with_the_model(self) -> None:
        assert self.sut.status == {s: self.status(s) for s in SEATS}

    @invariant()
    def version_counts_state_changes(self) -> None:
        assert self.sut.version == self.version

    @invariant()
    def holds_and_bookings_agree_with_the_model(self) -> None:
        assert {h: (r.token, r.seats, r.created_ms, r.expires_ms, r.quote, r.lock)
                for h, r in self.sut.holds.items()} == {
            h: (r.token, r.seats, r.created, r.expires, r.quote, r.lock)
            for h, r in self.holds.items()}
        assert {h: (e.token, e.seats, e.at_ms) for h, e in self.sut.expired.items()} \
            == self.expired
        assert {b: (r.token, r.seats) for b, r in self.sut.bookings.items()} == self.bookings

    @invariant()
    def no_seat_is_sold_twice(self) -> None:
        owners: dict[str, str] = {}
        for owner, seats in [*((h, r.seats) for h, r in self.sut.holds.items()),
                             *((b, r.seats) for b, r in self.sut.bookings.items())]:
            for seat in seats:
                assert seat not in owners, f"{seat} in {owners.get(seat)} and {owner}"
                assert self.sut.status[seat] in ("held", "booked")
                owners[seat] = owner
        assert self.sut.holder == owners

    def teardown(self) -> None:
        # Recovery paths: a snapshot (through the wire) and a full replay both rebuild
        # the same seat map.
        mine = _state(self.sut)
        snap = msgspec.msgpack.decode(msgspec.msgpack.encode(self.sut.snapshot()), type=Snapshot)
        assert _state(SeatMap.from_snapshot(snap, PLAN)) == mine
        replayed = SeatMap(CONFIG, PLAN)
        for cmd, at in self.history:
            replayed.apply(cmd, at)
        assert _state(replayed) == mine


def _state(m: SeatMap) -> dict[str, Any]:
    return state(m, next_expiry=False)


SeatMapMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
TestSeatMapMachine = SeatMapMachine.TestCase
