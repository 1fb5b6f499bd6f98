"""How a show lives in Redis: its config, its log (a Stream), its sequence and snapshot.

Keys share the `{show_id}` hash tag so one Lua call can touch them all (Redis Cluster
ready). The log's entry ids are `<seq>-0`, so sequence numbers are contiguous and readable
with XRANGE; the append script checks the expected sequence first, which fences off any
stale actor instance: a write computed from an old state can never land.
"""
from __future__ import annotations

import secrets
import struct
import weakref
from hashlib import blake2b, sha1

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from . import commands as c
from .layout import Layout, ShowConfig
from .seatmap import Quoter, SeatMap, SeatPlan, Snapshot


def config_key(show_id: str) -> str:
    return f"show:{{{show_id}}}:config"


def log_key(show_id: str) -> str:
    return f"show:{{{show_id}}}:log"


def seq_key(show_id: str) -> str:
    return f"show:{{{show_id}}}:seq"


def snap_key(show_id: str) -> str:
    return f"show:{{{show_id}}}:snap"


def unindexed_key(show_id: str) -> str:
    """The show's mark of being taken off its pool's due index (`ShowStore.unindex`)."""
    return f"show:{{{show_id}}}:unindexed"


class Event(msgspec.Struct, frozen=True, tag_field="type", tag="event"):
    """The public form of one log entry, as the live seat map receives it:
    `{"type": "event", "seq": 7, "at": <ms>, "changes": [["A1", "held"], ...]}`."""

    seq: int
    at: int
    changes: list[c.SeatChange]


class LogEntry(msgspec.Struct, frozen=True):
    at: int
    command: bytes  # msgpack Command, private (it carries holder tokens)
    event: bytes    # JSON Event, public: forwarded to watchers byte for byte


event_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(Event)
_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)
_config_decoder = msgspec.json.Decoder(ShowConfig)
_layout_encoder = msgspec.msgpack.Encoder()
_LEN = struct.Struct(">I")

_APPEND = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur ~= tonumber(ARGV[1]) then
  return redis.error_reply('FENCED expected ' .. ARGV[1] .. ' found ' .. cur)
end
-- KEYS[5]: the show was taken off the due index (ShowStore.unindex). An append by a copy
-- that loaded before that finished (ARGV[6]: the mark its load saw) may have had its due
-- index entry removed: it reloads, which writes the entry again before the next append.
local mark = redis.call('GET', KEYS[5])
if mark and mark ~= ARGV[6] then
  return redis.error_reply('FENCED the show left the due index')
end
-- The first entry is also fenced on the config the seat map was built from: the partner
-- feed may rewrite a show's config until its log has an entry, and a copy that loaded
-- the old one must not log holds on seats the new layout does not have (M10).
if cur == 0 and ARGV[5] ~= '' and redis.sha1hex(redis.call('GET', KEYS[4]) or '') ~= ARGV[5] then
  return redis.error_reply('FENCED the config changed')
end
local seq = cur
-- ARGV[4]: the entries' fields (at, command, event, ...), each a 4-byte length + bytes
local blob, pos, f = ARGV[4], 1, {}
while pos <= #blob do
  for k = 1, 3 do
    local len
    len, pos = struct.unpack('>I4', blob, pos)
    f[k] = string.sub(blob, pos, pos + len - 1)
    pos = pos + len
  end
  seq = seq + 1
  redis.call('XADD', KEYS[2], seq .. '-0', 't', f[1], 'c', f[2], 'e', f[3])
end
redis.call('SET', KEYS[1], seq)
if mark then redis.call('DEL', KEYS[5]) end
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2]) end
if ARGV[3] ~= '' then redis.call('XTRIM', KEYS[2], 'MINID', ARGV[3]) end
return seq
"""


# Shows whose log may hold live holds, per host pool: a sorted set, member the show id,
# score a time at or before the earliest expiry of any of its durable holds. A host writes
# it (only ever lowering a score) in the same pipeline as, and before, the append that
# logs a hold, and removes a show only when it has no holds (`ShowStore.unindex`). So every
# durable hold is found by whichever host owns its show after a crash or a change of the
# host set, even if nobody touches that show again.
def due_key(pool: str) -> str:
    return f"pool:{{{pool}}}:due"


# The removal spans two slots (the show's, the pool's), so it is three ordered steps with
# a mark in the show's slot (`unindexed_key`) that every append checks:
#   1. in the show's slot, if the log is still at the sequence seen without holds: mark
#      "pending:<token>";
#   2. ZREM the show from the pool's due index;
#   3. in the show's slot, if the mark is still "pending:<token>": make it "done:<token>";
#      if an append took it meanwhile (a hold logged after step 1), ZADD the show back
#      (score 0: due at once, the safe side).
# An append deletes the mark, and refuses (FENCED: reload, which re-writes the due entry
# before appending again) when the mark is not the one its own load saw: only a copy that
# loaded after step 3 ("done:") or between 1 and 3 may append straight on, and its due
# entry was written after the ZREM, or step 3 puts one back. A crash after 1 or 2 leaves a
# "pending:" mark: the next append of the show reloads once and clears it.
_MARK = """
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], 'pending:' .. ARGV[2])
return 1
"""

_UNMARKED = """
if redis.call('GET', KEYS[1]) == 'pending:' .. ARGV[1] then
  redis.call('SET', KEYS[1], 'done:' .. ARGV[1])
  return 1
end
return 0
"""


_APPEND_SHA = sha1(_APPEND.encode()).hexdigest()


class Fenced(Exception):
    """The log moved on without us: another instance of this show wrote to it."""


class UnknownShow(LookupError):
    pass


class _TornRead(RuntimeError):
    """The log changed under a load (entries it needed were trimmed); read again."""


_LOAD_ATTEMPTS = 5


class ShowStore:
    def __init__(self, redis: aioredis.Redis, show_id: str) -> None:
        self.redis = redis
        self.show_id = show_id
        self._keys = [seq_key(show_id), log_key(show_id), snap_key(show_id),
                      config_key(show_id), unindexed_key(show_id)]
        # The due-index mark (`unindexed_key`) the last load saw: appends check it.
        self.unindex_mark = b""
        # SHA-1 of the config a seat map with an empty log was built from (the fence of
        # its first append); "" once it came from a snapshot or a log.
        self.config_digest = ""
        self._append = redis.register_script(_APPEND)
        self.snapshot_version = 0  # version of the snapshot the last load started from

    async def append(
        self, expected_seq: int, entries: list[LogEntry], snapshot: Snapshot | None,
        trim_below: int | None,
    ) -> int:
        try:
            seq = int(await self._append(keys=self._keys, args=append_args(
                expected_seq, entries, snapshot, trim_below, self.config_digest,
                self.unindex_mark)))
        except ResponseError as exc:
            raise append_error(exc) from exc
        self.unindex_mark = b""  # the append cleared it
        return seq

    def queue_append(
        self, pipe: Pipeline, expected_seq: int, entries: list[LogEntry],
        snapshot: Snapshot | None, trim_below: int | None,
    ) -> None:
        """The same append, queued on a pipeline (a host writes many shows' appends in
        one round trip); its reply is the new sequence or a ResponseError for
        `append_error` (NoScriptError after a Redis restart: `load_script`, retry).
        EVALSHA by hand: redis-py's pipelined scripts cost a SCRIPT EXISTS round trip
        on every execute (and a cluster pipeline refuses its `evalsha` method, not the
        command: it routes EVALSHA by its keys)."""
        pipe.execute_command("EVALSHA", _APPEND_SHA, len(self._keys), *self._keys,
                             *append_args(expected_seq, entries, snapshot, trim_below,
                                          self.config_digest, self.unindex_mark))
        # A mark is cleared by the append; if the append fails, the host reloads.
        self.unindex_mark = b""

    @staticmethod
    async def load_script(redis: aioredis.Redis) -> None:
        await redis.script_load(_APPEND)

    async def unindex(self, pool: str, expected_seq: int) -> bool:
        """Take the show off its pool's due index if its log is still at `expected_seq`
        (the state in which the caller saw it without holds)."""
        token = secrets.token_hex(8)
        mark = self.redis.register_script(_MARK)
        if not int(await mark(keys=[seq_key(self.show_id), unindexed_key(self.show_id)],
                              args=[expected_seq, token])):
            return False
        await self.redis.zrem(due_key(pool), self.show_id)
        unmarked = self.redis.register_script(_UNMARKED)
        if not int(await unmarked(keys=[unindexed_key(self.show_id)], args=[token])):
            # a hold was logged meanwhile: back in the index (due now: the safe side)
            await self.redis.zadd(due_key(pool), {self.show_id: 0}, lt=True)
            return False
        return True

    async def load(self, plans: PlanCache | None = None) -> SeatMap:
        """Snapshot plus the log after it; raises UnknownShow if the show has no config.

        Safe while the show's actor writes: it replays up to the sequence read together
        with the snapshot (MGET is atomic), never past it, and if a trim took entries
        it needed meanwhile it starts over."""
        for _ in range(_LOAD_ATTEMPTS - 1):
            try:
                return await self._load_once(plans)
            except _TornRead:
                continue
        return await self._load_once(plans)

    async def _load_once(self, plans: PlanCache | None) -> SeatMap:
        raw_snap, raw_config, raw_seq, raw_mark = await self.redis.mget(
            snap_key(self.show_id), config_key(self.show_id), seq_key(self.show_id),
            unindexed_key(self.show_id),
        )
        if raw_snap:
            snap = _snapshot_decoder.decode(raw_snap)
            plan = plans.plan(snap.config.layout) if plans is not None else None
            seatmap = SeatMap.from_snapshot(snap, plan)
        elif raw_config:
            config = _config_decoder.decode(raw_config)
            plan = plans.plan(config.layout) if plans is not None else None
            seatmap = SeatMap(config, plan)
        else:
            raise UnknownShow(self.show_id)
        seq = int(raw_seq or 0)
        snapshot_version = seatmap.version
        start = seatmap.version + 1
        while start <= seq:
            chunk = await self.redis.xrange(
                log_key(self.show_id), f"{start}-0", f"{seq}-0", count=1000
            )
            if not chunk:
                break
            for entry_id, fields in chunk:
                if int(entry_id.split(b"-")[0]) != start:
                    raise _TornRead(f"show {self.show_id}: entry {start} is gone")
                cmd = c.command_decoder.decode(fields[b"c"])
                seatmap.apply(cmd, int(fields[b"t"]))
                start += 1
        if seatmap.version != seq:
            raise _TornRead(
                f"show {self.show_id}: replay reached version {seatmap.version}, log says {seq}"
            )
        self.snapshot_version = snapshot_version
        self.unindex_mark = raw_mark or b""
        self.config_digest = sha1(raw_config).hexdigest() \
            if seq == 0 and not raw_snap and raw_config else ""
        return seatmap

    async def events_since(self, seq: int, limit: int = 10_000) -> list[tuple[int, bytes]]:
        """Public events with sequence > seq (the live page's catch-up)."""
        rows = await self.redis.xrange(log_key(self.show_id), f"{seq + 1}-0", "+", count=limit)
        return [(int(i.split(b"-")[0]), f[b"e"]) for i, f in rows]


def append_args(expected_seq: int, entries: list[LogEntry], snapshot: Snapshot | None,
                trim_below: int | None, config_digest: str = "", unindex_mark: bytes = b""
                ) -> list[bytes | int | str]:
    # The entries travel as one length-prefixed argument the script splits (Redis's Lua
    # has `struct`, and its cmsgpack cannot read msgpack bin): packing three protocol
    # arguments per entry was ~12% of the actor's time under a rush.
    flat = bytearray()
    for e in entries:
        for field in (str(e.at).encode(), e.command, e.event):
            flat += _LEN.pack(len(field))
            flat += field
    return [
        expected_seq,
        _snapshot_encoder.encode(snapshot) if snapshot else b"",
        f"{trim_below}-0" if trim_below else "",
        bytes(flat),
        config_digest if expected_seq == 0 else "",
        unindex_mark,
    ]


def append_error(exc: Exception) -> Exception:
    """What an append's error reply means: Fenced when the log moved on, else itself."""
    if isinstance(exc, ResponseError) and str(exc).startswith("FENCED"):
        return Fenced(str(exc))
    return exc


class PlanCache:
    """One SeatPlan per distinct layout among the shows a host has loaded. Weak: a plan
    goes when the last show on its layout does."""

    def __init__(self, quoter: Quoter | None = None) -> None:
        self._plans: weakref.WeakValueDictionary[bytes, SeatPlan] = weakref.WeakValueDictionary()
        self.quoter = quoter

    def plan(self, layout: Layout) -> SeatPlan:
        key = blake2b(_layout_encoder.encode(layout), digest_size=16).digest()
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = SeatPlan(layout, self.quoter)
        return plan

    def __len__(self) -> int:
        return len(self._plans)


async def put_config(redis: aioredis.Redis, config: ShowConfig) -> None:
    await redis.set(config_key(config.show_id), msgspec.json.encode(config))
