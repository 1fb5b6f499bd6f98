"""`python -m server.audit [--show ID] --redis-url URL --gateway-url URL`: do money, seats
and bookings agree? Reads Redis (booking records, each show's log replayed, promo uses,
payment intents) and the gateway's ledger, and prints, for one show or for everything:

- captured payments without a booking or a refund,
- bookings without a capture,
- booked seats without a booking,
- bookings whose seats are not booked,
- promo uses that differ from the bookings that used the code.

Exit 0 only when all five are zero. Open payment intents are listed too (money in flight:
the reconciler's work, not yet a discrepancy). Read only; offline tool, so it may SCAN.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis

from actors import redis_conn
from actors.store import ShowStore, UnknownShow
from server.booking import intents
from server.booking.records import BookingRecord, show_of
from server.commerce import offers
from server.commerce.gateway_client import HttpGateway
from server.commerce.payments import LedgerEntry

CHECKS = ("captured_without_booking", "bookings_without_capture",
          "booked_seats_without_booking", "bookings_seats_not_booked", "promo_uses_differ")
# Bookings whose money is not the gateway's: a partner's invoiced bulk booking.
_INVOICED = "inv_"


@dataclass
class Report:
    problems: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in CHECKS})
    open_intents: list[str] = field(default_factory=list)
    shows: int = 0
    bookings: int = 0
    payments: int = 0

    @property
    def clean(self) -> bool:
        return not any(self.problems.values())

    def text(self) -> str:
        lines = [f"audited {self.shows} shows, {self.bookings} booking records, "
                 f"{self.payments} gateway payments"]
        for name in CHECKS:
            found = self.problems[name]
            lines.append(f"{name}: {len(found)}")
            lines.extend(f"  {p}" for p in found[:50])
        lines.append(f"open payment intents (in flight): {len(self.open_intents)}")
        lines.extend(f"  {k}" for k in self.open_intents[:50])
        return "\n".join(lines)


_booking_decoder = msgspec.json.Decoder(BookingRecord)


async def _scan(redis: aioredis.Redis, match: str) -> list[str]:
    return [k.decode() if isinstance(k, bytes) else k
            async for k in redis.scan_iter(match=match, count=1000)]


def _tag(key: str) -> str:
    return key.split("{", 1)[1].split("}", 1)[0]


async def _bookings(redis: aioredis.Redis, show_id: str | None) -> list[BookingRecord]:
    # The records themselves, not the shows' bookings indexes: the audit is what would
    # notice a record its index lacks. Read with plain GETs in a pipeline (the cluster
    # client splits it per node), the keys being of many slots.
    keys = await _scan(redis, f"booking:{{{show_id}}}:*" if show_id else "booking:{*}:*")
    out = []
    for i in range(0, len(keys), 500):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys[i:i + 500]:
                pipe.get(key)
            for raw in await pipe.execute():
                if raw:
                    out.append(_booking_decoder.decode(raw))
    return out


def _money(entries: list[LedgerEntry]) -> dict[str, dict[str, int | str]]:
    """Per payment ref: amount, captured (0/1), refunded (minor units), its key."""
    out: dict[str, dict[str, int | str]] = {}
    for e in entries:
        p = out.setdefault(e.ref, {"amount": 0, "captured": 0, "refunded": 0, "key": ""})
        if e.kind in ("authorise", "pending"):
            p["amount"], p["key"] = e.amount, e.idempotency_key
        elif e.kind == "capture":
            p["captured"] = 1
        elif e.kind == "refund":
            p["refunded"] = int(p["refunded"]) + e.amount
    return out


async def audit(redis: aioredis.Redis, gateway: HttpGateway, show_id: str | None = None
                ) -> Report:
    report = Report()
    records = await _bookings(redis, show_id)
    report.bookings = len(records)
    by_ref: dict[str, list[BookingRecord]] = defaultdict(list)
    for b in records:
        by_ref[b.payment.ref].append(b)
    tag = f"{{{show_id}}}" if show_id else None
    money = {ref: p for ref, p in _money(await gateway.entries()).items()
             if tag is None or tag in str(p["key"])}
    report.payments = len(money)

    for ref, p in sorted(money.items()):
        kept = int(p["amount"]) - int(p["refunded"])
        if p["captured"] and kept > 0 and not by_ref.get(ref):
            report.problems["captured_without_booking"].append(
                f"{ref}: {kept} captured, no booking ({p['key']})")
    for b in records:
        if b.status != "confirmed" or b.payment.ref.startswith(_INVOICED):
            continue
        p = money.get(b.payment.ref)
        if p is None or not p["captured"]:
            report.problems["bookings_without_capture"].append(
                f"{b.booking_id}: payment {b.payment.ref} not captured")

    shows = {show_id} if show_id else {b.show_id for b in records} | {
        _tag(k) for k in await _scan(redis, "show:{*}:log")}
    report.shows = len(shows)
    confirmed = {b.booking_id: b for b in records if b.status == "confirmed"}
    for sid in sorted(shows):
        try:
            seatmap = await ShowStore(redis, sid).load()
        except UnknownShow:
            continue
        for booking_id, booked in seatmap.bookings.items():
            record = confirmed.get(booking_id)
            if record is None:
                report.problems["booked_seats_without_booking"].append(
                    f"{sid}: {booking_id} holds {sorted(booked.seats)}")
            elif sorted(record.seats) != sorted(booked.seats):
                report.problems["bookings_seats_not_booked"].append(
                    f"{booking_id}: record {sorted(record.seats)}, "
                    f"show {sorted(booked.seats)}")
        for booking_id, record in confirmed.items():
            if record.show_id == sid and booking_id not in seatmap.bookings:
                report.problems["bookings_seats_not_booked"].append(
                    f"{booking_id}: {sorted(record.seats)} not booked in the show")

    # Promo uses: the holds that consumed a use of each code, against the bookings
    # (any but failed) that carry the code.
    used_by: dict[str, set[str]] = defaultdict(set)
    for b in records:
        if b.quote.promo_code and b.status != "failed":
            used_by[b.quote.promo_code].add(b.hold_id)
    codes = set(used_by) | {_tag(k) for k in await _scan(redis, "promo:{*}:consumed")}
    for code in sorted(codes):
        consumed = {m.decode() for m in await redis.smembers(offers.usage_keys(code)[-1])}
        if show_id:
            consumed = {h for h in consumed if show_of(h) == show_id}
        if consumed != used_by.get(code, set()):
            report.problems["promo_uses_differ"].append(
                f"{code}: {len(consumed)} uses counted, {len(used_by.get(code, ()))} bookings "
                f"(uses without a booking: {sorted(consumed - used_by.get(code, set()))[:5]}, "
                f"bookings without a use: {sorted(used_by.get(code, set()) - consumed)[:5]})")

    for key in await intents.due(redis, 2**62, limit=100_000):
        if tag is None or tag in key:
            intent = await intents.load(redis, key)
            if intent is not None and intent.open:
                report.open_intents.append(f"{key}: {intent.state}")
    return report


async def _main(args: argparse.Namespace) -> int:
    redis = redis_conn.async_client(args.redis_url)
    gateway = HttpGateway(args.gateway_url, "")
    try:
        report = await audit(redis, gateway, args.show)
    finally:
        await gateway.close()
        await redis.aclose()
    print(report.text())
    return 0 if report.clean else 1


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m server.audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--show", help="one show (default: everything)")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--gateway-url", required=True, help="the payment gateway's API")
    sys.exit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
