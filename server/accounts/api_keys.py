"""Partner API keys and the platform admin key (both `Authorization: Bearer <key>`).

A partner key is 32 random bytes (url-safe base64) behind a `bmm_` prefix; only its
SHA-256 is stored (`partnerkey:<sha256 hex>` -> partner id). A key that high in entropy
needs no slow hash: nothing can be guessed from the digest. The key itself is returned
once, when it is made.

Each key has metadata (`{partnerkey:<sha256 hex>}:meta`, a hash): a name, a scope (`read`:
GET only; `write`: everything), an optional IP allow-list (addresses / CIDR networks; a
call from elsewhere is 403) and its creation time. Keys made before metadata existed have
none and act as `write` keys without an allow-list. A key's public id is the first 16 hex
digits of its digest (`partnerkeyid:<id>` -> the digest, for the access tokens below);
revoking deletes the index entries, so the key stops working at once.

Redis Cluster slots: the metadata's hash tag is the whole lookup key's name, so a key's
lookup entry and metadata share one slot (written together, read in one round trip). The
partner (`partner:{p:<partner id>}`) and its set of key digests
(`partner:{p:<partner id>}:keys`) share the partner's slot. The two are written in ordered
steps, not one transaction: a key is added to its partner's set first and made usable
(lookup entry + metadata) second; revoking undoes them in the reverse order. A digest in
the set without a lookup entry is a key not made (or revoked): listed nowhere, usable by
nobody, cleaned up by a revoke.

The allow-list is checked against the client's address as the rate limiter sees it
(server/core/client_address.py): X-Forwarded-For counts only from `settings.trusted_proxies`.

`partner_of` also takes an OAuth 2.0 access token (`Authorization: Bearer <JWT>`, told
from a key by its two dots) that `POST /oauth/token` gave for one of the partner's keys
(server/accounts/oauth.py, access_tokens.py). Its signature, type, issuer, audience and
expiry are checked without I/O (the signing keys are cached in the process), and then the
key it was issued for is read just as a key would be: a token of a revoked key stops at
once, the key's IP allow-list applies to the token's requests too, and a `read` token
cannot write. Errors carry RFC 6750's `WWW-Authenticate: Bearer error=...` (set by the
partner-request middleware, key_usage.py, from `bearer_auth.CHALLENGE`).
"""
from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from typing import Literal

import msgspec

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import WatchError

from server.accounts import access_tokens
from server.accounts.bearer_auth import AUTH_KEY_ID, CHALLENGE
from server.accounts import bearer_auth
from server.accounts.bearer_auth import bearer
from server.accounts.users import SESSION_COOKIE, require_role
from server.appkeys import services
from server.core.client_address import client_ip, trusted_networks
from server.core.errors import ApiError

require_admin = bearer_auth.require_admin  # the admin key: callers know it from here

KEY_PREFIX = "bmm_"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
Scope = Literal["read", "write"]


class KeyInfo(msgspec.Struct):
    """An API key as its partner sees it (never the key itself)."""

    key_id: str
    name: str
    scope: Scope
    allowed_ips: list[str]
    created_ms: int
    prefix: str  # the key's first characters, to recognise it


def partner_key(partner_id: str) -> str:
    return f"partner:{{p:{partner_id}}}"


def partner_keys_key(partner_id: str) -> str:
    return f"partner:{{p:{partner_id}}}:keys"


def key_index(digest: str) -> str:
    return f"partnerkey:{digest}"


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_meta(digest: str) -> str:
    # Tagged with key_index's whole name: the same slot as the lookup entry.
    return f"{{{key_index(digest)}}}:meta"


def key_id_of(digest: str) -> str:
    return digest[:16]


def key_id_index(key_id: str) -> str:
    return f"partnerkeyid:{key_id}"


class KeyRecord(msgspec.Struct, frozen=True):
    """What a request needs of a live key."""

    partner_id: str
    digest: str
    scope: Scope
    allowed_ips: tuple[str, ...]

    @property
    def key_id(self) -> str:
        return key_id_of(self.digest)


async def key_record(redis: aioredis.Redis, digest: str) -> KeyRecord | None:
    """The live key with this digest (one round trip, one slot), None if there is none
    (or it was revoked)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(key_index(digest))
        pipe.hmget(key_meta(digest), "scope", "ips")
        partner_id, (scope, ips) = await pipe.execute()
    if partner_id is None:
        return None
    return KeyRecord(partner_id.decode(), digest, "read" if scope == b"read" else "write",
                     tuple(ips.decode().split()) if ips else ())


def client_address(request: web.Request) -> str:
    """The caller's address through the trusted proxies (the rate limiter's rule)."""
    trusted = trusted_networks(services(request).settings.trusted_proxies)
    return client_ip(request.remote, request.headers.get("X-Forwarded-For"), trusted)


def address_allowed(request: web.Request, key: KeyRecord) -> bool:
    """Whether the key's IP allow-list (if it has one) admits the caller."""
    return not key.allowed_ips or _ip_allowed(client_address(request), list(key.allowed_ips))


def check_allowed_address(request: web.Request, key: KeyRecord) -> None:
    if not address_allowed(request, key):
        raise ApiError(403, "ip_not_allowed", "this API key may not be used from this address")


def _challenge(request: web.Request, challenge: str) -> None:
    request[CHALLENGE] = challenge


async def partner_of(request: web.Request, redis: aioredis.Redis,
                     write: bool | None = None) -> str:
    """The partner id the request's API key (or access token) belongs to: 401 if no such
    key (or revoked), or an invalid token; 403 if the key or token is read-only and this is
    a write (`write=None`: any method but GET/HEAD/OPTIONS), 403 if the caller's address
    is not on the key's allow-list.

    Without an Authorization header, the partner portal's logged-in user (session cookie,
    two-factor done) acts for their partner: the portal in the browser uses these same
    endpoints. Its writes need the browser's Origin header, naming this site."""
    if "Authorization" not in request.headers and SESSION_COOKIE in request.cookies:
        return await _portal_partner(request)
    try:
        token = bearer(request)
    except ApiError:
        _challenge(request, 'Bearer realm="partner"')
        raise
    if write is None:
        write = request.method not in READ_METHODS
    if access_tokens.looks_like_jwt(token):
        return await _token_partner(request, redis, token, write)
    key = await key_record(redis, hash_key(token))
    if key is None:
        _challenge(request, 'Bearer realm="partner", error="invalid_token"')
        raise ApiError(401, "unauthorized", "not a valid partner API key")
    request[AUTH_KEY_ID] = key.key_id
    check_allowed_address(request, key)
    if write and key.scope == "read":
        _challenge(request, 'Bearer realm="partner", error="insufficient_scope", scope="write"')
        raise ApiError(403, "insufficient_scope", "this API key is read-only")
    return key.partner_id


def _invalid_token(request: web.Request, why: str) -> ApiError:
    _challenge(request, 'Bearer realm="partner", error="invalid_token", '
                        f'error_description="{_quotable(why)}"')
    return ApiError(401, "invalid_token", why)


def _quotable(text: str) -> str:
    """RFC 6750 error_description: printable ASCII without '"' and '\\'."""
    return "".join(c for c in text if " " <= c <= "~" and c not in '"\\')[:200]


async def _token_partner(request: web.Request, redis: aioredis.Redis, token: str,
                         write: bool) -> str:
    try:
        claims = await access_tokens.verify(redis, token)
    except access_tokens.InvalidToken as exc:
        raise _invalid_token(request, str(exc)) from None
    digest = await _digest_of(redis, claims.client_id)
    key = await key_record(redis, digest) if digest else None
    if key is None or key.partner_id != claims.partner_id:
        raise _invalid_token(request, "the API key this token was issued for is revoked")
    request[AUTH_KEY_ID] = key.key_id
    check_allowed_address(request, key)
    if write and not (claims.can_write and key.scope == "write"):
        _challenge(request, 'Bearer realm="partner", error="insufficient_scope", scope="write"')
        raise ApiError(403, "insufficient_scope", "this access token is read-only")
    return key.partner_id


# key id -> digest never changes once made, so this process remembers it (bounded).
_DIGESTS: dict[str, str] = {}
_DIGESTS_KEPT = 16384


async def _digest_of(redis: aioredis.Redis, key_id: str) -> str | None:
    digest = _DIGESTS.get(key_id)
    if digest is None:
        raw = await redis.get(key_id_index(key_id))
        if raw is None:
            return None
        digest = raw.decode()
        if key_id_of(digest) != key_id:  # not ours
            return None
        if len(_DIGESTS) >= _DIGESTS_KEPT:
            _DIGESTS.clear()
        _DIGESTS[key_id] = digest
    return digest


async def remember_key_id(redis: aioredis.Redis, digest: str) -> None:
    """The key-id index entry of a live key (keys made before it existed get it at their
    first token request)."""
    await redis.set(key_id_index(key_id_of(digest)), digest, nx=True)


async def _portal_partner(request: web.Request) -> str:
    user = await require_role(request, "partner")  # checks a cross-site Origin too
    if request.method not in READ_METHODS and "Origin" not in request.headers:
        raise ApiError(403, "origin_required",
                       "a browser write needs its Origin header (cross-site protection)")
    if not user.partner_id:
        raise ApiError(403, "forbidden", "this account acts for no partner")
    return user.partner_id


def _ip_allowed(remote: str | None, networks: list[str]) -> bool:
    if not remote:
        return False
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for net in networks:
        try:
            if ip in ipaddress.ip_network(net, strict=False):
                return True
        except ValueError:
            continue
    return False


def normalise_networks(entries: list[str]) -> list[str]:
    """IPs / CIDRs in canonical form ("10.1.2.3" -> "10.1.2.3/32"); 422 for a bad one."""
    out = []
    for entry in entries:
        try:
            out.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
        except ValueError:
            raise ApiError(422, "invalid_ip", f"not an IP address or network: {entry!r}",
                           field="allowed_ips") from None
    return list(dict.fromkeys(out))


def _meta(name: str, scope: Scope, allowed_ips: list[str], api_key: str) -> dict[str, str]:
    return {"name": name, "scope": scope, "ips": " ".join(allowed_ips),
            "created_ms": str(time.time_ns() // 1_000_000), "prefix": api_key[:8]}


async def partner_exists(redis: aioredis.Redis, partner_id: str) -> bool:
    return bool(await redis.exists(partner_key(partner_id)))


async def _make_key(redis: aioredis.Redis, partner_id: str, digest: str,
                    meta: dict[str, str]) -> None:
    """Steps 2 and 3 of making a key (step 1 put the digest in the partner's set): the
    lookup entry with its metadata (one slot, one transaction: from here the key works),
    then the key-id index (a retry-safe extra: a token request fills it in too)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key_meta(digest), mapping=meta)
        pipe.set(key_index(digest), partner_id)
        await pipe.execute()
    await redis.set(key_id_index(key_id_of(digest)), digest)


async def add_partner(redis: aioredis.Redis, partner_id: str, fields: dict[str, str],
                      first_key: str | None = None) -> None:
    """The partner's record (`fields`, plus `created_ms`), and the digest of its first key
    if any, in one transaction in the partner's slot; 409 if the id is taken. (Partner
    onboarding uses this too: a partner record written elsewhere must be in that slot.)"""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(partner_key(partner_id))
                # (HLEN, not EXISTS: redis-py's cluster pipeline does not run EXISTS at once)
                if await pipe.hlen(partner_key(partner_id)):
                    raise ApiError(409, "partner_exists", f"partner {partner_id!r} exists already",
                                   partner_id=partner_id)
                pipe.multi()
                pipe.hset(partner_key(partner_id), mapping={
                    **fields, "created_ms": str(time.time_ns() // 1_000_000)})
                if first_key is not None:
                    pipe.sadd(partner_keys_key(partner_id), first_key)
                await pipe.execute()
                return
            except WatchError:
                continue


async def create_partner(redis: aioredis.Redis, name: str, partner_id: str | None = None
                         ) -> tuple[str, str]:
    """Make a partner and its first API key (named "initial", write scope); returns
    (partner id, key). 409 if the id is taken. The partner with its key set is one
    transaction (the partner's slot); the key is then made usable as `issue_key` does."""
    partner_id = partner_id or f"p_{secrets.token_hex(8)}"
    api_key = new_api_key()
    digest = hash_key(api_key)
    await add_partner(redis, partner_id, {"name": name}, first_key=digest)
    await _make_key(redis, partner_id, digest, _meta("initial", "write", [], api_key))
    return partner_id, api_key


async def issue_key(redis: aioredis.Redis, partner_id: str, name: str = "key",
                    scope: Scope = "write", allowed_ips: list[str] | None = None) -> str:
    """Another API key for an existing partner (the old ones stay valid)."""
    api_key = new_api_key()
    digest = hash_key(api_key)
    ips = normalise_networks(allowed_ips or [])
    await redis.sadd(partner_keys_key(partner_id), digest)  # (1) the partner's, not yet usable
    await _make_key(redis, partner_id, digest, _meta(name, scope, ips, api_key))
    return api_key


async def list_keys(redis: aioredis.Redis, partner_id: str) -> list[KeyInfo]:
    """The partner's live keys (a digest in its set without a lookup entry is not a key:
    half made, or half revoked)."""
    digests = sorted(d.decode() for d in await redis.smembers(partner_keys_key(partner_id)))
    async with redis.pipeline(transaction=False) as pipe:
        for d in digests:
            pipe.get(key_index(d))
            pipe.hgetall(key_meta(d))
        got = await pipe.execute()
    keys = []
    for digest, owner, meta in zip(digests, got[::2], got[1::2], strict=True):
        if owner is None or owner.decode() != partner_id:
            continue
        m = {k.decode(): v.decode() for k, v in meta.items()}
        keys.append(KeyInfo(key_id_of(digest), m.get("name", "initial"),
                            "read" if m.get("scope") == "read" else "write",
                            m.get("ips", "").split(), int(m.get("created_ms", 0)),
                            m.get("prefix", KEY_PREFIX)))
    keys.sort(key=lambda k: (k.created_ms, k.key_id))
    return keys


async def revoke_key(redis: aioredis.Redis, partner_id: str, key_id: str) -> bool:
    """Revoke one of the partner's keys by its id; False if it has no such key. The
    reverse of making one: the lookup entry (with the metadata) goes first, so the key
    stops working at once; then the key-id index; the partner's set last. Idempotent: a
    revoke that stopped half-way is finished by the next one."""
    for raw in await redis.smembers(partner_keys_key(partner_id)):
        digest = raw.decode()
        if key_id_of(digest) == key_id:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.delete(key_index(digest), key_meta(digest))  # one slot
                await pipe.execute()
            await redis.delete(key_id_index(key_id))
            await redis.srem(partner_keys_key(partner_id), digest)
            return True
    return False


async def key_is_valid(redis: aioredis.Redis, partner_id: str, api_key: str) -> bool:
    got = await redis.get(key_index(hash_key(api_key)))
    return got is not None and got.decode() == partner_id
