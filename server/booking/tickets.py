"""Booking tokens and e-tickets, signed with `settings.secret` (HMAC-SHA256).

- The booking token is derived from the booking id (`HMAC(secret, "booking:" + id)`), so it
  is never stored and any web process can check it.
- The e-ticket is `BMM1.<base64url(JSON payload)>.<base64url(HMAC(secret, "ticket:" +
  payload))>`: a door scanner with the secret can verify it offline. The QR code encodes
  exactly that string.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
from datetime import datetime

import msgspec
import segno

PREFIX = "BMM1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, purpose: str, data: bytes) -> bytes:
    return hmac.new(secret.encode(), purpose.encode() + b":" + data, hashlib.sha256).digest()


def booking_token(secret: str, booking_id: str) -> str:
    return _b64(_mac(secret, "booking", booking_id.encode()))


def check_booking_token(secret: str, booking_id: str, token: str | None) -> bool:
    # As bytes: compare_digest raises on non-ASCII str, and a token comes from the client.
    return bool(token) and hmac.compare_digest(booking_token(secret, booking_id).encode(),
                                               (token or "").encode())


class TicketPayload(msgspec.Struct, frozen=True):
    """What the e-ticket says (and the QR code carries)."""

    v: int
    booking_id: str
    show_id: str
    seats: list[str]
    starts_at: datetime | None
    name: str


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
