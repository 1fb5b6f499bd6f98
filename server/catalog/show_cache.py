"""Shows and seat layouts as the hold path needs them, decoded once per web process.

Every hold used to read the show's catalog record and its seat layout (the actor's config,
hundreds of seats of JSON) from Redis and decode both: under a rush that decoding was most
of the web tier's time. The records change only through the partner feed (`put_show`,
`cancel_show`), so each web process keeps them in memory:

- the feed's write publishes the show id on `SHOWS_CHANNEL` once both keys are written (the
  record in the `{catalog}` slot, then the layout in the show's: catalog.service), and every
  process drops its copy when the message arrives; the process that served the
  feed request also drops it at once (`invalidate`), so its own next request sees the change;
- nothing is cached while the subscription is down, and everything is dropped when it
  (re)connects, since messages may have been missed meanwhile;
- an entry lives at most `ttl_s` anyway;
- a fill that raced with an invalidation is not stored (generation counter);
- misses (unknown show, no layout yet) are never cached;
- an offer's write publishes `ALL_SHOWS` after it commits: the hold path's pricing inputs
  (`memo`) carry the offers. (The theatre's time zone, the other input, cannot change
  while it has scheduled shows.)
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from actors import redis_conn
from actors.layout import ShowConfig
from actors.store import config_key

from server.catalog.model import Show, catalog_key

log = logging.getLogger(__name__)

# A Pub/Sub channel, not a key (no slot): classic PUBLISH reaches subscribers on every node.
SHOWS_CHANNEL = "catalog:shows:changed"  # message: a show id whose record or layout changed
ALL_SHOWS = "*"  # the message that drops every show (an offer changed: every quote may)

_show_decoder = msgspec.json.Decoder(Show)
_config_decoder = msgspec.json.Decoder(ShowConfig)


@dataclass(frozen=True, slots=True)
class CachedShow:
    show: Show | None            # None: no catalog record
    config: ShowConfig | None    # None: no seat layout
    category: dict[str, str]     # seat id -> category
    until: float                 # monotonic expiry
    # What callers derive from the entry (the hold path's packed pricing inputs), dropped
    # with it. Keyed by the caller's module.
    memo: dict[str, object] = field(default_factory=dict)


class ShowCache:
    def __init__(self, redis: aioredis.Redis, listen_url: str | None = None,
                 ttl_s: float = 5.0) -> None:
        self.redis = redis
        self.listen_url = listen_url
        self.ttl_s = ttl_s
        self.listening = False
        self.hits = self.misses = 0
        self._entries: dict[str, CachedShow] = {}
        self._gen = 0
        self._task: asyncio.Task[None] | None = None

    async def get(self, show_id: str) -> CachedShow:
        entry = self._entries.get(show_id)
        now = time.monotonic()
        if entry is not None and entry.until > now:
            self.hits += 1
            return entry
        self.misses += 1
        gen = self._gen
        # Two slots (the catalog's, the show's): not one MGET. Not atomic either, which the
        # writer's order covers: its PUBLISH comes after both keys are written, so a pair
        # read in between is dropped by that message (or `gen` moved and it is not stored).
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(catalog_key("show", show_id))
            pipe.get(config_key(show_id))
            raw_show, raw_config = await pipe.execute()
        show = _show_decoder.decode(raw_show) if raw_show is not None else None
        config = _config_decoder.decode(raw_config) if raw_config is not None else None
        category = {s.id: s.category for s in config.layout.seats} if config else {}
        entry = CachedShow(show, config, category, now + self.ttl_s)
        if self.listening and gen == self._gen and show is not None and config is not None:
            self._entries[show_id] = entry
        return entry

    def invalidate(self, show_id: str | None = None) -> None:
        """Drop one show (or all): the next request reads it from Redis."""
        self._gen += 1
        if show_id is None:
            self._entries.clear()
        else:
            self._entries.pop(show_id, None)

    # --- the subscription ----------------------------------------------------------------

    def start(self) -> None:
        if self.listen_url and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="show-cache-invalidation")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.listening = False

    async def _listen(self) -> None:
        client = redis_conn.async_client(self.listen_url)
        try:
            while True:
                try:
                    await redis_conn.ready(client)
                    async with client.pubsub() as pubsub:
                        await pubsub.subscribe(SHOWS_CHANNEL)
                        async for message in pubsub.listen():
                            if message.get("type") == "subscribe":
                                # Confirmed: from here on no change goes unnoticed.
                                # Anything cached before may have missed a message.
                                self.invalidate()
                                self.listening = True
                            elif message.get("type") == "message":
                                data = message["data"]
                                show_id = data.decode() if isinstance(data, bytes) else data
                                self.invalidate(None if show_id == ALL_SHOWS else show_id)
                except (RedisError, OSError) as exc:
                    log.warning("show cache: invalidation feed lost (%s); not caching", exc)
                finally:
                    self.listening = False
                    self.invalidate()
                await asyncio.sleep(0.5)
        finally:
            await client.aclose()
