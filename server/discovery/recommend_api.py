"""Recommendations (customers; logged in or not): `GET /api/recommendations`.

Sections, in order (each only when it has movies):

- `because_you_watched` (logged-in customer with bookings): per recent booked movie X,
  movies other customers booked along with X, without any the customer booked.
- `popular_in_city` (`city` given): bookings in that city, halving every 24 h.
- `in_your_languages`: movies showing in the `language` asked for and the languages of the
  customer's bookings.
- cold start, when neither of the first two has anything: `popular` (every city), else
  `soonest` (the next shows).

Only movies with scheduled shows in the coming week (in `city` when given) are offered.
The data is kept by server/discovery/recommend_store.py from the outbox's booking events, so a booking
shows up here shortly after it is confirmed (eventually consistent).
"""
from __future__ import annotations

import time
from typing import Literal

import msgspec
from aiohttp import web

from server.appkeys import services
from server.catalog import service as catalog
from server.discovery import listing, recommend
from server.accounts.users import current_user
from server.catalog.model import Movie, MovieInfo, MovieSummary
from server.core.errors import ApiError
from server.core.openapi import Query, operation
from server.discovery.recommend_store import RecommendStore
from server.core.wire import json_response

routes = web.RouteTableDef()

SectionKind = Literal["because_you_watched", "popular_in_city", "in_your_languages",
                      "popular", "soonest"]


class RecommendedMovie(msgspec.Struct):
    summary: MovieSummary  # as in GET /api/movies (for the city when given)
    score: float           # co-bookings, or decayed bookings (0 for "soonest")


class Section(msgspec.Struct):
    kind: SectionKind
    title: str
    movies: list[RecommendedMovie]
    because_of: MovieInfo | None = None  # because_you_watched: the movie booked
    languages: list[str] = []            # in_your_languages: the languages, preferred first


class Recommendations(msgspec.Struct):
    city: str | None
    personalised: bool  # a logged-in customer's history was used
    sections: list[Section]


def _q(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    return value or None


def _limit(request: web.Request) -> int:
    raw = _q(request, "limit")
    if raw is None:
        return recommend.DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 50:
        raise ApiError(422, "invalid_limit", "limit must be a whole number from 1 to 50",
                       field="limit")
    return value


def _title(kind: str, city: str | None, because: MovieInfo | None, langs: list[str]) -> str:
    if kind == "because_you_watched":
        return f"Because you watched {because.title if because else 'a movie'}"
    if kind == "popular_in_city":
        return f"Popular in {city} now"
    if kind == "in_your_languages":
        return "In " + ", ".join(lang.title() for lang in langs)
    if kind == "popular":
        return "Popular now"
    return "Showing soon"


@routes.get("/api/recommendations")
@operation("GET", "/api/recommendations", summary="Movies recommended for the customer",
           response=Recommendations, errors=(422,), tags=("browse",),
           params=(Query("city", description="the customer's city"),
                   Query("language", description="a preferred show language"),
                   Query("limit", type=int, description="movies per section, 1-50 (10)")))
async def get_recommendations(request: web.Request) -> web.Response:
    redis = services(request).redis
    city, language, limit = _q(request, "city"), _q(request, "language"), _limit(request)
    if city:  # the city as its theatres spell it ("pune" -> "Pune")
        known = await redis.hget(catalog.CITIES, catalog.city_slug(city))
        city = known.decode() if known else " ".join(city.split())
    store = RecommendStore(redis)
    user = await current_user(request)
    customer_id = user.user_id if user is not None and user.role == "customer" else None

    summaries = await listing.browse_movies(redis, city, None, None, None)  # from memory
    by_id = {s.movie.movie_id: s for s in summaries}
    candidates = {m: recommend.Candidate(m, frozenset(x.casefold() for x in s.languages_showing),
                                         int(s.next_show_at.timestamp() * 1000))
                  for m, s in by_id.items()}
    history: list[str] = []
    history_langs: dict[str, float] = {}
    if customer_id is not None:
        history, history_langs = await store.history(customer_id)
    now = time.time()
    plans = recommend.plan(
        candidates=candidates, history=history,
        cooc=await store.cooccurrences(history[:recommend.MAX_ANCHORS * 3]),
        city_popularity=await store.popularity(city, now) if city else None,
        overall_popularity=await store.popularity(None, now),
        languages=recommend.language_preference(history_langs, language), limit=limit)

    anchors = [p.because_of for p in plans if p.because_of]
    anchor_info = {m.movie_id: catalog.movie_info(m) for m in await catalog.load_many(
        redis, Movie, anchors)}
    sections = []
    for p in plans:
        because = anchor_info.get(p.because_of) if p.because_of else None
        if p.because_of and because is None:
            continue  # the movie booked was withdrawn from the catalog
        sections.append(Section(
            p.kind, _title(p.kind, city, because, p.languages),
            [RecommendedMovie(by_id[x.movie_id], round(x.score, 6)) for x in p.picks],
            because, p.languages))
    return json_response(Recommendations(city, bool(history), sections))
