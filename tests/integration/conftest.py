"""Helpers for the booking core's integration tests (real Redis, real Ray).

`shows` makes a fresh show (its host keeps it in memory until it passivates: a show
costs kilobytes there, not a process).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors import commands as c, redis_conn
from actors.store import Event, LogEntry, ShowStore, event_decoder, event_encoder, log_key
from server.core.embedded import RedisServer
from tests.show_actors import gone, host_of, kill9, raw_apply, restarted  # noqa: F401


async def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    """Bounded polling, for conditions Ray offers no event for."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def state_of(seatmap) -> dict:
    """The comparable part of a SeatMap, in the same shape as ShowHost.inspect()."""
    return {
        "version": seatmap.version,
        "status": dict(seatmap.status),
        "holds": {k: msgspec.to_builtins(v) for k, v in seatmap.holds.items()},
        "bookings": {k: msgspec.to_builtins(v) for k, v in seatmap.bookings.items()},
    }


def comparable(inspected: dict) -> dict:
    return {k: inspected[k] for k in ("version", "status", "holds", "bookings")}


async def replayed_state(redis: aioredis.Redis, show_id: str) -> dict:
    """The show rebuilt independently of any actor: snapshot + log replay."""
    return state_of(await ShowStore(redis, show_id).load())


async def read_log(redis: aioredis.Redis, show_id: str) -> list[dict]:
    rows = await redis.xrange(log_key(show_id), "-", "+")
    return [decode_entry(i, f) for i, f in rows]


def decode_entry(entry_id: bytes, fields: dict) -> dict:
    return {
        "seq": int(entry_id.split(b"-")[0]),
        "at": int(fields[b"t"]),
        "command": c.command_decoder.decode(fields[b"c"]),
        "event": event_decoder.decode(fields[b"e"]),
    }


def assert_one_owner_per_seat(state: dict) -> None:
    owners: dict[str, str] = {}
    for kind in ("holds", "bookings"):
        for rid, rec in state[kind].items():
            for seat in rec["seats"]:
                assert seat not in owners, f"seat {seat} owned by {owners[seat]} and {rid}"
                owners[seat] = rid
    for seat, status in state["status"].items():
        if seat in owners:
            expected = "held" if owners[seat] in state["holds"] else "booked"
            assert status == expected, (seat, status, owners[seat])
        else:
            assert status in ("free", "blocked"), (seat, status)


@pytest.fixture
def shows(make_show) -> Callable[..., Awaitable[str]]:
    """make_show, under the name the booking-core tests use."""
    return make_show


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may kill -9 and restart (port and data dir)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
async def private_redis_client(private_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = redis_conn.async_client(private_redis.url)
    yield client
    await client.aclose()


async def append_behind_the_actors_back(
    redis: aioredis.Redis, show_id: str, cmds: list[c.Command], at: int
) -> tuple[int, list[c.Result]]:
    """Write commands to the show's log the way a host would (load, apply, append at the
    loaded sequence), without going through the show's host. Returns (new seq, results)."""
    store = ShowStore(redis, show_id)
    seatmap = await store.load()
    base = seatmap.version
    entries, results = [], []
    for cmd in cmds:
        outcome = seatmap.apply(cmd, at)
        results.append(outcome.result)
        if outcome.changed:
            event = Event(seatmap.version, at, outcome.changes)
            entries.append(LogEntry(at, c.command_encoder.encode(cmd), event_encoder.encode(event)))
    return await store.append(base, entries, None, None), results


class Stream:
    """Workers that hold, confirm and release their own seats in a loop, recording every
    answer, so a test can break things in the middle and check the outcome exactly."""

    def __init__(self, submit: Callable[[c.Command], Awaitable[c.Result]], seats: list[str],
                 workers: int, steps: int, tag: str = "") -> None:
        self.submit = submit
        self.seats = seats
        self.workers = workers
        self.steps = steps
        self.tag = tag or uuid.uuid4().hex[:6]
        self.acked = 0
        self.answers: list[tuple[c.Command, c.Result]] = []
        self._milestones: list[tuple[int, asyncio.Event]] = []
        # Cleared, it holds back new commands (those already sent stay in flight), so a
        # test can make sure the rest of the stream meets whatever it breaks.
        self.gate = asyncio.Event()
        self.gate.set()

    def reached(self, count: int) -> asyncio.Event:
        event = asyncio.Event()
        self._milestones.append((count, event))
        self._check()
        return event

    def _check(self) -> None:
        for count, event in self._milestones:
            if self.acked >= count:
                event.set()

    async def _send(self, cmd: c.Command) -> c.Result:
        await self.gate.wait()
        result = await self.submit(cmd)
        self.answers.append((cmd, result))
        self.acked += 1
        self._check()
        return result

    async def _worker(self, w: int) -> None:
        mine = self.seats[w::self.workers]
        for i in range(self.steps):
            seats = mine[2 * i:2 * i + 2]
            hold_id, token = f"{self.tag}-h{w}-{i}", f"{self.tag}-t{w}"
            held = await self._send(c.Hold(f"{hold_id}:hold", hold_id, token, seats))
            if not isinstance(held, c.Held):
                continue
            if i % 3 == 0:
                await self._send(c.Release(f"{hold_id}:release", hold_id, token))
            elif i % 3 == 1:
                await self._send(c.Confirm(f"{hold_id}:confirm", hold_id, token,
                                           f"{hold_id}-b", "pay"))

    async def run(self) -> None:
        await asyncio.gather(*(self._worker(w) for w in range(self.workers)))

    def expected(self) -> tuple[dict[str, dict], dict[str, list[str]]]:
        """(holds the clients were told they still have, bookings they were told they have)."""
        holds: dict[str, dict] = {}
        bookings: dict[str, list[str]] = {}
        for _, res in self.answers:
            if isinstance(res, c.Held):
                holds[res.hold_id] = {"seats": res.seats, "expires_ms": res.expires_at_ms}
            elif isinstance(res, c.Released):
                del holds[res.hold_id]
            elif isinstance(res, c.Confirmed):
                del holds[res.hold_id]
                bookings[res.booking_id] = res.seats
        return holds, bookings

    def rejections(self) -> list[tuple[c.Command, c.Result]]:
        return [(cmd, res) for cmd, res in self.answers if isinstance(res, c.Rejected)]

    def assert_reflected_exactly(self, state: dict) -> None:
        """Every acknowledged success is in the state, and nothing else is."""
        holds, bookings = self.expected()
        assert {k: {"seats": v["seats"], "expires_ms": v["expires_ms"]}
                for k, v in state["holds"].items()} == holds
        assert {k: v["seats"] for k, v in state["bookings"].items()} == bookings


async def next_log_entry(redis: aioredis.Redis, show_id: str, after_seq: int,
                         timeout_s: float = 10.0) -> dict:
    """Block (XREAD BLOCK) until the log has an entry after `after_seq`; return it."""
    try:
        reply = await redis.xread({log_key(show_id): f"{after_seq}-0"}, count=1,
                                  block=int(timeout_s * 1000))
    except RedisTimeoutError:
        reply = None
    assert reply, f"no log entry after seq {after_seq} within {timeout_s}s"
    [(_, [(entry_id, fields)])] = reply
    return decode_entry(entry_id, fields)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
