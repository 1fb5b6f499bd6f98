"""The tokens a customer request carries: the holder token of a hold (`X-Holder-Token`)
and, for bookings, the booking token; either may come as `Authorization: Bearer`."""
from __future__ import annotations

from aiohttp import web

from server.core.errors import ApiError


def bearer(request: web.Request, header: str) -> str | None:
    token = request.headers.get(header)
    if token:
        return token.strip()
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def holder_token(request: web.Request) -> str:
    token = bearer(request, "X-Holder-Token")
    if not token:
        raise ApiError(401, "token_required",
                       "send the holder token in X-Holder-Token or Authorization: Bearer")
    return token
