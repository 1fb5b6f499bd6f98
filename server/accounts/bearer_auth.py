"""The Authorization header's bearer token, and the platform admin key it may be: a leaf,
so both the API keys (api_keys.py) and the accounts (users.py) can use it."""
from __future__ import annotations

import hmac

from aiohttp import web

from server.core.errors import ApiError


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
