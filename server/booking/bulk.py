"""The partner's bulk booking: many seats of one show in one request, all or nothing.
Held in chunks of the show's per-hold limit and confirmed through the show's actor
together (the group-commit client sends them as one batch); if any chunk is refused,
every chunk is released and nothing is booked. Invoiced to the partner, so no payment."""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from actors import commands as c

from server.booking.holding import named_seats, refusal
from server.booking.ports import Booking
from server.booking.records import BookingRecord, BulkRecord, PaymentInfo, token_hash
from server.catalog.model import Money, Show
from server.commerce import pricing
from server.core.clock import cmd_id, from_ms, new_id
from server.core.refusals import Refused


@dataclass(frozen=True)
class BulkAsk:
    """Exactly one of `seats` and `count` (the best N, optionally in one category)."""

    email: str
    name: str
    seats: list[str] | None = None
    count: int | None = None
    category: str | None = None
    reference: str | None = None


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


async def bulk_book(booking: Booking, show: Show, ask: BulkAsk
                    ) -> tuple[BulkRecord, list[BookingRecord]]:
    if (ask.seats is None) == (ask.count is None):
        raise Refused("invalid", 'give exactly one of "seats" or "best"')
    if show.status == "cancelled":
        raise Refused("show_cancelled", f"show {show.show_id!r} is cancelled")
    if show.starts_at_utc <= from_ms(booking.clock.now_ms()):
        raise Refused("show_started", "this show has started")
    config = (await booking.catalog.get(show.show_id)).config
    if config is None:
        raise Refused("not_found", f"show {show.show_id!r} has no seat layout")
    category_of = {s.id: s.category for s in config.layout.seats}
    per_hold = max(1, config.rules.max_seats_per_hold)
    seats = ask.seats
    if seats is not None:
        seats = named_seats(show, category_of, seats)
    elif ask.category is not None and ask.category not in show.prices:
        raise Refused("invalid", f"no seat category {ask.category!r} on sale")

    digest = token_hash(secrets.token_urlsafe(24))  # nobody holds these: the partner books
    bulk_id = new_id(show.show_id)
    cmds: list[c.Command] = []
    if seats is not None:
        for part in _chunks(seats, per_hold):
            cmds.append(c.Hold(cmd_id(), new_id(show.show_id), digest, part))
    else:
        assert ask.count is not None
        left = ask.count
        while left > 0:
            n = min(per_hold, left)
            cmds.append(c.HoldBest(cmd_id(), new_id(show.show_id), digest, n, ask.category))
            left -= n
    shows = booking.shows
    results = await asyncio.gather(*(shows.submit(show.show_id, cmd) for cmd in cmds))
    held = [r for r in results if isinstance(r, c.Held)]
    refused = [r for r in results if isinstance(r, c.Rejected)]
    unpriced_best = [s for r in held for s in r.seats if category_of[s] not in show.prices]
    if refused or unpriced_best:
        await asyncio.gather(*(shows.submit(show.show_id, c.Release(
            cmd_id(), r.hold_id, digest)) for r in held))
        if refused:
            first = refusal(refused[0])
            taken = sorted({s for r in refused for s in r.seats})
            details = {"seats": taken} if taken else {}
            raise Refused(first.code, first.message + "; nothing was booked", **details)
        raise Refused("not_for_sale", "some of the best free seats are not on sale; "
                      "name the seats", status=409)

    booking_ids = [new_id(show.show_id) for _ in held]
    confirms = await asyncio.gather(*(shows.submit(show.show_id, c.Confirm(
        cmd_id(), h.hold_id, digest, bid, f"inv_{bulk_id}")) for h, bid in zip(held, booking_ids)))
    if any(not isinstance(r, c.Confirmed) for r in confirms):
        # Nothing stays booked: undo the confirmed ones, release the rest.
        await asyncio.gather(*(
            shows.submit(show.show_id, c.Cancel(cmd_id(), r.booking_id, digest))
            if isinstance(r, c.Confirmed) else
            shows.submit(show.show_id, c.Release(cmd_id(), h.hold_id, digest))
            for h, r in zip(held, confirms)))
        raise Refused("unavailable", "the seats could not be booked; nothing was booked")

    now = from_ms(booking.clock.now_ms())
    currency = next(iter(show.prices.values())).currency if show.prices else ""
    records: list[BookingRecord] = []
    for h, r in zip(held, confirms):
        assert isinstance(r, c.Confirmed)
        quote = pricing.list_price_quote(currency, [pricing.SeatPrice(
            s, category_of[s], show.prices[category_of[s]].amount) for s in r.seats])
        records.append(BookingRecord(
            booking_id=r.booking_id, show_id=show.show_id, hold_id=h.hold_id, seats=r.seats,
            quote=quote, payment=PaymentInfo(f"inv_{bulk_id}", "", "", "invoice"),
            email=ask.email, name=ask.name, created_at=now, holder_hash=digest))
    all_seats = [s for b in records for s in b.seats]
    bulk = BulkRecord(bulk_id, show.show_id, show.partner_id, [b.booking_id for b in records],
                      all_seats, Money(sum(b.quote.total for b in records), currency),
                      ask.email, ask.name, ask.reference, now)
    await booking.bulks.save(records, bulk)
    await booking.bulks.announce(show, bulk, records)
    return bulk, records
