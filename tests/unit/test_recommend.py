"""Recommendation scoring (server/discovery/recommend.py): decay, co-occurrence, ranking, sections."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.discovery import recommend as r

H = r.HALF_LIFE_S


def cands(*ids: str, langs: dict[str, set[str]] | None = None) -> dict[str, r.Candidate]:
    langs = langs or {}
    return {m: r.Candidate(m, frozenset(langs.get(m, {"en"})), 1000 + i)
            for i, m in enumerate(ids)}


def test_decay_halves_at_each_half_life() -> None:
    assert r.decay(0) == 1.0
    assert r.decay(H) == pytest.approx(0.5)
    assert r.decay(2 * H) == pytest.approx(0.25)
    assert r.decay(3600, half_life_s=3600) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        r.decay(1, half_life_s=0)


@given(t=st.floats(-10 * H, 10 * H), epoch=st.floats(-10 * H, 10 * H),
       age=st.floats(0, 10 * H))
def test_epoch_relative_sum_decays_like_the_booking(t: float, epoch: float, age: float) -> None:
    """A booking stored relative to any epoch reads back as decay(its age)."""
    stored = r.epoch_weight(t, epoch)
    assert math.isclose(r.decayed(stored, epoch, t + age), r.decay(age), rel_tol=1e-9)


def test_rebase_keeps_decayed_values() -> None:
    stored = r.epoch_weight(5 * H, 0) + r.epoch_weight(6 * H, 0)
    rebased = stored * r.rebase_factor(0, 7 * H)
    assert r.decayed(rebased, 7 * H, 8 * H) == pytest.approx(r.decayed(stored, 0, 8 * H))
    assert r.decayed(stored, 0, 7 * H) == pytest.approx(0.25 + 0.5)


def test_older_booking_counts_half_after_a_half_life() -> None:
    """Two bookings a day ago weigh as much as one booking now."""
    old = 2 * r.epoch_weight(0, 0)
    new = r.epoch_weight(H, 0)
    assert r.decayed(old, 0, H) == pytest.approx(r.decayed(new, 0, H))


def test_cooccurrence_excludes_watched_and_the_anchor() -> None:
    c = cands("a", "b", "c", "d")
    cooc = {"a": 9.0, "b": 5.0, "c": 3.0, "zz": 7.0}  # zz has no shows: never offered
    picks = r.because_you_watched("x", cooc, c, watched={"b", "x"})
    assert [p.movie_id for p in picks] == ["a", "c"]
    assert [p.movie_id for p in r.because_you_watched("a", cooc, c, watched=())] == ["b", "c"]


def test_ties_are_deterministic_soonest_show_then_id() -> None:
    c = {"m2": r.Candidate("m2", frozenset({"en"}), 500),
         "m1": r.Candidate("m1", frozenset({"en"}), 500),
         "m0": r.Candidate("m0", frozenset({"en"}), 900)}
    scores = {"m0": 1.0, "m2": 1.0, "m1": 1.0}
    assert [p.movie_id for p in r.rank(scores, c)] == ["m1", "m2", "m0"]
    assert [p.movie_id for p in r.rank(dict(reversed(scores.items())), c)] == ["m1", "m2", "m0"]
    assert [p.movie_id for p in r.rank(scores, c, limit=1)] == ["m1"]


def test_language_preference_requested_first_then_most_booked() -> None:
    assert r.language_preference({"Tamil": 1, "hindi": 3, "English": 3}, "Tamil") == \
        ["tamil", "english", "hindi"]
    assert r.language_preference({}, None) == []
    assert r.language_preference({}, "  ") == []


def test_in_languages_prefers_language_order_then_popularity() -> None:
    c = cands("h1", "h2", "e1", "t1",
              langs={"h1": {"hindi"}, "h2": {"hindi", "english"}, "e1": {"english"},
                     "t1": {"tamil"}})
    picks = r.in_languages(["hindi", "english"], {"h1": 1.0, "h2": 2.0, "e1": 9.0}, c,
                           watched={"h2"})
    assert [p.movie_id for p in picks] == ["h1", "e1"]


def test_plan_personalised_sections() -> None:
    c = cands("a", "b", "c", "d")
    sections = r.plan(candidates=c, history=["a"], cooc={"a": {"b": 2, "a": 1}},
                      city_popularity={"a": 5.0, "c": 1.0}, overall_popularity={"d": 9.0},
                      languages=["en"])
    kinds = [s.kind for s in sections]
    assert kinds == ["because_you_watched", "popular_in_city", "in_your_languages"]
    assert sections[0].because_of == "a" and [p.movie_id for p in sections[0].picks] == ["b"]
    assert [p.movie_id for p in sections[1].picks] == ["c"]  # "a" was booked already


def test_plan_cold_start_popular_then_soonest() -> None:
    c = cands("a", "b")
    assert [s.kind for s in r.plan(candidates=c, city_popularity={},
                                   overall_popularity={"b": 1.0})] == ["popular"]
    soon = r.plan(candidates=c, city_popularity={})
    assert [s.kind for s in soon] == ["soonest"]
    assert [p.movie_id for p in soon[0].picks] == ["a", "b"]
    assert r.plan(candidates={}) == []


def test_plan_does_not_repeat_a_movie_across_anchors() -> None:
    c = cands("a", "b", "c", "d")
    sections = r.plan(candidates=c, history=["a", "b"],
                      cooc={"a": {"c": 1}, "b": {"c": 3, "d": 1}})
    assert [(s.because_of, [p.movie_id for p in s.picks]) for s in sections
            if s.kind == "because_you_watched"] == [("a", ["c"]), ("b", ["d"])]
