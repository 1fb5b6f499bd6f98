"""The pool's due index and a show leaving it (`ShowStore.unindex`): the removal and the
show's log are in two slots, so it is ordered steps with a mark every append checks. A
durable hold is never left out of the index, whatever the interleaving."""
from __future__ import annotations

import time
import uuid

import pytest

from actors import commands as c
from actors.store import Event, Fenced, LogEntry, ShowStore, due_key, event_encoder, unindexed_key


def _hold_entry(seatmap, n: int) -> list[LogEntry]:
    at = time.time_ns() // 10**6
    cmd = c.Hold(f"h{n}", f"hold-{n}", f"tok-{n}", [f"A{n}"])
    outcome = seatmap.apply(cmd, at)
    return [LogEntry(at, c.command_encoder.encode(cmd),
                     event_encoder.encode(Event(seatmap.version, at, outcome.changes)))]


async def test_unindex_takes_a_show_without_holds_off(shows, redis) -> None:
    show_id, pool = await shows(), f"due-{uuid.uuid4().hex[:8]}"
    await redis.zadd(due_key(pool), {show_id: 1})
    store = ShowStore(redis, show_id)
    seatmap = await store.load()
    assert await store.unindex(pool, seatmap.version)
    assert await redis.zscore(due_key(pool), show_id) is None
    # a log that moved on since the caller saw it without holds keeps its entry
    await redis.zadd(due_key(pool), {show_id: 1})
    assert not await store.unindex(pool, seatmap.version + 1)
    assert await redis.zscore(due_key(pool), show_id) == 1


async def test_a_hold_indexed_before_the_removal_and_logged_after_is_fenced(
        shows, redis) -> None:
    """A writer's due entry goes in before its append (two slots, two commands): if the
    whole removal runs between the two, the append is refused, and the writer's reload
    and retry write the entry again."""
    show_id, pool = await shows(), f"due-{uuid.uuid4().hex[:8]}"
    writer, evictor = ShowStore(redis, show_id), ShowStore(redis, show_id)
    seatmap = await writer.load()
    await redis.zadd(due_key(pool), {show_id: 5}, lt=True)        # the writer's entry...
    assert await evictor.unindex(pool, (await evictor.load()).version)  # ...removed
    with pytest.raises(Fenced):                                     # ...so no unindexed hold
        await writer.append(seatmap.version, _hold_entry(seatmap, 1), None, None)
    seatmap = await writer.load()                                   # the host's retry
    await redis.zadd(due_key(pool), {show_id: 5}, lt=True)
    assert await writer.append(seatmap.version, _hold_entry(seatmap, 1), None, None) == 1
    assert await redis.zscore(due_key(pool), show_id) == 5
    assert await redis.get(unindexed_key(show_id)) is None          # the append cleared it
    # The next removal against the old sequence changes nothing.
    assert not await evictor.unindex(pool, 0)
    assert await redis.zscore(due_key(pool), show_id) == 5


async def test_a_copy_loaded_after_the_removal_appends_at_once(shows, redis) -> None:
    show_id, pool = await shows(), f"due-{uuid.uuid4().hex[:8]}"
    store = ShowStore(redis, show_id)
    assert await store.unindex(pool, (await store.load()).version)
    later = ShowStore(redis, show_id)
    seatmap = await later.load()
    assert await later.append(seatmap.version, _hold_entry(seatmap, 2), None, None) == 1
    # and its next append (no mark any more) too
    assert await later.append(seatmap.version, _hold_entry(seatmap, 3), None, None) == 2
