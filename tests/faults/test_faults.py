"""Faults during an on-sale rush, on a real multi-process platform: two web processes, a
two-node Ray cluster started with the Ray CLI, Redis with AOF fsync always
(tests/cluster/harness.py). One at a time, kill -9 (SIGKILL):

1. a web process: its customers fail over to the other one, its watchers reconnect there
   with `since`; it is restarted on the same port and serves again;
2. the process of the show's host (the owner by placement over the pool, its pid from
   Ray's actor table): Ray restarts it under its name, it reloads the show from Redis,
   the clients' in-flight call goes to the successor;
3. a host during a rush across 50 shows (its in-flight calls from both web processes
   are resent to the restarted host); holds taken on some of its shows just before the
   kill, shows nobody touches afterwards, still run out on time (the restarted host finds
   them in the pool's due index); every show's log replays, entry by entry, to the events
   it logged, never gives a seat two holders, and holds every acknowledged hold; each
   host's in-memory state equals that replay;
4. Redis: restarted on the same port and AOF dir; everything that was acknowledged is
   there.

After each: every payment intent reaches a final state (the reconciler the web processes
run) and `python -m server.audit` finds money, seats and bookings in agreement; no seat
sold twice; every booking a client got a 201 for exists with its seats
(`loadtest.run_locust`'s end-state check, plus the booking records and the show's log in
Redis); every hold either completed or expired (the shows' holds last 6 s; the test polls
for the seat map to have no held seat, with a deadline); and every watcher ends with a
seat map identical to the REST seat map at the same seq, with no gap in the sequence.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import redis.asyncio as aioredis

from actors import commands as c
from actors.placement import owner
from actors.seatmap import SeatMap
from actors.store import ShowStore, event_decoder, log_key
from tests.cluster.harness import Cluster
from tests.cluster.rush import (
    Rush,
    Watcher,
    acknowledged_holds,
    check_history,
    check_ledger,
    check_store,
    poll,
    publish,
    wait_no_holds,
    watchers_converge,
)

STEP = 30            # successes (2xx) the rush must make before the fault, and after it
HOLD_TTL_MS = 6_000  # abandoned holds run out this fast
SETTLE_S = 90        # generous for a slow 2-core machine, but bounded
QUIET_TTL_MS = 3_000  # holds on shows nobody touches after a host's kill
# How late after max(its expiry, the host back) such a hold may be freed: the timer wakes
# at the earliest expiry (and at least once a second) on a slow shared 2-core machine.
ON_TIME_MS = 3_000


async def _rush_through(cluster: Cluster, tmp_path: Path,
                        fault: Callable[[str], Awaitable[None]],
                        out: list[Rush] | None = None) -> Rush:
    urls = [w.url for w in cluster.web]
    rush_info = await publish(urls[0], cluster.redis_url, shows=1, rows=16, per_row=20,
                              hold_ttl_ms=HOLD_TTL_MS)
    show_id = rush_info["show_ids"][0]
    watchers = [Watcher([w.ws_url for w in cluster.web], show_id, first=i).start()
                for i in range(4)]  # two on each web process
    try:
        for w in watchers:
            await asyncio.wait_for(w.connected.wait(), 30)
        rush = Rush(urls, rush_info, tmp_path / "ledger.jsonl", clients=24)
        if out is not None:
            out.append(rush)
        running = asyncio.create_task(rush.run())
        try:
            await asyncio.wait_for(rush.reached(STEP).wait(), SETTLE_S)
            at_fault = rush.stats.ok()
            await fault(show_id)
            # The platform serves again: STEP more successes after the fault.
            await asyncio.wait_for(rush.reached(STEP).wait(), SETTLE_S)
        finally:
            rush.stop.set()
            await asyncio.wait_for(running, SETTLE_S)
        stats = rush.stats
        print(f"rush: {stats}; {at_fault} successes before the fault")
        assert stats.ok() >= at_fault + STEP, "the fault did not land mid-rush"
        assert stats.bookings > 0 and stats.holds > 0

        # Every hold completed or expired (the hosts' timers run them out).
        await wait_no_holds(cluster.redis_url, urls[0], [show_id], timeout=SETTLE_S)
        # No seat sold twice, no acknowledged booking lost: the load test's check...
        problems = await asyncio.to_thread(check_ledger, urls[0], rush)
        assert problems == [], problems
        # ...and the same from Redis itself (booking records, the show's log).
        await check_store(cluster.redis_url, rush, [show_id])
        # Watchers resync: same seq, same seat map as REST, no gap.
        await watchers_converge(watchers, urls, show_id, timeout=SETTLE_S)
        await reconciled_and_audited(cluster)
        rush.watcher_connects = [w.connects for w in watchers]  # type: ignore[attr-defined]
        return rush
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        for w in watchers:
            await w.close()


async def test_kill9_web_process(cluster: Cluster, tmp_path: Path):
    victim = cluster.web[1]
    rush_of: list[Rush] = []
    at_restart: list[int] = []

    async def fault(show_id: str) -> None:
        old_pid = victim.pid
        victim.kill9()
        assert not _alive(old_pid)
        failovers = rush_of[0].stats.failovers
        # The survivor serves everyone meanwhile...
        await asyncio.wait_for(rush_of[0].reached(STEP).wait(), SETTLE_S)
        assert rush_of[0].stats.failovers > failovers, "no client noticed the dead process"
        # ...then the dead one is restarted on its port and takes its customers back.
        await asyncio.to_thread(cluster.restart_web, 1)
        at_restart.append(rush_of[0].stats.by_url[victim.url])

    rush = await _rush_through(cluster, tmp_path, fault, rush_of)
    assert victim.starts == 2
    assert rush.stats.by_url[victim.url] > at_restart[0], \
        "the restarted web process answered no customer"
    assert rush.stats.errors == {}, rush.stats.errors
    # The watchers on the killed process (odd ones: they started on web 1) reconnected
    # elsewhere with `since` and still matched the REST seat map (checked above).
    assert all(n > 1 for n in rush.watcher_connects[1::2]), rush.watcher_connects


async def test_kill9_show_host(cluster: Cluster, tmp_path: Path):
    probe = cluster.probe
    killed: dict[str, object] = {}

    async def fault(show_id: str) -> None:
        name = owner(show_id, cluster.pool().hosts)
        [row] = [a for a in await asyncio.to_thread(probe.actors, name) if a["name"] == name]
        old_pid = row["pid"]
        # The host really is the show's: the show is in its memory, in no other host's.
        loaded = await asyncio.to_thread(probe.loaded, cluster.pool().hosts)
        assert [h for h, w in loaded.items() if show_id in w["shows"]] == [name], loaded
        assert loaded[name]["pid"] == old_pid
        os.kill(old_pid, signal.SIGKILL)

        async def replaced() -> bool:
            rows = [a for a in await asyncio.to_thread(probe.actors, name) if a["name"] == name]
            return bool(rows) and rows[0]["pid"] not in (None, old_pid)

        await poll(replaced, SETTLE_S, "Ray to restart the show host", interval=0.5)
        assert not _alive(old_pid)
        killed.update(show_id=show_id, name=name, old_pid=old_pid)

    rush = await _rush_through(cluster, tmp_path, fault)
    # The clients' batches went to the successor: nobody was told anything but an answer.
    assert rush.stats.errors == {}, rush.stats.errors
    # The successor (a new process under the same name) has the show exactly as its log
    # replays.
    show_id, name = str(killed["show_id"]), str(killed["name"])
    loaded = await asyncio.to_thread(probe.loaded, [name])
    assert loaded[name]["pid"] != killed["old_pid"]
    inside = (await asyncio.to_thread(probe.inspect, name, [show_id]))[show_id]
    client = aioredis.Redis.from_url(cluster.redis_url)
    try:
        seatmap = await ShowStore(client, show_id).load()
    finally:
        await client.aclose()
    assert inside["version"] == seatmap.version
    assert inside["status"] == seatmap.status
    assert set(inside["bookings"]) == set(seatmap.bookings) and inside["holds"] == {}


async def test_kill9_host_during_a_rush_across_50_shows(cluster: Cluster, tmp_path: Path):
    urls = [w.url for w in cluster.web]
    pool = cluster.pool()
    assert len(pool.hosts) == 2, pool
    victim = pool.hosts[0]
    rush_info = await publish(urls[0], cluster.redis_url, shows=50, rows=4, per_row=10,
                              hold_ttl_ms=HOLD_TTL_MS)
    shows = rush_info["show_ids"]
    # The kill meets the rush: the victim owns a share of the rushed shows (placement is
    # a pure hash; with 50 shows on 2 hosts this checks the set-up, it is no bet).
    assert sum(owner(s, pool.hosts) == victim for s in shows) >= 5
    # Shows of the victim that get one hold each just before the kill, and nothing after.
    quiet: list[str] = []
    for _ in range(20):
        more = await publish(urls[0], cluster.redis_url, shows=4, rows=4, per_row=10,
                             hold_ttl_ms=QUIET_TTL_MS, hold_max_lifetime_ms=QUIET_TTL_MS)
        quiet += [s for s in more["show_ids"] if owner(s, pool.hosts) == victim]
        if len(quiet) >= 3:
            break
    assert len(quiet) >= 3
    # A socket timeout beyond the XREAD BLOCK below (redis-py's default is 5 s).
    redis = aioredis.Redis.from_url(cluster.redis_url, socket_timeout=SETTLE_S + 30)
    try:
        rush = Rush(urls, rush_info, tmp_path / "ledger.jsonl", clients=24)
        running = asyncio.create_task(rush.run())
        held: dict[str, tuple[int, int]] = {}  # quiet show -> (seq of its hold, expiry ms)
        try:
            await asyncio.wait_for(rush.reached(STEP).wait(), SETTLE_S)
            [row] = [a for a in await asyncio.to_thread(cluster.probe.actors, victim)
                     if a["name"] == victim]

            async with aiohttp.ClientSession() as session:
                async def hold(show_id: str) -> None:
                    async with session.post(f"{urls[1]}/api/shows/{show_id}/holds",
                                            json={"seats": ["A1"]}) as resp:
                        assert resp.status == 201, await resp.text()
                    seatmap = await ShowStore(redis, show_id).load()
                    [record] = seatmap.holds.values()
                    held[show_id] = (seatmap.version, record.expires_ms)

                await asyncio.gather(*(hold(s) for s in quiet))
            os.kill(row["pid"], signal.SIGKILL)
            killed_ms = time.time_ns() // 1_000_000
            at_kill = rush.stats.ok()
            # The quiet holds were live in the host that died (in its timer, not yet run).
            assert killed_ms < min(e for _, e in held.values()), "too slow to test expiry"

            async def replaced() -> bool:
                rows = [a for a in await asyncio.to_thread(cluster.probe.actors, victim)
                        if a["name"] == victim]
                return bool(rows) and rows[0]["pid"] not in (None, row["pid"])

            await poll(replaced, SETTLE_S, "Ray to restart the host", interval=0.2)
            back_ms = time.time_ns() // 1_000_000  # the host was back by now
            await asyncio.wait_for(rush.reached(STEP).wait(), SETTLE_S)
        finally:
            rush.stop.set()
            await asyncio.wait_for(running, SETTLE_S)
        print(f"rush: {rush.stats}; host back {back_ms - killed_ms} ms after the kill")
        assert not _alive(row["pid"])
        assert rush.stats.ok() >= at_kill + STEP, "the kill did not land mid-rush"
        assert rush.stats.errors == {}, rush.stats.errors  # resent, answered, never lost

        # The quiet shows' holds run out on time with nobody touching those shows: the
        # next entry of each log, awaited, is the expiry - never early, and no later than
        # a moment after max(its time, the host back).
        for show_id, (seq, expires_ms) in held.items():
            reply = await redis.xread({log_key(show_id): f"{seq}-0"}, count=1,
                                      block=SETTLE_S * 1000)
            assert reply, f"{show_id}: the hold never expired"
            [(_, [(_, fields)])] = reply
            cmd = c.command_decoder.decode(fields[b"c"])
            assert isinstance(cmd, c.Expire), cmd
            at = int(fields[b"t"])
            assert at >= expires_ms, f"{show_id}: expired {expires_ms - at} ms early"
            late = at - max(expires_ms, back_ms)
            assert late <= ON_TIME_MS, f"{show_id}: expired {late} ms late"
            assert event_decoder.decode(fields[b"e"]).changes == [c.SeatChange("A1", "free")]

        await wait_no_holds(cluster.redis_url, urls[0], shows, timeout=SETTLE_S)
        problems = await asyncio.to_thread(check_ledger, urls[0], rush)
        assert problems == [], problems
        await check_store(cluster.redis_url, rush, shows)  # one owner a seat, no booking lost
        await reconciled_and_audited(cluster)
        # The logs' history never gives a seat two holders, and every acknowledged hold is
        # logged with the seats its client was told.
        logged = await check_history(cluster.redis_url, shows + quiet)
        acked = acknowledged_holds(rush)
        assert sum(map(len, acked.values())) == rush.stats.holds > 0
        for show_id, holds in acked.items():
            for hold_id, seats in holds.items():
                assert logged[show_id].get(hold_id) == seats, f"{show_id}: {hold_id} lost"
        # Every show's state in its host is exactly a replay of its log.
        by_host: dict[str, list[str]] = {}
        for show_id in shows + quiet:
            by_host.setdefault(owner(show_id, pool.hosts), []).append(show_id)
        for host, ids in by_host.items():
            inside = await asyncio.to_thread(cluster.probe.inspect, host, ids)
            for show_id in ids:
                replay = _state(await ShowStore(redis, show_id).load())
                assert {k: inside[show_id][k] for k in replay} == replay, show_id
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        await redis.aclose()


async def reconciled_and_audited(cluster: Cluster) -> None:
    """Every payment intent final (the reconciler's work), then the audit: no captured
    payment without its booking, no booking without its capture or its seats."""
    redis = aioredis.Redis.from_url(cluster.redis_url)
    try:
        async def closed() -> bool:
            return await redis.zcard("intents:open") == 0

        await poll(closed, SETTLE_S, "every payment intent to reach a final state")
    finally:
        await redis.aclose()
    code, report = await asyncio.to_thread(cluster.audit)
    print(report)
    assert code == 0, report


def _state(seatmap: SeatMap) -> dict[str, Any]:
    return {"version": seatmap.version, "status": dict(seatmap.status),
            "holds": {k: msgspec.to_builtins(v) for k, v in seatmap.holds.items()},
            "bookings": {k: msgspec.to_builtins(v) for k, v in seatmap.bookings.items()}}


async def test_kill9_redis(cluster: Cluster, tmp_path: Path):
    rush_of: list[Rush] = []

    async def fault(show_id: str) -> None:
        assert cluster.redis is not None
        cluster.redis.kill9()
        # An outage longer than the web tier's Redis retries (~2 s): requests meanwhile
        # get 503 + Retry-After, the actor's batch loop retries, the live feeds reconnect.
        down = asyncio.Event()
        rush_of[0].on_error = lambda status: down.set() if status == 503 else None
        try:
            await asyncio.wait_for(down.wait(), 30)
        finally:
            rush_of[0].on_error = None
        await asyncio.to_thread(cluster.restart_redis)  # same port, same AOF

    rush = await _rush_through(cluster, tmp_path, fault, rush_of)
    # While Redis was down: 503s (try again), never a 500. A checkout that Redis failed
    # after it claimed its Idempotency-Key has an unknown outcome (it may have paid): its
    # key answers 409 checkout_in_progress until the claim lapses (bookings.PENDING_TTL_S)
    # and a retry then resumes it - longer than these clients wait.
    assert rush.stats.errors, "no client met the outage"
    unexpected = [k for k in rush.stats.errors
                  if not k.endswith(" 503") and k != "checkout:checkout_in_progress 409"]
    assert unexpected == [], rush.stats.errors


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
