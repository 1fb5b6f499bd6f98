"""Cursor pagination for every list of the partner API (Stripe's convention, roughly):
`?limit=1..200` (default 50) and `?cursor=<opaque>` from the previous page's
`next_cursor`; the answer is `{"items": [...], "next_cursor": "..." | null}`.

A cursor is the position after the last item returned (e.g. its sort key and id), encoded
as url-safe base64 JSON and signed, so a client can only hand back what it was given: an
altered or foreign cursor is 422 `invalid_cursor`, never a crash or a scan from elsewhere.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, Generic, TypeVar

import msgspec
from aiohttp import web

from server.core.errors import ApiError

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class Page(msgspec.Struct, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def limit_of(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(422, "invalid_limit", f"limit must be 1-{MAX_LIMIT}", field="limit")
    return limit


def _mac(secret: str, body: bytes) -> bytes:
    return hmac.new(f"cursor:{secret}".encode(), body, hashlib.sha256).digest()[:12]


def encode_cursor(secret: str, position: Any) -> str:
    body = msgspec.json.encode(position)
    return base64.urlsafe_b64encode(_mac(secret, body) + body).rstrip(b"=").decode()


def decode_cursor(secret: str, request: web.Request) -> Any | None:
    """The position the request's `cursor` names (None: the first page); 422 if it is not
    one this server gave out."""
    raw = request.query.get("cursor")
    if not raw:
        return None
    try:
        blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        mac, body = blob[:12], blob[12:]
        if len(mac) == 12 and hmac.compare_digest(mac, _mac(secret, body)):
            return msgspec.json.decode(body)
    except (ValueError, msgspec.DecodeError):
        pass
    raise ApiError(422, "invalid_cursor", "this cursor was not given out by this API",
                   field="cursor")
