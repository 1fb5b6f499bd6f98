"""Partner API keys and the platform admin key (both `Authorization: Bearer <key>`).

A partner key is 32 random bytes (url-safe base64) behind a `bmm_` prefix; only its
SHA-256 is stored (`partnerkey:<sha256 hex>` -> partner id). A key that high in entropy
needs no slow hash: nothing can be guessed from the digest. The key itself is returned
once, when it is made.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import WatchError

from .errors import ApiError

KEY_PREFIX = "bmm_"


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


def bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send the API key as 'Authorization: Bearer <key>'")
    return token.strip()


def require_admin(request: web.Request, admin_key: str) -> None:
    token = bearer(request)
    if not admin_key or not hmac.compare_digest(token.encode(), admin_key.encode()):
        raise ApiError(401, "unauthorized", "not a valid admin key")


async def partner_of(request: web.Request, redis: aioredis.Redis) -> str:
    """The partner id the request's API key belongs to (401 if none)."""
    token = bearer(request)
    partner_id = await redis.get(key_index(hash_key(token)))
    if partner_id is None:
        raise ApiError(401, "unauthorized", "not a valid partner API key")
    return partner_id.decode()


async def partner_exists(redis: aioredis.Redis, partner_id: str) -> bool:
    return bool(await redis.exists(partner_key(partner_id)))


async def create_partner(redis: aioredis.Redis, name: str, partner_id: str | None = None
                         ) -> tuple[str, str]:
    """Make a partner and its first API key in one transaction; returns (partner id, key).
    409 if the id is taken."""
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
                pipe.sadd(partner_keys_key(partner_id), digest)
                await pipe.execute()
                return partner_id, api_key
            except WatchError:
                continue


async def issue_key(redis: aioredis.Redis, partner_id: str) -> str:
    """Another API key for an existing partner (the old ones stay valid)."""
    api_key = new_api_key()
    digest = hash_key(api_key)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key_index(digest), partner_id)
        pipe.sadd(partner_keys_key(partner_id), digest)
        await pipe.execute()
    return api_key


async def key_is_valid(redis: aioredis.Redis, partner_id: str, api_key: str) -> bool:
    got = await redis.get(key_index(hash_key(api_key)))
    return got is not None and got.decode() == partner_id
