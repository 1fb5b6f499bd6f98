"""Partner webhooks: registration, signed delivery to a real local HTTP receiver, retries
with backoff when it is down, the delivery log (paginated) and resending from it, answers
read only as far as an excerpt, a hanging receiver not delaying the others, signing
secrets sealed at rest, and partner isolation."""
from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from aiohttp import web

from server.catalog.model import catalog_key
from server.core.clock import from_ms, now_ms
from server.core.outbox import publish
from server.core.settings import Settings
from server.partner import webhooks as wh
from server.partner.webhooks import load_delivery, verify

from .builders import GOOD_CARD, publish_show
from .conftest import TEST_DATA_KEY
from .outbox_helpers import Receiver, free_port, until

MAX_ATTEMPTS = 4


def settings(**overrides) -> Settings:
    return Settings(**{
        "seed_demo": False, "secret": "test-secret", "admin_key": "test-admin-key",
        "data_key": TEST_DATA_KEY, "passivate_after_s": 30, "webhook_retry_s": 0.05,
        "webhook_retry_max_s": 0.2, "webhook_max_attempts": MAX_ATTEMPTS,
        "webhook_timeout_s": 2.0, "notify_retry_s": 0.05,
        "webhook_private_targets": True,  # receivers on loopback
        **overrides})


@pytest.fixture
def app_settings() -> Settings:
    return settings()


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
        out = await resp.json()
    assert out["deliveries"] == out["items"]  # the old key, still there for old clients
    return out["items"]


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
        page = await resp.json()
    listed = page["items"]
    assert [w["webhook_id"] for w in listed] == [wid] and "secret" not in listed[0]
    assert page["next_cursor"] is None and page["webhooks"] == listed  # the old key too
    async with api.get(f"/partner/v1/webhooks/{wid}", headers=auth(partner)) as resp:
        assert resp.status == 200 and "secret" not in await resp.json()
    async with api.delete(f"/partner/v1/webhooks/{wid}", headers=auth(partner)) as resp:
        assert resp.status == 200 and (await resp.json())["deleted"] is True
    async with api.get(f"/partner/v1/webhooks/{wid}", headers=auth(partner)) as resp:
        assert resp.status == 404
    async with api.get("/partner/v1/webhooks", headers=auth(partner)) as resp:
        assert (await resp.json())["items"] == []


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
                         ("POST", f"/partner/v1/webhooks/{wid}/deliveries/dlv_0/resend"),
                         ("DELETE", f"/partner/v1/webhooks/{wid}")):
        async with api.request(method, path, headers=auth(b)) as resp:
            assert resp.status in (403, 404), (method, path)
    async with api.get("/partner/v1/webhooks", headers=auth(b)) as resp:
        assert (await resp.json())["items"] == []
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
        d = await load_delivery(redis, partner["partner_id"], pending["delivery_id"])
        return d is not None and d.status == "failed"

    await until(dropped, what="the pending delivery to be dropped")
    d = await load_delivery(redis, partner["partner_id"], pending["delivery_id"])
    assert d.attempts[-1].error == "webhook deleted" and d.next_retry_at is None
    assert await wh.due_at(redis, d) is None


# --- answers are read only as far as an excerpt ------------------------------------------

def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class HugeAnswer:
    """A receiver whose 200 carries a 50 MB body, streamed; it notes how far it got
    before the client closed the connection."""

    SIZE = 50 << 20
    CHUNK = 64 << 10

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.sent = 0
        self.finished = False
        self.done = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=200)
        resp.content_length = self.SIZE
        resp.content_type = "text/plain"
        await resp.prepare(request)
        chunk = b"x" * self.CHUNK
        try:
            while self.sent < self.SIZE:
                await resp.write(chunk)
                self.sent += len(chunk)
            self.finished = True
        except (ConnectionError, OSError):
            pass  # the client hung up
        finally:
            self.done.set()
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_a_huge_answer_is_cut_short_after_an_excerpt(api, redis):
    receiver = HugeAnswer()
    await receiver.start()
    peak, base, sampling = 0, rss_bytes(), True

    async def sample() -> None:  # this process runs the server: its RSS is the worker's
        nonlocal peak
        while sampling:
            peak = max(peak, rss_bytes())
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    try:
        partner = await new_partner(api)
        hook = await register(api, partner, receiver.url, events=["show.sold_out"])
        await publish(redis, "show.sold_out", {"show_id": "s-huge"},
                      partner_id=partner["partner_id"])
        async with asyncio.timeout(10):
            await receiver.done.wait()  # the connection was closed under it

        async def delivered() -> bool:
            log = await deliveries(api, partner, hook["webhook_id"])
            return bool(log) and log[0]["status"] == "delivered"

        await until(delivered, what="the delivery recorded")
    finally:
        sampling = False
        await sampler
        await receiver.stop()
    assert not receiver.finished and receiver.sent < HugeAnswer.SIZE // 2, receiver.sent
    [entry] = await deliveries(api, partner, hook["webhook_id"])
    [attempt] = entry["attempts"]
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["response_excerpt"] == "x" * wh.RESPONSE_KEEP  # 4 KiB kept, no more
    assert peak - base < 20 << 20, (peak - base)  # the body never was in memory


# --- a receiver that hangs does not delay the others ---------------------------------------

class Hanging:
    """A receiver that never answers (until released); counts requests under way."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        self.now = self.most = self.total = 0
        self.runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.now += 1
        self.total += 1
        self.most = max(self.most, self.now)
        self.arrived.set()
        try:
            await self.release.wait()
        finally:
            self.now -= 1
        return web.Response(text="late")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.mark.parametrize("app_settings", [settings(webhook_timeout_s=8.0)])
async def test_a_hanging_receiver_does_not_delay_other_receivers(api, redis, receiver):
    slow_partner, fast_partner = await new_partner(api), await new_partner(api)
    slow = Hanging()
    await slow.start()
    try:
        slow_hook = await register(api, slow_partner, slow.url, events=["show.sold_out"])
        fast_hook = await register(api, fast_partner, receiver.url, events=["show.sold_out"])
        for i in range(20):  # more than a batch of the old worker, which waited for all
            await publish(redis, "show.sold_out", {"show_id": f"slow-{i}"},
                          partner_id=slow_partner["partner_id"])
        async with asyncio.timeout(5):
            await slow.arrived.wait()  # the slow receiver is holding requests open
        sent = [await publish(redis, "show.sold_out", {"show_id": f"fast-{i}"},
                              partner_id=fast_partner["partner_id"]) for i in range(20)]
        got = [(await receiver.next(timeout=6.0))[0]["X-BMM-Event-Id"] for _ in sent]
        assert sorted(got) == sorted(sent)
        # ...all while the slow one still hangs: none of its attempts has ended yet.
        assert slow.now >= 1 and not slow.release.is_set()
        log = await deliveries(api, slow_partner, slow_hook["webhook_id"])
        assert len(log) == 20 and all(d["attempts"] == [] for d in log)
        assert slow.most <= wh.PER_ENDPOINT  # a few at a time to one endpoint
        fast_log = await deliveries(api, fast_partner, fast_hook["webhook_id"])
        assert len(fast_log) == 20
    finally:
        await slow.stop()
        async with api.delete(f"/partner/v1/webhooks/{slow_hook['webhook_id']}",
                              headers=auth(slow_partner)):
            pass


# --- signing secrets at rest ---------------------------------------------------------------

async def values_holding(redis, needle: bytes) -> list[str]:
    """Every key whose value (any type) contains `needle`."""
    found = []
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            parts = [await redis.get(key) or b""]
        elif kind == "hash":
            parts = [b for kv in (await redis.hgetall(key)).items() for b in kv]
        elif kind == "set":
            parts = list(await redis.smembers(key))
        elif kind == "zset":
            parts = [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "list":
            parts = await redis.lrange(key, 0, -1)
        elif kind == "stream":
            parts = [b for _, fields in await redis.xrange(key) for kv in fields.items()
                     for b in kv]
        else:
            parts = []
        if any(needle in p for p in parts):
            found.append(key.decode())
    return found


async def test_the_signing_secret_is_sealed_at_rest_and_still_signs(api, redis, receiver):
    partner = await new_partner(api)
    hook = await register(api, partner, receiver.url, events=["show.sold_out"])
    secret = hook["secret"]
    assert await values_holding(redis, secret.encode()) == []
    stored = msgspec.json.decode(await redis.get(wh.endpoint_key(partner["partner_id"],
                                                                  hook["webhook_id"])))
    assert stored["secret"].startswith("pii1.")
    # bound to its endpoint: the sealed value copied onto another does not decrypt
    other = wh.Endpoint("wh_other", partner["partner_id"], receiver.url, stored["secret"],
                        ["show.sold_out"], datetime.now(UTC))
    with pytest.raises(ValueError):
        wh.signing_secret(settings(), other)

    receiver.check = signed_by(secret)
    event_id = await publish(redis, "show.sold_out", {"show_id": "s-sealed"},
                             partner_id=partner["partner_id"])
    headers, _, status = await receiver.next()
    assert status == 200 and headers["X-BMM-Event-Id"] == event_id  # signature verified


async def test_a_clear_text_secret_from_before_still_signs_and_is_sealed_on_use(
        api, redis, receiver):
    partner = await new_partner(api)
    legacy = wh.new_secret()
    webhook_id = "wh_" + uuid.uuid4().hex[:20]
    record = wh.Endpoint(webhook_id, partner["partner_id"], receiver.url, legacy,
                         ["show.sold_out"], datetime.now(UTC).replace(microsecond=0))
    await redis.set(wh.endpoint_key(partner["partner_id"], webhook_id),
                    msgspec.json.encode(record))
    await redis.sadd(wh.partner_webhooks_key(partner["partner_id"]), webhook_id)
    receiver.check = signed_by(legacy)
    for _ in range(2):  # in clear, then (rewritten sealed) again
        event_id = await publish(redis, "show.sold_out", {"show_id": "s-legacy"},
                                 partner_id=partner["partner_id"])
        headers, _, status = await receiver.next()
        assert status == 200 and headers["X-BMM-Event-Id"] == event_id

        async def sealed() -> bool:
            raw = await redis.get(wh.endpoint_key(partner["partner_id"], webhook_id))
            return msgspec.json.decode(raw)["secret"].startswith("pii1.")

        await until(sealed, what="the record rewritten sealed")
    assert await values_holding(redis, legacy.encode()) == []
    endpoint = await wh.load_endpoint(redis, partner["partner_id"], webhook_id)
    assert wh.signing_secret(settings(), endpoint) == legacy


# --- resend --------------------------------------------------------------------------------

async def test_resend_queues_the_event_again_as_a_new_delivery(api, redis, receiver):
    partner = await new_partner(api)
    hook = await register(api, partner, receiver.url, events=["show.sold_out"])
    receiver.check = signed_by(hook["secret"])
    wid = hook["webhook_id"]
    event_id = await publish(redis, "show.sold_out", {"show_id": "s-resend"},
                             partner_id=partner["partner_id"])
    first_headers, first_body, _ = await receiver.next()

    async def delivered(n: int):
        async def check() -> bool:
            log = await deliveries(api, partner, wid)
            return len(log) == n and all(d["status"] == "delivered" for d in log)
        return check

    await until(await delivered(1), what="delivered")
    [original] = await deliveries(api, partner, wid)
    async with api.post(f"/partner/v1/webhooks/{wid}/deliveries/{original['delivery_id']}"
                        "/resend", headers=auth(partner)) as resp:
        assert resp.status == 202, await resp.text()
        queued = await resp.json()
    assert queued["delivery_id"] != original["delivery_id"]
    assert queued["resend_of"] == original["delivery_id"] and queued["event_id"] == event_id
    assert queued["status"] == "pending" and queued["attempts"] == []
    headers, body, status = await receiver.next()
    assert status == 200 and headers["X-BMM-Event-Id"] == event_id == first_headers[
        "X-BMM-Event-Id"]
    assert body == first_body and headers["X-BMM-Delivery-Id"] == queued["delivery_id"]
    await until(await delivered(2), what="the resend delivered")
    again, first = await deliveries(api, partner, wid)  # newest first
    assert again["delivery_id"] == queued["delivery_id"] and again["resend_of"] == first[
        "delivery_id"] == original["delivery_id"]
    assert [a["status_code"] for a in again["attempts"]] == [200]
    assert first["attempts"] == original["attempts"]  # the original's history as it was

    other = await register(api, partner, "https://other.example.com/h")
    for path in (f"/partner/v1/webhooks/{wid}/deliveries/dlv_nope/resend",
                 f"/partner/v1/webhooks/{other['webhook_id']}/deliveries/"
                 f"{original['delivery_id']}/resend"):  # not that webhook's delivery
        async with api.post(path, headers=auth(partner)) as resp:
            assert resp.status == 404, path
    stranger = await new_partner(api)
    async with api.post(f"/partner/v1/webhooks/{wid}/deliveries/{original['delivery_id']}"
                        "/resend", headers=auth(stranger)) as resp:
        assert resp.status == 404
    assert len(receiver.requests) == 2


# --- pagination ------------------------------------------------------------------------------

async def pages(api, partner, path: str, limit: int) -> list[dict]:
    out, cursor = [], None
    while True:
        params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        async with api.get(path, headers=auth(partner), params=params) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
        out.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return out
        assert len(out) < 10


async def test_webhooks_are_listed_in_pages(api):
    partner = await new_partner(api)
    made = [(await register(api, partner, f"https://h{i}.example.com/x"))["webhook_id"]
            for i in range(5)]
    got = await pages(api, partner, "/partner/v1/webhooks", 2)
    assert [len(p["items"]) for p in got] == [2, 2, 1]
    listed = [w["webhook_id"] for p in got for w in p["items"]]
    everything = await pages(api, partner, "/partner/v1/webhooks", 50)
    assert len(everything) == 1 and [w["webhook_id"] for w in everything[0]["items"]] == listed
    assert sorted(listed) == sorted(made) and len(set(listed)) == 5
    async with api.get("/partner/v1/webhooks", headers=auth(partner),
                       params={"limit": "0"}) as resp:
        assert resp.status == 422 and (await resp.json())["error"]["code"] == "invalid_limit"


async def test_deliveries_are_listed_in_pages_newest_first(api, redis):
    partner = await new_partner(api)
    # Never reached (nothing listens there), so the log stays as written here.
    hook = await register(api, partner, f"http://127.0.0.1:{free_port()}/x",
                          events=["show.sold_out"])
    wid = hook["webhook_id"]
    t = now_ms()
    made = []
    for i, at in enumerate((t - 2, t - 1, t, t, t)):  # three at the same millisecond
        d = wh.Delivery(f"dlv_page{i}_{uuid.uuid4().hex[:8]}", wid, partner["partner_id"],
                        f"ev-{i}", "show.sold_out", from_ms(at), "{}",
                        next_retry_at=from_ms(at))
        assert await wh.schedule(redis, d, at)
        made.append(d.delivery_id)
    try:
        got = await pages(api, partner, f"/partner/v1/webhooks/{wid}/deliveries", 2)
        assert [len(p["items"]) for p in got] == [2, 2, 1]
        listed = [d["delivery_id"] for p in got for d in p["items"]]
        assert all(p["webhook_id"] == wid and p["deliveries"] == p["items"] for p in got)
        assert sorted(listed) == sorted(made) and len(set(listed)) == 5
        assert listed[-2:] == [made[1], made[0]]  # newest first
        assert set(listed[:3]) == set(made[2:])

        first = got[0]["next_cursor"]
        for params in ({"cursor": "not-a-cursor"}, {"cursor": first[:-2] + "xy"},
                       {"cursor": first + "A"}):
            async with api.get(f"/partner/v1/webhooks/{wid}/deliveries", headers=auth(partner),
                               params=params) as resp:
                assert resp.status == 422, params
                assert (await resp.json())["error"]["code"] == "invalid_cursor"
        # a cursor of one list is not one for another
        other = await register(api, partner, "https://o.example.com/x")
        for path in (f"/partner/v1/webhooks/{other['webhook_id']}/deliveries",
                     "/partner/v1/webhooks"):
            async with api.get(path, headers=auth(partner), params={"cursor": first}) as resp:
                assert resp.status == 422, path
                assert (await resp.json())["error"]["code"] == "invalid_cursor"
    finally:
        async with api.delete(f"/partner/v1/webhooks/{wid}", headers=auth(partner)):
            pass


async def test_a_repeated_schedule_queues_a_delivery_once(redis):
    # The record (the partner's slot) and the queue entry (the queue's slot) are written
    # in two steps. An event redelivered after a stop between them queues the delivery
    # again; one already queued, parked or finished is not queued a second time.
    pid, wid = f"p-{uuid.uuid4().hex[:8]}", f"wh_{uuid.uuid4().hex[:20]}"
    later = now_ms() + 3_600_000  # not due while this test runs: no worker takes it
    d = wh.Delivery(f"dlv_rep_{uuid.uuid4().hex[:8]}", wid, pid, "ev-rep", "show.sold_out",
                    from_ms(later), "{}", next_retry_at=from_ms(later))
    member = wh.queue_member(d)
    try:
        assert await wh.schedule(redis, d, later)
        assert await wh.due_at(redis, d) == later
        assert not await wh.schedule(redis, d, later - 1000)  # queued: left as it is
        assert await wh.due_at(redis, d) == later
        await redis.zrem(wh.DUE, member)  # as if stopped before the second step
        assert not await wh.schedule(redis, d, later)  # not a new delivery, but queued
        assert await wh.due_at(redis, d) == later
        await redis.zrem(wh.DUE, member)
        await redis.zadd(wh.parked_key(wid), {member: later})  # waiting for a slot
        assert not await wh.schedule(redis, d, later)
        assert await wh.due_at(redis, d) is None
        await redis.delete(wh.parked_key(wid))
        done = msgspec.structs.replace(d, status="delivered", next_retry_at=None)
        await redis.set(wh.delivery_key(pid, d.delivery_id), msgspec.json.encode(done))
        assert not await wh.schedule(redis, d, later)  # finished: nothing to send
        assert await wh.due_at(redis, d) is None
    finally:
        await redis.zrem(wh.DUE, member)
        await redis.delete(wh.delivery_key(pid, d.delivery_id), wh.endpoint_log_key(pid, wid))
