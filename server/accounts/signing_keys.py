"""The OAuth token signing keys: ES256 key pairs in Redis, their rotation, and the
per-process cache verification reads them from.

Redis: one value, `oauth:signing-keys`, a `KeyRing` (msgspec JSON): the current key's id
and every key a live token may have been signed with. Per key: its id (`kid`, the RFC 7638
thumbprint of its public key), the public key as a JWK, the private key (PKCS#8 PEM)
sealed with the platform's data-at-rest cipher (server/core/pii.py: AES-256-GCM under
BMM_DATA_KEY, bound to `oauth-signing-key:<kid>`, so a copy of Redis signs nothing), when
it was made and, once a rotation replaced it, when it was retired.

Rotation (`rotate`, one WATCHed transaction) makes a new key current and retires the old
one. A retired key still verifies (and is still published in the JWKS) for `KEEP_S`: the
longest a token it signed can live, plus a margin for clock skew and for a process that
read the ring just before the rotation and signed once more; after that nothing it
signed can be valid, so it is dropped. So no unexpired token loses its key, unless
keys are rotated more than `MAX_KEYS` times within that time (the oldest go first).

Issuing reads the ring from Redis every time (a token request is rare next to the
requests the token then makes), so a rotation in any process is signed with at once.
Verifying uses the process's cache: a token whose `kid` the cache does not know makes it
re-read the ring (one GET, coalesced between concurrent requests), so a new key is seen
at the first token it signed; the cache is also re-read every `REFRESH_S`, so dropped keys
leave it.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, field
import msgspec
import redis.asyncio as aioredis
from joserfc.jwk import ECKey
from redis.exceptions import WatchError

from server.core import pii
from server.core.settings import Settings

log = logging.getLogger(__name__)

RING_KEY = "oauth:signing-keys"
ALG = "ES256"
CURVE = "P-256"
TOKEN_TTL_S = 15 * 60            # an access token's lifetime (access_tokens.py uses it)
KEEP_S = TOKEN_TTL_S + 5 * 60    # how long a retired key keeps verifying
REFRESH_S = 30.0                 # the verification cache is re-read at least this often
MAX_KEYS = 16                    # a ring never holds more (rotating in a loop cannot grow it)


class StoredKey(msgspec.Struct, kw_only=True):
    kid: str
    public: dict[str, str]           # the public JWK: kty, crv, x, y, kid, alg, use
    private: str                     # PKCS#8 PEM, sealed (pii1.<data key id>.<...>)
    created_ms: int
    retired_ms: int | None = None    # None: the current key
    alg: str = ALG


class KeyRing(msgspec.Struct):
    current: str
    keys: list[StoredKey]

    def live(self, now_ms: int) -> list[StoredKey]:
        """The current key and the retired ones a live token may still be signed with,
        newest first."""
        return [k for k in self.keys
                if k.retired_ms is None or k.retired_ms + KEEP_S * 1000 > now_ms]


_decoder = msgspec.json.Decoder(KeyRing)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _context(kid: str) -> str:
    return f"oauth-signing-key:{kid}"


def _new_key(settings: Settings, now_ms: int) -> tuple[StoredKey, ECKey]:
    key = ECKey.generate_key(CURVE, parameters={"use": "sig", "alg": ALG}, private=True,
                             auto_kid=True)
    kid = key.kid
    assert kid
    sealed = pii.settings_cipher(settings).encrypt(key.as_pem(private=True).decode(),
                                                   _context(kid))
    public = {k: str(v) for k, v in key.as_dict(private=False).items()}
    return StoredKey(kid=kid, public=public, private=sealed, created_ms=now_ms), key


def _unseal(settings: Settings, stored: StoredKey) -> ECKey:
    """The private key; ValueError / KeyError when it cannot be decrypted (altered, or
    sealed under a data key that is no longer configured)."""
    pem = pii.settings_cipher(settings).decrypt(stored.private, _context(stored.kid))
    return ECKey.import_key(pem, parameters={"kid": stored.kid, "use": "sig", "alg": ALG})


async def load(redis: aioredis.Redis) -> KeyRing | None:
    raw = await redis.get(RING_KEY)
    return _decoder.decode(raw) if raw else None


async def rotate(redis: aioredis.Redis, settings: Settings, *, only_if: str | None = None,
                 now_ms: int | None = None) -> KeyRing:
    """Make a new key current; the old current one is retired (it still verifies for
    `KEEP_S`) and keys retired longer ago than that are dropped. `only_if`: rotate only if
    this kid is still current, else return the ring as it is (so processes that find the
    same broken key rotate once between them); `only_if=""`: only if there is no ring."""
    now_ms = _now_ms() if now_ms is None else now_ms
    stored, key = _new_key(settings, now_ms)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(RING_KEY)
                raw = await pipe.get(RING_KEY)
                ring = _decoder.decode(raw) if raw else None
                if only_if is not None and ring is not None and ring.current != only_if:
                    break  # another process rotated (or made the first key) meanwhile
                old = [msgspec.structs.replace(k, retired_ms=now_ms)
                       if k.retired_ms is None else k for k in (ring.keys if ring else [])]
                ring = KeyRing(stored.kid,
                               [stored, *KeyRing("", old).live(now_ms)][:MAX_KEYS])
                pipe.multi()
                pipe.set(RING_KEY, msgspec.json.encode(ring))
                await pipe.execute()
                _cache(redis).learn(ring, {stored.kid: key})
                log.info("oauth signing key rotated: %s is current", stored.kid)
                break
            except WatchError:
                continue
    return ring


async def signer(redis: aioredis.Redis, settings: Settings) -> tuple[str, ECKey]:
    """The current key (its id and private key), read from Redis; the first call ever
    makes one. A current key that cannot be decrypted (the data key that sealed it is
    gone) is rotated away rather than failing every token request."""
    ring = await load(redis)
    if ring is None:
        ring = await rotate(redis, settings, only_if="")
    cache = _cache(redis)
    cache.learn(ring)
    key = cache.private.get(ring.current)
    if key is None:
        stored = next(k for k in ring.keys if k.kid == ring.current)
        try:
            key = cache.private[stored.kid] = _unseal(settings, stored)
        except (ValueError, KeyError) as exc:
            log.warning("oauth signing key %s cannot be decrypted (%s): rotating", stored.kid,
                        exc)
            ring = await rotate(redis, settings, only_if=stored.kid)
            return await signer(redis, settings)
    return ring.current, key


async def public_key(redis: aioredis.Redis, kid: str) -> ECKey | None:
    """The public key `kid` names, if a live token may be signed with it."""
    return await _cache(redis).public_key(redis, kid)


async def published(redis: aioredis.Redis) -> list[dict[str, str]]:
    """The JWKS's keys: the current one first, then the retired ones still verifying."""
    ring = await load(redis)
    if ring is None:
        return []
    _cache(redis).learn(ring)
    return [k.public for k in ring.live(_now_ms())]


# --- the process's cache ----------------------------------------------------------------

@dataclass(eq=False)
class _Cache:
    public: dict[str, ECKey] = field(default_factory=dict)
    private: dict[str, ECKey] = field(default_factory=dict)
    loaded: float = float("-inf")             # monotonic time of the last read
    loading: asyncio.Task[None] | None = None

    def learn(self, ring: KeyRing | None, private: dict[str, ECKey] | None = None) -> None:
        live = ring.live(_now_ms()) if ring else []
        self.public = {k.kid: self.public.get(k.kid) or ECKey.import_key(k.public)
                       for k in live}
        self.private = {kid: key for kid, key in (self.private | (private or {})).items()
                        if kid in self.public}
        self.loaded = time.monotonic()

    async def public_key(self, redis: aioredis.Redis, kid: str) -> ECKey | None:
        key = self.public.get(kid)
        if key is not None and time.monotonic() - self.loaded < REFRESH_S:
            return key
        if self.loading is None:  # one read for all the requests that need it now
            self.loading = asyncio.ensure_future(self._reload(redis))
        loading = self.loading
        try:
            await asyncio.shield(loading)
        finally:
            if self.loading is loading and loading.done():
                self.loading = None
        return self.public.get(kid)

    async def _reload(self, redis: aioredis.Redis) -> None:
        self.learn(await load(redis))


# Per Redis client (= per app and event loop): the tests run several apps in one process.
_CACHES: weakref.WeakKeyDictionary[aioredis.Redis, _Cache] = weakref.WeakKeyDictionary()


def _cache(redis: aioredis.Redis) -> _Cache:
    found = _CACHES.get(redis)
    if found is None:
        found = _CACHES[redis] = _Cache()
    return found
