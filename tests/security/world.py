"""Two partners and two customers with something of everything, for the OWASP API tests:
partner A owns a theatre, screen, movie, a published show, an offer, a promo code, a
webhook, a bulk booking and a cancellation policy; customer A has a booking on A's show,
customer B a hold on it. Every JSON answer seen while building it is kept (`seen`) so the
data-exposure test can look through all of them."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer


from ..api.account_helpers import Client, hold_and_checkout
from ..api.catalog_helpers import Partner, new_partner, uid


@dataclass
class World:
    api: aiohttp.ClientSession
    a: Partner
    b: Partner
    show_a: str
    show_b: str
    cust_a: Client
    cust_b: Client
    booking_a: dict[str, Any]
    hold_b: dict[str, Any]
    offer_a: str = ""
    promo_a: str = ""
    webhook_a: str = ""
    bulk_a: str = ""
    seen: list[tuple[str, Any]] = field(default_factory=list)

    async def as_partner(self, who: Partner, method: str, path: str,
                         body: Any = None) -> tuple[int, Any]:
        status, out = await who.call(method, path, body)
        self.seen.append((f"{method} {path}", out))
        return status, out

    async def anon(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        # a browser names its origin on every write
        headers = {"Origin": str(self.api._base_url).rstrip("/"), **(headers or {})}
        async with self.api.request(method, path, json=body, headers=headers) as resp:
            out = await resp.json() if resp.content_type == "application/json" \
                else await resp.text()
            return resp.status, out


async def build_world(api: aiohttp.ClientSession, server: TestServer, clients) -> World:
    a = await (await new_partner(api)).setup()
    b = await (await new_partner(api)).setup()
    show_a, show_b = uid("sh"), uid("sh")
    for who, show_id in ((a, show_a), (b, show_b)):
        status, out = await who.call("PUT", f"/partner/v1/shows/{show_id}", who.show(48))
        assert status == 201, out
    cust_a, cust_b = clients(), clients()
    await cust_a.sign_up(name="Asha A")
    await cust_b.sign_up(name="Bina B")
    booking_a = await hold_and_checkout(cust_a, show_a, ["A1"])
    status, hold_b = await cust_b.call("POST", f"/api/shows/{show_a}/holds", {"seats": ["A2"]})
    assert status == 201, hold_b
    w = World(api, a, b, show_a, show_b, cust_a, cust_b, booking_a, hold_b)
    w.seen += [("checkout", booking_a), ("hold", hold_b)]

    scope = {"theatre_ids": [a.theatre]}
    status, offer = await w.as_partner(a, "POST", "/partner/v1/offers", {
        "name": "3rd half off", "scope": scope,
        "rule": {"type": "nth_ticket", "n": 3, "percent_off": 50}})
    assert status == 201, offer
    w.offer_a = offer["offer_id"]
    w.promo_a = f"SEC{uuid.uuid4().hex[:6]}".upper()
    status, promo = await w.as_partner(a, "POST", "/partner/v1/promo-codes", {
        "code": w.promo_a, "name": "10% off", "percent_off": 10, "scope": scope})
    assert status == 201, promo
    status, hook = await w.as_partner(a, "POST", "/partner/v1/webhooks",
                                      {"url": "https://hooks.example.test/bmm"})
    assert status == 201, hook
    w.webhook_a = hook["webhook_id"]
    status, bulk = await w.as_partner(a, "POST", f"/partner/v1/shows/{show_a}/bulk-bookings", {
        "seats": ["D1", "D2"], "email": "events@corp.example", "name": "Corp Ltd"})
    assert status == 201, bulk
    w.bulk_a = bulk["bulk_id"]
    status, policy = await w.as_partner(
        a, "PUT", f"/partner/v1/shows/{show_a}/cancellation-policy",
        {"tiers": [{"hours_before": 24, "refund_percent": 50}]})
    assert status == 200, policy
    return w
