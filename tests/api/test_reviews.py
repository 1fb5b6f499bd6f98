"""Ratings and reviews against the real server, Redis and Ray: only customers with a
confirmed booking may review, one review per customer and item (a second PUT edits), the
average and count stay exact under concurrent writers, partners report reviews about
their own theatres / movies, and an admin's hide takes a review out of the listing and
the average (browse listings included)."""
from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
import redis.asyncio as aioredis

from server.accounts import users as accounts
from server.discovery import reviews
from server.discovery.reviews import ReviewIn

from .account_helpers import PASSWORD, Client, hold_and_checkout
from .builders import PublishedShow, publish_show_via_feed
from .catalog_helpers import ADMIN, new_partner

pytestmark = pytest.mark.asyncio


async def customer(clients) -> Client:  # noqa: ANN001
    c = clients()
    await c.sign_up()
    return c


def mine(kind: str, item_id: str) -> str:
    return f"/api/{kind}s/{item_id}/reviews/mine"


async def listing(api, kind: str, item_id: str, query: str = "") -> dict:  # noqa: ANN001
    async with api.get(f"/api/{kind}s/{item_id}/reviews{query}") as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body


async def test_only_customers_with_a_confirmed_booking_may_review(
        api, clients, show: PublishedShow) -> None:  # noqa: ANN001
    movie = show.movie.movie_id
    anonymous = clients()
    status, err = await anonymous.call("PUT", mine("movie", movie), {"rating": 5})
    assert (status, err["error"]["code"]) == (401, "login_required")

    nobody = await customer(clients)
    status, err = await nobody.call("PUT", mine("movie", movie), {"rating": 5})
    assert (status, err["error"]["code"]) == (403, "no_booking")
    status, _ = await nobody.call("PUT", mine("theatre", show.theatre.theatre_id), {"rating": 5})
    assert status == 403

    # A booking that was cancelled does not count.
    cancelled = await customer(clients)
    booking = await hold_and_checkout(cancelled, show.show_id, ["A1"])
    status, body = await cancelled.call("POST", f"/api/bookings/{booking['booking_id']}/cancel",
                                        headers={"X-Booking-Token": booking["booking_token"]})
    assert status == 200 and body["status"] == "cancelled", body
    status, err = await cancelled.call("PUT", mine("movie", movie), {"rating": 1})
    assert (status, err["error"]["code"]) == (403, "no_booking")

    # A confirmed booking does; for the movie and for the theatre alike.
    booked = await customer(clients)
    await hold_and_checkout(booked, show.show_id, ["A2"])
    status, body = await booked.call("PUT", mine("movie", movie), {"rating": 4, "text": "Good"})
    assert status == 201, body
    assert body["review"]["rating"] == 4 and body["rating_summary"] == {"average": 4.0,
                                                                         "count": 1}
    status, body = await booked.call("PUT", mine("theatre", show.theatre.theatre_id),
                                     {"rating": 2})
    assert status == 201, body

    # Nothing was written by the refused attempts.
    got = await listing(api, "movie", movie)
    assert got["total"] == 1 and got["rating"] == {"average": 4.0, "count": 1}
    assert [r["text"] for r in got["reviews"]] == ["Good"]
    # Unknown movie: 404.
    status, _ = await booked.call("PUT", mine("movie", "no-such-movie"), {"rating": 3})
    assert status == 404


async def test_one_review_per_customer_a_second_put_edits_and_delete_removes(
        api, clients, show: PublishedShow) -> None:  # noqa: ANN001
    movie = show.movie.movie_id
    c = await customer(clients)
    await hold_and_checkout(c, show.show_id, ["B1"])
    status, first = await c.call("PUT", mine("movie", movie), {"rating": 5, "text": "Loved it"})
    assert status == 201 and first["review"]["edited_at"] is None

    status, second = await c.call("PUT", mine("movie", movie), {"rating": 2, "text": "Meh"})
    assert status == 200, second
    assert second["review"]["review_id"] == first["review"]["review_id"]
    assert second["review"]["edited_at"] is not None
    assert second["rating_summary"] == {"average": 2.0, "count": 1}
    got = await listing(api, "movie", movie)
    assert got["total"] == 1 and [r["text"] for r in got["reviews"]] == ["Meh"]

    status, body = await c.call("GET", mine("movie", movie))
    assert status == 200 and body["review"]["text"] == "Meh" and body["hidden"] is False

    status, _ = await c.call("DELETE", mine("movie", movie))
    assert status == 204
    got = await listing(api, "movie", movie)
    assert got["total"] == 0 and got["rating"] == {"average": None, "count": 0}
    status, _ = await c.call("DELETE", mine("movie", movie))
    assert status == 404
    status, _ = await c.call("GET", mine("movie", movie))
    assert status == 404


async def test_bad_input_is_422_and_writes_nothing(api, clients, show: PublishedShow
                                                   ) -> None:  # noqa: ANN001
    movie = show.movie.movie_id
    c = await customer(clients)
    await hold_and_checkout(c, show.show_id, ["C1"])
    for bad in [{"rating": 0}, {"rating": 6}, {"rating": "5"}, {"rating": 4.5}, {},
                {"rating": 3, "text": "x" * (reviews.MAX_TEXT + 1)},
                {"rating": 3, "surprise": True}]:
        status, err = await c.call("PUT", mine("movie", movie), bad)
        assert (status, err["error"]["code"]) == (422, "invalid"), (bad, err)
    status, _ = await c.call("GET", mine("movie", movie))
    assert status == 404
    assert (await listing(api, "movie", movie))["rating"]["count"] == 0
    for query in ["?limit=0", "?limit=51", "?offset=-1", "?limit=ten"]:
        async with api.get(f"/api/movies/{movie}/reviews{query}") as resp:
            assert resp.status == 422, query
    async with api.get("/api/theatres/no-such-theatre/reviews") as resp:
        assert resp.status == 404


async def test_average_is_exact_under_concurrent_reviews(
        api, clients, redis: aioredis.Redis, show: PublishedShow) -> None:  # noqa: ANN001
    """Through the API: customers with bookings review at once, then all edit at once."""
    movie = show.movie.movie_id
    people = [await customer(clients) for _ in range(5)]
    await asyncio.gather(*(hold_and_checkout(p, show.show_id, [f"D{i + 1}"])
                           for i, p in enumerate(people)))
    ratings = [5, 4, 4, 1, 3]
    answers = await asyncio.gather(*(p.call("PUT", mine("movie", movie), {"rating": r})
                                     for p, r in zip(people, ratings)))
    assert [s for s, _ in answers] == [201] * 5
    got = await listing(api, "movie", movie)
    assert got["rating"] == {"average": round(sum(ratings) / 5, 2), "count": 5}
    edits = [1, 1, 2, 5, 5]
    answers = await asyncio.gather(*(p.call("PUT", mine("movie", movie), {"rating": r})
                                     for p, r in zip(people, edits)))
    assert [s for s, _ in answers] == [200] * 5
    got = await listing(api, "movie", movie)
    assert got["rating"] == {"average": round(sum(edits) / 5, 2), "count": 5}

    # Pages: newest first, no review twice, none missing.
    first = await listing(api, "movie", movie, "?limit=2")
    rest = await listing(api, "movie", movie, "?limit=2&offset=2")
    last = await listing(api, "movie", movie, "?limit=2&offset=4")
    page = first["reviews"] + rest["reviews"] + last["reviews"]
    assert len({r["review_id"] for r in page}) == 5 and first["total"] == 5
    created = [datetime.fromisoformat(r["created_at"]) for r in page]
    assert created == sorted(created, reverse=True)

    # And straight at the storage, with many more writers than the API test can afford:
    # 60 customers create, edit and delete concurrently; sum and count must match.
    users = [accounts.User(user_id=f"u_conc{i}", email=f"c{i}@x.test", name=f"C{i}",
                           password_hash="-", created_at=datetime.now())
             for i in range(60)]
    item = "mv-concurrency-" + show.show_id
    await asyncio.gather(*(reviews.upsert(redis, u, "movie", item, ReviewIn(i % 5 + 1))
                           for i, u in enumerate(users)))
    await asyncio.gather(
        *(reviews.upsert(redis, u, "movie", item, ReviewIn(5)) for u in users[:20]),
        *(reviews.delete(redis, u.user_id, "movie", item) for u in users[20:30]))
    expected = [5] * 20 + [i % 5 + 1 for i in range(30, 60)]
    summary = await reviews.rating_of(redis, "movie", item)
    assert summary.count == len(expected) == 50
    assert summary.average == round(sum(expected) / len(expected), 2)


async def test_partner_reports_and_admin_moderation(api, clients) -> None:  # noqa: ANN001
    show_id, owner = await publish_show_via_feed(api)
    c = await customer(clients)
    await hold_and_checkout(c, show_id, ["A1"])
    status, theatre_review = await c.call("PUT", mine("theatre", owner.theatre),
                                          {"rating": 1, "text": "Sticky floors"})
    assert status == 201, theatre_review
    status, movie_review = await c.call("PUT", mine("movie", owner.movie), {"rating": 3})
    assert status == 201
    rid = theatre_review["review"]["review_id"]

    # The browse listings carry the averages and counts.
    async with api.get(f"/api/movies?city={owner.city}") as resp:
        [summary] = (await resp.json())["movies"]
    assert summary["rating"] == {"average": 3.0, "count": 1}
    async with api.get(f"/api/movies/{owner.movie}/shows") as resp:
        shows = await resp.json()
    assert shows["rating"] == {"average": 3.0, "count": 1}
    assert shows["theatres"][0]["rating"] == {"average": 1.0, "count": 1}

    # Another partner may not report reviews of someone else's theatre or movie.
    other = await (await new_partner(api)).setup()
    status, err = await other.call("POST", f"/partner/v1/reviews/{rid}/reports",
                                   {"reason": "rude"})
    assert (status, err["error"]["code"]) == (403, "forbidden")
    status, _ = await other.call(
        "POST", f"/partner/v1/reviews/{movie_review['review']['review_id']}/reports",
        {"reason": "rude"})
    assert status == 403
    async with api.post(f"/partner/v1/reviews/{rid}/reports", json={"reason": "x"}) as resp:
        assert resp.status == 401
    status, err = await owner.call("POST", f"/partner/v1/reviews/{rid}/reports", {"reason": ""})
    assert status == 422
    status, _ = await owner.call("POST", "/partner/v1/reviews/movie.nope.abc/reports",
                                 {"reason": "x"})
    assert status == 404

    status, ack = await owner.call("POST", f"/partner/v1/reviews/{rid}/reports",
                                   {"reason": "Not about our theatre"})
    assert (status, ack) == (201, {"review_id": rid, "reports": 1})
    status, _ = await owner.call("POST", f"/partner/v1/reviews/{rid}/reports",
                                 {"reason": "Not about our theatre at all"})
    assert status == 201  # again: the reason is replaced, still one report

    async with api.get("/admin/v1/reviews") as resp:
        assert resp.status == 401
    async with api.get("/admin/v1/reviews?status=reported&limit=50", headers=ADMIN) as resp:
        queue = await resp.json()
    [entry] = [r for r in queue["reviews"] if r["review"]["review_id"] == rid]
    assert [(r["partner_id"], r["reason"]) for r in entry["reports"]] == [
        (owner.partner_id, "Not about our theatre at all")]
    assert entry["customer_id"] and entry["hidden"] is False

    async with api.post(f"/admin/v1/reviews/{rid}/hide", headers=ADMIN) as resp:
        hidden = await resp.json()
        assert resp.status == 200 and hidden["hidden"] is True, hidden
    got = await listing(api, "theatre", owner.theatre)
    assert got["total"] == 0 and got["reviews"] == []
    assert got["rating"] == {"average": None, "count": 0}
    async with api.get(f"/api/movies/{owner.movie}/shows") as resp:
        [theatre] = (await resp.json())["theatres"]
    assert theatre["rating"] == {"average": None, "count": 0}
    status, body = await c.call("GET", mine("theatre", owner.theatre))
    assert status == 200 and body["hidden"] is True
    # Editing a hidden review keeps it hidden and out of the average.
    status, body = await c.call("PUT", mine("theatre", owner.theatre), {"rating": 5})
    assert status == 200 and body["hidden"] is True
    assert body["rating_summary"] == {"average": None, "count": 0}
    async with api.post(f"/admin/v1/reviews/{rid}/hide", headers=ADMIN) as resp:
        assert resp.status == 200  # hiding twice changes nothing
    assert (await listing(api, "theatre", owner.theatre))["rating"]["count"] == 0

    async with api.get("/admin/v1/reviews?status=reported&limit=50", headers=ADMIN) as resp:
        assert rid not in {r["review"]["review_id"] for r in (await resp.json())["reviews"]}
    async with api.get("/admin/v1/reviews?status=hidden&limit=50", headers=ADMIN) as resp:
        assert rid in {r["review"]["review_id"] for r in (await resp.json())["reviews"]}

    async with api.post(f"/admin/v1/reviews/{rid}/restore", headers=ADMIN) as resp:
        assert resp.status == 200 and (await resp.json())["hidden"] is False
    got = await listing(api, "theatre", owner.theatre)
    assert got["total"] == 1 and got["rating"] == {"average": 5.0, "count": 1}
    async with api.post("/admin/v1/reviews/theatre.nope.abc/hide", headers=ADMIN) as resp:
        assert resp.status == 404
    async with api.get("/admin/v1/reviews?status=weird", headers=ADMIN) as resp:
        assert resp.status == 422


async def test_deleting_the_account_anonymises_the_author_of_its_reviews(
        api, clients, redis: aioredis.Redis, show: PublishedShow) -> None:  # noqa: ANN001
    # Security review L15: the deleted customer's name stayed the public author.
    movie = show.movie.movie_id
    c = clients()
    me = await c.sign_up(name="Asha Deleteme")
    await hold_and_checkout(c, show.show_id, ["E1"])
    status, body = await c.call("PUT", mine("movie", movie), {"rating": 4, "text": "Great"})
    assert status == 201, body
    review_id = body["review"]["review_id"]
    got = await listing(api, "movie", movie)
    assert [r["author"] for r in got["reviews"] if r["review_id"] == review_id] == [
        "Asha Deleteme"]

    status, export = await c.call("GET", "/api/me/export")
    assert status == 200, export
    assert [(r["review_id"], r["text"]) for r in export["reviews"]] == [(review_id, "Great")]

    status, _ = await c.call("DELETE", "/api/me", {"password": PASSWORD})
    assert status == 200
    got = await listing(api, "movie", movie)
    [after] = [r for r in got["reviews"] if r["review_id"] == review_id]
    assert after["author"] == reviews.FORMER_CUSTOMER and after["text"] == "Great"
    assert got["rating"]["count"] >= 1  # the rating still counts
    record = await reviews.load_by_id(redis, review_id)
    assert record[b"customer_id"] == b"" and b"Asha Deleteme" not in b"".join(record.values())
    assert await redis.hget(reviews.by_key("movie", movie), me["user_id"]) is None
    assert await redis.exists(reviews.mine_key(me["user_id"])) == 0
