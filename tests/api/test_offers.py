"""Offers, promo codes and itemised quotes through the real server (Redis + Ray): the
partner/admin endpoints, the quote in the hold response, promo limits under real
concurrent requests, and a price that does not change during a hold."""
from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import aiohttp
import pytest
import redis.asyncio as aioredis

from actors.layout import Rules
from server.commerce import offers as offers_store
from server.core.settings import Settings

from .builders import GOOD_CARD, publish_show, wait_for_status
from .catalog_helpers import ADMIN, PRICES, Partner, new_partner

FEE, TAX_BP = 2000, 1800  # 20.00 per ticket, 18 % on (price after discounts + fee)


@pytest.fixture
def app_settings() -> Settings:
    return Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                    passivate_after_s=30, workers=False, fee_fixed=FEE, tax_bp=TAX_BP)


def afternoon_utc(days: int = 2) -> str:
    """A start at 14:30 in Kolkata (09:00 UTC), `days` from today."""
    day = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)
    return f"{day.isoformat()}T09:00:00Z"


def tax(amount: int) -> int:
    return (amount * TAX_BP + 5000) // 10000


async def partner_show(api: aiohttp.ClientSession, starts_at: str | None = None
                       ) -> tuple[Partner, str]:
    partner = await (await new_partner(api)).setup()
    show_id = f"sh-{uuid.uuid4().hex[:10]}"
    status, out = await partner.call("PUT", f"/partner/v1/shows/{show_id}",
                                     partner.show(48, starts_at=starts_at or afternoon_utc()))
    assert status == 201, out
    return partner, show_id


async def post(api: aiohttp.ClientSession, path: str, body: object,
               headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with api.post(path, json=body, headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def hold(api: aiohttp.ClientSession, show_id: str, seats: list[str], **extra: object
               ) -> tuple[int, dict]:
    return await post(api, f"/api/shows/{show_id}/holds", {"seats": seats, **extra})


async def checkout(api: aiohttp.ClientSession, h: dict, email: str) -> tuple[int, dict]:
    return await post(api, f"/api/holds/{h['hold_id']}/checkout",
                      {"card": GOOD_CARD, "email": email, "name": "A Buyer"},
                      {"X-Holder-Token": h["holder_token"],
                       "Idempotency-Key": uuid.uuid4().hex})


async def promo_view(partner: Partner, code: str) -> dict:
    status, out = await partner.call("GET", "/partner/v1/promo-codes")
    assert status == 200
    return next(p for p in out["promo_codes"] if p["promo"]["code"] == code)


# --- quotes ----------------------------------------------------------------------------

async def test_hold_quote_is_itemised_with_offers_fee_and_tax(api):
    partner, show_id = await partner_show(api)
    scope = {"theatre_ids": [partner.theatre]}
    for body in ({"name": "50% off the third ticket", "scope": scope,
                  "rule": {"type": "nth_ticket", "n": 3, "percent_off": 50}},
                 {"name": "20% off afternoon shows", "scope": scope,
                  "rule": {"type": "time_window", "start": "12:00", "end": "17:00",
                           "percent_off": 20}}):
        status, offer = await partner.call("POST", "/partner/v1/offers", body)
        assert status == 201, offer
        assert offer["partner_id"] == partner.partner_id and offer["active"] is True

    status, h = await hold(api, show_id, ["A1", "A2", "A3"])
    assert status == 201, h
    quote = h["quote"]
    base = PRICES["Silver"]["amount"]
    # the "third" ticket (cheapest; a tie: the first) gets 50 %, not 50 + 20; the rest 20 %
    expected = []
    for seat, discount in (("A1", base // 2), ("A2", base // 5), ("A3", base // 5)):
        net = base - discount
        expected.append({"seat": seat, "category": "Silver", "base": base,
                         "discount": discount, "fee": FEE, "tax": tax(net + FEE),
                         "total": net + FEE + tax(net + FEE)})
    assert [{k: v for k, v in line.items() if k != "applied"} for line in quote["lines"]] \
        == expected
    assert [a["name"] for a in quote["lines"][0]["applied"]] == ["50% off the third ticket"]
    for key in ("base", "discount", "fee", "tax", "total"):
        assert quote[key] == sum(line[key] for line in quote["lines"])
    assert quote["currency"] == "INR" and quote["promo_code"] is None


async def test_offer_scoped_to_another_theatre_or_evening_does_not_apply(api):
    partner, show_id = await partner_show(api, starts_at=afternoon_utc().replace("09:00", "14:30"))
    for body in ({"name": "elsewhere", "scope": {"theatre_ids": ["th-other"]},
                  "rule": {"type": "nth_ticket", "n": 2, "percent_off": 50}},
                 {"name": "afternoon", "scope": {"theatre_ids": [partner.theatre]},
                  "rule": {"type": "time_window", "start": "12:00", "end": "17:00",
                           "percent_off": 20}}):
        assert (await partner.call("POST", "/partner/v1/offers", body))[0] == 201
    status, h = await hold(api, show_id, ["C1", "C2"])  # 20:00 local: not afternoon
    assert status == 201, h
    assert h["quote"]["discount"] == 0
    assert h["quote"]["total"] == 2 * (35000 + FEE + tax(35000 + FEE))


# --- offer and promo endpoints ---------------------------------------------------------

async def test_offer_endpoints_own_list_disable_and_authorisation(api):
    partner, show_id = await partner_show(api)
    other = await new_partner(api)
    body = {"name": "afternoon", "scope": {"theatre_ids": [partner.theatre]},
            "rule": {"type": "time_window", "start": "12:00", "end": "17:00", "percent_off": 20}}
    async with api.post("/partner/v1/offers", json=body) as resp:
        assert resp.status == 401
    for bad in ({**body, "rule": {"type": "time_window", "start": "12:00", "end": "25:00",
                                  "percent_off": 20}},
                {**body, "rule": {"type": "nth_ticket", "n": 3, "percent_off": 0}},
                {**body, "rule": {"type": "bogo"}},
                {**body, "valid_from": "2030-01-02T00:00:00Z", "valid_until": "2030-01-01T00:00:00Z"}):
        status, out = await partner.call("POST", "/partner/v1/offers", bad)
        assert status == 422, (bad, out)
    status, offer = await partner.call("POST", "/partner/v1/offers", body)
    assert status == 201
    status, listed = await partner.call("GET", "/partner/v1/offers")
    assert [o["offer_id"] for o in listed["offers"]] == [offer["offer_id"]]
    assert (await other.call("GET", "/partner/v1/offers"))[1]["offers"] == []
    # another partner cannot disable it
    status, _ = await other.call("POST", f"/partner/v1/offers/{offer['offer_id']}/disable")
    assert status == 404
    assert (await hold(api, show_id, ["A1"]))[1]["quote"]["discount"] == 4000
    status, off = await partner.call("POST", f"/partner/v1/offers/{offer['offer_id']}/disable")
    assert status == 200 and off["active"] is False
    assert (await hold(api, show_id, ["A2"]))[1]["quote"]["discount"] == 0
    # admin routes need the admin key, not a partner key
    async with api.get("/admin/v1/offers", headers=partner.headers) as resp:
        assert resp.status == 401
    async with api.get("/admin/v1/offers", headers=ADMIN) as resp:
        assert resp.status == 200


async def test_platform_offer_applies_to_any_partners_show_in_scope(api):
    partner, show_id = await partner_show(api)
    status, offer = await post(api, "/admin/v1/offers", {
        "name": "city week", "scope": {"cities": [partner.city]},
        "rule": {"type": "time_window", "start": "00:00", "end": "24:00", "percent_off": 10}},
        ADMIN)
    assert status == 201 and offer["partner_id"] is None
    assert (await hold(api, show_id, ["C1"]))[1]["quote"]["discount"] == 3500


async def test_promo_code_reserved_released_consumed_and_limited_per_customer(api):
    partner, show_id = await partner_show(api)
    code = f"SAVE{uuid.uuid4().hex[:6]}".upper()
    status, view = await partner.call("POST", "/partner/v1/promo-codes", {
        "code": code.lower(), "name": "10% off", "percent_off": 10,
        "scope": {"theatre_ids": [partner.theatre]}, "max_uses_per_customer": 1})
    assert status == 201, view
    assert view["promo"]["code"] == code and view["used"] == 0
    assert (await partner.call("POST", "/partner/v1/promo-codes",
                               {"code": code, "name": "x", "percent_off": 5}))[0] == 409
    assert (await partner.call("POST", "/partner/v1/promo-codes",
                               {"code": "BOTH1", "name": "x", "percent_off": 5,
                                "amount_off": 100}))[0] == 422

    assert (await hold(api, show_id, ["A1"], promo_code="NOPE-CODE",
                       email="a@x.io"))[1]["error"]["code"] == "promo_unknown"
    assert (await hold(api, show_id, ["A1"], promo_code=code))[1]["error"]["code"] \
        == "email_required"

    # reserved by a hold, free again when the hold is released
    status, h = await hold(api, show_id, ["A1"], promo_code=code, email="Ann@X.io")
    assert status == 201, h
    line = h["quote"]["lines"][0]
    assert line["discount"] == 2000 and line["applied"][0]["kind"] == "promo"
    assert h["quote"]["promo_code"] == code
    assert (await promo_view(partner, code))["reserved"] == 1
    assert (await hold(api, show_id, ["A2"], promo_code=code, email="ann@x.io"))[1]["error"][
        "code"] == "promo_limit_reached"  # one per customer, the reservation counts
    async with api.delete(f"/api/holds/{h['hold_id']}",
                          headers={"X-Holder-Token": h["holder_token"]}) as resp:
        assert resp.status == 200
    assert (await promo_view(partner, code))["reserved"] == 0

    # consumed at checkout, by the same customer only
    status, h = await hold(api, show_id, ["A2"], promo_code=code, email="ann@x.io")
    assert status == 201, h
    status, out = await checkout(api, h, "bob@x.io")
    assert status == 409 and out["error"]["code"] == "promo_customer_mismatch"
    status, booking = await checkout(api, h, "ann@x.io")
    assert status == 201, booking
    assert booking["amount"]["amount"] == h["quote"]["total"]
    view = await promo_view(partner, code)
    assert (view["used"], view["reserved"]) == (1, 0)
    assert (await hold(api, show_id, ["A3"], promo_code=code, email="ann@x.io"))[1]["error"][
        "code"] == "promo_limit_reached"
    # disabled: no new holds with it
    assert (await partner.call("POST", f"/partner/v1/promo-codes/{code}/disable"))[0] == 200
    assert (await hold(api, show_id, ["A3"], promo_code=code, email="cy@x.io"))[1]["error"][
        "code"] == "promo_not_applicable"


async def test_promo_total_limit_holds_under_concurrent_requests(api, redis):
    partner, show_id = await partner_show(api)
    code = f"RUSH{uuid.uuid4().hex[:6]}".upper()
    status, _ = await partner.call("POST", "/partner/v1/promo-codes", {
        "code": code, "name": "flat 50", "amount_off": 5000, "max_uses": 3})
    assert status == 201
    seats = [f"{row}{n}" for row in "AB" for n in range(1, 6)]
    results = await asyncio.gather(*(
        hold(api, show_id, [seat], promo_code=code, email=f"c{i}@x.io")
        for i, seat in enumerate(seats)))
    won = [h for status, h in results if status == 201]
    lost = [h for status, h in results if status != 201]
    assert len(won) == 3
    assert {(h["error"]["code"]) for h in lost} == {"promo_exhausted"}
    # the refused requests' seats were released
    refused = [seat for seat, (status, _) in zip(seats, results, strict=True) if status != 201]
    await wait_for_status(redis, show_id, refused, "free")
    # the three check out concurrently; nobody else can get the code meanwhile or after
    email = {h["hold_id"]: f"c{seats.index(h['seats'][0])}@x.io" for h in won}
    outcomes = await asyncio.gather(
        *(checkout(api, h, email[h["hold_id"]]) for h in won),
        *(hold(api, show_id, [s], promo_code=code, email=f"late{i}@x.io")
          for i, s in enumerate(refused[:3])))
    assert [s for s, _ in outcomes[:3]] == [201, 201, 201]
    assert all(s == 409 for s, _ in outcomes[3:])
    view = await promo_view(partner, code)
    assert (view["used"], view["reserved"]) == (3, 0)


async def test_expired_hold_gives_its_promo_use_back(api, redis, monkeypatch):
    monkeypatch.setattr(offers_store, "RESERVATION_GRACE_MS", 0)
    pub = await publish_show(redis, rules=Rules(hold_ttl_ms=1000))
    code = f"ONE{uuid.uuid4().hex[:6]}".upper()
    status, _ = await post(api, "/admin/v1/promo-codes", {
        "code": code, "name": "one use", "percent_off": 50, "max_uses": 1,
        "scope": {"theatre_ids": [pub.theatre.theatre_id]}}, ADMIN)
    assert status == 201
    status, h = await hold(api, pub.show_id, ["A1"], promo_code=code, email="a@x.io")
    assert status == 201 and h["quote"]["discount"] == 22500
    assert (await hold(api, pub.show_id, ["A2"], promo_code=code, email="b@x.io"))[0] == 409
    await wait_for_status(redis, pub.show_id, ["A1"], "free")  # the actor expired the hold
    status, h2 = await hold(api, pub.show_id, ["A2"], promo_code=code, email="b@x.io")
    assert status == 201, h2


# --- the quote holds for the hold ------------------------------------------------------

async def test_repricing_and_ending_an_offer_during_a_hold_do_not_change_the_charge(api):
    partner, show_id = await partner_show(api)
    status, offer = await partner.call("POST", "/partner/v1/offers", {
        "name": "afternoon", "scope": {"theatre_ids": [partner.theatre]},
        "rule": {"type": "time_window", "start": "12:00", "end": "17:00", "percent_off": 20}})
    assert status == 201
    status, h = await hold(api, show_id, ["C1", "C2"])
    assert status == 201
    quoted = h["quote"]
    assert quoted["discount"] == 2 * 7000

    # the partner doubles the prices and ends the offer while the seats are held
    dearer = {k: {**v, "amount": v["amount"] * 2} for k, v in PRICES.items()}
    status, out = await partner.call("PUT", f"/partner/v1/shows/{show_id}",
                                     partner.show(48, starts_at=afternoon_utc(), prices=dearer))
    assert status == 200, out
    assert (await partner.call("POST", f"/partner/v1/offers/{offer['offer_id']}/disable"))[0] \
        == 200

    status, booking = await checkout(api, h, "d@x.io")
    assert status == 201, booking
    assert booking["quote"] == quoted
    assert booking["amount"] == {"amount": quoted["total"], "currency": "INR"}
    # a new hold gets the new price and no offer
    status, h2 = await hold(api, show_id, ["C3"])
    assert status == 201
    assert h2["quote"]["lines"][0]["base"] == 70000 and h2["quote"]["discount"] == 0


async def test_offer_endpoints_are_in_the_openapi_document(api):
    async with api.get("/api/openapi.json") as resp:
        paths = (await resp.json())["paths"]
    for path in ("/partner/v1/offers", "/partner/v1/promo-codes", "/admin/v1/offers",
                 "/admin/v1/promo-codes/{code}/disable"):
        assert path in paths


async def test_two_checkouts_of_one_hold_cannot_reuse_a_one_use_code(api, redis, server):
    # The review's H2, as it reproduced it: attempt A with the timeout card holds its
    # consumption for the guard's timeout while attempt B (another key) checks out the
    # same hold; A then fails. Before, B booked with the discount and the use count was
    # back at 0. Now B waits for A's answer, and the booking that uses the code counts.
    from server.appkeys import SERVICES
    from server.commerce.payments import TIMES_OUT, GatewayGuard

    server.app[SERVICES].payment_guard = GatewayGuard(timeout_s=1.0)
    partner, show_id = await partner_show(api)
    code = f"ONCE{uuid.uuid4().hex[:6]}".upper()
    status, _ = await partner.call("POST", "/partner/v1/promo-codes", {
        "code": code, "name": "one use", "percent_off": 50, "max_uses": 1})
    assert status == 201
    status, h = await hold(api, show_id, ["A5"], promo_code=code, email="a@b.co")
    assert status == 201, h

    def pay(card: dict, key: str):  # type: ignore[no-untyped-def]
        return post(api, f"/api/holds/{h['hold_id']}/checkout",
                    {"card": card, "email": "a@b.co", "name": "A Buyer"},
                    {"X-Holder-Token": h["holder_token"], "Idempotency-Key": key})

    lock = f"checkout:{{{show_id}}}:{h['hold_id']}"
    first = asyncio.create_task(pay({**GOOD_CARD, "number": TIMES_OUT}, "kA"))
    while not await redis.exists(lock):  # A has claimed the hold (its intent is written)
        await asyncio.sleep(0.01)
    status, body = await pay(GOOD_CARD, "kB")
    assert (status, body["error"]["code"]) == (409, "checkout_in_progress"), body
    status, body = await first
    assert (status, body["error"]["code"]) == (503, "payment_timeout"), body
    status, booking = await pay(GOOD_CARD, "kB")  # A is finished first (abandoned)
    assert status == 201, booking
    assert booking["amount"]["amount"] == h["quote"]["total"]
    assert h["quote"]["lines"][0]["discount"] > 0 and h["quote"]["promo_code"] == code
    view = await promo_view(partner, code)
    assert (view["used"], view["reserved"]) == (1, 0)


async def test_offers_and_promo_codes_list_in_cursor_pages(api):
    partner, _ = await partner_show(api)
    for i in range(5):
        assert (await partner.call("POST", "/partner/v1/promo-codes", {
            "code": f"PAGE{i}{uuid.uuid4().hex[:4]}".upper(), "name": "p",
            "percent_off": 5}))[0] == 201
    seen, cursor = [], None
    for _ in range(3):
        status, page = await partner.call(
            "GET", "/partner/v1/promo-codes?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200 and page["items"] == page["promo_codes"], page
        seen += [p["promo"]["code"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 == len(set(seen)) and seen == sorted(seen)
    status, out = await partner.call("GET", "/partner/v1/offers?cursor=forged")
    assert (status, out["error"]["code"]) == (422, "invalid_cursor")


async def test_a_partners_list_shows_only_its_own_claimed_codes(api, redis):
    # A code and its owner's list are in different slots: listed first, then claimed. A
    # code listed but not claimed (a stop in between) is not shown, and a code another
    # owner holds is neither shown nor left on the list of the one who lost it.
    a = await new_partner(api)
    b = await new_partner(api)
    code = f"MINE{uuid.uuid4().hex[:6]}".upper()
    status, _ = await a.call("POST", "/partner/v1/promo-codes",
                             {"code": code, "name": "a's", "percent_off": 5})
    assert status == 201
    status, _ = await b.call("POST", "/partner/v1/promo-codes",
                             {"code": code, "name": "b's", "percent_off": 5})
    assert status == 409
    assert not await redis.sismember(offers_store.promos_key(b.partner_id), code)
    half = f"HALF{uuid.uuid4().hex[:6]}".upper()
    await redis.sadd(offers_store.promos_key(b.partner_id), half, code)  # listed, not b's
    status, out = await b.call("GET", "/partner/v1/promo-codes")
    assert status == 200 and out["promo_codes"] == []
    status, out = await a.call("GET", "/partner/v1/promo-codes")
    assert [p["promo"]["code"] for p in out["promo_codes"]] == [code]
