"""Money safety under faults, on a real multi-process platform (tests/cluster/harness.py:
Redis with AOF fsync always, the sandbox payment gateway as its own process with its
ledger, a Ray node, two web processes).

A web process is made to kill itself with SIGKILL right after each durable step of the
checkout saga (`BMM_CRASH_AT`, server/booking/checkout.py CRASH_POINTS); Redis is
kill -9'd and restarted in the middle of one; the gateway is kill -9'd in the middle of
another. Afterwards the reconciler (the web processes run it) drives every payment intent
to a final state, the customer's retry with the same Idempotency-Key gets the one booking,
and `python -m server.audit` reports zero for every check: no captured payment without a
booking or a refund, no booking without a capture, no booked seat without a booking.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from server.booking.checkout import CRASH_POINTS
from tests.cluster.harness import Cluster
from tests.cluster.rush import poll, publish

SETTLE_S = 90
CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}
BUYER = {"email": "saga@example.com", "name": "Saga Test"}


@pytest.fixture(scope="module")
def saga() -> Iterator[Cluster]:
    with Cluster(web=2, ray_nodes=1, cpus_per_node=2) as cl:
        yield cl


async def _hold(session: aiohttp.ClientSession, url: str, show_id: str, seat: str
                ) -> dict[str, Any]:
    async with session.post(f"{url}/api/shows/{show_id}/holds", json={"seats": [seat]}) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def _checkout(session: aiohttp.ClientSession, url: str, h: dict[str, Any], key: str
                    ) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/api/holds/{h['hold_id']}/checkout",
                            json={"card": CARD, **BUYER},
                            headers={"X-Holder-Token": h["holder_token"],
                                     "Idempotency-Key": key}) as r:
        return r.status, await r.json()


async def _crash_mid_checkout(cl: Cluster, session: aiohttp.ClientSession, point: str,
                              show_id: str, seat: str) -> tuple[dict[str, Any], str]:
    """web0 dies right after `point`: the client sees its connection drop."""
    victim = cl.web[0]
    victim.extra_env["BMM_CRASH_AT"] = point
    victim.kill9()
    await asyncio.to_thread(cl.restart_web, 0)
    h = await _hold(session, victim.url, show_id, seat)
    key = uuid.uuid4().hex
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await _checkout(session, victim.url, h, key)
    await asyncio.to_thread(victim.proc.proc.wait, 30)  # type: ignore[union-attr]
    assert not victim.proc.alive()  # type: ignore[union-attr]
    victim.extra_env.pop("BMM_CRASH_AT")
    return h, key


async def _intent_of(redis: aioredis.Redis, hold_id: str) -> str:
    show_id = hold_id.split(".", 1)[0]
    keys = [k async for k in redis.scan_iter(match=f"idem:{{{show_id}}}:{hold_id}:*")]
    assert len(keys) == 1, keys
    return keys[0].decode()


async def _final(redis: aioredis.Redis, key: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        intent = msgspec.json.decode(await redis.get(key))
        return intent if intent["state"] not in (
            "created", "authorised", "confirmed", "captured") else None

    return await poll(done, SETTLE_S, f"intent {key} to reach a final state")


def _audited(cl: Cluster, show_id: str | None = None) -> str:
    code, report = cl.audit(show_id)
    assert code == 0, report
    return report


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_kill9_of_the_web_process_at_each_step_of_the_saga(saga: Cluster, point: str):
    rush = await publish(saga.web[1].url, saga.redis_url, rows=2, per_row=10,
                         hold_ttl_ms=60_000, hold_max_lifetime_ms=120_000)
    show_id = rush["show_ids"][0]
    redis = aioredis.Redis.from_url(saga.redis_url)
    try:
        async with aiohttp.ClientSession() as session:
            h, key = await _crash_mid_checkout(saga, session, point, show_id, "A1")
            intent_key = await _intent_of(redis, h["hold_id"])
            if point == "claimed":
                # Nothing reached the gateway and the hold is live: the intent waits for
                # its customer, whose retry (the show page keeps the key, and resends it
                # while the answer is "in progress": the dead process's lease) books.
                async def retry() -> bool:
                    status, booking = await _checkout(session, saga.web[1].url, h, key)
                    if status == 409 and booking["error"]["code"] == "checkout_in_progress":
                        return False
                    assert status == 201, booking
                    return True

                await poll(retry, SETTLE_S, "the customer's retry to book", interval=1.0)
            intent = await _final(redis, intent_key)  # the reconciler's work otherwise
            assert intent["state"] == "done", intent
            status, booking = await _checkout(session, saga.web[1].url, h, key)
            assert status == 201, booking
            assert booking["booking_id"] == intent["booking_id"]
            assert booking["seats"] == ["A1"] and booking["status"] == "confirmed"
        report = await asyncio.to_thread(_audited, saga, show_id)
        assert "captured_without_booking: 0" in report
    except BaseException:
        print(saga.logs())
        raise
    finally:
        await redis.aclose()


async def test_redis_restarted_in_the_middle_of_a_checkout(saga: Cluster):
    rush = await publish(saga.web[1].url, saga.redis_url, rows=2, per_row=10,
                         hold_ttl_ms=60_000, hold_max_lifetime_ms=120_000)
    show_id = rush["show_ids"][0]
    async with aiohttp.ClientSession() as session:
        h, key = await _crash_mid_checkout(saga, session, "authorised", show_id, "B2")
        assert saga.redis is not None
        saga.redis.kill9()
        await asyncio.to_thread(saga.restart_redis)  # same port, same AOF
        redis = aioredis.Redis.from_url(saga.redis_url)
        try:
            intent = await _final(redis, await _intent_of(redis, h["hold_id"]))
            assert intent["state"] == "done", intent
            status, booking = await _checkout(session, saga.web[1].url, h, key)
            assert status == 201 and booking["booking_id"] == intent["booking_id"], booking
        finally:
            await redis.aclose()
    await asyncio.to_thread(_audited, saga, show_id)


async def test_gateway_down_in_the_middle_of_a_checkout(saga: Cluster):
    rush = await publish(saga.web[1].url, saga.redis_url, rows=2, per_row=10,
                         hold_ttl_ms=60_000, hold_max_lifetime_ms=120_000)
    show_id = rush["show_ids"][0]
    assert saga.gateway is not None
    async with aiohttp.ClientSession() as session:
        h, key = await _crash_mid_checkout(saga, session, "confirmed", show_id, "A3")
        saga.gateway.kill9()  # the capture cannot be made now
        redis = aioredis.Redis.from_url(saga.redis_url)
        try:
            intent_key = await _intent_of(redis, h["hold_id"])
            # The customer's retry meanwhile (once the dead process's lease has lapsed):
            # 503 with Retry-After, the seats stay booked.
            async def unavailable() -> bool:
                status, body = await _checkout(session, saga.web[1].url, h, key)
                if status == 409 and body["error"]["code"] == "checkout_in_progress":
                    return False
                assert status == 503, body
                return True

            await poll(unavailable, SETTLE_S, "the retry to meet the outage", interval=1.0)
            # The reconciler tries too, and leaves it where it is (touched again later).
            first = msgspec.json.decode(await redis.get(intent_key))["updated_ms"]

            async def retried() -> bool:
                now = msgspec.json.decode(await redis.get(intent_key))
                assert now["state"] == "confirmed", now
                return now["updated_ms"] > first

            await poll(retried, SETTLE_S, "the reconciler to meet the outage")
            await asyncio.to_thread(saga.restart_gateway)  # same ledger, same port
            intent = await _final(redis, intent_key)
            assert intent["state"] == "done", intent
        finally:
            await redis.aclose()
        status, booking = await _checkout(session, saga.web[1].url, h, key)
        assert status == 201 and booking["booking_id"] == intent["booking_id"], booking
    await asyncio.to_thread(_audited, saga, show_id)


async def test_the_audit_finds_a_capture_without_its_booking(saga: Cluster):
    # The audit is a test too: a booking record deleted behind the platform's back is
    # found (captured money, booked seats, no booking).
    rush = await publish(saga.web[1].url, saga.redis_url, rows=2, per_row=10,
                         hold_ttl_ms=60_000, hold_max_lifetime_ms=120_000)
    show_id = rush["show_ids"][0]
    async with aiohttp.ClientSession() as session:
        h = await _hold(session, saga.web[1].url, show_id, "B4")
        status, booking = await _checkout(session, saga.web[1].url, h, uuid.uuid4().hex)
        assert status == 201, booking
    redis = aioredis.Redis.from_url(saga.redis_url)
    try:
        await redis.delete(f"booking:{{{show_id}}}:{booking['booking_id']}")
    finally:
        await redis.aclose()
    code, report = await asyncio.to_thread(saga.audit, show_id)
    assert code == 1, report
    assert "captured_without_booking: 1" in report
    assert "booked_seats_without_booking: 1" in report
