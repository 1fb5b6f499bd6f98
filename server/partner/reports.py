"""Partner reports: sales, revenue and occupancy per show, screen, theatre or day, and a
show's occupancy heat map. Loading (Redis) is kept apart from aggregation (pure).

Rules (also in the API description):
- A show belongs to the day it starts on in its theatre's time zone (the partner index
  `{catalog}:idx:partner:<partner>:shows:<local date>`); `from`/`to` are such local dates, inclusive.
- **tickets** / **bookings**: seats / bookings of `confirmed` booking records. Pending and
  failed payments count nowhere. **cancelled**: bookings cancelled later.
- **revenue** (integer minor units, with its currency): the quote totals of confirmed
  bookings plus, for cancelled bookings, what was kept: total minus the refund of the
  cancellation record (a cancelled booking with no record counts as fully refunded).
  **refunds**: the refunds of cancelled bookings. So revenue is net of refunds.
- **booked_seats** / **sellable_seats**: the seat map's booked seats and its seats not
  blocked (read from Redis, never waking a show actor); **occupancy** = booked / sellable.
- Rows are per (group key, currency): a partner selling in two currencies gets two rows.

Bounded work per report (security review M6):
- at most MAX_SHOWS shows per report (422 `too_many_shows`, asking for a shorter range);
- bookings are found without any SCAN: each show's bookings index (`bookings:{<show>}`,
  written with every booking record in server/booking/records.py) names them, and its
  records are read with one MGET in the show's slot;
- at most REPLAYS seat-map replays (snapshot + log reads) run at once per process;
- the facts of finished days (DONE_AFTER_DAYS before today, UTC: every show of them has
  ended) are kept per partner and day in this process for FINISHED_TTL_S, so repeating a
  long report reads only its recent days again.
"""
from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import redis.asyncio as aioredis

from actors.commands import SeatStatus

from server.catalog import service as catalog
from server.booking.records import BookingRecord, load_show_bookings, show_booking_ids
from server.catalog.model import Money, Movie, Screen, Show, Theatre
from server.core.errors import ApiError
from server.booking.lifecycle import Cancellation, cancellation_key
from server.catalog.seat_status import read_seat_statuses

GroupBy = Literal["show", "screen", "theatre", "day"]
GROUPS: tuple[str, ...] = ("show", "screen", "theatre", "day")
MAX_DAYS = 93
MAX_SHOWS = 500          # shows per report
REPLAYS = 8              # seat-map replays at once (per process)
DONE_AFTER_DAYS = 3      # a local date this many days before today (UTC) has fully ended
FINISHED_TTL_S = 600.0
MAX_FINISHED = 4096      # (partner, day) entries kept


class ReportRow(msgspec.Struct):
    key: str        # the show / screen / theatre id, or the local date (group_by=day)
    label: str      # something a person reads: movie + start, screen / theatre name, date
    currency: str
    shows: int
    bookings: int
    tickets: int
    cancelled: int
    revenue: Money
    refunds: Money
    booked_seats: int
    sellable_seats: int
    occupancy: float  # booked_seats / sellable_seats, 0..1 (4 decimals)


class SalesReport(msgspec.Struct):
    partner_id: str
    from_date: str
    to_date: str
    group_by: str
    rows: list[ReportRow]


class HeatSeat(msgspec.Struct):
    id: str
    row: str
    number: int
    category: str
    x: int
    y: int
    status: SeatStatus  # booked / held / free / blocked


class Heatmap(msgspec.Struct):
    show_id: str
    seq: int                 # the show's log sequence the statuses are as of
    counts: dict[str, int]   # status -> seats
    occupancy: float         # booked / (seats - blocked)
    seats: list[HeatSeat]


# --- pure aggregation ---------------------------------------------------------------------

@dataclass
class ShowFacts:
    """What the report needs of one show (loaded by `load_facts`)."""

    show: Show
    date: str                 # theatre-local start date
    theatre_name: str
    screen_name: str
    movie_title: str
    bookings: list[BookingRecord] = field(default_factory=list)
    refunds: dict[str, int] = field(default_factory=dict)  # booking id -> refunded amount
    booked_seats: int = 0
    sellable_seats: int = 0

    @property
    def currency(self) -> str:
        for b in self.bookings:
            if b.quote.currency:
                return b.quote.currency
        return next(iter(self.show.prices.values())).currency if self.show.prices else ""


def _key_label(f: ShowFacts, group_by: str) -> tuple[str, str]:
    s = f.show
    if group_by == "show":
        return s.show_id, f"{f.movie_title} {s.starts_at.isoformat().replace('+00:00', 'Z')}"
    if group_by == "screen":
        return s.screen_id, f"{f.theatre_name} / {f.screen_name}"
    if group_by == "theatre":
        return s.theatre_id, f.theatre_name
    return f.date, f.date


def aggregate(facts: Iterable[ShowFacts], group_by: str) -> list[ReportRow]:
    """Rows per (group key, currency), sorted by key then currency."""
    acc: dict[tuple[str, str], dict] = {}
    for f in facts:
        key, label = _key_label(f, group_by)
        cur = f.currency
        a = acc.setdefault((key, cur), {"label": label, "shows": 0, "bookings": 0,
                                        "tickets": 0, "cancelled": 0, "revenue": 0,
                                        "refunds": 0, "booked": 0, "sellable": 0})
        a["shows"] += 1
        a["booked"] += f.booked_seats
        a["sellable"] += f.sellable_seats
        for b in f.bookings:
            if b.status == "confirmed":
                a["bookings"] += 1
                a["tickets"] += len(b.seats)
                a["revenue"] += b.quote.total
            elif b.status == "cancelled":
                refund = min(b.quote.total, f.refunds.get(b.booking_id, b.quote.total))
                a["cancelled"] += 1
                a["revenue"] += b.quote.total - refund
                a["refunds"] += refund
    rows = []
    for (key, cur), a in sorted(acc.items()):
        occ = round(a["booked"] / a["sellable"], 4) if a["sellable"] else 0.0
        rows.append(ReportRow(key, a["label"], cur, a["shows"], a["bookings"], a["tickets"],
                              a["cancelled"], Money(a["revenue"], cur), Money(a["refunds"], cur),
                              a["booked"], a["sellable"], occ))
    return rows


CSV_COLUMNS = ("key", "label", "currency", "shows", "bookings", "tickets", "cancelled",
               "revenue_minor", "refunds_minor", "booked_seats", "sellable_seats", "occupancy")


def to_csv(report: SalesReport) -> str:
    """The rows as CSV (header first); money in integer minor units."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(("group_by", *CSV_COLUMNS))
    for r in report.rows:
        w.writerow((report.group_by, r.key, r.label, r.currency, r.shows, r.bookings,
                    r.tickets, r.cancelled, r.revenue.amount, r.refunds.amount,
                    r.booked_seats, r.sellable_seats, f"{r.occupancy:.4f}"))
    return out.getvalue()


def date_range(from_date: str | None, to_date: str | None,
               today: dt.date | None = None) -> list[str]:
    """The inclusive list of dates; both default to today (UTC). 422 when reversed or
    longer than MAX_DAYS."""
    today = today or dt.datetime.now(dt.UTC).date()
    start = catalog.parse_date(from_date, "from") or today.isoformat()
    end = catalog.parse_date(to_date, "to") or (start if from_date else today.isoformat())
    d0, d1 = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if d1 < d0:
        raise ApiError(422, "invalid_range", "'to' is before 'from'", field="to")
    days = (d1 - d0).days + 1
    if days > MAX_DAYS:
        raise ApiError(422, "range_too_long", f"at most {MAX_DAYS} days per report",
                       field="to")
    return [(d0 + dt.timedelta(days=i)).isoformat() for i in range(days)]


def heatmap(show_id: str, seq: int, seats: list, status: dict[str, SeatStatus]) -> Heatmap:
    counts = {"free": 0, "held": 0, "booked": 0, "blocked": 0}
    out = []
    for s in seats:
        st = status.get(s.id, "free")
        counts[st] += 1
        out.append(HeatSeat(s.id, s.row, s.number, s.category, s.x, s.y, st))
    sellable = len(out) - counts["blocked"]
    occ = round(counts["booked"] / sellable, 4) if sellable else 0.0
    return Heatmap(show_id, seq, counts, occ, out)


# --- loading ------------------------------------------------------------------------------

_replay_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())
# (partner, date) -> (monotonic expiry, the day's facts)
_finished: OrderedDict[tuple[str, str], tuple[float, list[ShowFacts]]] = OrderedDict()


def _replays() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    sem = _replay_slots.get(loop)
    if sem is None:
        sem = _replay_slots[loop] = asyncio.Semaphore(REPLAYS)
    return sem


def clear_cache() -> None:
    _finished.clear()


def finished(date: str, today: dt.date | None = None) -> bool:
    """Every show starting on this theatre-local date has ended (any zone, any runtime)."""
    today = today or dt.datetime.now(dt.UTC).date()
    return dt.date.fromisoformat(date) <= today - dt.timedelta(days=DONE_AFTER_DAYS)


async def _facts(redis: aioredis.Redis, show: Show, date: str,
                 theatres: dict[str, Theatre], screens: dict[str, Screen],
                 titles: dict[str, str]) -> ShowFacts:
    async with _replays():
        index = await show_booking_ids(redis, show.show_id)
        # pending and failed bookings count nowhere: not read
        records = await load_show_bookings(redis, show.show_id, sorted(
            b for b, st in index.items() if st in ("confirmed", "cancelled")))
        statuses = await read_seat_statuses(redis, show.show_id)
    theatre, screen = theatres.get(show.theatre_id), screens.get(show.screen_id)
    f = ShowFacts(show, date, theatre.name if theatre else show.theatre_id,
                  screen.name if screen else show.screen_id,
                  titles.get(show.movie_id, show.movie_id), records)
    cancelled = [b for b in records if b.status == "cancelled"]
    if cancelled:
        raws = await redis.mget([cancellation_key(b.show_id, b.booking_id) for b in cancelled])
        for b, raw in zip(cancelled, raws, strict=True):
            if raw:
                f.refunds[b.booking_id] = msgspec.json.decode(raw, type=Cancellation).refund.amount
    if statuses is not None:
        counts = statuses.counts()
        f.booked_seats = counts["booked"]
        f.sellable_seats = len(statuses.status) - counts["blocked"]
    return f


async def load_facts(redis: aioredis.Redis, partner_id: str, dates: list[str],
                     today: dt.date | None = None) -> list[ShowFacts]:
    async with redis.pipeline(transaction=False) as pipe:
        for d in dates:
            pipe.zrange(catalog.partner_shows_key(partner_id, d), 0, -1)
        per_day = await pipe.execute()
    total = sum(len(ids) for ids in per_day)
    if total > MAX_SHOWS:
        raise ApiError(422, "too_many_shows",
                       f"{total} shows in this range; a report covers at most {MAX_SHOWS} "
                       "shows: ask for a shorter range (from/to)", field="to",
                       shows=total, max_shows=MAX_SHOWS)
    now = time.monotonic()
    cached: dict[str, list[ShowFacts]] = {}
    for d in dates:
        hit = _finished.get((partner_id, d))
        if hit is not None and hit[0] > now and finished(d, today):
            _finished.move_to_end((partner_id, d))
            cached[d] = hit[1]
    date_of = {i.decode(): d for d, ids in zip(dates, per_day, strict=True)
               if d not in cached for i in ids}
    shows = [s for s in await catalog.load_many(redis, Show, list(date_of))
             if s.partner_id == partner_id]
    theatres = {t.theatre_id: t for t in await catalog.load_many(
        redis, Theatre, sorted({s.theatre_id for s in shows}))}
    screens = {s.screen_id: s for s in await catalog.load_many(
        redis, Screen, sorted({s.screen_id for s in shows}))}
    titles = {m.movie_id: m.title for m in await catalog.load_many(
        redis, Movie, sorted({s.movie_id for s in shows}))}
    fresh = list(await asyncio.gather(*(
        _facts(redis, s, date_of[s.show_id], theatres, screens, titles)
        for s in shows)))
    by_day: dict[str, list[ShowFacts]] = {}
    for f in fresh:
        by_day.setdefault(f.date, []).append(f)
    for d in dates:
        if d not in cached and finished(d, today):
            _finished[(partner_id, d)] = (now + FINISHED_TTL_S, by_day.get(d, []))
    while len(_finished) > MAX_FINISHED:
        _finished.popitem(last=False)
    return [f for d in dates for f in cached.get(d, by_day.get(d, []))]


async def sales_report(redis: aioredis.Redis, partner_id: str, from_date: str | None,
                       to_date: str | None, group_by: str) -> SalesReport:
    if group_by not in GROUPS:
        raise ApiError(422, "invalid_group_by", f"group_by must be one of {', '.join(GROUPS)}",
                       field="group_by")
    dates = date_range(from_date, to_date)
    facts = await load_facts(redis, partner_id, dates)
    return SalesReport(partner_id, dates[0], dates[-1], group_by, aggregate(facts, group_by))


async def show_heatmap(redis: aioredis.Redis, partner_id: str, show_id: str) -> Heatmap:
    """404 for an unknown show, 403 for another partner's (catalog.owned_show)."""
    await catalog.owned_show(redis, partner_id, show_id)
    statuses = await read_seat_statuses(redis, show_id)
    if statuses is None:
        raise ApiError(404, "not_found", f"show {show_id!r} has no seat map", show_id=show_id)
    return heatmap(show_id, statuses.seq, list(statuses.config.layout.seats), statuses.status)
