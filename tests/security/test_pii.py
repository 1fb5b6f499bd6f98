"""Phone and identity numbers encrypted at rest (AES-256-GCM with the data key, key id
beside the ciphertext): raw Redis never holds the plaintext, only the owner reads it back,
export and delete still work, keys rotate, and a server without a data key refuses to
store personal data before anything else happens."""
from __future__ import annotations

import asyncio
import base64
import os
import uuid

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from server.core import outbox
from server.accounts.users import user_key
from server.app import create_app
from server.booking.records import booking_key
from server.core.embedded import RedisServer
from server.discovery.recommend_store import history_key, languages_key
from server.core.pii import DataCipher, key_id, mask, parse_key
from server.core.settings import Settings

from ..api.account_helpers import PASSWORD, Client
from ..api.builders import GOOD_CARD, PublishedShow

PHONE, PHONE_DIGITS = "+91 98765 43210", "919876543210"
ID_NUMBER = "ABCPE1234F"


async def _raw_values(redis: aioredis.Redis, pattern: str) -> bytes:
    """Every string value of the keys matching `pattern`, concatenated."""
    out = b""
    async for key in redis.scan_iter(match=pattern, count=1000):
        if await redis.type(key) == b"string":
            out += await redis.get(key) or b""
    return out


async def test_profile_is_sealed_at_rest_and_only_its_owner_reads_it(
        clients, redis: aioredis.Redis) -> None:
    owner, other = clients(), clients()
    me = await owner.sign_up()
    await other.sign_up()
    status, out = await owner.call("PUT", "/api/me/profile",
                                   {"phone": PHONE, "id_number": ID_NUMBER.lower()})
    assert status == 200, out
    assert out == {"phone": "+" + PHONE_DIGITS, "id_number": ID_NUMBER}

    raw = await redis.get(user_key(me["user_id"]))
    assert raw is not None
    assert PHONE_DIGITS.encode() not in raw and ID_NUMBER.encode() not in raw
    record = msgspec.json.decode(raw)
    assert record["phone"].startswith("pii1.") and record["id_number"].startswith("pii1.")

    assert (await owner.call("GET", "/api/me/profile")) == (200, out)
    assert (await other.call("GET", "/api/me/profile")) == (
        200, {"phone": None, "id_number": None})
    async with aiohttp.ClientSession(base_url=str(owner.http._base_url)) as anon:
        async with anon.get("/api/me/profile") as resp:
            assert resp.status == 401
    # Bad input is a 422 and changes nothing; unknown fields too.
    for bad in ({"phone": "call me"}, {"id_number": "x"}, {"phone": PHONE, "role": "admin"}):
        status, err = await owner.call("PUT", "/api/me/profile", bad)
        assert status == 422, err
    assert (await owner.call("GET", "/api/me/profile")) == (200, out)

    # Export carries it to its owner; deleting the account deletes the sealed values.
    status, export = await owner.call("GET", "/api/me/export")
    assert status == 200 and export["profile"] == out
    status, gone = await owner.call("DELETE", "/api/me", {"password": PASSWORD})
    assert status == 200, gone
    assert await redis.get(user_key(me["user_id"])) is None


async def test_guest_checkout_phone_is_sealed_and_masked(
        clients, redis: aioredis.Redis, show: PublishedShow) -> None:
    guest = clients()
    status, hold = await guest.call("POST", f"/api/shows/{show.show_id}/holds",
                                    {"seats": ["A1"]})
    assert status == 201, hold
    status, booking = await guest.call(
        "POST", f"/api/holds/{hold['hold_id']}/checkout",
        {"card": GOOD_CARD, "email": "guest@example.test", "name": "Guest", "phone": PHONE,
         "id_number": ID_NUMBER},
        headers={"Idempotency-Key": uuid.uuid4().hex, "X-Holder-Token": hold["holder_token"]})
    assert status == 201, booking
    assert booking["phone"] == mask("+" + PHONE_DIGITS) and PHONE_DIGITS not in str(booking)
    assert booking["phone"].endswith("210") and booking["id_number"].endswith("34F")
    assert ID_NUMBER not in str(booking)

    # Nothing stored for this show (booking, hold, idempotency answer) holds the number,
    # nor does the outbox the e-mails and webhooks are made from.
    stored = await _raw_values(redis, f"*{{{show.show_id}}}*")
    assert b"pii1." in stored and PHONE_DIGITS.encode() not in stored
    assert ID_NUMBER.encode() not in stored
    events = [e for stream in outbox.STREAMS for e in await redis.xrange(stream, count=100_000)]
    assert events  # the booking's own event is among them
    assert all(PHONE_DIGITS.encode() not in b"".join(v for v in f.values())
               for _, f in events)
    status, again = await guest.call("GET", f"/api/bookings/{booking['booking_id']}",
                                     headers={"X-Booking-Token": booking["booking_token"]})
    assert status == 200 and again["phone"] == booking["phone"]


async def test_deleting_the_account_removes_booking_pii(
        clients, redis: aioredis.Redis, show: PublishedShow) -> None:
    c = clients()
    await c.sign_up()
    status, hold = await c.call("POST", f"/api/shows/{show.show_id}/holds", {"seats": ["C1"]})
    assert status == 201, hold
    status, booking = await c.call(
        "POST", f"/api/holds/{hold['hold_id']}/checkout",
        {"card": GOOD_CARD, "email": c.email, "name": "Asha", "phone": PHONE},
        headers={"Idempotency-Key": uuid.uuid4().hex, "X-Holder-Token": hold["holder_token"]})
    assert status == 201 and booking["phone"], booking
    key = booking_key(show.show_id, booking["booking_id"])
    assert msgspec.json.decode(await redis.get(key))["phone"].startswith("pii1.")
    status, _ = await c.call("DELETE", "/api/me", {"password": PASSWORD})
    assert status == 200
    record = msgspec.json.decode(await redis.get(key))
    assert record["phone"] is None and record["status"] == "confirmed"  # seat stays sold


def test_keys_rotate_and_ciphertexts_stay_where_they_were_made() -> None:
    old_b64 = base64.b64encode(os.urandom(32)).decode()
    new_b64 = base64.b64encode(os.urandom(32)).decode()
    old = DataCipher(old_b64)
    sealed = old.encrypt("+919876543210", "user:u1:phone")
    assert sealed.split(".")[1] == key_id(parse_key(old_b64))  # the key id travels along

    rotated = DataCipher(new_b64, retired=[old_b64])
    assert rotated.decrypt(sealed, "user:u1:phone") == "+919876543210"
    assert rotated.needs_rotation(sealed)
    resealed = rotated.encrypt("+919876543210", "user:u1:phone")
    assert not rotated.needs_rotation(resealed)
    # Copied onto another user or field, it does not open.
    with pytest.raises(ValueError):
        rotated.decrypt(sealed, "user:u2:phone")
    with pytest.raises(ValueError):
        rotated.decrypt(sealed, "user:u1:id_number")
    # Without the old key, old values are unreadable (not silently wrong).
    with pytest.raises(KeyError):
        DataCipher(new_b64).decrypt(sealed, "user:u1:phone")
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(ValueError):
        rotated.decrypt(tampered, "user:u1:phone")
    for bad in ("", "not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            parse_key(bad)


async def test_without_a_data_key_personal_data_is_refused_before_paying(
        redis_server: RedisServer, ray_cluster: None, show: PublishedShow,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    settings = Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                        workers=False, data_dir=str(tmp_path_factory.mktemp("nokey")))
    srv = TestServer(create_app(settings, redis_server.url), host="127.0.0.1")
    await srv.start_server()
    c = Client(srv)
    try:
        await c.sign_up()
        status, err = await c.call("PUT", "/api/me/profile", {"phone": PHONE})
        assert (status, err["error"]["code"]) == (503, "no_data_key")
        status, hold = await c.call("POST", f"/api/shows/{show.show_id}/holds",
                                    {"seats": ["B1"]})
        assert status == 201, hold
        status, err = await c.call(
            "POST", f"/api/holds/{hold['hold_id']}/checkout",
            {"card": GOOD_CARD, "email": "g@example.test", "name": "G", "phone": PHONE},
            headers={"Idempotency-Key": uuid.uuid4().hex,
                     "X-Holder-Token": hold["holder_token"]})
        assert (status, err["error"]["code"]) == (503, "no_data_key")
        # Nothing was paid or booked: the hold is still there to check out without a phone.
        status, booking = await c.call(
            "POST", f"/api/holds/{hold['hold_id']}/checkout",
            {"card": GOOD_CARD, "email": "g@example.test", "name": "G"},
            headers={"Idempotency-Key": uuid.uuid4().hex,
                     "X-Holder-Token": hold["holder_token"]})
        assert status == 201 and booking["phone"] is None, booking
    finally:
        await c.close()
        await srv.close()


async def test_the_export_has_the_recommendation_history_and_deletion_erases_it(
        clients, redis: aioredis.Redis, show: PublishedShow) -> None:
    # Security review L15: rec:hist / rec:lang outlived the account and the export
    # left them (and the reviews) out.
    c = clients()
    me = await c.sign_up()
    uid = me["user_id"]
    status, hold = await c.call("POST", f"/api/shows/{show.show_id}/holds", {"seats": ["C2"]})
    assert status == 201, hold
    status, booking = await c.call(
        "POST", f"/api/holds/{hold['hold_id']}/checkout",
        {"card": GOOD_CARD, "email": c.email, "name": "Asha"},
        headers={"Idempotency-Key": uuid.uuid4().hex, "X-Holder-Token": hold["holder_token"]})
    assert status == 201, booking
    for _ in range(200):  # the recommend worker learns from booking.confirmed
        if await redis.exists(history_key(uid)):
            break
        await asyncio.sleep(0.05)
    assert await redis.exists(history_key(uid), languages_key(uid)) == 2

    status, export = await c.call("GET", "/api/me/export")
    assert status == 200, export
    history = export["recommendation_history"]
    assert [m["movie_id"] for m in history["movies"]] == [show.movie.movie_id]
    assert sum(history["languages"].values()) == 1
    assert export["reviews"] == []

    status, _ = await c.call("DELETE", "/api/me", {"password": PASSWORD})
    assert status == 200
    assert await redis.exists(history_key(uid), languages_key(uid)) == 0
