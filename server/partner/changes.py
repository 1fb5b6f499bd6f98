"""What changed for a partner: the stream behind GET /partner/v1/changes.

One Redis Stream per partner, `changes:{p:<partner>}` (catalog.service.changes_key), capped
at ~CHANGES_MAXLEN entries, each with `type`, `at` (UTC ISO 8601) and `data` (JSON):

- the feed's writes (catalog.service) XADD theirs in the MULTI of the write itself:
  show.created / show.updated / show.cancelled, theatre|screen|movie.upserted / .retired
  (a PUT that changes nothing adds nothing);
- booking.confirmed / booking.cancelled come from the outbox: the consumer group `changes`
  (`ChangesWorker`, started by `setup(app, redis_url)`) appends each one for the show's
  partner with the show's seat availability (free/held/booked/blocked and the log
  sequence they are as of, read from its snapshot and log as the seat map is). The booking
  carries no customer contact data. Delivery from the outbox is at least once; a marker
  `changes:{p:<partner>}:seen:<event id>` (kept SEEN_TTL_S), set in the same script as the
  XADD, keeps a redelivered event from being listed twice.

The group starts at the outbox's end when it is first made: the feed lists what changed
from then on. A page is an XRANGE after the cursor's stream id, so polling is O(page).
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from server.catalog.model import Availability, Change, Show, catalog_key
from server.catalog.seat_status import read_seat_statuses
from server.catalog.service import CHANGES_MAXLEN, change_fields, changes_key
from server.core.outbox import Event, GroupConsumer, run_with_app

GROUP = "changes"
BOOKING_EVENTS = ("booking.confirmed", "booking.cancelled")
SEEN_TTL_S = 7 * 24 * 3600
# What a partner sees of a booking: no customer contact details (as its webhooks).
PRIVATE_FIELDS = ("email", "name", "phone", "customer_id")

_show_decoder = msgspec.json.Decoder(Show)
_data_decoder = msgspec.json.Decoder(dict[str, Any])

# KEYS: stream, seen marker. ARGV: maxlen, ttl, type, at, data. The entry id, or nil if
# this event was appended before.
_APPEND_ONCE = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return false end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                  'type', ARGV[3], 'at', ARGV[4], 'data', ARGV[5])
"""


def seen_key(partner_id: str, event_id: str) -> str:
    return f"{changes_key(partner_id)}:seen:{event_id}"


async def read_changes(redis: aioredis.Redis, partner_id: str, after: str | None,
                       limit: int) -> tuple[list[Change], str]:
    """Up to `limit` changes after stream id `after` (None: from the oldest kept), and the
    id to poll after next time (the last one returned, else `after`, else "0-0")."""
    rows = await redis.xrange(changes_key(partner_id), "-" if after is None else f"({after}",
                              "+", count=limit)
    items: list[Change] = []
    for entry_id, fields in rows:
        at = dt.datetime.fromisoformat(fields[b"at"].decode().replace("Z", "+00:00"))
        items.append(Change(entry_id.decode(), fields[b"type"].decode(), at,
                            _data_decoder.decode(fields[b"data"])))
    last = items[-1].id if items else (after or "0-0")
    return items, last


def valid_stream_id(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    ms, _, seq = value.partition("-")
    return ms.isdigit() and seq.isdigit() and len(ms) <= 20 and len(seq) <= 20


class ChangesWorker:
    """The outbox consumer that puts booking events into their partner's change stream."""

    def __init__(self, redis: aioredis.Redis, *, start_id: str = "$", block_ms: int = 1000,
                 claim_idle_s: float = 60.0) -> None:
        self.redis = redis
        self.append_once = redis.register_script(_APPEND_ONCE)
        self.consumer = GroupConsumer(redis, GROUP, self.handle, retry_s=1.0, retry_max_s=60.0,
                                      block_ms=block_ms, claim_idle_s=claim_idle_s,
                                      start_id=start_id)

    def start(self) -> None:
        self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def handle(self, event: Event) -> bool:
        if event.type not in BOOKING_EVENTS:
            return True
        show_id = event.data.get("show_id")
        if not isinstance(show_id, str) or not show_id:
            return True
        raw = await self.redis.get(catalog_key("show", show_id))
        show = _show_decoder.decode(raw) if raw else None
        partner_id = event.partner_id or (show.partner_id if show else None)
        if not partner_id:
            return True
        data = {k: v for k, v in event.data.items() if k not in PRIVATE_FIELDS}
        statuses = await read_seat_statuses(self.redis, show_id)
        if statuses is not None:
            n = statuses.counts()
            data["availability"] = msgspec.to_builtins(Availability(
                n["free"], n["held"], n["booked"], n["blocked"], statuses.seq))
        else:
            data["availability"] = None
        fields = change_fields(event.type, data, event.time)
        await self.append_once(keys=[changes_key(partner_id), seen_key(partner_id, event.id)],
                               args=[CHANGES_MAXLEN, SEEN_TTL_S, fields["type"],
                                     fields["at"], fields["data"]])
        return True


CHANGES = web.AppKey("changes_worker", ChangesWorker)


def setup(app: web.Application, redis_url: str) -> None:
    """Runs this process's consumer of the `changes` group while the app runs."""
    run_with_app(app, CHANGES, redis_url, lambda redis: ChangesWorker(redis))
