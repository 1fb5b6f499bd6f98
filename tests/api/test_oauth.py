"""OAuth 2.0 client credentials for the partner API against the real server, Redis and Ray:
an API key (key id + key) gets a short-lived ES256 JWT at POST /oauth/token, the feed takes
it like the key (scope, allow-list, revocation), bad tokens are 401 invalid_token with an
RFC 6750 challenge, the JWKS verifies tokens, and rotation keeps old tokens working."""
from __future__ import annotations

import base64
import time

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey

from server.accounts import access_tokens, api_keys, signing_keys
from server.accounts.signing_keys import KeyRing, StoredKey
from server.core.settings import Settings

from .catalog_helpers import ADMIN, Partner, new_partner, uid

THEATRE = {"name": "Regal", "city": "Pune", "address": "1 MG Road", "timezone": "Asia/Kolkata"}
SHOWS = "/partner/v1/shows?date=2030-01-01"


def key_id(api_key: str) -> str:
    return api_keys.key_id_of(api_keys.hash_key(api_key))


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def token_request(api: aiohttp.ClientSession, form: dict[str, str] | None = None,
                        headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    async with api.post("/oauth/token", data=form, headers=headers) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def get_token(api: aiohttp.ClientSession, api_key: str, scope: str | None = None) -> str:
    form = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
    status, body, _ = await token_request(api, form, basic(key_id(api_key), api_key))
    assert status == 200, body
    return body["access_token"]


async def call(api: aiohttp.ClientSession, method: str, path: str, token: str,
               body: object = None) -> tuple[int, dict, dict]:
    async with api.request(method, path, json=body, headers=bearer(token)) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


def header_of(token: str) -> dict:
    seg = token.split(".")[0]
    return msgspec.json.decode(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


@pytest.fixture
async def partner(api: aiohttp.ClientSession) -> Partner:
    return await new_partner(api)  # its first key, made by the admin, has write scope


# --- the grant ---------------------------------------------------------------------------

async def test_client_credentials_give_a_token_the_feed_takes(api, partner) -> None:
    status, body, headers = await token_request(
        api, {"grant_type": "client_credentials"}, basic(key_id(partner.key), partner.key))
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] == 15 * 60
    assert body["scope"] == "read write"  # the key's whole scope by default
    assert headers["Cache-Control"] == "no-store" and headers["Pragma"] == "no-cache"
    token = body["access_token"]
    assert token.count(".") == 2 and partner.key not in token

    theatre = uid("th")
    status, out, _ = await call(api, "PUT", f"/partner/v1/theatres/{theatre}", token, THEATRE)
    assert status == 201 and out["partner_id"] == partner.partner_id, out
    status, out, _ = await call(api, "GET", SHOWS, token)
    assert status == 200, out

    # client_id/client_secret as form fields work too; a read token reads, never writes.
    status, body, _ = await token_request(api, {
        "grant_type": "client_credentials", "scope": "read",
        "client_id": key_id(partner.key), "client_secret": partner.key})
    assert status == 200 and body["scope"] == "read", body
    read = body["access_token"]
    assert (await call(api, "GET", SHOWS, read))[0] == 200
    status, out, headers = await call(api, "PUT", f"/partner/v1/theatres/{theatre}", read,
                                      THEATRE)
    assert status == 403 and out["error"]["code"] == "insufficient_scope", out
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    # "write" alone is "read write" (write implies read, as for keys)
    status, body, _ = await token_request(api, {"grant_type": "client_credentials",
                                                "scope": "write"},
                                          basic(key_id(partner.key), partner.key))
    assert status == 200 and body["scope"] == "read write", body


async def test_a_read_key_cannot_get_a_write_token(api, partner, redis) -> None:
    read_key = await api_keys.issue_key(redis, partner.partner_id, "reporting", "read")
    auth = basic(key_id(read_key), read_key)
    status, body, _ = await token_request(api, {"grant_type": "client_credentials",
                                                "scope": "read write"}, auth)
    assert (status, body["error"]) == (400, "invalid_scope"), body
    status, body, _ = await token_request(api, {"grant_type": "client_credentials",
                                                "scope": "read admin"}, auth)
    assert (status, body["error"]) == (400, "invalid_scope"), body
    status, body, _ = await token_request(api, {"grant_type": "client_credentials"}, auth)
    assert status == 200 and body["scope"] == "read", body
    status, out, _ = await call(api, "PUT", f"/partner/v1/theatres/{uid('th')}",
                                body["access_token"], THEATRE)
    assert status == 403 and out["error"]["code"] == "insufficient_scope"


async def test_token_request_errors_are_rfc6749(api, partner) -> None:
    good = basic(key_id(partner.key), partner.key)
    grant = {"grant_type": "client_credentials"}
    cases = [
        (grant, basic(key_id(partner.key), partner.key + "x"), 401, "invalid_client"),
        (grant, basic("0" * 16, partner.key), 401, "invalid_client"),
        (grant, basic(key_id(partner.key), "not-a-key"), 401, "invalid_client"),
        (grant, None, 401, "invalid_client"),                       # no client authentication
        (grant, {"Authorization": "Bearer " + partner.key}, 401, "invalid_client"),
        (grant, {"Authorization": "Basic !!!"}, 401, "invalid_client"),
        ({"grant_type": "password"}, good, 400, "unsupported_grant_type"),
        ({}, good, 400, "invalid_request"),
        (grant | {"client_secret": partner.key}, good, 400, "invalid_request"),  # two methods
    ]
    for form, headers, status, error in cases:
        got, body, resp_headers = await token_request(api, form, headers)
        assert (got, body.get("error")) == (status, error), (form, headers, body)
        assert isinstance(body["error_description"], str)
        assert resp_headers["Cache-Control"] == "no-store"
        if status == 401:
            assert resp_headers["WWW-Authenticate"].startswith("Basic ")
    # a JSON body is not a token request
    async with api.post("/oauth/token", json=grant, headers=good) as resp:
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"


# --- bad tokens ------------------------------------------------------------------------

async def test_expired_foreign_wrong_audience_and_garbage_tokens_are_401(
        api, partner, redis: aioredis.Redis, app_settings: Settings) -> None:
    good = await get_token(api, partner.key)  # the server has a signing key now
    kid = header_of(good)["kid"]
    now = int(time.time())
    cid = key_id(partner.key)
    expired = await access_tokens.mint(redis, app_settings, partner.partner_id, cid,
                                       frozenset({"read", "write"}), now=now - 3600)
    assert header_of(expired)["kid"] == kid  # signed by the real key
    _, real_key = await signing_keys.signer(redis, app_settings)

    def signed(claims: dict, key=real_key, header: dict | None = None) -> str:
        return jwt.encode(header or {"alg": "ES256", "typ": "at+jwt", "kid": kid}, claims, key,
                          algorithms=[header["alg"] if header else "ES256"])

    claims = {"iss": access_tokens.ISSUER, "aud": access_tokens.AUDIENCE,
              "sub": partner.partner_id, "client_id": cid, "scope": "read write",
              "iat": now, "exp": now + 600, "jti": "x"}
    foreign = ECKey.generate_key("P-256", private=True)
    hs = OctKey.generate_key(256)
    bad = {
        "expired": expired,
        "foreign key, our kid": signed(claims, foreign),
        "foreign key, its own kid": signed(claims, foreign, {"alg": "ES256", "typ": "at+jwt",
                                                             "kid": "not-ours"}),
        "wrong audience": signed(claims | {"aud": "urn:someone-else"}),
        "wrong issuer": signed(claims | {"iss": "urn:someone-else"}),
        "no exp": signed({k: v for k, v in claims.items() if k != "exp"}),
        "too long a life": signed(claims | {"exp": now + 86400}),
        "another partner": signed(claims | {"sub": "p_someone-else"}),
        "not an access token": signed(claims, header={"alg": "ES256", "typ": "JWT",
                                                      "kid": kid}),
        "HS256": signed(claims, hs, {"alg": "HS256", "typ": "at+jwt", "kid": kid}),
        "alg none": ".".join(base64.urlsafe_b64encode(msgspec.json.encode(p)).decode()
                             .rstrip("=") for p in ({"alg": "none", "typ": "at+jwt",
                                                     "kid": kid}, claims)) + ".",
        "tampered": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "garbage": "a.b.c",
        "huge": "a." + "b" * 5000 + ".c",
    }
    for name, token in bad.items():
        for method, path in (("GET", SHOWS), ("PUT", f"/partner/v1/theatres/{uid('th')}")):
            status, out, headers = await call(api, method, path, token,
                                              THEATRE if method == "PUT" else None)
            assert (status, out["error"]["code"]) == (401, "invalid_token"), (name, out)
            challenge = headers["WWW-Authenticate"]
            assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert (await call(api, "GET", SHOWS, good))[0] == 200  # the good one still is


async def test_a_revoked_keys_tokens_stop_at_once(api, partner, redis) -> None:
    extra = await api_keys.issue_key(redis, partner.partner_id, "ci", "write")
    token = await get_token(api, extra)
    assert (await call(api, "GET", SHOWS, token))[0] == 200
    assert await api_keys.revoke_key(redis, partner.partner_id, key_id(extra))
    status, out, headers = await call(api, "GET", SHOWS, token)
    assert (status, out["error"]["code"]) == (401, "invalid_token"), out
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    status, body, _ = await token_request(api, {"grant_type": "client_credentials"},
                                          basic(key_id(extra), extra))
    assert (status, body["error"]) == (401, "invalid_client")


async def test_the_keys_allow_list_applies_to_the_token_and_its_use(
        api, partner, redis, server: TestServer) -> None:
    elsewhere = await api_keys.issue_key(redis, partner.partner_id, "office", "write",
                                         ["203.0.113.0/24"])
    status, body, _ = await token_request(api, {"grant_type": "client_credentials"},
                                          basic(key_id(elsewhere), elsewhere))
    assert (status, body["error"]) == (400, "unauthorized_client"), body
    # a key allowed from 127.0.0.1 only: its token works from there, not from 127.0.0.2
    here = await api_keys.issue_key(redis, partner.partner_id, "here", "write", ["127.0.0.1"])
    token = await get_token(api, here)
    assert (await call(api, "GET", SHOWS, token))[0] == 200
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(base_url=str(server.make_url("")),
                                     connector=connector) as other:
        status, out, _ = await call(other, "GET", SHOWS, token)
        assert (status, out["error"]["code"]) == (403, "ip_not_allowed"), out


# --- signing keys: JWKS and rotation --------------------------------------------------------

async def test_the_jwks_verifies_a_token(api, partner) -> None:
    token = await get_token(api, partner.key)
    async with api.get("/.well-known/jwks.json") as resp:
        assert resp.status == 200
        jwks = await resp.json()
    assert all(set(k) == {"kty", "crv", "x", "y", "kid", "alg", "use"} for k in jwks["keys"])
    assert all("d" not in k for k in jwks["keys"])  # never the private part
    header = header_of(token)
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    assert header["kid"] == jwks["keys"][0]["kid"]  # the current key is listed first
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    c = decoded.claims
    assert (c["iss"], c["aud"], c["sub"], c["client_id"], c["scope"]) == (
        access_tokens.ISSUER, access_tokens.AUDIENCE, partner.partner_id, key_id(partner.key),
        "read write")
    assert c["exp"] - c["iat"] == 15 * 60 and c["jti"]


async def test_the_private_keys_are_sealed_in_redis(api, partner, redis) -> None:
    await get_token(api, partner.key)
    ring = await signing_keys.load(redis)
    assert ring is not None
    for stored in ring.keys:
        assert stored.private.startswith("pii1.") and "PRIVATE" not in stored.private
        assert "d" not in stored.public


async def test_rotation_keeps_old_tokens_and_signs_new_ones_with_the_new_key(
        api, partner, redis, app_settings) -> None:
    old = await get_token(api, partner.key)
    old_kid = header_of(old)["kid"]
    async with api.post("/admin/v1/oauth/rotate", headers=bearer(partner.key)) as resp:
        assert resp.status == 401  # the admin's, not a partner's
    async with api.post("/admin/v1/oauth/rotate", headers=ADMIN) as resp:
        assert resp.status == 200
        rotated = await resp.json()
    new_kid = rotated["kid"]
    assert new_kid != old_kid and rotated["previous"] == old_kid
    assert rotated["published"][:2] == [new_kid, old_kid]

    assert (await call(api, "GET", SHOWS, old))[0] == 200  # the old key still verifies
    new = await get_token(api, partner.key)
    assert header_of(new)["kid"] == new_kid
    assert (await call(api, "GET", SHOWS, new))[0] == 200
    async with api.get("/.well-known/jwks.json") as resp:
        kids = [k["kid"] for k in (await resp.json())["keys"]]
    assert kids[:2] == [new_kid, old_kid]
    ks = KeySet.import_key_set({"keys": [k.public for k in (await signing_keys.load(redis)).keys]})
    for token in (old, new):
        jwt.decode(token, ks, algorithms=["ES256"])

    # Once its tokens can no longer be valid, a retired key leaves the set.
    later = int(time.time() * 1000) + (signing_keys.KEEP_S + 1) * 1000
    ring = await signing_keys.rotate(redis, app_settings, now_ms=later)
    assert old_kid not in [k.kid for k in ring.keys] and new_kid in [k.kid for k in ring.keys]
    async with api.get("/.well-known/jwks.json") as resp:
        kids = [k["kid"] for k in (await resp.json())["keys"]]
    assert old_kid not in kids and kids[:2] == [ring.current, new_kid]
    # the newest key signs, and a process that has not seen it yet learns it at once
    latest = await get_token(api, partner.key)
    assert header_of(latest)["kid"] == ring.current
    assert (await call(api, "GET", SHOWS, latest))[0] == 200


def test_a_retired_key_lives_as_long_as_its_tokens() -> None:
    def key(kid: str, retired_ms: int | None) -> StoredKey:
        return StoredKey(kid=kid, public={}, private="", created_ms=0, retired_ms=retired_ms)

    keep_ms = signing_keys.KEEP_S * 1000
    assert keep_ms > signing_keys.TOKEN_TTL_S * 1000  # longer than any token it signed
    ring = KeyRing("c", [key("c", None), key("r1", 10_000), key("r0", 0)])
    assert [k.kid for k in ring.live(keep_ms - 1)] == ["c", "r1", "r0"]
    assert [k.kid for k in ring.live(keep_ms + 1)] == ["c", "r1"]
    assert [k.kid for k in ring.live(10_000 + keep_ms)] == ["c"]


async def test_the_openapi_document_describes_the_flow(api) -> None:
    async with api.get("/api/openapi.json") as resp:
        doc = await resp.json()
    scheme = doc["components"]["securitySchemes"]["partnerOAuth"]
    flow = scheme["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "/oauth/token" and set(flow["scopes"]) == {"read", "write"}
    for path, method in (("/.well-known/jwks.json", "get"), ("/admin/v1/oauth/rotate", "post"),
                         ("/partner/v1/usage", "get"),
                         ("/api/partner/keys/{key_id}/usage", "get")):
        assert method in doc["paths"][path], path


async def test_a_key_half_made_or_half_revoked_is_no_key(api, partner, redis) -> None:
    # The partner's key set and a key's lookup entry are in two Redis Cluster slots, so
    # making and revoking a key are ordered steps (api_keys.py); a step that did not happen
    # leaves no usable or listed key, and the next revoke finishes a half-done one.
    half_made = api_keys.hash_key(api_keys.new_api_key())
    await redis.sadd(api_keys.partner_keys_key(partner.partner_id), half_made)  # step 1 only
    listed = {k.key_id for k in await api_keys.list_keys(redis, partner.partner_id)}
    assert api_keys.key_id_of(half_made) not in listed and key_id(partner.key) in listed
    assert await api_keys.revoke_key(redis, partner.partner_id, api_keys.key_id_of(half_made))
    assert not await redis.sismember(api_keys.partner_keys_key(partner.partner_id), half_made)

    extra = await api_keys.issue_key(redis, partner.partner_id, "ci", "write")
    digest = api_keys.hash_key(extra)
    # A revoke that stopped after its first step: the key no longer works, nor is listed.
    await redis.delete(api_keys.key_index(digest), api_keys.key_meta(digest))
    async with api.get(SHOWS, headers=bearer(extra)) as resp:
        assert resp.status == 401
    assert key_id(extra) not in {k.key_id for k in await api_keys.list_keys(
        redis, partner.partner_id)}
    assert await api_keys.revoke_key(redis, partner.partner_id, key_id(extra))
    assert await redis.get(api_keys.key_id_index(key_id(extra))) is None
    assert not await redis.sismember(api_keys.partner_keys_key(partner.partner_id), digest)
    assert not await api_keys.revoke_key(redis, partner.partner_id, key_id(extra))
