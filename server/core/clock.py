"""The one clock and the one id maker of the web process: UTC datetimes, epoch ms, ids."""
from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def as_utc(t: datetime) -> datetime:
    """A stored datetime as an aware UTC one (records written before times carried a zone
    decode naive; they were always UTC)."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def cmd_id() -> str:
    """A show-actor command id (the actor answers a repeated id with the first answer)."""
    return secrets.token_hex(12)


def new_id(show_id: str) -> str:
    """A hold, booking or bulk id: the show id (its Redis hash tag) plus a random part."""
    return f"{show_id}.{secrets.token_urlsafe(9)}"


class SystemClock:
    """The booking ports' clock (tests hand in one they move by hand)."""

    def now_ms(self) -> int:
        return now_ms()
