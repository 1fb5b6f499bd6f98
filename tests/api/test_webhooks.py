"""Partner webhooks: registration, signed delivery to a real local HTTP receiver, retries
with backoff when it is down, the delivery log, and partner isolation."""
from __future__ import annotations

import uuid

import msgspec
import pytest

from server.catalog.model import catalog_key
from server.core.outbox import publish
from server.core.settings import Settings
from server.partner.webhooks import load_delivery, verify

from .builders import GOOD_CARD, publish_show
from .outbox_helpers import Receiver, until

MAX_ATTEMPTS = 4


@pytest.fixture
def app_settings() -> Settings:
    return Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                    passivate_after_s=30, webhook_retry_s=0.05, webhook_retry_max_s=0.2,
                    webhook_max_attempts=MAX_ATTEMPTS, webhook_timeout_s=2.0,
                    notify_retry_s=0.05, webhook_private_targets=True)  # receivers on loopback


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def new_partner(api) -> dict[str, str]:
    pid = f"p-{uuid.uuid4().hex[:10]}"
    async with api.post("/admin/v1/partners", json={"name": "Cinema Co", "partner_id": pid},
                        headers={"Authorization": "Bearer test-admin-key"}) as resp:
        assert resp.status == 201, await resp.text()
        key = (await resp.json())["api_key"]
    return {"partner_id": pid, "Authorization": f"Bearer {key}"}


def auth(partner: dict[str, str]) -> dict[str, str]:
    return {"Authorization": partner["Authorization"]}


async def owned_show(redis, partner: dict[str, str]):
    pub = await publish_show(redis)
    show = msgspec.structs.replace(pub.show, partner_id=partner["partner_id"])
    await redis.set(catalog_key("show", pub.show_id), msgspec.json.encode(show))
    return pub


async def register(api, partner, url: str, **extra) -> dict:
    async with api.post("/partner/v1/webhooks", headers=auth(partner),
                        json={"url": url, **extra}) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def deliveries(api, partner, webhook_id: str) -> list[dict]:
    async with api.get(f"/partner/v1/webhooks/{webhook_id}/deliveries",
                       headers=auth(partner)) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["deliveries"]


def signed_by(secret: str):
    def check(headers: dict[str, str], body: bytes) -> bool:
        return verify(secret, headers["X-BMM-Timestamp"], body, headers["X-BMM-Signature"])
    return check


async def test_register_list_get_delete(api):
    partner = await new_partner(api)
    created = await register(api, partner, "https://hooks.example.com/bmm",
                             events=["booking.confirmed"], description="tickets")
    assert created["secret"].startswith("whsec_") and created["events"] == ["booking.confirmed"]
    wid = created["webhook_id"]
    async with api.get("/partner/v1/webhooks", headers=auth(partner)) as resp:
        listed = (await resp.json())["webhooks"]
    assert [w["webhook_id"] for w in listed] == [wid] and "secret" not in listed[0]
    async with api.get(f"/partner/v1/webhooks/{wid}", headers=auth(partner)) as resp:
        assert resp.status == 200 and "secret" not in await resp.json()
    async with api.delete(f"/partner/v1/webhooks/{wid}", headers=auth(partner)) as resp:
        assert resp.status == 200 and (await resp.json())["deleted"] is True
    async with api.get(f"/partner/v1/webhooks/{wid}", headers=auth(partner)) as resp:
        assert resp.status == 404
    async with api.get("/partner/v1/webhooks", headers=auth(partner)) as resp:
        assert (await resp.json())["webhooks"] == []


@pytest.mark.parametrize("url", [
    "http://hooks.example.com/x", "ftp://127.0.0.1/x", "not a url", "https://",
    "https://user:pw@hooks.example.com/x", "http://10.0.0.1/x", "https://h.example.com/#frag",
    "javascript:alert(1)",
])
async def test_bad_urls_are_rejected(api, url):
    partner = await new_partner(api)
    async with api.post("/partner/v1/webhooks", headers=auth(partner), json={"url": url}) as resp:
        assert resp.status == 422, url
        assert (await resp.json())["error"]["code"] == "invalid_url"


async def test_bad_events_unknown_fields_and_no_key(api):
    partner = await new_partner(api)
    for body, code in (({"url": "https://a.example.com", "events": ["booking.exploded"]},
                        "invalid_events"),
                       ({"url": "https://a.example.com", "events": []}, "invalid_events")):
        async with api.post("/partner/v1/webhooks", headers=auth(partner), json=body) as resp:
            assert resp.status == 422 and (await resp.json())["error"]["code"] == code
    async with api.post("/partner/v1/webhooks", headers=auth(partner),
                        json={"url": "https://a.example.com", "secret": "mine"}) as resp:
        assert resp.status in (400, 422)
    async with api.post("/partner/v1/webhooks", json={"url": "https://a.example.com"}) as resp:
        assert resp.status == 401
    async with api.get("/partner/v1/webhooks") as resp:
        assert resp.status == 401


async def test_a_partner_cannot_see_or_delete_another_partners_webhooks(api):
    a, b = await new_partner(api), await new_partner(api)
    wid = (await register(api, a, "https://a.example.com/hook"))["webhook_id"]
    for method, path in (("GET", f"/partner/v1/webhooks/{wid}"),
                         ("GET", f"/partner/v1/webhooks/{wid}/deliveries"),
                         ("DELETE", f"/partner/v1/webhooks/{wid}")):
        async with api.request(method, path, headers=auth(b)) as resp:
            assert resp.status in (403, 404), (method, path)
    async with api.get("/partner/v1/webhooks", headers=auth(b)) as resp:
        assert (await resp.json())["webhooks"] == []
    async with api.get(f"/partner/v1/webhooks/{wid}", headers=auth(a)) as resp:
        assert resp.status == 200  # still there


async def test_checkout_delivers_a_signed_booking_confirmed(api, redis, receiver):
    partner = await new_partner(api)
    pub = await owned_show(redis, partner)
    hook = await register(api, partner, receiver.url)
    receiver.check = signed_by(hook["secret"])
    async with api.post(f"/api/shows/{pub.show_id}/holds", json={"seats": ["B2"]}) as resp:
        h = await resp.json()
    async with api.post(f"/api/holds/{h['hold_id']}/checkout",
                        headers={"X-Holder-Token": h["holder_token"],
                                 "Idempotency-Key": uuid.uuid4().hex},
                        json={"card": GOOD_CARD, "email": "w@example.com", "name": "W"}) as resp:
        assert resp.status == 201
        booking = await resp.json()
    headers, body, status = await receiver.next()
    assert status == 200  # the signature verified
    event = msgspec.json.decode(body)
    assert event["type"] == "booking.confirmed" and headers["X-BMM-Event-Id"] == event["id"]
    assert event["data"]["booking_id"] == booking["booking_id"]
    assert event["data"]["seats"] == ["B2"] and event["data"]["total"] == 45000
    assert "email" not in event["data"] and "name" not in event["data"]  # no customer PII
    assert not verify("wrong-secret", headers["X-BMM-Timestamp"], body,
                      headers["X-BMM-Signature"])
    assert not verify(hook["secret"], headers["X-BMM-Timestamp"], body + b" ",
                      headers["X-BMM-Signature"])

    async def logged() -> bool:
        log = await deliveries(api, partner, hook["webhook_id"])
        return bool(log) and log[0]["status"] == "delivered"

    await until(logged, what="the delivery log")
    [entry] = await deliveries(api, partner, hook["webhook_id"])
    assert entry["event_id"] == event["id"] and entry["event_type"] == "booking.confirmed"
    assert [a["status_code"] for a in entry["attempts"]] == [200]
    assert entry["next_retry_at"] is None


async def test_receiver_down_is_retried_with_backoff_and_delivered_later(api, redis):
    receiver = Receiver()  # not started yet: connections are refused
    partner = await new_partner(api)
    pub = await owned_show(redis, partner)
    hook = await register(api, partner, receiver.url, events=["show.sold_out"])
    receiver.check = signed_by(hook["secret"])
    event_id = await publish(redis, "show.sold_out", {"show_id": pub.show_id})

    async def failing_twice() -> bool:
        log = await deliveries(api, partner, hook["webhook_id"])
        return bool(log) and len(log[0]["attempts"]) >= 2

    await until(failing_twice, what="two failed attempts")
    [pending] = await deliveries(api, partner, hook["webhook_id"])
    assert pending["status"] == "pending" and pending["next_retry_at"] is not None
    assert all(a["status_code"] is None and a["error"] for a in pending["attempts"])
    await receiver.start()
    try:
        receiver.statuses = [503]  # one more failure, answered this time
        first = await receiver.next()
        assert first[2] == 503
        headers, body, status = await receiver.next()
        assert status == 200 and headers["X-BMM-Event-Id"] == event_id
        # a retry is signed afresh and carries the same event id and body
        assert first[1] == body and first[0]["X-BMM-Event-Id"] == event_id

        async def delivered() -> bool:
            log = await deliveries(api, partner, hook["webhook_id"])
            return log[0]["status"] == "delivered"

        await until(delivered, what="delivered")
        [done] = await deliveries(api, partner, hook["webhook_id"])
        codes = [a["status_code"] for a in done["attempts"]]
        assert codes[-2:] == [503, 200] and all(c is None for c in codes[:-2])
        assert len(receiver.requests) == 2  # delivered once, not again
    finally:
        await receiver.stop()


async def test_gives_up_after_max_attempts(api, redis, receiver):
    partner = await new_partner(api)
    pub = await owned_show(redis, partner)
    hook = await register(api, partner, receiver.url, events=["show.cancelled"])
    receiver.statuses = [500] * 100
    await publish(redis, "show.cancelled", {"show_id": pub.show_id, "bookings": []})

    async def failed() -> bool:
        log = await deliveries(api, partner, hook["webhook_id"])
        return bool(log) and log[0]["status"] == "failed"

    await until(failed, what="failed")
    [entry] = await deliveries(api, partner, hook["webhook_id"])
    assert [a["status_code"] for a in entry["attempts"]] == [500] * MAX_ATTEMPTS
    assert len(receiver.requests) == MAX_ATTEMPTS and entry["next_retry_at"] is None


async def test_only_the_shows_partner_and_subscribed_events_are_delivered(api, redis):
    a, b = await new_partner(api), await new_partner(api)
    ra, rb = Receiver(), Receiver()
    await ra.start()
    await rb.start()
    try:
        show_a, show_b = await owned_show(redis, a), await owned_show(redis, b)
        await register(api, a, ra.url, events=["booking.cancelled"])
        await register(api, b, rb.url)
        await publish(redis, "booking.confirmed", {"show_id": show_a.show_id,
                                                   "booking_id": "x"})  # a: not subscribed
        await publish(redis, "booking.cancelled", {"show_id": show_a.show_id,
                                                   "booking_id": "y", "email": "q@e.com"})
        await publish(redis, "show.sold_out", {"show_id": show_b.show_id})
        _, body_a, _ = await ra.next()
        _, body_b, _ = await rb.next()
        got_a, got_b = msgspec.json.decode(body_a), msgspec.json.decode(body_b)
        assert got_a["type"] == "booking.cancelled" and got_a["data"]["booking_id"] == "y"
        assert "email" not in got_a["data"]
        assert got_b["type"] == "show.sold_out" and got_b["data"]["show_id"] == show_b.show_id
        assert len(ra.requests) == 1 and len(rb.requests) == 1
    finally:
        await ra.stop()
        await rb.stop()


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    import hashlib
    import hmac
    body, ts = b'{"a":1}', "1700000000"
    sig = "sha256=" + hmac.new(b"s3", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest()
    assert verify("s3", ts, body, sig, now=1700000000 + 10)
    assert not verify("s3", ts, body, sig, now=1700000000 + 3600)  # stale timestamp
    assert not verify("s3", "nope", body, sig)


async def test_deleting_a_webhook_drops_its_pending_deliveries(api, redis, server):
    receiver = Receiver()  # never started: deliveries keep failing
    partner = await new_partner(api)
    pub = await owned_show(redis, partner)
    hook = await register(api, partner, receiver.url, events=["show.sold_out"])
    await publish(redis, "show.sold_out", {"show_id": pub.show_id})

    async def attempted() -> bool:
        log = await deliveries(api, partner, hook["webhook_id"])
        return bool(log) and len(log[0]["attempts"]) >= 1

    await until(attempted, what="a failed attempt")
    [pending] = await deliveries(api, partner, hook["webhook_id"])
    async with api.delete(f"/partner/v1/webhooks/{hook['webhook_id']}",
                          headers=auth(partner)) as resp:
        assert resp.status == 200

    async def dropped() -> bool:
        d = await load_delivery(redis, pending["delivery_id"])
        return d is not None and d.status == "failed"

    await until(dropped, what="the pending delivery to be dropped")
    d = await load_delivery(redis, pending["delivery_id"])
    assert d.attempts[-1].error == "webhook deleted" and d.next_retry_at is None
    assert await redis.zscore("webhooks:due", pending["delivery_id"]) is None
