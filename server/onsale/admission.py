"""Waiting-room admission tokens and the hold path's gate (issue 7, on-sale protection).

A token is `<payload>.<mac>`, both url-safe base64: payload `show_id|visitor_id|exp_ms`,
mac HMAC-SHA256 with a key derived from the platform secret for this purpose only. It is
checked without any I/O. It is bound to the visitor id kept in the visitor's encrypted
session cookie: a token copied into another browser (another session) is refused, and a
forged or altered one fails the MAC.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from functools import lru_cache

from aiohttp import web
from aiohttp_session import get_session

from server.appkeys import services
from server.accounts.users import SESSION_COOKIE, derive_key
from server.core.errors import ApiError
from server.onsale.keys import ON_SALE, room_config_key

HEADER = "X-Admission-Token"
COOKIE = "bmm_admit"   # set on /api/shows/<id>/ by GET /api/shows/<id>/queue once admitted


@lru_cache(maxsize=8)
def _key(secret: str) -> bytes:
    return derive_key(secret, "waiting-room-admission")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: str, show_id: str, visitor: str, exp_ms: int) -> str:
    payload = f"{show_id}|{visitor}|{exp_ms}".encode()
    mac = hmac.new(_key(secret), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify(secret: str, token: str, show_id: str, visitor: str | None,
           now_ms: int | None = None) -> str | None:
    """None when the token admits `visitor` to `show_id` now; otherwise why not."""
    try:
        payload_b64, mac_b64 = token.split(".")
        payload, mac = _unb64(payload_b64), _unb64(mac_b64)
    except (ValueError, UnicodeEncodeError):
        return "malformed"
    good = hmac.new(_key(secret), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, good):
        return "bad_signature"
    try:
        t_show, t_visitor, t_exp = payload.decode().split("|")
        exp = int(t_exp)
    except ValueError:
        return "malformed"
    if t_show != show_id:
        return "other_show"
    if not visitor or not hmac.compare_digest(t_visitor.encode(), visitor.encode()):
        return "other_visitor"
    if exp <= (now_ms if now_ms is not None else time.time_ns() // 1_000_000):
        return "expired"
    return None


async def session_customer(request: web.Request) -> tuple[str, str | None]:
    """(customer, visitor id) from the session, without a Redis read: the customer is
    `u:<user id>` when logged in, else `v:<visitor id>` when the session has one (the
    waiting room gives one), else "" (anonymous). The cookie is decrypted only when one
    came (that is not free). Both the per-customer rate limit and seat cap count this."""
    if SESSION_COOKIE not in request.cookies:
        return "", None
    session = await get_session(request)
    uid, vid = session.get("uid"), session.get("vid")
    vid = vid if isinstance(vid, str) else None
    if isinstance(uid, str):
        return "u:" + uid, vid
    return ("v:" + vid if vid else ""), vid


async def hold_customer(request: web.Request, show_id: str, on_sale: bool) -> str:
    """Who is holding (for the per-customer cap; `session_customer`). For a show in its
    waiting room, 403 unless the request carries an admission token for this visitor."""
    customer, vid = await session_customer(request)
    if on_sale:
        token = request.headers.get(HEADER) or request.cookies.get(COOKIE)
        if not token:
            raise ApiError(403, "admission_required",
                           "this show is selling through its waiting room: join the queue",
                           queue=f"/api/shows/{show_id}/queue")
        why = verify(services(request).settings.secret, token.strip(), show_id, vid)
        if why is not None:
            raise ApiError(403, "admission_invalid",
                           f"this admission token is not valid here ({why.replace('_', ' ')})",
                           reason=why, queue=f"/api/shows/{show_id}/queue")
    return customer


async def hold_gate(request: web.Request, show_id: str) -> tuple[str, int]:
    """For a new hold: (customer, their seat cap on this show). The waiting-room flag comes
    from the rate limiter's script when it ran (same round trip), else from Redis."""
    svc = services(request)
    on_sale = request.get(ON_SALE)
    if on_sale is None:
        on_sale = await svc.redis.hget(room_config_key(show_id), "enabled") == b"1"
    customer = await hold_customer(request, show_id, on_sale)
    return customer, (svc.settings.hold_cap_seats if customer else 0)
