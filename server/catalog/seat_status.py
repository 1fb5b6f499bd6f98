"""A show's seat statuses read straight from Redis, without waking its actor.

The actor writes a snapshot (msgpack `actors.seatmap.Snapshot`) every N log entries and a
public event (`{"type":"event","seq":N,"at":ms,"changes":[["A1","held"],...]}`) with every
entry. The statuses at sequence S are: the snapshot's (or, before the first snapshot, the
config layout's) statuses, with the changes of every event after it applied in order.

`read_seat_statuses(redis, show_id)` is the one function for this; the REST seat map and
the live WebSocket's "fresh snapshot" both use it.
"""
from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

from actors.commands import SeatStatus
from actors.layout import ShowConfig
from actors.seatmap import Snapshot
from actors.store import config_key, event_decoder, log_key, snap_key

_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)
_config_decoder = msgspec.json.Decoder(ShowConfig)

_CHUNK = 1000
_ATTEMPTS = 5


class SeatStatuses(msgspec.Struct):
    """Every seat's status as of log sequence `seq` (0 = nothing happened yet)."""

    config: ShowConfig
    seq: int
    status: dict[str, SeatStatus]

    def counts(self) -> dict[str, int]:
        out = {"free": 0, "held": 0, "booked": 0, "blocked": 0}
        for st in self.status.values():
            out[st] += 1
        return out


def statuses_from_snapshot(snap: Snapshot) -> dict[str, SeatStatus]:
    status: dict[str, SeatStatus] = {s.id: "free" for s in snap.config.layout.seats}
    for seat in snap.blocked:
        status[seat] = "blocked"
    for hold in snap.holds.values():
        for seat in hold.seats:
            status[seat] = "held"
    for booking in snap.bookings.values():
        for seat in booking.seats:
            status[seat] = "booked"
    return status


def statuses_from_config(config: ShowConfig) -> dict[str, SeatStatus]:
    return {s.id: "blocked" if s.blocked else "free" for s in config.layout.seats}


async def read_seat_statuses(redis: aioredis.Redis, show_id: str) -> SeatStatuses | None:
    """The show's statuses, or None when the show has no config (unknown show).

    Snapshot and log are read in separate calls; if the actor snapshotted and trimmed the
    log in between so that entries are missing, the read starts over (never a gap)."""
    for _ in range(_ATTEMPTS):
        # One MGET: both keys carry the show's hash tag `{<show_id>}` (one cluster slot).
        raw_snap, raw_config = await redis.mget(snap_key(show_id), config_key(show_id))
        if raw_snap:
            snap = _snapshot_decoder.decode(raw_snap)
            config, seq, status = snap.config, snap.version, statuses_from_snapshot(snap)
        elif raw_config:
            config = _config_decoder.decode(raw_config)
            seq, status = 0, statuses_from_config(config)
        else:
            return None
        seq = await _apply_log(redis, show_id, seq, status)
        if seq is not None:
            return SeatStatuses(config, seq, status)
    raise RuntimeError(f"show {show_id}: the log kept moving past its snapshot")


async def _apply_log(
    redis: aioredis.Redis, show_id: str, seq: int, status: dict[str, SeatStatus]
) -> int | None:
    """Apply the events after `seq` to `status`; return the last sequence applied, or
    None if the log no longer holds the entry right after `seq` (trimmed meanwhile)."""
    key = log_key(show_id)
    while True:
        rows = await redis.xrange(key, f"{seq + 1}-0", "+", count=_CHUNK)
        for entry_id, fields in rows:
            entry_seq = int(entry_id.split(b"-")[0])
            if entry_seq != seq + 1:
                return None
            for change in event_decoder.decode(fields[b"e"]).changes:
                if change.seat in status:
                    status[change.seat] = change.status
            seq = entry_seq
        if len(rows) < _CHUNK:
            return seq
