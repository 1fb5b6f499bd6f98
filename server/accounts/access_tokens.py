"""OAuth 2.0 access tokens for the partner API: short-lived JWTs signed with ES256
(RFC 7519, profiled as RFC 9068 "JWT access tokens"), made and checked with joserfc.

    header  {"alg": "ES256", "typ": "at+jwt", "kid": <signing key id>}
    claims  {"iss": ISSUER, "aud": AUDIENCE, "sub": <partner id>,
             "client_id": <API key id>, "scope": "read" | "read write",
             "iat": <now>, "exp": <now + 15 min>, "jti": <random>}

Verification accepts only ES256 under a key of our ring (signing_keys.py), the `at+jwt`
type (so no other JWT of ours passes for an access token), our issuer and audience, an
`exp` in the future (`LEEWAY_S` of clock skew between web processes) and no further away
than a token's lifetime. Which API key the token stands for (`client_id`) is checked
against Redis by the caller (api_keys.partner_of), so a revoked key's tokens stop at once.
A token this process has verified is remembered (bounded), so the signature is checked
once per token and process, not once per request.
"""
from __future__ import annotations

import base64
import binascii
import secrets
import time
import weakref

import msgspec
import redis.asyncio as aioredis
from joserfc import jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, JoseError
from joserfc.jwt import JWTClaimsRegistry

from server.accounts import signing_keys
from server.core.settings import Settings

ISSUER = "urn:bookmymovie"
AUDIENCE = "urn:bookmymovie:partner-api"
TOKEN_TYPE = "at+jwt"
TOKEN_TTL_S = signing_keys.TOKEN_TTL_S
LEEWAY_S = 10
MAX_TOKEN_CHARS = 4096
SCOPES = ("read", "write")


class InvalidToken(Exception):
    """Not a valid access token of ours (the reason is for the logs and the message)."""


class AccessToken(msgspec.Struct, frozen=True):
    partner_id: str
    client_id: str          # the API key's public id (api_keys.key_id_of)
    scopes: frozenset[str]
    exp: int
    jti: str

    @property
    def can_write(self) -> bool:
        return "write" in self.scopes


def looks_like_jwt(token: str) -> bool:
    """A JWS compact serialisation has exactly two dots; an API key (`bmm_` + url-safe
    base64) has none."""
    return token.count(".") == 2


def scope_string(scopes: frozenset[str] | set[str]) -> str:
    return " ".join(s for s in SCOPES if s in scopes)


async def mint(redis: aioredis.Redis, settings: Settings, partner_id: str, client_id: str,
               scopes: frozenset[str], now: int | None = None,
               ttl_s: int = TOKEN_TTL_S) -> str:
    """A signed access token with the current signing key."""
    kid, key = await signing_keys.signer(redis, settings)
    iat = int(time.time()) if now is None else now
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": partner_id, "client_id": client_id,
              "scope": scope_string(scopes), "iat": iat, "exp": iat + ttl_s,
              "jti": secrets.token_urlsafe(16)}
    return jwt.encode({"alg": signing_keys.ALG, "typ": TOKEN_TYPE, "kid": kid}, claims, key,
                      algorithms=[signing_keys.ALG])


_header_decoder = msgspec.json.Decoder(dict[str, object])


def _header(token: str) -> dict[str, object]:
    segment = token.partition(".")[0]
    try:
        return _header_decoder.decode(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise InvalidToken("malformed token header") from exc


# Tokens this process verified, per Redis client (= per app): a client sends the same
# token for its whole life, and an ES256 verification costs ~0.3 ms of CPU, a dict hit
# nothing. The same bytes verify the same way; only `exp` is checked again.
_VERIFIED: weakref.WeakKeyDictionary[aioredis.Redis, dict[str, AccessToken]] = \
    weakref.WeakKeyDictionary()
VERIFIED_KEPT = 4096


async def verify(redis: aioredis.Redis, token: str, now: int | None = None) -> AccessToken:
    """The token's facts, or InvalidToken."""
    now = int(time.time()) if now is None else now
    verified = _VERIFIED.get(redis)
    if verified is None:
        verified = _VERIFIED[redis] = {}
    found = verified.get(token)
    if found is not None:
        if found.exp > now - LEEWAY_S:
            return found
        del verified[token]
        raise InvalidToken("the access token expired")
    claims = await _verify(redis, token, now)
    if len(verified) >= VERIFIED_KEPT:
        verified.clear()
    verified[token] = claims
    return claims


async def _verify(redis: aioredis.Redis, token: str, now: int) -> AccessToken:
    if len(token) > MAX_TOKEN_CHARS or not looks_like_jwt(token):
        raise InvalidToken("malformed token")
    header = _header(token)
    kid = header.get("kid")
    if header.get("alg") != signing_keys.ALG or header.get("typ") != TOKEN_TYPE \
            or not isinstance(kid, str) or not kid or len(kid) > 128:
        raise InvalidToken("not an access token of this platform")
    key = await signing_keys.public_key(redis, kid)
    if key is None:
        raise InvalidToken("signed by an unknown key")
    try:
        decoded = jwt.decode(token, key, algorithms=[signing_keys.ALG])
        claims = decoded.claims
        JWTClaimsRegistry(
            now=now, leeway=LEEWAY_S,
            iss={"essential": True, "value": ISSUER}, aud={"essential": True, "value": AUDIENCE},
            sub={"essential": True}, exp={"essential": True}, iat={"essential": True},
            jti={"essential": True}, client_id={"essential": True}, scope={"essential": True},
        ).validate(claims)
    except ExpiredTokenError:
        raise InvalidToken("the access token expired") from None
    except BadSignatureError:
        raise InvalidToken("the token's signature does not verify") from None
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    sub, client_id, scope, exp = (claims.get("sub"), claims.get("client_id"),
                                  claims.get("scope"), claims.get("exp"))
    if not (isinstance(sub, str) and isinstance(client_id, str) and isinstance(scope, str)
            and isinstance(exp, int)):
        raise InvalidToken("invalid token claims")
    if exp > now + TOKEN_TTL_S + LEEWAY_S:
        raise InvalidToken("token lives longer than any token we issue")
    scopes = frozenset(scope.split())
    if not scopes or not scopes <= set(SCOPES):
        raise InvalidToken("invalid token scope")
    return AccessToken(sub, client_id, scopes, exp, str(claims["jti"]))
