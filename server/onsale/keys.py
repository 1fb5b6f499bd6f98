"""What the on-sale modules share: the waiting room's Redis key and the per-request flag the
rate limiter leaves for the hold gate (one round trip answers both)."""
from __future__ import annotations

from aiohttp import web

# Per request: the show's waiting-room flag when the limiter read it (hold requests only).
ON_SALE = web.RequestKey("bmm.on_sale", bool)


def room_config_key(show_id: str) -> str:
    """A show's waiting-room setting and queue counters (a hash). Not the show's seat
    config, which is `actors.store.config_key`."""
    return f"wr:{show_id}"
