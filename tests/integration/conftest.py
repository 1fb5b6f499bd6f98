"""Helpers for the booking core's integration tests (real Redis, real Ray).

`shows` makes a fresh show and kills its (detached) actor when the test ends, so a test
never leaves an ~80 MB process behind for the rest of the session.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import ray
import redis.asyncio as aioredis

from actors import commands as c
from actors.client import ShowDirectory
from actors.layout import Layout, Rules
from actors.show_actor import NAMESPACE, ActorSettings, actor_name
from actors.store import ShowStore, event_decoder, log_key
from server.embedded import RedisServer


def get_actor(show_id: str) -> ray.actor.ActorHandle:
    """The show's live actor; raises ValueError if there is none (never creates one)."""
    return ray.get_actor(actor_name(show_id), namespace=NAMESPACE)


def actor_exists(show_id: str) -> bool:
    try:
        get_actor(show_id)
    except ValueError:
        return False
    return True


def kill_actor_for_good(show_id: str) -> None:
    try:
        ray.kill(get_actor(show_id), no_restart=True)
    except ValueError:
        pass


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
    """The comparable part of a SeatMap, in the same shape as ShowActor.inspect()."""
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
def shows(make_show) -> Iterator[Callable[..., Awaitable[str]]]:
    """Like make_show, but the actors of the shows made are killed at teardown."""
    made: list[str] = []

    async def make(layout: Layout | None = None, rules: Rules | None = None) -> str:
        show_id = await make_show(layout, rules)
        made.append(show_id)
        return show_id

    make.made = made  # type: ignore[attr-defined]  (tests register extra ids here)
    yield make
    for show_id in made:
        kill_actor_for_good(show_id)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may kill -9 and restart (port and data dir)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
async def private_redis_client(private_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(private_redis.url)
    yield client
    await client.aclose()


@pytest.fixture
def fast_settings() -> ActorSettings:
    return ActorSettings(snapshot_every=50, keep_log=100, passivate_after_s=30)


def new_directory(url: str, settings: ActorSettings) -> ShowDirectory:
    return ShowDirectory(url, settings)
