"""The outbox: domain events in the Redis Stream `outbox:events`.

Producers (checkout, cancellations, the partner feed) call `publish()` after their own
write succeeded. Consumers (the e-mail worker in notifications.py, the webhook fan-out in
webhooks.py) read the stream through consumer groups, so an event is delivered to every
group at least once even if a worker, the SMTP server or a receiver is down: an entry is
acknowledged (XACK) only after its side effect succeeded, and entries left pending by a
dead consumer are claimed again (XAUTOCLAIM) by a live one.

Entry fields (all strings): `id` (the event id, `evt_<hex>`), `type`, `time` (UTC ISO
8601), `partner_id` ("" when unknown) and `data` (JSON).

Event types: booking.confirmed, booking.cancelled, show.cancelled, show.sold_out.
"""
from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis

STREAM = "outbox:events"
STREAM_MAXLEN = 1_000_000  # approximate cap; consumers keep up long before that

EVENT_TYPES = frozenset({"booking.confirmed", "booking.cancelled", "show.cancelled",
                         "show.sold_out"})

_encoder = msgspec.json.Encoder()


class Event(msgspec.Struct, frozen=True):
    """One outbox event as consumers see it."""

    id: str            # the event id (stable across redeliveries)
    type: str
    time: datetime
    data: dict[str, Any]
    partner_id: str | None = None
    entry_id: str = ""  # the Redis Stream entry id (for XACK)


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


async def publish(redis: aioredis.Redis, type: str, data: dict | msgspec.Struct, *,
                  partner_id: str | None = None, event_id: str | None = None) -> str:
    """Append an event to the outbox and return its event id.

    `data` is a dict or a msgspec Struct (encoded to JSON; datetimes as ISO 8601).
    For booking events include at least `booking_id`, `show_id`, `email`, `name`, `seats`
    (`booking_data(booking)` builds that from a BookingRecord); for show events `show_id`
    and, so customers are told, `bookings`: a list of `booking_data(...)` dicts.
    `partner_id` may be left out: the webhook worker finds the show's partner itself.
    `event_id` (optional) makes the event id deterministic, e.g.
    `f"booking.confirmed:{booking_id}"`, so a producer that retries after a crash
    publishes the same event again and consumers deliver it only once.
    """
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown outbox event type {type!r}")
    event_id = event_id or new_event_id()
    fields = {
        "id": event_id,
        "type": type,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "partner_id": partner_id or "",
        "data": _encoder.encode(data),
    }
    await redis.xadd(STREAM, fields, maxlen=STREAM_MAXLEN, approximate=True)
    return event_id


def booking_data(booking: Any) -> dict[str, Any]:
    """The public part of a booking record for an event (no payment token)."""
    quote = getattr(booking, "quote", None)
    created = getattr(booking, "created_at", None)
    return {
        "booking_id": booking.booking_id,
        "show_id": booking.show_id,
        "seats": list(booking.seats),
        "email": booking.email,
        "name": booking.name,
        "status": getattr(booking, "status", "confirmed"),
        "total": getattr(quote, "total", 0),
        "currency": getattr(quote, "currency", ""),
        "created_at": created.isoformat() if isinstance(created, datetime) else created,
    }


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_entry(entry_id: bytes | str, fields: dict) -> Event:
    """A stream entry (as redis-py returns it) as an `Event`."""
    f = {_s(k): _s(v) for k, v in fields.items()}
    return Event(
        id=f.get("id", _s(entry_id)),
        type=f.get("type", ""),
        time=datetime.fromisoformat(f["time"].replace("Z", "+00:00")) if f.get("time")
        else datetime.now(UTC),
        data=msgspec.json.decode(f.get("data", "{}").encode()),
        partner_id=f.get("partner_id") or None,
        entry_id=_s(entry_id),
    )
