"""The Authorization header's bearer token, and the platform admin key it may be: a leaf,
so both the API keys (api_keys.py) and the accounts (users.py) can use it.

Two request keys travel with a partner request: which API key authenticated it (directly
or through an access token), for its usage counters, and the `WWW-Authenticate` challenge
an authentication failure answers with (RFC 6750 §3); the partner-request middleware
(key_usage.py) reads both when the answer is made."""
from __future__ import annotations

import hmac

from aiohttp import web

from server.core.errors import ApiError

AUTH_KEY_ID = web.RequestKey("bmm.auth_key_id", str)     # the API key's public id
CHALLENGE = web.RequestKey("bmm.www_authenticate", str)  # the WWW-Authenticate value


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
