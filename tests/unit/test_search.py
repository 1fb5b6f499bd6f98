"""Catalog search's pure helpers: folding, matching and ranking, parameters, sorting, pages."""
from __future__ import annotations

import datetime as dt

import pytest

from server.core.errors import ApiError
from server.discovery.search import (
    Candidate,
    SearchParams,
    fold,
    match_score,
    page_of,
    query_tokens,
    sort_candidates,
    tokens,
)

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_fold_ignores_case_and_accents() -> None:
    assert fold("Amélie À PARIS") == fold("amelie a paris") == "amelie a paris"
    assert tokens("Crème-Brûlée, 2!") == ["creme", "brulee", "2"]
    assert query_tokens("  the The  NIGHT the ") == ["the", "night"]


def test_every_word_must_match_somewhere() -> None:
    assert match_score(["night"], "The Night Train", ["Thriller"], "") is not None
    assert match_score(["night", "space"], "The Night Train", ["Thriller"], "a train") is None
    assert match_score([], "Anything", [], "") == 0.0


def test_title_outranks_genre_outranks_synopsis() -> None:
    title = match_score(["storm"], "Storm Rising", ["Action"], "A quiet town.")
    genre = match_score(["storm"], "Quiet Days", ["Storm"], "A quiet town.")
    synopsis = match_score(["storm"], "Quiet Days", ["Drama"], "A storm hits a town.")
    assert title is not None and genre is not None and synopsis is not None
    assert title > genre > synopsis > 0


def test_accented_titles_match_plain_queries_and_the_reverse() -> None:
    assert match_score(query_tokens("AMELIE"), "Amélie", [], "") is not None
    assert match_score(query_tokens("amélie"), "Amelie", [], "") is not None


def test_word_starts_match_from_three_letters_and_score_below_whole_words() -> None:
    whole = match_score(["inter"], "Inter Stellar", [], "")
    start = match_score(["inter"], "Interstellar", [], "")
    assert whole is not None and start is not None and whole > start
    assert match_score(["in"], "Interstellar", [], "") is None  # too short for a prefix


def test_phrase_in_title_adds_a_bonus() -> None:
    in_order = match_score(["dark", "night"], "The Dark Night", [], "")
    apart = match_score(["dark", "night"], "Night of the Dark", [], "")
    assert in_order is not None and apart is not None and in_order > apart


def cands() -> list[Candidate]:
    return [Candidate("a", "beta", 2.0, T0 + dt.timedelta(hours=3), (4.0, 10)),
            Candidate("b", "Alpha", 9.0, T0 + dt.timedelta(hours=5), None),
            Candidate("c", "Gamma", 2.0, T0 + dt.timedelta(hours=1), (4.5, 2)),
            Candidate("d", "delta", 1.0, T0 + dt.timedelta(hours=2), (4.0, 30))]


@pytest.mark.parametrize(("sort", "order"), [
    ("relevance", ["b", "c", "a", "d"]),  # score, then sooner first
    ("next_show", ["c", "d", "a", "b"]),
    ("title", ["b", "a", "d", "c"]),      # case-insensitive
    ("rating", ["c", "d", "a", "b"]),     # average, then count; unrated last
])
def test_sorts(sort: str, order: list[str]) -> None:
    assert [c.movie_id for c in sort_candidates(cands(), sort)] == order


def test_pages() -> None:
    items = sort_candidates(cands(), "title")
    assert [c.movie_id for c in page_of(items, 1, 3)] == ["b", "a", "d"]
    assert [c.movie_id for c in page_of(items, 2, 3)] == ["c"]
    assert page_of(items, 3, 3) == []


def test_params_defaults_and_normalisation() -> None:
    p = SearchParams.parse({"q": "  dark   night ", "city": " mumbai "})
    assert (p.q, p.city, p.sort, p.page, p.per_page) == ("dark night", "mumbai", "relevance",
                                                         1, 20)
    assert SearchParams.parse({}).sort == "next_show"  # no text: soonest first
    same = SearchParams.parse({"q": "dark night", "city": "MUMBAI", "genre": "Drama"})
    other = SearchParams.parse({"q": "dark night", "city": "Mumbai", "genre": "drama"})
    assert same.cache_key(3) == other.cache_key(3)
    assert same.cache_key(3) != same.cache_key(4)
    assert same.cache_key(3) != SearchParams.parse({"q": "dark night", "page": "2"}).cache_key(3)


@pytest.mark.parametrize(("query", "code", "field"), [
    ({"per_page": "0"}, "invalid_param", "per_page"),
    ({"per_page": "51"}, "invalid_param", "per_page"),
    ({"per_page": "ten"}, "invalid_param", "per_page"),
    ({"page": "0"}, "invalid_param", "page"),
    ({"sort": "popularity"}, "invalid_sort", "sort"),
    ({"sort": "rating"}, "invalid_sort", "sort"),  # no rating source yet
    ({"date": "2030-13-01"}, "invalid_date", "date"),
    ({"q": "x" * 201}, "invalid_param", "q"),
])
def test_bad_params(query: dict[str, str], code: str, field: str) -> None:
    with pytest.raises(ApiError) as err:
        SearchParams.parse(query)
    assert (err.value.status, err.value.code, err.value.details["field"]) == (422, code, field)


def test_rating_sort_once_available() -> None:
    assert SearchParams.parse({"sort": "rating"}, rating_available=True).sort == "rating"
