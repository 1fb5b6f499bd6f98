"""Commands a show accepts and the results it gives: the wire schema of the booking core.

Every command carries `cmd_id`, chosen by the client; a command repeated with the same id
is answered with the first result and changes nothing. Ids of the holds and bookings a
command creates are chosen by the caller too (so they can be routed, and so the domain
needs no randomness). `rid`, optional, is the request id that sent the command: it is
stored with the command in the show's log, and nothing decides on it.
"""
from __future__ import annotations

from typing import Literal

import msgspec


class _Traced(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True,
              omit_defaults=True, kw_only=True):
    # The request id that caused the command (issue 7: web -> actor -> Redis log), for
    # tracing only: the seat map ignores it. Keyword-only, so it comes after every field
    # and positional construction is unchanged; left out of the encoding when empty
    # (omit_defaults, which also drops other fields still at their defaults).
    rid: str = ""


class _Cmd(_Traced, frozen=True):
    cmd_id: str


class Hold(_Cmd, tag="hold"):
    """Hold these exact seats."""

    hold_id: str
    token: str
    seats: list[str]
    # Who holds (a logged-in customer or a queued visitor; "" = anonymous, no cap) and how
    # many seats that customer may hold on this show at once (0 = no cap). The cap travels
    # with the command so replaying the log decides exactly as the first time did.
    customer: str = ""
    customer_max_seats: int = 0
    # The inputs of the hold's price quote (opaque here: the host's quoter reads them,
    # `SeatPlan.quoter`). They travel in the logged command, so a replay prices the hold
    # exactly as the first time did, whatever the offers are by then.
    pricing: bytes = b""
    # The holder's device and network (opaque keys, "" = none) with their caps on this
    # show, and the show's hold period and lifetime (0 = the show's rules): as the
    # customer's cap, they travel in the command so a replay decides the same way.
    device: str = ""
    device_max_seats: int = 0
    network: str = ""
    network_max_seats: int = 0
    ttl_ms: int = 0
    max_lifetime_ms: int = 0


class HoldBest(_Cmd, tag="hold_best"):
    """Hold the best `count` free seats, optionally within one category."""

    hold_id: str
    token: str
    count: int
    category: str | None = None
    accessible: bool = False  # include wheelchair spaces (left out unless asked for)
    customer: str = ""        # as in Hold
    customer_max_seats: int = 0
    pricing: bytes = b""      # as in Hold: best-available picks are priced where made
    device: str = ""          # as in Hold
    device_max_seats: int = 0
    network: str = ""
    network_max_seats: int = 0
    ttl_ms: int = 0
    max_lifetime_ms: int = 0


class Extend(_Cmd, tag="extend"):
    hold_id: str
    token: str
    extra_ms: int
    # A booking id: the hold is being paid for asynchronously (the gateway settles it
    # later), so it can no longer be released; only Confirm or its expiry end it.
    lock: str = ""


class Release(_Cmd, tag="release"):
    hold_id: str
    token: str
    unlock: str = ""  # the pending booking of a locked hold (its payment failed)


class Confirm(_Cmd, tag="confirm"):
    """Turn a live hold into a booking once payment went through. `booking` is the
    booking's facts (who, how to reach them, the payment), opaque here: logged with the
    seats in the same append, so "seats booked" and "booking exists" are one fact."""

    hold_id: str
    token: str
    booking_id: str
    payment_ref: str
    booking: bytes = b""


class Cancel(_Cmd, tag="cancel"):
    booking_id: str
    token: str


class Block(_Cmd, tag="block"):
    """Partner holds seats back from sale (house seats)."""

    seats: list[str]


class Unblock(_Cmd, tag="unblock"):
    seats: list[str]


class Expire(_Cmd, tag="expire"):
    """Time has passed: free every hold whose time is up."""


class ReleaseAll(_Cmd, tag="release_all"):
    """The show was cancelled: free every hold that is not being paid for."""


class Peek(_Cmd, tag="peek"):
    """Read a hold, for its holder (checkout): changes nothing, is never logged."""

    hold_id: str
    token: str


class ListBookings(_Cmd, tag="list_bookings"):
    """Read every booking of the show (the audit, the reconciler): never logged."""


Command = (Hold | HoldBest | Extend | Release | Confirm | Cancel | Block | Unblock | Expire
           | ReleaseAll | Peek | ListBookings)


# --- results -------------------------------------------------------------------------

class _Res(msgspec.Struct, frozen=True, tag_field="type"):
    pass


class Held(_Res, tag="held"):
    hold_id: str
    seats: list[str]
    expires_at_ms: int
    quote: bytes = b""  # the quoter's answer for these seats (b"" without pricing)


class Extended(_Res, tag="extended"):
    hold_id: str
    expires_at_ms: int
    seats: list[str] = []
    quote: bytes = b""


class Released(_Res, tag="released"):
    hold_id: str
    seats: list[str]
    quote: bytes = b""  # the holder may have a promo code's use to give back


HoldState = Literal["active", "paying", "booked"]


class HoldInfo(_Res, tag="hold"):
    """A hold as its holder sees it (the answer to Peek)."""

    hold_id: str
    seats: list[str]
    created_ms: int
    expires_at_ms: int
    max_expires_ms: int
    quote: bytes
    state: HoldState
    booking_id: str = ""  # paying: the pending booking; booked: the booking


class Confirmed(_Res, tag="confirmed"):
    booking_id: str
    hold_id: str
    seats: list[str]


class BookingEntry(msgspec.Struct, frozen=True, array_like=True):
    booking_id: str
    hold_id: str
    seats: list[str]
    payment_ref: str
    booked_ms: int
    booking: bytes  # Confirm's facts (the quote is the web tier's: a replay without
                    # the quoter has none, and the books must not depend on it)


class Bookings(_Res, tag="bookings"):
    bookings: list[BookingEntry]


class Cancelled(_Res, tag="cancelled"):
    booking_id: str
    seats: list[str]


class BlockedSeats(_Res, tag="blocked"):
    seats: list[str]


class UnblockedSeats(_Res, tag="unblocked"):
    seats: list[str]


class ExpiredHolds(_Res, tag="expired"):
    hold_ids: list[str]
    seats: list[str]


class ReleasedAll(_Res, tag="released_all"):
    hold_ids: list[str]
    seats: list[str]
    quotes: list[bytes]  # per hold, as in Released


ErrorCode = Literal[
    "invalid",             # malformed command (empty seat list, count < 1, ...)
    "unknown_seats",       # seat ids not in this show's layout
    "too_many_seats",      # over the per-hold maximum
    "customer_limit",      # the customer would hold more seats on this show than allowed
    "device_limit",        # so would this device (a browser, whoever is logged in)
    "network_limit",       # so would this network (an address; an IPv6 /64)
    "seats_unavailable",   # held, booked or blocked by someone else
    "not_enough_seats",    # best-available could not find `count` free seats
    "not_found",           # no such hold / booking (or released)
    "not_for_sale",        # a picked seat's category has no price
    "payment_pending",     # the hold is being paid for: it cannot be released
    "hold_checked_out",    # the hold is a booking now
    "not_owner",           # the token does not own the hold / booking
    "hold_expired",        # the hold's time is up
    "lifetime_exceeded",   # extending past the hold's maximum lifetime
    "duplicate_id",        # a hold / booking with that id exists already
    "unavailable",         # the show could not be reached or made durable (retry)
]


class Rejected(_Res, tag="rejected"):
    code: ErrorCode
    message: str
    seats: list[str] = []
    booking_id: str = ""  # hold_checked_out / payment_pending: the hold's booking


Result = (
    Held | Extended | Released | Confirmed | Cancelled | BlockedSeats | UnblockedSeats
    | ExpiredHolds | ReleasedAll | HoldInfo | Bookings | Rejected
)


SeatStatus = Literal["free", "held", "booked", "blocked"]


class SeatChange(msgspec.Struct, frozen=True, array_like=True):
    """One seat's new status: what the live seat map broadcasts (no tokens, no owners)."""

    seat: str
    status: SeatStatus


# One encoder/decoder per type, built once (msgspec's fast path); the encoder serves
# commands and results alike.
command_encoder = msgspec.msgpack.Encoder()
commands_decoder = msgspec.msgpack.Decoder(list[Command])
command_decoder = msgspec.msgpack.Decoder(Command)
results_decoder = msgspec.msgpack.Decoder(list[Result])


# --- the host call: commands for many shows in one Ray call ------------------------

class Group(msgspec.Struct, frozen=True, array_like=True):
    show_id: str
    commands: list[Command]


class Call(msgspec.Struct, frozen=True, array_like=True):
    epoch: int            # the pool epoch the caller routed by
    groups: list[Group]


class Reply(msgspec.Struct, frozen=True, array_like=True):
    epoch: int            # the pool epoch the host decided by
    # per group: its results, or None when the show is not this host's (route again)
    results: list[list[Result] | None]


call_decoder = msgspec.msgpack.Decoder(Call)
reply_decoder = msgspec.msgpack.Decoder(Reply)
