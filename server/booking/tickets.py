"""Booking tokens and e-tickets, signed with `settings.secret` (HMAC-SHA256).

- The booking token is `<expiry>.<HMAC(secret, "booking:" + id + expiry)>`: never stored,
  any web process can check it, and it stops working at its expiry (30 days after the
  show, `token_expiry`). It goes in a header, never in a URL.
- The QR code's image URL carries a token of its own: it opens that image only, for an
  hour (`image_token`), so a URL that leaks (logs, history, a shared screenshot) gives
  neither the booking's details nor its cancellation.
- The e-ticket is `BMM1.<base64url(JSON payload)>.<base64url(HMAC(secret, "ticket:" +
  payload))>`: a door scanner with the secret can verify it offline. Only a confirmed
  booking gets one, and its payload says so (`status`) and when it stops being valid
  (`exp`, hours after the show ends). The QR code encodes exactly that string.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import time
from datetime import datetime, timedelta

import msgspec
import segno

PREFIX = "BMM1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, purpose: str, data: bytes) -> bytes:
    return hmac.new(secret.encode(), purpose.encode() + b":" + data, hashlib.sha256).digest()


TOKEN_DAYS_AFTER_SHOW = 30
TOKEN_DAYS_WITHOUT_SHOW = 365
TICKET_HOURS_AFTER_END = 6
IMAGE_TOKEN_S = 3600


def token_expiry(starts_at: datetime | None, created_at: datetime) -> int:
    """When a booking's token stops working (unix seconds): a month after its show."""
    base = starts_at + timedelta(days=TOKEN_DAYS_AFTER_SHOW) if starts_at is not None \
        else created_at + timedelta(days=TOKEN_DAYS_WITHOUT_SHOW)
    return int(base.timestamp())


def _signed(secret: str, purpose: str, booking_id: str, exp: int) -> str:
    return f"{exp}.{_b64(_mac(secret, purpose, f'{booking_id}|{exp}'.encode()))}"


def _check(secret: str, purpose: str, booking_id: str, token: str | None,
           now: float | None) -> bool:
    exp_text, dot, _ = (token or "").partition(".")
    if not dot or not exp_text.isdigit() or len(exp_text) > 12:
        return False
    exp = int(exp_text)
    if exp <= (now if now is not None else time.time()):
        return False
    # As bytes: compare_digest raises on non-ASCII str, and a token comes from the client.
    return hmac.compare_digest(_signed(secret, purpose, booking_id, exp).encode(),
                               (token or "").encode())


def booking_token(secret: str, booking_id: str, exp: int) -> str:
    return _signed(secret, "booking", booking_id, exp)


def check_booking_token(secret: str, booking_id: str, token: str | None,
                        now: float | None = None) -> bool:
    return _check(secret, "booking", booking_id, token, now)


def image_token(secret: str, booking_id: str, now: float | None = None) -> str:
    return _signed(secret, "ticket-image", booking_id,
                   int((now if now is not None else time.time()) + IMAGE_TOKEN_S))


def check_image_token(secret: str, booking_id: str, token: str | None,
                      now: float | None = None) -> bool:
    return _check(secret, "ticket-image", booking_id, token, now)


class TicketPayload(msgspec.Struct, frozen=True):
    """What the e-ticket says (and the QR code carries)."""

    v: int
    booking_id: str
    show_id: str
    seats: list[str]
    starts_at: datetime | None
    name: str
    status: str = "confirmed"  # only confirmed bookings get a ticket
    exp: int = 0               # unix seconds: not valid after (0: a v1 ticket, no expiry)


def ticket_expiry(starts_at: datetime | None, ends_at: datetime | None) -> int:
    end = ends_at or (starts_at + timedelta(hours=4) if starts_at else None)
    return int(end.timestamp()) + TICKET_HOURS_AFTER_END * 3600 if end else 0


def ticket_valid(payload: TicketPayload, now: float | None = None) -> str | None:
    """None if a verified ticket admits now; otherwise why not."""
    if payload.status != "confirmed":
        return "not_confirmed"
    if payload.exp and payload.exp <= (now if now is not None else time.time()):
        return "expired"
    return None


def sign_ticket(secret: str, payload: TicketPayload) -> str:
    body = msgspec.json.encode(payload)
    return f"{PREFIX}.{_b64(body)}.{_b64(_mac(secret, 'ticket', body))}"


def verify_ticket(secret: str, ticket: str) -> TicketPayload | None:
    """The payload if `ticket` was signed with `secret`, else None."""
    try:
        prefix, body_b64, sig_b64 = ticket.split(".")
        if prefix != PREFIX:
            return None
        body = _unb64(body_b64)
        if not hmac.compare_digest(_mac(secret, "ticket", body), _unb64(sig_b64)):
            return None
        return msgspec.json.decode(body, type=TicketPayload)
    except (ValueError, msgspec.DecodeError):
        return None


def qr_svg(data: str) -> bytes:
    out = io.BytesIO()
    segno.make(data, error="m").save(out, kind="svg", scale=4, border=2, xmldecl=True,
                                      title="Book My Movie e-ticket")
    return out.getvalue()
