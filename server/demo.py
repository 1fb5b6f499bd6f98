"""Demo data, published through the partner feed's service layer on startup.

A demo partner (id `demo`) with three cities, two theatres each, two screens per theatre
(120 to 396 seats: Silver / Gold / Recliner bands, aisles, wheelchair spaces with companion
seats) and seven movies in several languages and genres, with four shows a day per screen
today and over the next three days (theatre-local times). Every id is deterministic, so a restart
re-publishes the same records (idempotent PUTs) and only adds the days that are new; shows
that have started are left alone.

The demo partner's API key is written to `<data_dir>/demo-partner-key` (mode 0600) the
first time; only its hash is in Redis. If the file is lost, a new key is issued.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from actors.layout import Seat, grid_layout

from server.core.clock import utcnow
from server.appkeys import SERVICES
from server.accounts import api_keys as auth
from server.catalog import service as catalog
from server.catalog.model import Money, MovieIn, ScreenIn, ScreenLayout, ShowIn, TheatreIn
from server.core.errors import ApiError

log = logging.getLogger(__name__)

PARTNER_ID = "demo"
TZ = "Asia/Kolkata"
DAYS = 4  # today and the next three days
SLOTS = ((10, 0), (13, 30), (17, 0), (20, 30))  # local start times; 3h apart covers 170 min

CITIES = {
    "Mumbai": [("mum-regal", "Regal Colaba", "Shahid Bhagat Singh Rd, Colaba"),
               ("mum-juhu", "Juhu Talkies", "Juhu Tara Rd, Juhu")],
    "Bengaluru": [("blr-indira", "Indiranagar Cinemas", "100 Feet Rd, Indiranagar"),
                  ("blr-orion", "Orion Screens", "Dr Rajkumar Rd, Rajajinagar")],
    "Delhi": [("del-plaza", "Plaza Connaught Place", "H Block, Connaught Place"),
              ("del-saket", "Saket Select", "Press Enclave Marg, Saket")],
}

# (screen suffix, name, rows, seats per row)
SCREENS = [("1", "Audi 1", 18, 22), ("2", "Audi 2", 10, 12)]
MEDIUM = ("2", "Audi 2", 14, 18)

MOVIES = {
    "monsoon-express": MovieIn("Monsoon Express", ["Hindi", "English"], ["Drama", "Romance"],
                               148, "UA", "Two strangers share a delayed train to Goa."),
    "circuit-breaker": MovieIn("Circuit Breaker", ["English", "Hindi", "Tamil"],
                               ["Action", "Sci-Fi"], 132, "UA",
                               "A grid engineer races a rogue AI across a blacked-out city."),
    "kaveri-nights": MovieIn("Kaveri Nights", ["Kannada", "Tamil"], ["Thriller"], 126, "A",
                             "A river-town detective and a missing ferryman."),
    "the-last-kite": MovieIn("The Last Kite", ["Hindi"], ["Family", "Comedy"], 118, "U",
                             "A kite-maker's grandchildren save the family shop."),
    "namma-ooru": MovieIn("Namma Ooru", ["Tamil", "Telugu"], ["Action", "Drama"], 165, "UA",
                          "A village stands up to a sand-mining cartel."),
    "paper-moons": MovieIn("Paper Moons", ["English"], ["Animation", "Family"], 96, "U",
                           "Origami creatures come alive at night."),
    "dilli-diaries": MovieIn("Dilli Diaries", ["Hindi", "Punjabi"], ["Comedy", "Romance"], 139,
                             "UA", "Three weddings, one caterer, no sleep."),
}

PRICES = {"Silver": 18000, "Gold": 26000, "Recliner": 45000}  # paise


def screen_layout(rows: int, per_row: int) -> ScreenLayout:
    """Silver at the front, Gold in the middle, two rows of Recliners at the back; aisles
    after the 4th seat and before the last 4; two wheelchair spaces with companion seats."""
    silver = max(1, (rows - 2) // 2)
    base = grid_layout(rows, per_row,
                       bands=[("Silver", silver), ("Gold", rows - 2 - silver), ("Recliner", 2)],
                       aisles=(4, per_row - 4))
    access_row = base.seats[(silver - 1) * per_row].row  # last Silver row, by the aisle
    seats: list[Seat] = []
    for s in base.seats:
        if s.row == access_row and s.number in (1, per_row):
            s = msgspec.structs.replace(s, accessible=True)
        elif s.row == access_row and s.number in (2, per_row - 1):
            s = msgspec.structs.replace(s, companion=True)
        seats.append(s)
    return ScreenLayout(seats=seats, focal_x=base.focal_x, focal_y=base.focal_y)


async def demo_key(redis: aioredis.Redis, key_file: Path) -> str:
    """The demo partner's API key: made once, kept in `key_file`, re-issued if lost."""
    if not await auth.partner_exists(redis, PARTNER_ID):
        _, key = await auth.create_partner(redis, "Demo Cinemas", PARTNER_ID)
    else:
        key = key_file.read_text().strip() if key_file.exists() else ""
        if not key or not await auth.key_is_valid(redis, PARTNER_ID, key):
            key = await auth.issue_key(redis, PARTNER_ID)
        else:
            return key
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


async def seed(redis: aioredis.Redis, now: dt.datetime | None = None) -> dict[str, int]:
    """Publish the demo catalog; returns counts of what was created / replaced / skipped."""
    now = now or utcnow()
    stats = {"created": 0, "replaced": 0, "skipped": 0}

    def count(created: bool) -> None:
        stats["created" if created else "replaced"] += 1

    for movie_id, body in MOVIES.items():
        count((await catalog.put_movie(redis, PARTNER_ID, movie_id, body))[1])
    screens: list[str] = []
    for city, theatres in CITIES.items():
        for t_index, (theatre_id, name, address) in enumerate(theatres):
            count((await catalog.put_theatre(
                redis, PARTNER_ID, theatre_id, TheatreIn(name, city, address, TZ)))[1])
            for suffix, screen_name, rows, per_row in (SCREENS if t_index == 0
                                                       else [SCREENS[0], MEDIUM]):
                screen_id = f"{theatre_id}-{suffix}"
                body = ScreenIn(theatre_id, screen_name, screen_layout(rows, per_row))
                count((await catalog.put_screen(redis, PARTNER_ID, screen_id, body))[1])
                screens.append(screen_id)

    movie_ids = list(MOVIES)
    today = now.astimezone(ZoneInfo(TZ)).date()

    async def publish_screen(s_index: int, screen_id: str) -> None:
        for day in range(DAYS):
            date = today + dt.timedelta(days=day)
            for slot, (hh, mm) in enumerate(SLOTS):
                starts = dt.datetime(date.year, date.month, date.day, hh, mm,
                                     tzinfo=ZoneInfo(TZ)).astimezone(dt.UTC)
                if starts <= now:
                    stats["skipped"] += 1
                    continue
                movie_id = movie_ids[(s_index * 3 + slot + day) % len(movie_ids)]
                movie = MOVIES[movie_id]
                language = movie.languages[(s_index + slot) % len(movie.languages)]
                fmt = "IMAX" if screen_id.endswith("-1") and slot == 3 else \
                    "3D" if "Animation" in movie.genres else "2D"
                prices = {c: Money(a, "INR") for c, a in PRICES.items()}
                show_id = f"{screen_id}-{date:%Y%m%d}-{hh:02d}{mm:02d}"
                body = ShowIn(movie_id, screen_id, starts, language, fmt, prices)
                try:
                    count((await catalog.put_show(redis, PARTNER_ID, show_id, body, now))[1])
                except ApiError as exc:  # started meanwhile, or cancelled by hand
                    log.debug("demo show %s not published: %s", show_id, exc.message)
                    stats["skipped"] += 1

    # Screens are independent (no shared keys), so publish them side by side.
    await asyncio.gather(*(publish_screen(i, s) for i, s in enumerate(screens)))
    return stats


async def seed_on_startup(app: web.Application) -> None:
    svc = app[SERVICES]
    started = time.perf_counter()
    key_file = Path(svc.settings.data_dir).resolve() / "demo-partner-key"
    await demo_key(svc.redis, key_file)
    stats = await seed(svc.redis)
    took = time.perf_counter() - started
    log.info("demo data: %(created)d created, %(replaced)d re-published, %(skipped)d skipped",
             stats)
    msg = (f"Demo partner 'demo' seeded in {took:.2f}s; its API key is in {key_file} "
           f"(use: Authorization: Bearer $(cat {key_file}))")
    log.info(msg)
    print(msg, flush=True)
