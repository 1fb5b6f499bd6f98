"""Recommendation scoring: pure functions, no I/O (server/discovery/recommend_store.py feeds them).

Three signals, all computed from confirmed bookings:

- co-occurrence ("because you watched X"): for each pair of movies, how many customers
  booked both. A customer who booked X is offered the movies most co-booked with X that
  they have not booked themselves.
- popularity with exponential time decay ("popular in <city> now"): each booking adds
  weight 1 that halves every `half_life_s` (24 h by default). The store keeps the sum
  scaled to a reference time (`epoch`): a booking at time t adds 2^((t - epoch)/h), and the
  decayed value at `now` is that sum times 2^(-(now - epoch)/h). Ordering by the stored sum
  is ordering by the decayed value, so no write is needed as time passes; a periodic
  refresh moves the epoch forward (`rebase_factor`) so the numbers stay small.
- language preference ("in your languages"): the languages of the shows a customer booked
  (most booked first), after the `language` the caller asked for.

Only movies in `candidates` (those with upcoming scheduled shows where the customer looks)
are ever offered. Ties are broken by the soonest next show, then the movie id, so the same
inputs always give the same order.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

HALF_LIFE_S = 24 * 3600.0
DEFAULT_LIMIT = 10
MAX_ANCHORS = 2  # "because you watched" sections: the customer's most recent bookings


# --- time decay -------------------------------------------------------------------------

def decay(age_s: float, half_life_s: float = HALF_LIFE_S) -> float:
    """The weight left of a booking `age_s` seconds old (1.0 when new, 0.5 at one half-life)."""
    if half_life_s <= 0:
        raise ValueError("half_life_s must be positive")
    return 0.5 ** (age_s / half_life_s)


def epoch_weight(t_s: float, epoch_s: float, half_life_s: float = HALF_LIFE_S) -> float:
    """What a booking at `t_s` adds to a popularity sum kept relative to `epoch_s`."""
    return 1.0 / decay(t_s - epoch_s, half_life_s)


def decayed(stored: float, epoch_s: float, now_s: float,
            half_life_s: float = HALF_LIFE_S) -> float:
    """A stored (epoch-relative) popularity sum as decayed booking weight at `now_s`."""
    return stored * decay(now_s - epoch_s, half_life_s)


def rebase_factor(old_epoch_s: float, new_epoch_s: float,
                  half_life_s: float = HALF_LIFE_S) -> float:
    """Multiply stored sums by this when moving the epoch from `old` to `new`."""
    return decay(new_epoch_s - old_epoch_s, half_life_s)


# --- ranking ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """A movie that may be offered: it has upcoming scheduled shows where the customer looks."""

    movie_id: str
    languages: frozenset[str]  # casefolded languages of those shows
    next_show_ms: int          # the soonest of them (tie-break: sooner first)


@dataclass(frozen=True)
class Pick:
    movie_id: str
    score: float


@dataclass(frozen=True)
class SectionPlan:
    kind: str  # because_you_watched | popular_in_city | in_your_languages | popular | soonest
    picks: list[Pick]
    because_of: str | None = None                  # because_you_watched: the anchor movie
    languages: list[str] = field(default_factory=list)  # in_your_languages


def rank(scores: Mapping[str, float], candidates: Mapping[str, Candidate], *,
         exclude: Iterable[str] = (), limit: int = DEFAULT_LIMIT,
         min_score: float = 0.0) -> list[Pick]:
    """Candidates with a score above `min_score`, best first; ties: soonest show, then id."""
    skip = set(exclude)
    found = [(s, m) for m, s in scores.items()
             if m in candidates and m not in skip and s > min_score]
    found.sort(key=lambda sm: (-sm[0], candidates[sm[1]].next_show_ms, sm[1]))
    return [Pick(m, s) for s, m in found[:limit]]


def because_you_watched(anchor: str, cooc: Mapping[str, float],
                        candidates: Mapping[str, Candidate], watched: Iterable[str],
                        limit: int = DEFAULT_LIMIT) -> list[Pick]:
    """Movies co-booked with `anchor` by other customers, without any the customer booked."""
    return rank(cooc, candidates, exclude={anchor, *watched}, limit=limit)


def language_preference(history_languages: Mapping[str, float],
                        requested: str | None = None) -> list[str]:
    """Casefolded languages, the requested one first, then the most booked (ties by name)."""
    out = [requested.strip().casefold()] if requested and requested.strip() else []
    ordered = sorted(history_languages.items(), key=lambda kv: (-kv[1], kv[0].casefold()))
    for lang, count in ordered:
        lang = lang.casefold()
        if count > 0 and lang not in out:
            out.append(lang)
    return out


def in_languages(languages: Sequence[str], popularity: Mapping[str, float],
                 candidates: Mapping[str, Candidate], watched: Iterable[str],
                 limit: int = DEFAULT_LIMIT) -> list[Pick]:
    """Candidates showing in one of `languages`: more preferred language first, then
    popularity, then the soonest show."""
    skip = set(watched)
    prefs = {lang: i for i, lang in enumerate(languages)}
    found = []
    for m, c in candidates.items():
        ranks = [prefs[lang] for lang in c.languages if lang in prefs]
        if ranks and m not in skip:
            found.append((min(ranks), -popularity.get(m, 0.0), c.next_show_ms, m))
    found.sort()
    return [Pick(m, -neg) for _r, neg, _t, m in found[:limit]]


def soonest(candidates: Mapping[str, Candidate], watched: Iterable[str] = (),
            limit: int = DEFAULT_LIMIT) -> list[Pick]:
    skip = set(watched)
    found = sorted((c.next_show_ms, m) for m, c in candidates.items() if m not in skip)
    return [Pick(m, 0.0) for _t, m in found[:limit]]


def plan(*, candidates: Mapping[str, Candidate], history: Sequence[str] = (),
         cooc: Mapping[str, Mapping[str, float]] | None = None,
         city_popularity: Mapping[str, float] | None = None,
         overall_popularity: Mapping[str, float] | None = None,
         languages: Sequence[str] = (), limit: int = DEFAULT_LIMIT,
         anchors: int = MAX_ANCHORS) -> list[SectionPlan]:
    """The sections to show, in order.

    `history`: the customer's booked movies, most recent first. `cooc[X]`: movie -> number
    of customers who booked it and X. `city_popularity` is None when no city was given.
    A movie already offered "because you watched" one anchor is not repeated for the next.
    When neither "because you watched" nor "popular in the city" has anything, the fallback
    is "popular" overall, or else the soonest shows.
    """
    cooc = cooc or {}
    overall = overall_popularity or {}
    watched = set(history)
    sections: list[SectionPlan] = []
    offered: set[str] = set()
    for anchor in history:
        if sum(s.kind == "because_you_watched" for s in sections) >= anchors:
            break
        picks = because_you_watched(anchor, cooc.get(anchor, {}), candidates,
                                    watched | offered, limit)
        if picks:
            sections.append(SectionPlan("because_you_watched", picks, because_of=anchor))
            offered.update(p.movie_id for p in picks)
    if city_popularity is not None:
        picks = rank(city_popularity, candidates, exclude=watched, limit=limit)
        if picks:
            sections.append(SectionPlan("popular_in_city", picks))
    if languages:
        popularity = city_popularity if city_popularity is not None else overall
        picks = in_languages(languages, popularity, candidates, watched, limit)
        if picks:
            sections.append(SectionPlan("in_your_languages", picks, languages=list(languages)))
    if not any(s.kind in ("because_you_watched", "popular_in_city") for s in sections):
        picks = rank(overall, candidates, exclude=watched, limit=limit)
        if picks:
            sections.append(SectionPlan("popular", picks))
        else:
            picks = soonest(candidates, watched, limit)
            if picks:
                sections.append(SectionPlan("soonest", picks))
    return sections
