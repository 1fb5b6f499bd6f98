"""What the on-sale modules share: the waiting room's Redis keys and the per-request flag the
rate limiter leaves for the hold gate.

Every waiting-room key of a show carries the show's hash tag `{<show_id>}` (the tag its
`show:`/`booking:` keys use), so the waiting room's script, which takes the room hash, the
pre-queue, the visitors and the used-solution marker together, runs in one Redis Cluster
slot."""
from __future__ import annotations

from aiohttp import web

# Per request: the show's waiting-room flag when the limiter read it (hold requests only).
ON_SALE = web.RequestKey("bmm.on_sale", bool)


def room_config_key(show_id: str) -> str:
    """A show's waiting-room setting and queue counters (a hash; its `enabled` field is the
    flag the rate limiter reads). Not the show's seat config, which is
    `actors.store.config_key`."""
    return f"wr:{{{show_id}}}"


def room_prequeue_key(show_id: str) -> str:
    """The pre-queue: a sorted set of visitor ids, each scored by a random number drawn when
    it joined. At the sale's start its order (by score) is the visitors' order."""
    return f"wr:{{{show_id}}}:pre"


def room_visitors_key(show_id: str) -> str:
    """A hash, visitor id -> `ticket` (waiting) or `ticket:expiry_ms` (admitted until then):
    the place of every visitor who joined after the start or was admitted, and the
    admission record the hold gate reads."""
    return f"wr:{{{show_id}}}:v"


def pow_used_key(show_id: str, challenge: str) -> str:
    """A solved join challenge, remembered until it expires so it is accepted once (128 bits
    of the challenge hash name it)."""
    return f"wr:{{{show_id}}}:pow:{challenge[:32]}"
