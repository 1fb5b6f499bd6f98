"""The catalogue listing that browse, search and recommendations filter, loaded once per
web process and reused until the catalog changes (security review M7).

Each of `/api/search`, `/api/movies` and `/api/recommendations` used to read, per request,
every city's listing index for up to 9 dates and then every listed show, movie, theatre and
screen record: anybody could make each request do that (vary `q`/`page` to miss the search
cache; the other two had no cache at all). Now a request reads one key:

- a `Listing` (scheduled shows that had not started when it was loaded, all cities, for one
  date or for the browse window, with their movies, theatres and screens) is loaded on the
  first request and kept in memory, keyed on the date (or window) it covers;
- it is valid while `catalog.GENERATION` is unchanged. Every catalog write (shows, movies,
  theatres, screens, retirements) INCRs it in its own MULTI - the same counter the search
  cache has always keyed on - whereas `SHOWS_CHANNEL` is published by show writes only, so
  a renamed movie would not invalidate through it. The generation is read *before* the
  fill, so a fill racing a write is stored under the older generation and never used again;
- callers filter `starts_at > now` themselves, so a show that starts leaves the listing at
  once without reloading;
- concurrent misses of one key share one load; at most MAX_LISTINGS dates are kept (LRU)
  and an entry lives at most TTL_S anyway.

A miss therefore costs one GET plus a filter over an in-memory list.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from server.catalog import service as catalog
from server.catalog.model import Movie, MovieSummary, Screen, Show, Theatre
from server.core.clock import utcnow

TTL_S = 300.0
MAX_LISTINGS = 32


@dataclass(frozen=True)
class Listing:
    generation: int
    shows: tuple[Show, ...]             # sorted by start
    movies: dict[str, Movie]
    theatres: dict[str, Theatre]
    screens: dict[str, Screen]
    until: float                        # monotonic expiry
    _by_city: dict[str, tuple[Show, ...]] = field(default_factory=dict)

    def upcoming(self, city: str | None, now: dt.datetime) -> list[Show]:
        """What `catalog._listed_shows(city, date, now)` answers, from memory."""
        shows = self.shows if not city else self._by_city.get(catalog.city_slug(city), ())
        return [s for s in shows if s.starts_at > now]


class ListingCache:
    def __init__(self) -> None:
        self._entries: OrderedDict[str, Listing] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Listing]] = {}
        self.loads = 0  # how many times the listing was read from Redis (tests, metrics)

    def clear(self) -> None:
        self._entries.clear()

    async def get(self, redis: aioredis.Redis, date: str | None,
                  now: dt.datetime | None = None) -> Listing:
        now = now or utcnow()
        generation = int(await redis.get(catalog.GENERATION) or 0)
        # The browse window moves with the UTC date (catalog._dates).
        key = f"{generation}:{date or 'window:' + now.date().isoformat()}"
        entry = self._entries.get(key)
        if entry is not None and entry.until > time.monotonic():
            self._entries.move_to_end(key)
            return entry
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Listing] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            entry = await self._load(redis, generation, date, now)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            self._loading.pop(key, None)
        future.set_result(entry)
        # Entries of older generations are never read again: drop them.
        for stale in [k for k in self._entries if not k.startswith(f"{generation}:")]:
            del self._entries[stale]
        self._entries[key] = entry
        while len(self._entries) > MAX_LISTINGS:
            self._entries.popitem(last=False)
        return entry

    async def _load(self, redis: aioredis.Redis, generation: int, date: str | None,
                    now: dt.datetime) -> Listing:
        self.loads += 1
        shows = sorted(await catalog._listed_shows(redis, None, date, now),
                       key=lambda s: (s.starts_at, s.show_id))
        movies = {m.movie_id: m for m in await catalog.load_many(
            redis, Movie, sorted({s.movie_id for s in shows}))}
        theatres = {t.theatre_id: t for t in await catalog.load_many(
            redis, Theatre, sorted({s.theatre_id for s in shows}))}
        screens = {s.screen_id: s for s in await catalog.load_many(
            redis, Screen, sorted({s.screen_id for s in shows}))}
        by_city: dict[str, list[Show]] = {}
        for s in shows:
            by_city.setdefault(catalog.city_slug(s.city), []).append(s)
        return Listing(generation, tuple(shows), movies, theatres, screens,
                       time.monotonic() + TTL_S, {k: tuple(v) for k, v in by_city.items()})


listings = ListingCache()  # one per web process


async def browse_movies(redis: aioredis.Redis, city: str | None, language: str | None,
                        genre: str | None, date: str | None,
                        now: dt.datetime | None = None) -> list[MovieSummary]:
    """`catalog.browse_movies`, answered from the in-memory listing."""
    now = now or utcnow()
    listing = await listings.get(redis, date, now)
    shows = listing.upcoming(city, now)
    if language:
        shows = [s for s in shows if s.language.casefold() == language.casefold()]
    by_movie: dict[str, list[Show]] = {}
    for s in shows:
        by_movie.setdefault(s.movie_id, []).append(s)
    movies = [m for i in sorted(by_movie) if (m := listing.movies.get(i)) is not None
              and m.status != "retired"]
    if genre:
        movies = [m for m in movies if genre.casefold() in {g.casefold() for g in m.genres}]
    out = []
    for m in movies:
        its = by_movie[m.movie_id]
        nxt = min(its, key=lambda s: s.starts_at)
        theatre = listing.theatres.get(nxt.theatre_id)
        out.append(MovieSummary(catalog.movie_info(m), len(its), nxt.starts_at,
                                        sorted({s.language for s in its}),
                                        theatre.timezone if theatre else "UTC"))
    out.sort(key=lambda s: (-s.show_count, s.movie.title.casefold()))
    return out
