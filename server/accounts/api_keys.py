"""Partner API keys and the platform admin key (both `Authorization: Bearer <key>`).

A partner key is 32 random bytes (url-safe base64) behind a `bmm_` prefix; only its
SHA-256 is stored (`partnerkey:<sha256 hex>` -> partner id). A key that high in entropy
needs no slow hash: nothing can be guessed from the digest. The key itself is returned
once, when it is made.

Each key has metadata (`partnerkey:<sha256 hex>:meta`, a hash): a name, a scope (`read`:
GET only; `write`: everything), an optional IP allow-list (addresses / CIDR networks; a
call from elsewhere is 403) and its creation time. Keys made before metadata existed have
none and act as `write` keys without an allow-list. A key's public id is the first 16 hex
digits of its digest; revoking deletes the index entry, so the key stops working at once.
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

from server.core.errors import ApiError
from server.accounts.bearer_auth import bearer, require_admin  # noqa: F401 (the API, here too)
from server.accounts.users import SESSION_COOKIE, require_role

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
    return f"partner:{partner_id}"


def partner_keys_key(partner_id: str) -> str:
    return f"partner:{partner_id}:keys"


def key_index(digest: str) -> str:
    return f"partnerkey:{digest}"


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_meta(digest: str) -> str:
    return f"partnerkey:{digest}:meta"


def key_id_of(digest: str) -> str:
    return digest[:16]


async def partner_of(request: web.Request, redis: aioredis.Redis,
                     write: bool | None = None) -> str:
    """The partner id the request's API key belongs to: 401 if no such key (or revoked),
    403 if the key is read-only and this is a write (`write=None`: any method but
    GET/HEAD/OPTIONS), 403 if the caller's address is not on the key's allow-list.

    Without an Authorization header, the partner portal's logged-in user (session cookie,
    two-factor done) acts for their partner: the portal in the browser uses these same
    endpoints. Its writes need the browser's Origin header, naming this site."""
    if "Authorization" not in request.headers and SESSION_COOKIE in request.cookies:
        return await _portal_partner(request)
    token = bearer(request)
    digest = hash_key(token)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(key_index(digest))
        pipe.hmget(key_meta(digest), "scope", "ips")
        partner_id, (scope, ips) = await pipe.execute()
    if partner_id is None:
        raise ApiError(401, "unauthorized", "not a valid partner API key")
    if ips and not _ip_allowed(request.remote, ips.decode().split()):
        raise ApiError(403, "ip_not_allowed",
                       "this API key may not be used from this address")
    if write is None:
        write = request.method not in READ_METHODS
    if write and scope == b"read":
        raise ApiError(403, "insufficient_scope", "this API key is read-only")
    return partner_id.decode()


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


async def create_partner(redis: aioredis.Redis, name: str, partner_id: str | None = None
                         ) -> tuple[str, str]:
    """Make a partner and its first API key (named "initial", write scope) in one
    transaction; returns (partner id, key). 409 if the id is taken."""
    partner_id = partner_id or f"p_{secrets.token_hex(8)}"
    api_key = new_api_key()
    digest = hash_key(api_key)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(partner_key(partner_id))
                if await pipe.exists(partner_key(partner_id)):
                    raise ApiError(409, "partner_exists", f"partner {partner_id!r} exists already",
                                   partner_id=partner_id)
                pipe.multi()
                pipe.hset(partner_key(partner_id), mapping={
                    "name": name, "created_ms": str(time.time_ns() // 1_000_000)})
                pipe.set(key_index(digest), partner_id)
                pipe.hset(key_meta(digest), mapping=_meta("initial", "write", [], api_key))
                pipe.sadd(partner_keys_key(partner_id), digest)
                await pipe.execute()
                return partner_id, api_key
            except WatchError:
                continue


async def issue_key(redis: aioredis.Redis, partner_id: str, name: str = "key",
                    scope: Scope = "write", allowed_ips: list[str] | None = None) -> str:
    """Another API key for an existing partner (the old ones stay valid)."""
    api_key = new_api_key()
    digest = hash_key(api_key)
    ips = normalise_networks(allowed_ips or [])
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key_index(digest), partner_id)
        pipe.hset(key_meta(digest), mapping=_meta(name, scope, ips, api_key))
        pipe.sadd(partner_keys_key(partner_id), digest)
        await pipe.execute()
    return api_key


async def list_keys(redis: aioredis.Redis, partner_id: str) -> list[KeyInfo]:
    digests = sorted(d.decode() for d in await redis.smembers(partner_keys_key(partner_id)))
    async with redis.pipeline(transaction=False) as pipe:
        for d in digests:
            pipe.hgetall(key_meta(d))
        metas = await pipe.execute()
    keys = []
    for digest, meta in zip(digests, metas, strict=True):
        m = {k.decode(): v.decode() for k, v in meta.items()}
        keys.append(KeyInfo(key_id_of(digest), m.get("name", "initial"),
                            "read" if m.get("scope") == "read" else "write",
                            m.get("ips", "").split(), int(m.get("created_ms", 0)),
                            m.get("prefix", KEY_PREFIX)))
    keys.sort(key=lambda k: (k.created_ms, k.key_id))
    return keys


async def revoke_key(redis: aioredis.Redis, partner_id: str, key_id: str) -> bool:
    """Revoke one of the partner's keys by its id; False if it has no such key."""
    for raw in await redis.smembers(partner_keys_key(partner_id)):
        digest = raw.decode()
        if key_id_of(digest) == key_id:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.delete(key_index(digest), key_meta(digest))
                pipe.srem(partner_keys_key(partner_id), digest)
                await pipe.execute()
            return True
    return False


async def key_is_valid(redis: aioredis.Redis, partner_id: str, api_key: str) -> bool:
    got = await redis.get(key_index(hash_key(api_key)))
    return got is not None and got.decode() == partner_id
