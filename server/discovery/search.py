"""Catalog search: movies showing, filtered, matched on free text, ranked and paged.

Pure helpers (no I/O, unit-tested in tests/unit/test_search.py):

- `fold` / `tokens`: case- and accent-insensitive words ("Amélie" -> ["amelie"]);
- `match_score`: every query word must match the title, a genre or the synopsis (the whole
  word, or its start for words of 3+ letters); a title match outweighs a genre match, which
  outweighs a synopsis match, so title hits rank above synopsis hits;
- `SearchParams.parse`: validated query parameters (422 on bad ones) and the normalised
  cache key;
- `sort_candidates` / `page_of`.

`search` filters the in-memory catalogue listing (server/discovery/listing.py: scheduled
shows that have not started, theatre-local dates, the coming week without `date`, loaded
once per process per `catalog.GENERATION`) and keeps the answer in a bounded in-process
cache for CACHE_TTL_S under the generation and the normalised query. Every catalog write
INCRs `catalog.GENERATION` in its own MULTI, so once a partner's write has committed no
request reads an answer of an older generation: the change is visible at once. What the
generation does not cover - shows starting, ratings moving - is at most CACHE_TTL_S old.

Bounded work per request (security review M7): `page` is at most MAX_PAGE, `q` at most
MAX_QUERY_CHARS and MAX_QUERY_TOKENS words; the cache key is built from the folded,
de-duplicated query words, so case, accents, punctuation and repeated words do not make
new entries; a miss is a filter over the in-memory listing (one GET of the generation,
`{catalog}:generation`), and nothing is written to Redis: CACHE_PREFIX names in-process
entries, not keys.

Rating sort: `set_rating_source(fn)` plugs in `async fn(redis, movie_ids) -> {movie_id:
(average, count)}` for the rated ones (reviews.movie_ratings); until one is set
`sort=rating` is a 422 and hits carry no `rating`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec
import redis.asyncio as aioredis

from server.core.clock import utcnow
from server.catalog import service as catalog
from server.catalog.model import MovieInfo, RatingSummary, Show, TheatreShows
from server.core.errors import ApiError
from server.discovery.listing import listings

CACHE_TTL_S = 30
CACHE_PREFIX = "search:"
MAX_QUERY_CHARS = 200
MAX_QUERY_TOKENS = 10
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 50
MAX_PAGE = 50        # 50 pages of up to 50 movies: deeper than any catalogue we list
MAX_CACHED = 1024    # answers kept per process (LRU)
SORTS = ("relevance", "next_show", "title", "rating")

# Weights: (whole word, word start). Title above genres above synopsis.
TITLE = (10.0, 6.0)
GENRE = (4.0, 3.0)
SYNOPSIS = (2.0, 1.0)
PHRASE_BONUS = 5.0   # the whole query appears in the title, words in order
PREFIX_MIN = 3       # shorter query words only match whole words

RatingSource = Callable[[aioredis.Redis, list[str]],
                        Awaitable[Mapping[str, tuple[float, int]]]]
_rating_source: RatingSource | None = None


def set_rating_source(source: RatingSource | None) -> RatingSource | None:
    """Plug in movie ratings (average, count) for `sort=rating` and the hits' rating;
    returns the source it replaces."""
    global _rating_source
    previous, _rating_source = _rating_source, source
    return previous


def rating_available() -> bool:
    return _rating_source is not None


# --- wire ------------------------------------------------------------------------------

class SearchHit(msgspec.Struct):
    movie: MovieInfo
    score: float              # relevance (0 without a text query)
    show_count: int           # matching scheduled shows
    next_show_at: dt.datetime  # the earliest of them
    languages_showing: list[str]
    formats_showing: list[str]
    theatres: list[TheatreShows]  # where it runs (in the city) and when (on the date)
    next_show_timezone: str = "UTC"
    rating: RatingSummary | None = None  # customers' ratings, when a rating source is set


class SearchResults(msgspec.Struct):
    query: str
    sort: str
    page: int
    per_page: int
    total: int                # matching movies over all pages
    results: list[SearchHit]


_results_decoder = msgspec.json.Decoder(SearchResults)
_enc = msgspec.json.Encoder()


# --- text ------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def fold(text: str) -> str:
    """Lower-cased, accents dropped: 'Amélie' and 'AMELIE' fold alike."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def tokens(text: str) -> list[str]:
    return _WORD.findall(fold(text))


def query_tokens(q: str) -> list[str]:
    """The distinct words of a query, in order, at most MAX_QUERY_TOKENS."""
    out: list[str] = []
    for t in tokens(q):
        if t not in out:
            out.append(t)
    return out[:MAX_QUERY_TOKENS]


def _field_score(word: str, field: set[str], weights: tuple[float, float]) -> float:
    if word in field:
        return weights[0]
    if len(word) >= PREFIX_MIN and any(t.startswith(word) for t in field):
        return weights[1]
    return 0.0


def match_score(words: list[str], title: str, genres: list[str], synopsis: str
                ) -> float | None:
    """Relevance of a movie for query `words` (from `query_tokens`); None: no match.
    No words: everything matches with score 0."""
    if not words:
        return 0.0
    title_words = tokens(title)
    fields = ((set(title_words), TITLE), (set(tokens(" ".join(genres))), GENRE),
              (set(tokens(synopsis)), SYNOPSIS))
    total = 0.0
    for w in words:
        best = max(_field_score(w, f, weights) for f, weights in fields)
        if best == 0.0:
            return None
        total += best
    if len(words) > 1 and " ".join(words) in " ".join(title_words):
        total += PHRASE_BONUS
    return total


# --- parameters ------------------------------------------------------------------------

def _int(raw: str | None, name: str, default: int, lo: int, hi: int | None) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ApiError(422, "invalid_param", f"{name} must be an integer", field=name) from None
    if value < lo or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ApiError(422, "invalid_param", f"{name} must be {bounds}", field=name)
    return value


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = " ".join(query.get(name, "").split())
    return value or None


@dataclass(frozen=True)
class SearchParams:
    q: str = ""
    city: str | None = None
    language: str | None = None
    genre: str | None = None
    format: str | None = None
    date: str | None = None
    sort: str = "relevance"
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE

    @classmethod
    def parse(cls, query: Mapping[str, str], rating_available: bool = False) -> SearchParams:
        q = " ".join(query.get("q", "").split())
        if len(q) > MAX_QUERY_CHARS:
            raise ApiError(422, "invalid_param",
                           f"q is at most {MAX_QUERY_CHARS} characters", field="q")
        sort = query.get("sort", "").strip() or ("relevance" if q else "next_show")
        if sort not in SORTS:
            raise ApiError(422, "invalid_sort", f"sort must be one of {', '.join(SORTS)}",
                           field="sort", sorts=list(SORTS))
        if sort == "rating" and not rating_available:
            raise ApiError(422, "invalid_sort", "sorting by rating is not available yet",
                           field="sort")
        return cls(q=q, city=_text(query, "city"), language=_text(query, "language"),
                   genre=_text(query, "genre"), format=_text(query, "format"),
                   date=catalog.parse_date(_text(query, "date")), sort=sort,
                   page=_int(query.get("page"), "page", 1, 1, MAX_PAGE),
                   per_page=_int(query.get("per_page"), "per_page", DEFAULT_PER_PAGE, 1,
                                 MAX_PER_PAGE))

    def cache_key(self, generation: int) -> str:
        """Equal for queries that answer alike: filters compared as the search compares
        them (case, accents, spacing); q as the words it is matched by (folded, distinct,
        at most MAX_QUERY_TOKENS), so "Amélie!", "amelie" and "AMELIE amelie" share one
        entry. (The answer echoes each request's own `q`.)"""
        parts = [" ".join(query_tokens(self.q)),
                 catalog.city_slug(self.city) if self.city else "",
                 fold(self.language or ""), fold(self.genre or ""), fold(self.format or ""),
                 self.date or "", self.sort, str(self.page), str(self.per_page)]
        digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
        return f"{CACHE_PREFIX}{generation}:{digest}"


# --- ranking ---------------------------------------------------------------------------

@dataclass
class Candidate:
    movie_id: str
    title: str
    score: float
    next_show_at: dt.datetime
    rating: tuple[float, int] | None = None


def sort_candidates(items: list[Candidate], sort: str) -> list[Candidate]:
    def title(c: Candidate) -> tuple[str, str]:
        return fold(c.title), c.movie_id

    if sort == "relevance":
        return sorted(items, key=lambda c: (-c.score, c.next_show_at, *title(c)))
    if sort == "next_show":
        return sorted(items, key=lambda c: (c.next_show_at, *title(c)))
    if sort == "title":
        return sorted(items, key=title)
    if sort == "rating":  # rated first, best average, then most ratings
        return sorted(items, key=lambda c: (c.rating is None, -(c.rating or (0, 0))[0],
                                            -(c.rating or (0, 0))[1], *title(c)))
    raise ValueError(sort)


def page_of(items: list[Candidate], page: int, per_page: int) -> list[Candidate]:
    start = (page - 1) * per_page
    return items[start:start + per_page]


# --- query -----------------------------------------------------------------------------

async def run(redis: aioredis.Redis, params: SearchParams,
              now: dt.datetime | None = None) -> SearchResults:
    """Search without the answer cache (the listing comes from memory)."""
    now = now or utcnow()
    listing = await listings.get(redis, params.date, now)
    shows = listing.upcoming(params.city, now)
    if params.language:
        shows = [s for s in shows if fold(s.language) == fold(params.language)]
    if params.format:
        shows = [s for s in shows if fold(s.format) == fold(params.format)]
    by_movie: dict[str, list[Show]] = {}
    for s in sorted(shows, key=lambda s: s.starts_at):
        by_movie.setdefault(s.movie_id, []).append(s)
    movies = [m for i in sorted(by_movie) if (m := listing.movies.get(i)) is not None]
    if params.genre:
        movies = [m for m in movies if fold(params.genre) in {fold(g) for g in m.genres}]
    words = query_tokens(params.q)
    candidates: list[Candidate] = []
    for m in movies:
        score = match_score(words, m.title, m.genres, m.synopsis)
        if score is not None:
            candidates.append(Candidate(m.movie_id, m.title, score,
                                        by_movie[m.movie_id][0].starts_at))
    ratings: Mapping[str, tuple[float, int]] = {}
    if _rating_source is not None and candidates:
        ratings = await _rating_source(redis, [c.movie_id for c in candidates])
        for c in candidates:
            c.rating = ratings.get(c.movie_id)
    ranked = sort_candidates(candidates, params.sort)
    hits = page_of(ranked, params.page, params.per_page)

    page_shows = [s for c in hits for s in by_movie[c.movie_id]]
    theatres = {i: listing.theatres[i] for i in sorted({s.theatre_id for s in page_shows})
                if i in listing.theatres}
    screens = {i: listing.screens[i] for i in sorted({s.screen_id for s in page_shows})
               if i in listing.screens}
    info = {m.movie_id: catalog.movie_info(m) for m in movies}
    results = []
    for c in hits:
        its = by_movie[c.movie_id]
        first = its[0]
        rating = c.rating
        results.append(SearchHit(
            movie=info[c.movie_id], score=c.score, show_count=len(its),
            next_show_at=first.starts_at,
            languages_showing=sorted({s.language for s in its}),
            formats_showing=sorted({s.format for s in its}),
            theatres=catalog.theatre_show_times(its, theatres, screens),
            next_show_timezone=theatres[first.theatre_id].timezone
            if first.theatre_id in theatres else "UTC",
            rating=RatingSummary(*rating) if rating else None))
    return SearchResults(params.q, params.sort, params.page, params.per_page,
                         len(ranked), results)


# cache key -> (monotonic expiry, answer); bounded, in this process only
_answers: OrderedDict[str, tuple[float, SearchResults]] = OrderedDict()


def clear_cache() -> None:
    _answers.clear()


async def search(redis: aioredis.Redis, params: SearchParams) -> tuple[bytes, Literal["hit", "miss"]]:
    """The encoded SearchResults for `params`, from the cache when fresh: (body, hit|miss)."""
    generation = int(await redis.get(catalog.GENERATION) or 0)
    key = params.cache_key(generation)
    now = time.monotonic()
    cached = _answers.get(key)
    if cached is not None and cached[0] > now:
        _answers.move_to_end(key)
        answer = cached[1]
        if answer.query != params.q:  # same words, spelt differently: echo this request's
            answer = msgspec.structs.replace(answer, query=params.q)
        return _enc.encode(answer), "hit"
    answer = await run(redis, params)
    for stale in [k for k in _answers if not k.startswith(f"{CACHE_PREFIX}{generation}:")]:
        del _answers[stale]
    _answers[key] = (now + CACHE_TTL_S, answer)
    while len(_answers) > MAX_CACHED:
        _answers.popitem(last=False)
    return _enc.encode(answer), "miss"


def decode_results(body: bytes) -> SearchResults:
    return _results_decoder.decode(body)
