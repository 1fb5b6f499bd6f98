"""Hold requests: the holder token, hold-state checks, booking-core rejections as HTTP
errors, and the clock and ids the hold and checkout handlers share."""
from __future__ import annotations

import secrets
from datetime import UTC, datetime

from aiohttp import web

from actors import commands as c

from server.booking import records as store
from server.booking.records import HoldRecord
from server.core.errors import ApiError

# One table: what each booking-core rejection means over HTTP.
REJECTED_STATUS: dict[str, int] = {
    "invalid": 422,
    "unknown_seats": 422,
    "too_many_seats": 422,
    "customer_limit": 409,
    "seats_unavailable": 409,
    "not_enough_seats": 409,
    "not_found": 404,
    "not_owner": 403,
    "hold_expired": 410,
    "lifetime_exceeded": 409,
    "duplicate_id": 409,
    "unavailable": 503,
}


def rejected(result: c.Rejected) -> ApiError:
    details = {"seats": result.seats} if result.seats else {}
    return ApiError(REJECTED_STATUS.get(result.code, 409), result.code, result.message, **details)


def services(request: web.Request):  # noqa: ANN201 (the app module imports this one)
    from server.app import services as get

    return get(request)


def utcnow() -> datetime:
    return datetime.now(UTC)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def now_ms() -> int:
    return int(utcnow().timestamp() * 1000)


def new_id(show_id: str) -> str:
    return f"{show_id}.{secrets.token_urlsafe(9)}"


def cmd_id() -> str:
    return secrets.token_hex(12)


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


async def live_hold(request: web.Request, hold_id: str) -> tuple[HoldRecord, str]:
    """The hold record for a holder-token request: 401/403/404/409/410 otherwise."""
    token = holder_token(request)
    hold = await store.load_hold(services(request).redis, hold_id)
    if hold is None:
        raise ApiError(404, "not_found", f"no hold {hold_id!r}")
    if not secrets.compare_digest(hold.token_hash, store.token_hash(token)):
        raise ApiError(403, "not_owner", "this hold belongs to someone else")
    require_active(hold)
    return hold, token


def require_active(hold: HoldRecord) -> None:
    """409 if checked out or being paid for, 404 if released, 410 if its time is up."""
    if hold.state == "booked":
        raise ApiError(409, "hold_checked_out", "this hold was checked out already",
                       booking_id=hold.booking_id)
    if hold.state == "pending":
        raise ApiError(409, "payment_pending", "a payment for this hold is being processed",
                       booking_id=hold.booking_id)
    if hold.state == "released":
        raise ApiError(404, "not_found", f"hold {hold.hold_id!r} was released")
    if hold.expires_ms <= now_ms():
        raise ApiError(410, "hold_expired", "the hold's time is up", seats=hold.seats)


def gone_or_expired(result: c.Rejected, hold: HoldRecord) -> ApiError:
    # The record says the hold is ours and live; the actor no longer has it: the actor's
    # clock expired it a moment before ours did.
    if result.code == "not_found":
        return ApiError(410, "hold_expired", "the hold's time is up", seats=hold.seats)
    return rejected(result)
