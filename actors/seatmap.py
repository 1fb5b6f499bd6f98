"""The seat map of one show: the aggregate that guards "a seat is never sold twice".

Pure: no clock, no randomness, no I/O. `apply(command, now_ms)` is the only way to change
it; it returns the result and the seat changes, and bumps `version` once per command that
changed anything. Replaying the same commands at the same times rebuilds the same state,
which is how the show actor recovers from its log.
"""
from __future__ import annotations

from collections import OrderedDict
from itertools import islice
from collections.abc import Callable

import msgspec

from . import commands as c
from .best_available import SeatPicker
from .layout import Layout, Seat, ShowConfig

# A command's answer is remembered this long (by time, not by count: under a rush a count
# would be gone in seconds), so a client resending within its retry window (the web
# tier's RETRY_FOR_S, 30 s) gets the first answer. Confirm and Cancel need no window:
# they are answered from the books for as long as the show lives (see `_confirm`).
# Kept encoded (bytes are not traced by the garbage collector: a rush keeps ~10^5).
ANSWER_MEMORY_MS = 60 * 1000
# A snapshot carries the newest answers only: what a restarted host needs is the answers
# of the commands in flight when it died, which are the newest (and the log after the
# snapshot rebuilds the rest). Carrying a whole minute of a rush would make every
# snapshot megabytes.
SNAPSHOT_ANSWERS = 4096
_result_decoder = msgspec.msgpack.Decoder(c.Result)
# An expired hold is remembered this long, so its holder hears "expired" (410), not "no
# such hold" (404); a hold can live at most its lifetime (30 min by default) anyway.
EXPIRED_MEMORY_MS = 60 * 60 * 1000

# Prices a hold: (the command's pricing inputs, [(seat, category)], now) -> the encoded
# quote, or None when a seat's category has no price. Pure; injected by the host (the
# pricing rules are the web tier's, server/commerce/quoting.py), so the seat map and the
# actors package stay free of them.
Quoter = Callable[[bytes, list[tuple[str, str]], int], bytes | None]


class HoldRecord(msgspec.Struct):
    token: str
    seats: list[str]
    created_ms: int
    expires_ms: int
    customer: str = ""  # who holds it, for the per-customer cap ("" = anonymous)
    quote: bytes = b""  # the quoter's answer when the hold was made
    lock: str = ""      # a pending booking's id: being paid for, cannot be released
    device: str = ""    # the holder's device and network, for their caps
    network: str = ""
    max_expires_ms: int = 0  # its lifetime's end (0: created + the rules' lifetime)

    def holders(self) -> tuple[str, ...]:
        """The keys its seats count against (customer, device, network; each distinct)."""
        return tuple(k for k in (self.customer, self.device, self.network) if k)


class BookingRecord(msgspec.Struct):
    token: str
    seats: list[str]
    hold_id: str
    payment_ref: str
    booked_ms: int
    booking: bytes = b""  # Confirm's facts (the booking as the web tier records it)


class ExpiredHold(msgspec.Struct, array_like=True):
    token: str
    seats: list[str]
    at_ms: int


class Snapshot(msgspec.Struct):
    """Everything needed to rebuild a seat map without replaying its whole log."""

    config: ShowConfig
    version: int
    blocked: list[str]
    holds: dict[str, HoldRecord]
    bookings: dict[str, BookingRecord]
    answers: list[tuple[str, c.Result]]  # from before answers were kept encoded
    expired: dict[str, ExpiredHold] = {}
    # (command id, when answered, the encoded result), oldest first
    answered: list[tuple[str, int, bytes]] = []
    cancelled: dict[str, list[str]] = {}  # booking id -> its seats, once cancelled


class Outcome(msgspec.Struct, frozen=True):
    result: c.Result
    changes: list[c.SeatChange]  # exactly the seats whose status changed
    # Whether the command changed the seat map at all (and so bumped the version and
    # must be logged). Usually `bool(changes)`; an extension changes a hold's expiry
    # without changing any seat's status.
    changed: bool


class SeatPlan:
    """What a layout implies for every show on it, built once and shared: a host keeps
    thousands of shows in memory, most of them on a few dozen screens, and the seats,
    the picker's rows and the layout itself were ~130 KB of a 400-seat show's ~160 KB."""

    def __init__(self, layout: Layout, quoter: Quoter | None = None) -> None:
        self.layout = layout
        # Without a quoter (the web tier's read-only replays) holds are not priced; a
        # logged hold was priced successfully, so replaying it never depends on this.
        self.quoter = quoter
        self.seats: dict[str, Seat] = {s.id: s for s in layout.seats}
        self.picker = SeatPicker(layout)
        self.categories = {s.category for s in layout.seats}
        self.initial_status: dict[str, c.SeatStatus] = {
            s.id: "blocked" if s.blocked else "free" for s in layout.seats
        }


class SeatMap:
    def __init__(self, config: ShowConfig, plan: SeatPlan | None = None) -> None:
        # `plan` must be built from a layout equal to config.layout (the host interns them).
        plan = plan or SeatPlan(config.layout)
        if plan.layout is not config.layout:
            config = msgspec.structs.replace(config, layout=plan.layout)
        self.config = config
        self.rules = config.rules
        self.plan = plan
        self.seats = plan.seats
        self._picker = plan.picker
        self._categories = plan.categories
        self.version = 0
        self.status: dict[str, c.SeatStatus] = dict(plan.initial_status)
        self.holder: dict[str, str] = {}  # seat id -> hold id or booking id
        self.holds: dict[str, HoldRecord] = {}
        self.held_by: dict[str, int] = {}  # customer -> seats in their live holds
        self.bookings: dict[str, BookingRecord] = {}
        # in expiry order (oldest first), so forgetting them is a pop from the front
        self.expired: dict[str, ExpiredHold] = {}
        self._answers: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self.cancelled: dict[str, list[str]] = {}  # so a resent Cancel is answered alike

    # --- the entry point -------------------------------------------------------------

    def apply(self, cmd: c.Command, now_ms: int) -> Outcome:
        # The actor's own sweeps need no dedup, and must never be answered from the
        # cache: a client command that used the sweep's id would stop all expiry.
        if isinstance(cmd, c.Peek):  # reads: never remembered, never change anything
            return Outcome(self._peek(cmd, now_ms), [], False)
        if isinstance(cmd, c.ListBookings):
            return Outcome(c.Bookings([
                c.BookingEntry(b_id, b.hold_id, b.seats, b.payment_ref, b.booked_ms,
                               b.booking) for b_id, b in self.bookings.items()]),
                [], False)
        sweep = isinstance(cmd, c.Expire)
        if not sweep and (known := self._answers.get(cmd.cmd_id)) is not None:
            return Outcome(_result_decoder.decode(known[1]), [], False)
        handler = _HANDLERS[type(cmd)]
        result, changes = handler(self, cmd, now_ms)
        # Extended is the one success that changes state (an expiry) but no seat.
        changed = bool(changes) or isinstance(result, c.Extended)
        if changed:
            self.version += 1
        if not sweep:
            self._remember(cmd.cmd_id, result, now_ms)
        return Outcome(result, changes, changed)

    def _remember(self, cmd_id: str, result: c.Result, now_ms: int) -> None:
        # Forgotten by the command's own time: a replay forgets exactly as the first run.
        answers = self._answers
        horizon = now_ms - ANSWER_MEMORY_MS
        while answers:
            first = next(iter(answers))
            if answers[first][0] >= horizon:
                break
            del answers[first]
        answers[cmd_id] = (now_ms, c.command_encoder.encode(result))

    # --- queries ---------------------------------------------------------------------

    def next_expiry_ms(self) -> int | None:
        return min((h.expires_ms for h in self.holds.values()), default=None)

    def counts(self) -> dict[str, int]:
        out = {"free": 0, "held": 0, "booked": 0, "blocked": 0}
        for status in self.status.values():
            out[status] += 1
        return out

    # --- snapshots -------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return Snapshot(
            config=self.config,
            version=self.version,
            blocked=sorted(s for s, st in self.status.items() if st == "blocked"),
            holds={k: msgspec.structs.replace(v) for k, v in self.holds.items()},
            bookings=dict(self.bookings),
            answers=[],
            expired=dict(self.expired),
            answered=[(k, at, r) for k, (at, r) in reversed(list(
                islice(reversed(self._answers.items()), SNAPSHOT_ANSWERS)))],
            cancelled=dict(self.cancelled),
        )

    @classmethod
    def from_snapshot(cls, snap: Snapshot, plan: SeatPlan | None = None) -> SeatMap:
        m = cls(snap.config, plan)
        m.version = snap.version
        for seat in m.status:
            m.status[seat] = "free"
        for seat in snap.blocked:
            m.status[seat] = "blocked"
        m.holds = {k: msgspec.structs.replace(v) for k, v in snap.holds.items()}
        m.bookings = dict(snap.bookings)
        for hold_id, hold in m.holds.items():
            for who in hold.holders():
                m.held_by[who] = m.held_by.get(who, 0) + len(hold.seats)
            for seat in hold.seats:
                m.status[seat], m.holder[seat] = "held", hold_id
        for booking_id, booking in m.bookings.items():
            for seat in booking.seats:
                m.status[seat], m.holder[seat] = "booked", booking_id
        m.expired = dict(snap.expired)
        # a snapshot from before answers had times: they count as given at time 0
        m._answers = OrderedDict((k, (0, c.command_encoder.encode(r))) for k, r in snap.answers)
        m._answers.update((k, (at, r)) for k, at, r in snap.answered)
        m.cancelled = dict(snap.cancelled)
        return m

    # --- command handlers ------------------------------------------------------------

    def _hold(self, cmd: c.Hold, now_ms: int) -> tuple[c.Result, list[c.SeatChange]]:
        seats = list(dict.fromkeys(cmd.seats))  # a seat named twice is still one seat
        if not seats:
            return _reject("invalid", "name at least one seat"), []
        if err := self._new_hold_checks(cmd, len(seats)):
            return err, []
        unknown = [s for s in seats if s not in self.seats]
        if unknown:
            return _reject("unknown_seats", "no such seats in this show", unknown), []
        taken = [s for s in seats if self.status[s] != "free"]
        if taken:
            return _reject("seats_unavailable", "seats are no longer free", taken), []
        return self._create_hold(cmd, seats, now_ms)

    def _hold_best(self, cmd: c.HoldBest, now_ms: int) -> tuple[c.Result, list[c.SeatChange]]:
        if cmd.count < 1:
            return _reject("invalid", "count must be at least 1"), []
        if err := self._new_hold_checks(cmd, cmd.count):
            return err, []
        if cmd.category is not None and cmd.category not in self._categories:
            return _reject("invalid", f"no seat category {cmd.category!r} in this show"), []
        seats = self._picker.pick_free(cmd.count, self.status, cmd.category, cmd.accessible)
        if seats is None:
            return _reject("not_enough_seats", f"fewer than {cmd.count} seats are free"), []
        return self._create_hold(cmd, seats, now_ms)

    def _extend(self, cmd: c.Extend, now_ms: int) -> tuple[c.Result, list[c.SeatChange]]:
        if cmd.extra_ms <= 0:
            return _reject("invalid", "extra time must be positive"), []
        hold, err = self._live_hold(cmd.hold_id, cmd.token, now_ms)
        if err:
            return err, []
        cap = self._lifetime_end(hold)
        if hold.expires_ms >= cap:
            return _reject("lifetime_exceeded", "this hold cannot be extended any further"), []
        hold.expires_ms = min(hold.expires_ms + cmd.extra_ms, cap)
        if cmd.lock:
            hold.lock = cmd.lock
        # No seat changes colour, but the hold did change: `apply` logs and versions it.
        return c.Extended(cmd.hold_id, hold.expires_ms, hold.seats, hold.quote), []

    def _release(self, cmd: c.Release, now_ms: int) -> tuple[c.Result, list[c.SeatChange]]:
        hold, err = self._live_hold(cmd.hold_id, cmd.token, now_ms)
        if err:
            return err, []
        if hold.lock and hold.lock != cmd.unlock:
            return c.Rejected("payment_pending", "a payment for this hold is being processed",
                              booking_id=hold.lock), []
        return c.Released(cmd.hold_id, hold.seats, hold.quote), self._drop_hold(cmd.hold_id)

    def _release_all(self, cmd: c.ReleaseAll, now_ms: int
                     ) -> tuple[c.Result, list[c.SeatChange]]:
        free = [h for h, rec in self.holds.items() if not rec.lock]
        seats = [s for h in free for s in self.holds[h].seats]
        quotes = [self.holds[h].quote for h in free]
        changes = [ch for h in free for ch in self._drop_hold(h)]
        return c.ReleasedAll(free, seats, quotes), changes

    def _peek(self, cmd: c.Peek, now_ms: int) -> c.Result:
        hold, err = self._live_hold(cmd.hold_id, cmd.token, now_ms)
        if err:
            return err
        state: c.HoldState = "paying" if hold.lock else "active"
        return c.HoldInfo(cmd.hold_id, hold.seats, hold.created_ms, hold.expires_ms,
                          self._lifetime_end(hold), hold.quote, state, hold.lock)

    def _confirm(self, cmd: c.Confirm, now_ms: int) -> tuple[c.Result, list[c.SeatChange]]:
        # The same booking of the same hold asked again (a checkout resumed, a reconciler
        # asking, long after the answer was forgotten): the books answer it.
        done = self.bookings.get(cmd.booking_id)
        if done is not None and done.hold_id == cmd.hold_id and done.token == cmd.token:
            return c.Confirmed(cmd.booking_id, cmd.hold_id, done.seats), []
        hold, err = self._live_hold(cmd.hold_id, cmd.token, now_ms)
        if err:
            return err, []
        if cmd.booking_id in self.bookings or cmd.booking_id in self.holds \
                or cmd.booking_id in self.cancelled:
            return _reject("duplicate_id", f"booking id {cmd.booking_id!r} is taken"), []
        self._forget_hold(cmd.hold_id)
        self.bookings[cmd.booking_id] = BookingRecord(
            cmd.token, hold.seats, cmd.hold_id, cmd.payment_ref, now_ms, cmd.booking)
        changes = self._set(hold.seats, "booked", cmd.booking_id)
        return c.Confirmed(cmd.booking_id, cmd.hold_id, hold.seats), changes

    def _cancel(self, cmd: c.Cancel, now_ms: int) -> tuple[c.Result, list[c.SeatChange]]:
        booking = self.bookings.get(cmd.booking_id)
        if booking is None:
            if (seats := self.cancelled.get(cmd.booking_id)) is not None:
                return c.Cancelled(cmd.booking_id, seats), []
            return _reject("not_found", f"no booking {cmd.booking_id!r}"), []
        if booking.token != cmd.token:
            return _reject("not_owner", "this booking belongs to someone else"), []
        del self.bookings[cmd.booking_id]
        self.cancelled[cmd.booking_id] = booking.seats
        changes = self._set(booking.seats, "free", None)
        return c.Cancelled(cmd.booking_id, booking.seats), changes

    def _block(self, cmd: c.Block, now_ms: int) -> tuple[c.Result, list[c.SeatChange]]:
        seats = list(dict.fromkeys(cmd.seats))
        if err := self._known(seats):
            return err, []
        taken = [s for s in seats if self.status[s] in ("held", "booked")]
        if taken:
            return _reject("seats_unavailable", "held or booked seats cannot be blocked", taken), []
        fresh = [s for s in seats if self.status[s] == "free"]
        return c.BlockedSeats(seats), self._set(fresh, "blocked", None)

    def _unblock(self, cmd: c.Unblock, now_ms: int) -> tuple[c.Result, list[c.SeatChange]]:
        seats = list(dict.fromkeys(cmd.seats))
        if err := self._known(seats):
            return err, []
        # Seats the layout itself marks out of service are not partner inventory.
        broken = [s for s in seats if self.seats[s].blocked]
        if broken:
            return _reject("seats_unavailable", "seats are out of service in the layout",
                           broken), []
        blocked = [s for s in seats if self.status[s] == "blocked"]
        return c.UnblockedSeats(seats), self._set(blocked, "free", None)

    def _expire(self, cmd: c.Expire, now_ms: int) -> tuple[c.Result, list[c.SeatChange]]:
        due = [h for h, rec in self.holds.items() if rec.expires_ms <= now_ms]
        if not due:
            return c.ExpiredHolds([], []), []
        # Forgotten only in a sweep that changes seats (and so is logged): a replay
        # forgets exactly what the first run did.
        horizon = now_ms - EXPIRED_MEMORY_MS
        while self.expired and next(iter(self.expired.values())).at_ms < horizon:
            del self.expired[next(iter(self.expired))]
        seats = [s for h in due for s in self.holds[h].seats]
        for h in due:
            rec = self.holds[h]
            self.expired[h] = ExpiredHold(rec.token, rec.seats, rec.expires_ms)
        changes = [ch for h in due for ch in self._drop_hold(h)]
        return c.ExpiredHolds(due, seats), changes

    # --- helpers ---------------------------------------------------------------------

    def _new_hold_checks(self, cmd: c.Hold | c.HoldBest, count: int) -> c.Rejected | None:
        if count > self.rules.max_seats_per_hold:
            return _reject(
                "too_many_seats", f"at most {self.rules.max_seats_per_hold} seats per hold"
            )
        if cmd.hold_id in self.holds or cmd.hold_id in self.bookings:
            return _reject("duplicate_id", f"hold id {cmd.hold_id!r} is taken")
        for who, cap, code, whom in (
                (cmd.customer, cmd.customer_max_seats, "customer_limit", "customer"),
                (cmd.device, cmd.device_max_seats, "device_limit", "device"),
                (cmd.network, cmd.network_max_seats, "network_limit", "network")):
            if who and cap > 0 and self.held_by.get(who, 0) + count > cap:
                return _reject(code,  # type: ignore[arg-type]
                               f"at most {cap} seats held at once per {whom} on this show")
        return None

    def _lifetime_end(self, hold: HoldRecord) -> int:
        return hold.max_expires_ms or hold.created_ms + self.rules.hold_max_lifetime_ms

    def _known(self, seats: list[str]) -> c.Rejected | None:
        if not seats:
            return _reject("invalid", "name at least one seat")
        unknown = [s for s in seats if s not in self.seats]
        if unknown:
            return _reject("unknown_seats", "no such seats in this show", unknown)
        return None

    def _live_hold(
        self, hold_id: str, token: str, now_ms: int
    ) -> tuple[HoldRecord, None] | tuple[None, c.Rejected]:
        hold = self.holds.get(hold_id)
        if hold is None:
            return None, self._gone(hold_id, token)
        if hold.token != token:
            return None, _reject("not_owner", "this hold belongs to someone else")
        if hold.expires_ms <= now_ms:
            return None, _reject("hold_expired", "the hold's time is up", hold.seats)
        return hold, None

    def _gone(self, hold_id: str, token: str) -> c.Rejected:
        """Why a hold that is not live is not: expired, booked, or never was (or released)."""
        if (ended := self.expired.get(hold_id)) is not None:
            if ended.token != token:
                return _reject("not_owner", "this hold belongs to someone else")
            return _reject("hold_expired", "the hold's time is up", ended.seats)
        for booking_id, booking in self.bookings.items():
            if booking.hold_id == hold_id:
                if booking.token != token:
                    return _reject("not_owner", "this hold belongs to someone else")
                return c.Rejected("hold_checked_out", "this hold was checked out already",
                                  booking_id=booking_id)
        return _reject("not_found", f"no hold {hold_id!r} (released, or never made)")

    def _create_hold(self, cmd: c.Hold | c.HoldBest, seats: list[str], now_ms: int
                     ) -> tuple[c.Result, list[c.SeatChange]]:
        quote = b""
        if cmd.pricing and (quoter := self.plan.quoter) is not None:
            try:
                priced = quoter(cmd.pricing, [(s, self.seats[s].category) for s in seats], now_ms)
            except (ValueError, msgspec.DecodeError):
                return _reject("invalid", "the hold's pricing inputs are unreadable"), []
            if priced is None:
                return _reject("not_for_sale", "some of these seats are not on sale", [
                    s for s in seats if quoter(cmd.pricing, [(s, self.seats[s].category)],
                                               now_ms) is None]), []
            quote = priced
        expires = now_ms + (cmd.ttl_ms or self.rules.hold_ttl_ms)
        rec = HoldRecord(cmd.token, seats, now_ms, expires, cmd.customer, quote,
                         device=cmd.device, network=cmd.network,
                         max_expires_ms=now_ms + cmd.max_lifetime_ms if cmd.max_lifetime_ms
                         else 0)
        self.holds[cmd.hold_id] = rec
        for who in rec.holders():
            self.held_by[who] = self.held_by.get(who, 0) + len(seats)
        return c.Held(cmd.hold_id, seats, expires, quote), self._set(seats, "held", cmd.hold_id)

    def _forget_hold(self, hold_id: str) -> HoldRecord:
        """Remove a hold from the books (its seats are the caller's business)."""
        hold = self.holds.pop(hold_id)
        for who in hold.holders():
            left = self.held_by[who] - len(hold.seats)
            if left > 0:
                self.held_by[who] = left
            else:
                del self.held_by[who]
        return hold

    def _drop_hold(self, hold_id: str) -> list[c.SeatChange]:
        return self._set(self._forget_hold(hold_id).seats, "free", None)

    def _set(self, seats: list[str], status: c.SeatStatus, owner: str | None) -> list[c.SeatChange]:
        for seat in seats:
            self.status[seat] = status
            if owner is None:
                self.holder.pop(seat, None)
            else:
                self.holder[seat] = owner
        return [c.SeatChange(s, status) for s in seats]


def _reject(code: c.ErrorCode, message: str, seats: list[str] | None = None) -> c.Rejected:
    return c.Rejected(code, message, seats or [])


_HANDLERS = {
    c.Hold: SeatMap._hold,
    c.HoldBest: SeatMap._hold_best,
    c.Extend: SeatMap._extend,
    c.Release: SeatMap._release,
    c.Confirm: SeatMap._confirm,
    c.Cancel: SeatMap._cancel,
    c.Block: SeatMap._block,
    c.Unblock: SeatMap._unblock,
    c.Expire: SeatMap._expire,
    c.ReleaseAll: SeatMap._release_all,
}
