"""Server-side request forgery (OWASP API7): partner webhooks reach public addresses only.
IP literals are refused when registered; a name that resolves to loopback (`localhost`,
or a public name re-pointed later) is refused where the connection is made, so nothing
arrives at the internal receiver and the delivery log says why."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from server.catalog.model import catalog_key
from server.partner.ssrf import check_target, is_public

from ..api.builders import GOOD_CARD, publish_show
from ..api.catalog_helpers import new_partner
from ..api.outbox_helpers import Receiver, until


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.mark.parametrize("url", [
    "https://10.0.0.7/hook", "https://169.254.169.254/latest/meta-data", "http://127.0.0.1/x",
    "https://[::1]/x", "https://[::ffff:10.0.0.1]/x", "https://100.64.0.1/x",
    "https://192.168.1.1/x", "https://0.0.0.0/x",
])
async def test_private_ip_literals_are_refused_at_registration(
        api: aiohttp.ClientSession, url: str) -> None:
    partner = await new_partner(api)
    status, out = await partner.call("POST", "/partner/v1/webhooks", {"url": url})
    assert (status, out["error"]["code"]) == (422, "invalid_url"), out


async def test_a_name_resolving_to_loopback_gets_nothing_delivered(
        api: aiohttp.ClientSession, redis: aioredis.Redis, receiver: Receiver) -> None:
    partner = await new_partner(api)
    pub = await publish_show(redis)  # owned by this partner, so its events go to its hooks
    show = msgspec.structs.replace(pub.show, partner_id=partner.partner_id)
    await redis.set(catalog_key("show", pub.show_id), msgspec.json.encode(show))
    url = receiver.url.replace("127.0.0.1", "localhost")
    status, hook = await partner.call("POST", "/partner/v1/webhooks",
                                      {"url": url, "events": ["booking.confirmed"]})
    assert status == 201, hook  # a name: decided where the connection is made

    async with api.post(f"/api/shows/{pub.show_id}/holds", json={"seats": ["A1"]}) as resp:
        h = await resp.json()
    async with api.post(f"/api/holds/{h['hold_id']}/checkout",
                        headers={"X-Holder-Token": h["holder_token"],
                                 "Idempotency-Key": uuid.uuid4().hex},
                        json={"card": GOOD_CARD, "email": "s@example.test", "name": "S"}) as resp:
        assert resp.status == 201

    async def attempted() -> bool:
        status, log = await partner.call("GET",
                                         f"/partner/v1/webhooks/{hook['webhook_id']}/deliveries")
        return status == 200 and bool(log["deliveries"]) and bool(
            log["deliveries"][0]["attempts"])

    await until(attempted, what="a delivery attempt")
    _, log = await partner.call("GET", f"/partner/v1/webhooks/{hook['webhook_id']}/deliveries")
    attempt = log["deliveries"][0]["attempts"][0]
    assert attempt["status_code"] is None and "public address" in attempt["error"], attempt
    assert receiver.requests == []


def test_address_rules() -> None:
    assert is_public("8.8.8.8") and is_public("2606:4700:4700::1111")
    for private in ("127.0.0.1", "10.1.1.1", "172.16.0.1", "192.168.0.1", "169.254.169.254",
                    "::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1", "224.0.0.1", "0.0.0.0"):
        assert not is_public(private), private
    # L13: NAT64 (and 6to4) addresses reach the IPv4 host they embed
    for embedded in ("64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "64:ff9b:1::a00:1",
                     "2002:a9fe:a9fe::1"):
        assert not is_public(embedded), embedded
    assert is_public("64:ff9b::808:808")  # 8.8.8.8 through NAT64
    check_target("https://hooks.example.test/x", allow_private=False)  # names: at connect
    check_target("http://127.0.0.1:9/x", allow_private=True)
    with pytest.raises(OSError):
        check_target("http://127.0.0.1:9/x", allow_private=False)
