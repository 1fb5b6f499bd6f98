"""Waiting-room admission tokens and the hold path's gate (issues 7 and 15, on-sale
protection).

A token is `<payload>.<mac>`, both url-safe base64: payload `show_id|visitor_id|exp_ms`,
mac HMAC-SHA256 with a key derived from the platform secret for this purpose only. It is
bound to the visitor id kept in the visitor's encrypted session cookie: a token copied into
another browser (another session) is refused, and a forged or altered one fails the MAC.
The token alone is not enough: the admission is recorded in Redis when it is given
(`wr:{<show>}:v`, visitor id -> `ticket:exp_ms`, written by the waiting room's script), and
the gate also wants that record to be alive and to carry the token's expiry. One HGET,
only for holds on a show in its waiting room; the other shows' hold path reads nothing
more. So a replayed cookie or token cannot outlive (or renew) the admission it came with.
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
from server.onsale.keys import ON_SALE, room_config_key, room_visitors_key

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
    """None when the token itself admits `visitor` to `show_id` now (signature, show,
    visitor, expiry); otherwise why not. No I/O: `verify_live` adds the Redis record."""
    return _check(secret, token, show_id, visitor, now_ms)[0]


def _check(secret: str, token: str, show_id: str, visitor: str | None,
           now_ms: int | None = None) -> tuple[str | None, int]:
    """(why not or None, the token's expiry)."""
    why, exp = _parse(secret, token, show_id, visitor)
    if why is None and exp <= (now_ms if now_ms is not None else time.time_ns() // 1_000_000):
        why = "expired"
    return why, exp


def _parse(secret: str, token: str, show_id: str, visitor: str | None
           ) -> tuple[str | None, int]:
    try:
        payload_b64, mac_b64 = token.split(".")
        payload, mac = _unb64(payload_b64), _unb64(mac_b64)
    except (ValueError, UnicodeEncodeError):
        return "malformed", 0
    good = hmac.new(_key(secret), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, good):
        return "bad_signature", 0
    try:
        t_show, t_visitor, t_exp = payload.decode().split("|")
        exp = int(t_exp)
    except ValueError:
        return "malformed", 0
    if t_show != show_id:
        return "other_show", 0
    if not visitor or not hmac.compare_digest(t_visitor.encode(), visitor.encode()):
        return "other_visitor", 0
    return None, exp


def record_expiry(record: bytes | str | None) -> int:
    """The expiry (ms) in a visitor's `wr:{<show>}:v` record, 0 when not admitted."""
    if record is None:
        return 0
    text = record.decode() if isinstance(record, bytes) else record
    _, _, exp = text.partition(":")
    return int(exp) if exp.isdigit() else 0


async def verify_live(redis: object, secret: str, token: str, show_id: str,
                      visitor: str | None, now_ms: int | None = None) -> str | None:
    """`verify`, then the admission record in Redis: it must exist, be alive and carry
    this token's expiry (`not_admitted` / `expired` / `superseded` otherwise). The Redis
    read happens only for a token that verifies by itself."""
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    why, exp = _check(secret, token, show_id, visitor, now_ms)
    if why is not None:
        return why
    held = record_expiry(await redis.hget(room_visitors_key(show_id), visitor))  # type: ignore[attr-defined]
    if not held:
        return "not_admitted"
    if held <= now_ms:
        return "expired"
    if held != exp:
        return "superseded"
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
    waiting room, 403 unless the request carries an admission token for this visitor whose
    admission Redis still records (`verify_live`)."""
    customer, vid = await session_customer(request)
    if on_sale:
        token = request.headers.get(HEADER) or request.cookies.get(COOKIE)
        if not token:
            raise ApiError(403, "admission_required",
                           "this show is selling through its waiting room: join the queue",
                           queue=f"/api/shows/{show_id}/queue")
        svc = services(request)
        why = await verify_live(svc.redis, svc.settings.secret, token.strip(), show_id, vid)
        if why is not None:
            raise ApiError(403, "admission_invalid",
                           f"this admission token is not valid here ({why.replace('_', ' ')})",
                           reason=why, queue=f"/api/shows/{show_id}/queue")
    return customer


async def hold_gate(request: web.Request, show_id: str) -> tuple[str, int]:
    """For a new hold: (customer, their seat cap on this show). The waiting-room flag comes
    from the rate limiter's batch when it ran (same round trip), else from Redis."""
    svc = services(request)
    on_sale = request.get(ON_SALE)
    if on_sale is None:
        on_sale = await svc.redis.hget(room_config_key(show_id), "enabled") == b"1"
    customer = await hold_customer(request, show_id, on_sale)
    return customer, (svc.settings.hold_cap_seats if customer else 0)
