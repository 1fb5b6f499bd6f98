"""OWASP API Security Top 10 against the real server: broken object-level authorisation
(API1) on every resource, broken function-level authorisation (API5), mass assignment
(API3/6) and excessive data exposure (API3)."""
from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ..api.account_helpers import Client
from ..api.catalog_helpers import ADMIN, layout
from .world import World, build_world

DENIED = (401, 403, 404)


@pytest.fixture
async def world(api: aiohttp.ClientSession, server: TestServer, clients
                ) -> AsyncIterator[World]:
    yield await build_world(api, server, clients)


# --- API1: object level -------------------------------------------------------------------

async def test_partner_b_cannot_read_or_change_partner_a_things(world: World) -> None:
    w, a, b, show = world, world.a, world.b, world.show_a
    theatre = {"name": "Stolen", "city": b.city, "address": "x", "timezone": "Asia/Kolkata"}
    attempts: list[tuple[str, str, Any]] = [
        ("GET", f"/partner/v1/shows/{show}", None),
        ("DELETE", f"/partner/v1/shows/{show}", None),
        ("PUT", f"/partner/v1/shows/{show}", b.show(72)),
        ("PUT", f"/partner/v1/theatres/{a.theatre}", theatre),
        ("PUT", f"/partner/v1/screens/{a.screen}",
         {"theatre_id": b.theatre, "name": "Mine now", "layout": layout()}),
        ("PUT", f"/partner/v1/movies/{a.movie}",
         {"title": "Mine now", "languages": ["Hindi"], "genres": ["Drama"],
          "runtime_min": 90, "certificate": "U"}),
        ("POST", f"/partner/v1/shows/{show}/blocks", {"seats": ["B1"]}),
        ("DELETE", f"/partner/v1/shows/{show}/blocks", {"seats": ["B1"]}),
        ("GET", f"/partner/v1/shows/{show}/cancellation-policy", None),
        ("PUT", f"/partner/v1/shows/{show}/cancellation-policy",
         {"tiers": [{"hours_before": 1, "refund_percent": 0}]}),
        ("POST", f"/partner/v1/shows/{show}/bulk-bookings",
         {"seats": ["C1"], "email": "x@corp.example", "name": "X"}),
        ("GET", f"/partner/v1/shows/{show}/bulk-bookings/{w.bulk_a}", None),
        ("DELETE", f"/partner/v1/shows/{show}/bulk-bookings/{w.bulk_a}", None),
        # A's bulk booking through B's own show: the id must be checked against the path.
        ("GET", f"/partner/v1/shows/{w.show_b}/bulk-bookings/{w.bulk_a}", None),
        ("DELETE", f"/partner/v1/shows/{w.show_b}/bulk-bookings/{w.bulk_a}", None),
        ("GET", f"/partner/v1/webhooks/{w.webhook_a}", None),
        ("GET", f"/partner/v1/webhooks/{w.webhook_a}/deliveries", None),
        ("DELETE", f"/partner/v1/webhooks/{w.webhook_a}", None),
        ("POST", f"/partner/v1/offers/{w.offer_a}/disable", None),
        ("POST", f"/partner/v1/promo-codes/{w.promo_a}/disable", None),
        ("GET", f"/partner/v1/reports/shows/{show}/heatmap", None),
        ("GET", f"/partner/v1/shows/{show}/waiting-room", None),
        ("PUT", f"/partner/v1/shows/{show}/waiting-room", {"enabled": True}),
        ("POST", "/partner/v1/checkin", {"code": w.booking_a["ticket"]["code"]}),
    ]
    for method, path, body in attempts:
        status, out = await w.as_partner(b, method, path, body)
        assert status in (403, 404), (method, path, status, out)

    # ...and nothing of A's changed: A still sees everything as it was.
    status, got = await a.call("GET", f"/partner/v1/shows/{show}")
    assert status == 200 and got["status"] != "cancelled" and got["screen_id"] == a.screen
    status, bulk = await a.call("GET", f"/partner/v1/shows/{show}/bulk-bookings/{w.bulk_a}")
    assert status == 200 and bulk["status"] == "confirmed", bulk
    status, hook = await a.call("GET", f"/partner/v1/webhooks/{w.webhook_a}")
    assert status == 200, hook
    status, offers = await a.call("GET", "/partner/v1/offers")
    assert [o["active"] for o in offers["offers"] if o["offer_id"] == w.offer_a] == [True]
    status, policy = await a.call("GET", f"/partner/v1/shows/{show}/cancellation-policy")
    assert policy["tiers"][0]["hours_before"] == 24
    async with w.api.get(f"/api/shows/{show}/seatmap") as resp:
        seats = {s["id"]: s["status"] for s in (await resp.json())["seats"]}
    assert seats["B1"] == "free" and seats["C1"] == "free"
    async with w.api.get(f"/api/movies/{a.movie}") as resp:
        assert (await resp.json())["title"] != "Mine now"

    # B's own listings show none of A's things.
    for path in (f"/partner/v1/shows?date={_date_of(48)}", "/partner/v1/offers",
                 "/partner/v1/promo-codes",
                 "/partner/v1/webhooks", "/partner/v1/reports/sales"):
        status, out = await w.as_partner(b, "GET", path)
        assert status == 200, (path, out)
        text = json.dumps(out)
        for secret_id in (show, w.offer_a, w.promo_a, w.webhook_a, a.theatre):
            assert secret_id not in text, (path, secret_id)


async def test_partner_b_cannot_publish_on_partner_a_screen(world: World) -> None:
    body = world.b.show(96, screen_id=world.a.screen, movie_id=world.a.movie)
    status, out = await world.as_partner(world.b, "PUT", "/partner/v1/shows/sh-b-on-a", body)
    assert status in (403, 404, 422) and status != 201, out
    status, out = await world.as_partner(world.b, "POST", "/partner/v1/shows:bulk", {
        "shows": [{**body, "show_id": world.show_a}]})
    assert status == 200 and out["results"][0]["status"] in DENIED + (409, 422), out


async def test_customer_b_cannot_use_customer_a_booking_or_hold(world: World) -> None:
    w, mine = world, world.booking_a
    bid = mine["booking_id"]
    # B has a booking of their own: its token must not open A's booking.
    other = await _book(w.cust_b, w.show_a, "A3")
    for token in (other["booking_token"], None):
        params = {"token": token} if token else {}
        for method, path in [("GET", f"/api/bookings/{bid}"),
                             ("GET", f"/api/bookings/{bid}/ticket.svg"),
                             ("GET", f"/api/bookings/{bid}/cancellation"),
                             ("POST", f"/api/bookings/{bid}/cancel")]:
            async with w.cust_b.http.request(method, path, params=params) as resp:
                assert resp.status in (401, 403), (method, path, resp.status)
    status, out = await w.cust_b.call("GET", f"/api/me/bookings/{bid}")
    assert status in (403, 404), out
    status, out = await w.cust_b.call("GET", "/api/me/bookings")
    assert bid not in json.dumps(out)

    # A's booking is untouched; B's own hold is B's alone.
    status, again = await w.cust_a.call("GET", f"/api/me/bookings/{bid}")
    assert status == 200 and again["status"] == "confirmed", again
    hold = w.hold_b
    for who in (w.cust_a, None):
        headers = {"X-Holder-Token": "not-the-token"} if who else {}
        client = who or w.cust_b
        for method, path, body in [("PATCH", f"/api/holds/{hold['hold_id']}", {}),
                                   ("DELETE", f"/api/holds/{hold['hold_id']}", None)]:
            status, out = await client.call(method, path, body, headers=headers)
            assert status in (401, 403), (method, status, out)
    status, out = await w.cust_a.call(
        "POST", f"/api/holds/{hold['hold_id']}/checkout",
        {"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2099,
                  "cvc": "123"}, "email": "a@example.test", "name": "A"},
        headers={"X-Holder-Token": w.booking_a["booking_token"], "Idempotency-Key": "k1"})
    assert status in (401, 403, 422), out
    async with w.api.get(f"/api/shows/{w.show_a}/seatmap") as resp:
        seats = {s["id"]: s["status"] for s in (await resp.json())["seats"]}
    assert seats["A2"] == "held"  # still B's hold


async def test_reviews_are_only_the_author_s(world: World) -> None:
    w = world
    path = f"/api/movies/{w.a.movie}/reviews/mine"
    status, out = await w.cust_a.call("PUT", path, {"rating": 4, "text": "Good"})
    assert status in (200, 201), out
    # B's "mine" is B's: empty, and deleting it does not touch A's.
    status, _ = await w.cust_b.call("GET", path)
    assert status == 404
    status, _ = await w.cust_b.call("DELETE", path)
    assert status in (403, 404)
    status, still = await w.cust_a.call("GET", path)
    assert status == 200 and still["review"]["rating"] == 4, still
    # Partner B may not report a review of A's movie.
    rid = still["review"]["review_id"]
    status, out = await w.as_partner(w.b, "POST", f"/partner/v1/reviews/{rid}/reports",
                                     {"reason": "rude"})
    assert status in (403, 404), out


async def test_partner_portal_keys_are_per_partner(world: World, clients) -> None:
    from ..api.test_partner_onboarding import approved_partner

    admin = clients()
    p1, _ = await approved_partner(clients, admin, "P One")
    p2, _ = await approved_partner(clients, admin, "P Two")
    status, made = await p1.call("POST", "/api/partner/keys", {"name": "ci", "scope": "read"})
    assert status == 201, made
    key_id = made["key"]["key_id"] if "key" in made else made["key_id"]
    status, out = await p2.call("DELETE", f"/api/partner/keys/{key_id}")
    assert status in (403, 404), out
    status, keys = await p1.call("GET", "/api/partner/keys")
    assert key_id in json.dumps(keys)
    status, keys2 = await p2.call("GET", "/api/partner/keys")
    assert key_id not in json.dumps(keys2)


# --- anonymous ----------------------------------------------------------------------------

async def test_anonymous_reaches_nothing_private(world: World) -> None:
    w = world
    bid, hid, show = w.booking_a["booking_id"], w.hold_b["hold_id"], w.show_a
    private = [
        ("GET", "/api/me"), ("GET", "/api/me/bookings"), ("GET", f"/api/me/bookings/{bid}"),
        ("GET", "/api/me/export"), ("DELETE", "/api/me"), ("POST", "/api/me/mfa"),
        ("GET", f"/api/bookings/{bid}"), ("GET", f"/api/bookings/{bid}/ticket.svg"),
        ("GET", f"/api/bookings/{bid}/cancellation"), ("POST", f"/api/bookings/{bid}/cancel"),
        ("PATCH", f"/api/holds/{hid}"), ("DELETE", f"/api/holds/{hid}"),
        ("POST", f"/api/holds/{hid}/checkout"),
        ("GET", f"/api/movies/{w.a.movie}/reviews/mine"),
        ("PUT", f"/api/movies/{w.a.movie}/reviews/mine"),
        ("GET", "/api/partner/account"), ("GET", "/api/partner/keys"),
        ("POST", "/api/partner/keys"), ("GET", "/api/partner/shows"),
        ("GET", "/partner/v1/shows"), ("GET", f"/partner/v1/shows/{show}"),
        ("PUT", f"/partner/v1/theatres/{w.a.theatre}"), ("DELETE", f"/partner/v1/shows/{show}"),
        ("GET", f"/partner/v1/shows/{show}/bulk-bookings/{w.bulk_a}"),
        ("GET", "/partner/v1/webhooks"), ("GET", "/partner/v1/offers"),
        ("GET", "/partner/v1/promo-codes"), ("GET", "/partner/v1/reports/sales"),
        ("GET", f"/partner/v1/reports/shows/{show}/heatmap"), ("POST", "/partner/v1/checkin"),
        ("GET", f"/partner/v1/shows/{show}/waiting-room"),
        ("POST", "/admin/v1/partners"), ("GET", "/admin/v1/partner-requests"),
        ("POST", "/admin/v1/users"), ("GET", "/admin/v1/reviews"), ("GET", "/admin/v1/offers"),
    ]
    card = {"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2099,
                     "cvc": "123"}, "email": "anon@example.test", "name": "Anon"}
    for method, path in private:
        body = card if path.endswith("/checkout") else {} if method in (
            "POST", "PUT", "PATCH") else None
        status, out = await w.anon(method, path, body, headers={"Idempotency-Key": "anon-1"})
        assert status in (401, 403), (method, path, status, out)


# --- API5: function level -----------------------------------------------------------------

ADMIN_ONLY = [("POST", "/admin/v1/partners", {"name": "Sneaky"}),
              ("GET", "/admin/v1/partner-requests", None),
              ("POST", "/admin/v1/users",
               {"email": "x@example.test", "password": "a long password", "name": "X"}),
              ("GET", "/admin/v1/reviews", None), ("GET", "/admin/v1/offers", None),
              ("GET", "/admin/v1/promo-codes", None)]


async def test_customers_and_partners_cannot_call_admin_or_partner_functions(
        world: World) -> None:
    w = world
    for method, path, body in ADMIN_ONLY:
        status, out = await w.cust_a.call(method, path, body)  # a customer session
        assert status in (401, 403), (method, path, out)
        status, out = await w.as_partner(w.a, method, path, body)  # a partner key
        assert status in (401, 403), (method, path, out)
    for method, path, body in [("GET", "/partner/v1/shows", None),
                               ("PUT", f"/partner/v1/theatres/{w.a.theatre}",
                                {"name": "x", "city": "y", "address": "z"}),
                               ("POST", "/partner/v1/checkin", {"code": "x"}),
                               ("GET", "/api/partner/keys", None),
                               ("POST", "/api/partner/keys", {"name": "x", "scope": "write"})]:
        status, out = await w.cust_a.call(method, path, body)
        assert status in (401, 403), (method, path, out)
    # A partner's API key is not a portal session.
    status, out = await w.as_partner(w.a, "GET", "/api/partner/keys")
    assert status in (401, 403), out


# --- API3/6: mass assignment ----------------------------------------------------------------

async def test_extra_fields_are_refused(world: World) -> None:
    """Every body is a Struct with forbid_unknown_fields: a field the client may not set
    (role, status, price, sold, partner_id, ...) is a 422, and nothing is changed."""
    w = world
    cases: list[tuple[Any, str, str, dict[str, Any]]] = [
        (None, "POST", "/api/accounts", {"email": "m@example.test", "password": "a long pass",
                                         "name": "M", "role": "admin"}),
        (w.cust_b, "POST", f"/api/shows/{w.show_a}/holds",
         {"seats": ["B5"], "price": 1, "customer": "someone-else"}),
        (w.cust_b, "POST", f"/api/shows/{w.show_a}/holds",
         {"seats": ["B6"], "status": "confirmed"}),
        (w.a, "PUT", f"/partner/v1/shows/{w.show_a}",
         {**w.a.show(48), "status": "cancelled", "sold": 0}),
        (w.a, "PUT", f"/partner/v1/theatres/{w.a.theatre}",
         {"name": "R", "city": w.a.city, "address": "1", "partner_id": w.b.partner_id}),
        (w.a, "PUT", f"/partner/v1/movies/{w.a.movie}",
         {"title": "T", "languages": ["Hindi"], "genres": [], "runtime_min": 90,
          "certificate": "U", "partner_id": w.b.partner_id}),
        (w.a, "POST", "/partner/v1/offers",
         {"name": "x", "rule": {"type": "nth_ticket", "n": 2, "percent_off": 10},
          "partner_id": w.b.partner_id}),
        (w.a, "POST", "/partner/v1/promo-codes",
         {"code": "ZZTOP1", "name": "x", "percent_off": 10, "used": 0, "partner_id": "p"}),
        (w.a, "POST", "/partner/v1/webhooks",
         {"url": "https://hooks.example.test/x", "secret": "chosen-by-me"}),
        (w.cust_a, "PUT", f"/api/movies/{w.a.movie}/reviews/mine",
         {"rating": 5, "hidden": False, "author": "someone"}),
        (w.cust_b, "PATCH", f"/api/holds/{w.hold_b['hold_id']}",
         {"expires_at": "2099-01-01T00:00:00Z"}),
        (None, "POST", "/api/partner-requests",
         {"company": "X", "contact_name": "Y", "email": "pr@example.test",
          "password": "a long password", "status": "approved", "partner_id": "p1"}),
        (w.cust_a, "PUT", "/api/me/profile", {"phone": "+911234567890", "user_id": "u_x"}),
        (None, "POST", "/admin/v1/partners", {"name": "X", "api_key": "bmm_mine"}),
    ]
    for who, method, path, body in cases:
        if who is None:
            status, out = await w.anon(method, path, body,
                                       headers=ADMIN if path.startswith("/admin/") else None)
        elif isinstance(who, Client):
            headers = {"X-Holder-Token": w.hold_b["holder_token"]} if "/holds/" in path else None
            status, out = await who.call(method, path, body, headers=headers)
        else:
            status, out = await w.as_partner(who, method, path, body)
        assert status == 422, (method, path, status, out)
        assert out["error"]["code"] == "invalid", out
    # Nothing changed: the show is still on, the theatre still A's.
    status, show = await w.a.call("GET", f"/partner/v1/shows/{w.show_a}")
    assert show["status"] != "cancelled"
    status, out = await w.as_partner(w.b, "PUT", f"/partner/v1/theatres/{w.a.theatre}",
                                     {"name": "R", "city": "c", "address": "1"})
    assert status in (403, 409), out


async def test_sign_up_cannot_choose_a_role(api: aiohttp.ClientSession, clients) -> None:
    c = clients()
    body = await c.sign_up()
    assert body.get("role", "customer") == "customer"
    status, me = await c.call("GET", "/api/me")
    assert status == 200 and me["role"] == "customer"
    # An approval-only function stays closed to the new account's session.
    status, out = await c.call("GET", "/admin/v1/partner-requests")
    assert status in (401, 403), out


# --- API3: excessive data exposure ----------------------------------------------------------

FORBIDDEN_KEYS = re.compile(
    r'"(password|password_hash|pw_hash|key_hash|token_hash|totp_secret|mfa_secret|'
    r'recovery_hashes|secret_hash|api_key_hash)"')


async def test_answers_never_expose_secrets_or_others_data(world: World) -> None:
    w = world
    # Everything a customer, a partner and the public can read.
    for who, path in [(w.cust_b, "/api/me"), (w.cust_b, "/api/me/export"),
                      (w.cust_b, "/api/me/bookings"),
                      (None, f"/api/shows/{w.show_a}/seatmap"),
                      (None, f"/api/movies/{w.a.movie}"), (None, f"/api/movies/{w.a.movie}/shows"),
                      (None, f"/api/movies/{w.a.movie}/reviews"),
                      (w.a, "/partner/v1/webhooks"), (w.a, f"/partner/v1/webhooks/{w.webhook_a}"),
                      (w.a, f"/partner/v1/shows/{w.show_a}"), (w.a, f"/partner/v1/shows?date={_date_of(48)}"),
                      (w.a, f"/partner/v1/reports/shows/{w.show_a}/heatmap"),
                      (w.a, "/partner/v1/reports/sales"),
                      (w.a, f"/partner/v1/shows/{w.show_a}/bulk-bookings/{w.bulk_a}")]:
        if who is None:
            status, out = await w.anon("GET", path)
        elif isinstance(who, Client):
            status, out = await who.call("GET", path)
        else:
            status, out = await w.as_partner(who, "GET", path)
        assert status == 200, (path, out)
        w.seen.append((path, out))
        text = json.dumps(out)
        if who is not w.cust_a:
            # Customer A's e-mail, name, booking token and ticket are A's alone...
            assert w.cust_a.email not in text, path
            assert w.booking_a["booking_token"] not in text, path
        # ...no one else's hold token leaks anywhere.
        assert w.hold_b["holder_token"] not in text, path
        if path.startswith("/partner/v1/webhooks"):
            assert "secret" not in text, path  # shown once, when the webhook is made
    # The bulk booking (a partner's own customer) is fine to show to that partner, but the
    # seat map shows statuses only.
    for where, out in w.seen:
        assert not FORBIDDEN_KEYS.search(json.dumps(out)), where


def _date_of(hours: float) -> str:
    """The date a show `hours` from now is listed under (the theatres are in IST)."""
    start = dt.datetime.now(ZoneInfo("Asia/Kolkata")) + dt.timedelta(hours=hours)
    return start.date().isoformat()


async def _book(client: Client, show_id: str, seat: str) -> dict[str, Any]:
    from ..api.account_helpers import hold_and_checkout

    return await hold_and_checkout(client, show_id, [seat])
