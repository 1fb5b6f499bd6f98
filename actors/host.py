"""A show host: one Ray actor (one OS process) that keeps many shows in memory.

A show is still an actor - one seat map, one ordered stream of commands, one writer - but
a virtual one, as Orleans grains and Akka actors are: it lives inside a host, is activated
by its first command (a Redis read: snapshot + log tail, ~2.5 ms, no process start) and is
dropped from memory when idle with no holds. A Ray actor per show would cost a process
(~50 MB, ~0.5 s to start) per show open for booking.

One call carries commands for many shows. The host applies each show's commands in order
(under that show's lock), then writes every show's new log entries in one pipeline of
per-show fenced appends; a show whose append was fenced or failed reloads and retries
alone. Holds run out on one timer per host (a heap of the shows' next expiries), and a
restarted host finds the shows it owns that still have holds through the pool's due index
(actors/store.py), so they expire on time even if nobody touches them again.
"""
from __future__ import annotations

import asyncio
import heapq
import importlib
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import ray
from redis.exceptions import NoScriptError, RedisError

from . import commands as c
from . import placement, redis_conn
from .channel import Listener
from .pool import ActorSettings, read_pool
from .seatmap import Quoter, SeatMap, Snapshot
from .store import (
    Event,
    Fenced,
    LogEntry,
    PlanCache,
    ShowStore,
    UnknownShow,
    append_error,
    due_key,
    event_encoder,
    seq_key,
)

log = logging.getLogger(__name__)


_SWEEP = c.Expire("expire")
_HOUSEKEEPING_S = 1.0


def load_quoter(path: str) -> Quoter | None:
    """The quoter named "module:function" ("" = holds are not priced)."""
    if not path:
        return None
    module, _, name = path.partition(":")
    quoter: Quoter = getattr(importlib.import_module(module), name)
    return quoter


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Slot:
    """One show in a host: its seat map (None until loaded, or after a failed write threw
    it away) and what the host keeps about it."""

    __slots__ = ("show_id", "store", "lock", "map", "users", "dead", "missing",
                 "last_snapshot", "last_snapshot_at", "last_call", "batches", "commands",
                 "indexed_due", "timer_due", "unreplicated")

    def __init__(self, show_id: str, store: ShowStore) -> None:
        self.show_id = show_id
        self.store = store
        self.lock = asyncio.Lock()
        self.map: SeatMap | None = None
        self.users = 0            # calls holding or waiting for the lock
        self.dead = False         # evicted: a caller that waited for it must look again
        self.missing = False      # no such show in Redis
        self.last_snapshot = 0
        self.last_snapshot_at = 0.0
        self.last_call = time.monotonic()
        self.batches = 0          # calls that carried commands for this show
        self.commands = 0         # commands for this show
        self.indexed_due: int | None = None  # what this host last wrote to the due index
        self.timer_due: int | None = None    # the earliest entry of this show in the heap
        # Loaded from a master that may hold writes its replicas lack (a write whose WAIT
        # failed): answers from memory wait for a replica too, until one WAIT succeeds.
        self.unreplicated = True


class _Staged(msgspec.Struct):
    slot: Slot
    results: list[c.Result]
    due: int | None       # written to the due index before the append, if not None
    snapshot: bool


# Ray pickles this class by value (the decorator replaces the module attribute), so its
# methods reach shared objects through modules, never module-level globals.
@ray.remote(num_cpus=0, max_restarts=-1)
class ShowHost:
    def __init__(self, pool: str, name: str, redis_url: str, settings: ActorSettings) -> None:
        self.pool = pool
        self.name = name
        self.settings = settings
        # A hung (not crashed) Redis must surface as an error the batch loop retries.
        self._redis = redis_conn.async_client(redis_url, socket_timeout=10,
                                              socket_connect_timeout=5)
        # A write is acknowledged only once this many replicas have it (a Redis Cluster:
        # asynchronous replication loses what a master acknowledged and then lost in a
        # failover; DESIGN "Redis Cluster").
        self._wait_replicas, self._wait_ms = redis_conn.replica_wait(self._redis)
        self._due_key = due_key(pool)
        self._slots: dict[str, Slot] = {}
        self._plans = PlanCache(load_quoter(settings.quoter))
        self._heap: list[tuple[int, str]] = []
        self._wake = asyncio.Event()
        self._hosts: list[str] = []   # the pool as this host last read it
        self._epoch = 0
        self.calls = 0
        self.commands = 0
        actors_log = logging.getLogger("actors")
        actors_log.setLevel(settings.log_level)
        if not logging.getLogger().handlers and not actors_log.handlers:
            # Ray leaves a worker's logging unconfigured (only WARNING and up would reach
            # stderr): write ours to stderr, which Ray keeps as the worker's .err file.
            to_stderr = logging.StreamHandler()
            to_stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            actors_log.addHandler(to_stderr)
        # The timer starts with the host, not with its first call: a host Ray restarts
        # after a crash gets no call, yet the holds of its shows must still run out.
        # (Ray runs an async actor's __init__ on its event loop.)
        self._timer = asyncio.get_running_loop().create_task(self._timer_loop())
        # The data path (actors/channel.py): commands come over a stream, not Ray calls.
        self._ip = ray.util.get_node_ip_address()
        self._listener = Listener(self.apply)
        self._listening = asyncio.get_running_loop().create_task(self._listener.start(self._ip))

    # --- remote API ------------------------------------------------------------------

    async def apply(self, blob: bytes) -> bytes:
        """Apply a msgpack `Call`; reply with a msgpack `Reply`. Reached over the host's
        stream (`endpoint`), or as a Ray call where the stream cannot be reached."""
        call = c.call_decoder.decode(blob)
        if call.epoch > self._epoch:
            await self._refresh_pool()
        self.calls += 1
        work: dict[str, list[c.Command]] = {}
        spans: list[tuple[str, int, int] | None] = []
        for group in call.groups:
            if not self._owns(group.show_id):
                spans.append(None)
                continue
            cmds = work.setdefault(group.show_id, [])
            spans.append((group.show_id, len(cmds), len(cmds) + len(group.commands)))
            cmds.extend(group.commands)
            self.commands += len(group.commands)
        done = await self._locked_commit(work) if work else {}
        if log.isEnabledFor(logging.DEBUG):
            for show_id, cmds in work.items():
                log.debug("show %s: batch of %d commands, rids %s", show_id, len(cmds),
                          ",".join(dict.fromkeys(x.rid for x in cmds if x.rid)) or "-")
        return c.command_encoder.encode(c.Reply(self._epoch, [
            None if span is None else done[span[0]][span[1]:span[2]] for span in spans]))

    async def endpoint(self) -> tuple[str, int, bytes]:
        """Where this host takes command batches directly: (address, port, token)."""
        port = await asyncio.shield(self._listening)
        return self._ip, port, self._listener.token

    async def inspect(self, show_id: str) -> dict:
        """The show as this host has it in memory, loading it if need be (tests, admin)."""
        slot = await self._enter(show_id)
        try:
            if slot.map is None:
                await self._load(slot)
            seatmap = slot.map
            assert seatmap is not None
            return {
                "version": seatmap.version,
                "status": dict(seatmap.status),
                "holds": {k: msgspec.to_builtins(v) for k, v in seatmap.holds.items()},
                "bookings": {k: msgspec.to_builtins(v) for k, v in seatmap.bookings.items()},
                "calls": slot.batches,
                "commands": slot.commands,
            }
        finally:
            self._leave([slot])

    async def loaded(self) -> list[str]:
        """The shows in this host's memory."""
        return [s for s, slot in self._slots.items() if slot.map is not None]

    async def stats(self) -> dict:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {"name": self.name, "pid": os.getpid(), "epoch": self._epoch,
                "shows": sum(1 for s in self._slots.values() if s.map is not None),
                "layouts": len(self._plans), "calls": self.calls, "commands": self.commands,
                "timers": len(self._heap), "rss": rss}

    async def pid(self) -> int:
        return os.getpid()

    async def node(self) -> str:
        """The Ray node this host runs on."""
        return ray.get_runtime_context().get_node_id()

    async def forget(self, show_id: str) -> None:
        """Drop a show from memory now (its state is in Redis); tests clean up with it."""
        slot = self._slots.get(show_id)
        if slot is not None:
            await self._evict(slot, unindex=False)

    # --- ownership -------------------------------------------------------------------

    def _owns(self, show_id: str) -> bool:
        # With no pool to go by (Redis unreadable at start), serve: fencing keeps it safe.
        return not self._hosts or placement.owner(show_id, self._hosts) == self.name

    async def _refresh_pool(self) -> None:
        try:
            pool = await read_pool(self._redis, self.pool)
        except (RedisError, OSError) as exc:
            log.warning("host %s: cannot read the pool (%s)", self.name, exc)
            return
        if pool is None or pool.epoch <= self._epoch:
            return
        first = not self._hosts
        self._epoch, self._hosts = pool.epoch, list(pool.hosts)
        if not first:
            log.info("host %s: pool epoch %d, %d hosts", self.name, pool.epoch, len(pool.hosts))
        # Shows that moved away leave (their new owner finds their holds in the index);
        # shows that moved here with holds are found in the index and timed.
        for slot in [s for s in self._slots.values() if not self._owns(s.show_id)]:
            await self._evict(slot, unindex=False)
        await self._adopt_indexed()

    async def _adopt_indexed(self) -> None:
        """Time every show of the due index that is this host's and not yet in memory."""
        try:
            rows = await self._redis.zrange(self._due_key, 0, -1, withscores=True)
        except (RedisError, OSError) as exc:
            log.warning("host %s: cannot read the due index (%s)", self.name, exc)
            return
        for raw, score in rows:
            show_id = raw.decode()
            if self._owns(show_id) and show_id not in self._slots:
                slot = self._slot(show_id)
                self._push(slot, int(score))

    # --- applying and writing ---------------------------------------------------------

    def _slot(self, show_id: str) -> Slot:
        slot = self._slots.get(show_id)
        if slot is None:
            slot = self._slots[show_id] = Slot(show_id, ShowStore(self._redis, show_id))
        return slot

    async def _enter(self, show_id: str) -> Slot:
        while True:
            slot = self._slot(show_id)
            slot.users += 1
            await slot.lock.acquire()
            if not slot.dead:
                return slot
            slot.lock.release()
            slot.users -= 1

    def _leave(self, slots: Iterable[Slot]) -> None:
        for slot in slots:
            slot.lock.release()
            slot.users -= 1
            if (slot.map is None and slot.users == 0 and not slot.dead
                    and (slot.timer_due is None or slot.missing)):
                # Never loaded (an unknown show) or thrown away: nothing to keep.
                slot.dead = True
                self._slots.pop(slot.show_id, None)

    async def _locked_commit(self, work: dict[str, list[c.Command]]) -> dict[str, list[c.Result]]:
        # Locks in one global order (sorted ids): calls that share shows cannot deadlock.
        slots = []
        try:
            for show_id in sorted(work):
                slots.append(await self._enter(show_id))
            return await self._commit({slot: work[slot.show_id] for slot in slots})
        finally:
            self._leave(slots)

    async def _commit(self, batches: dict[Slot, list[c.Command]]) -> dict[str, list[c.Result]]:
        out = await self._commit_once(batches)
        failed = [slot for slot in batches if slot.show_id not in out]
        if failed:
            alone = await asyncio.gather(*(self._commit_alone(s, batches[s]) for s in failed))
            for slot, results in zip(failed, alone, strict=True):
                out[slot.show_id] = results
        mono = time.monotonic()
        for slot, cmds in batches.items():
            if cmds:
                slot.last_call = mono
                slot.batches += 1
                slot.commands += len(cmds)
            self._schedule(slot)
        return out

    async def _commit_alone(self, slot: Slot, cmds: list[c.Command]) -> list[c.Result]:
        for attempt in range(self.settings.persist_attempts):
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
            done = await self._commit_once({slot: cmds})
            if slot.show_id in done:
                return done[slot.show_id]
        return [c.Rejected("unavailable", "the show could not be saved; try again")] * len(cmds)

    async def _commit_once(self, batches: dict[Slot, list[c.Command]]) -> dict[str, list[c.Result]]:
        """Apply every show's commands and write them all in one pipeline. Returns the
        results of the shows that are durable (or need no write); a show missing from the
        answer failed and has forgotten its in-memory state."""
        out: dict[str, list[c.Result]] = {}
        cold = [slot for slot in batches if slot.map is None]
        if cold:  # activation: a Redis read per show, all at once
            loads = await asyncio.gather(*(self._load(s) for s in cold), return_exceptions=True)
            for slot, loaded in zip(cold, loads, strict=True):
                if isinstance(loaded, UnknownShow):
                    slot.missing = True
                    out[slot.show_id] = [c.Rejected("not_found", f"no show {slot.show_id!r}")
                                         ] * len(batches[slot])
                    await self._drop_from_index(slot.show_id)
                elif isinstance(loaded, BaseException):
                    log.warning("show %s: cannot load (%s)", slot.show_id, loaded)
        at = now_ms()
        pipe = self._redis.pipeline(transaction=False)
        staged: list[_Staged] = []
        # Refusals answered from memory with nothing to write: the fenced append cannot
        # tell us this copy is current (while the pool changes, the show's old owner may
        # still have written a hold we are asked to release), so its sequence is read in
        # the same pipeline, and a copy behind it reloads and answers again.
        unsure: list[tuple[Slot, int, list[c.Result]]] = []
        for slot, cmds in batches.items():
            seatmap = slot.map
            if seatmap is None:
                continue
            base = seatmap.version
            entries: list[LogEntry] = []
            _run(seatmap, _SWEEP, at, entries)  # a seat whose hold ran out is free now
            results = [_run(seatmap, cmd, at, entries) for cmd in cmds]
            if not entries:
                if any(isinstance(r, c.Rejected) for r in results):
                    unsure.append((slot, base, results))
                else:
                    out[slot.show_id] = results
                continue
            due = seatmap.next_expiry_ms()
            if due is not None and (slot.indexed_due is None or due < slot.indexed_due):
                pipe.zadd(self._due_key, {slot.show_id: due}, lt=True)  # before the append
            else:
                due = None
            snapshot, trim = self._snapshot_plan(slot, seatmap)
            slot.store.queue_append(pipe, base, entries, snapshot, trim)
            staged.append(_Staged(slot, results, due, snapshot is not None))
        # Answered from memory after a reload: its master may hold writes no replica has.
        from_memory = [sid for sid in out if (held := self._slots.get(sid)) and held.unreplicated
                       ] if self._wait_replicas else []
        waiting = bool(self._wait_replicas and (staged or unsure or from_memory))
        if not staged and not unsure and not waiting:
            return out
        for slot, _, _ in unsure:  # after the appends: their replies come first
            pipe.get(seq_key(slot.show_id))
        waits = self._queue_waits(pipe, [st.slot.show_id for st in staged]
                                  + [slot.show_id for slot, _, _ in unsure]
                                  + from_memory) if waiting else []
        try:
            replies: list | None = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            log.warning("host %s: write of %d shows failed (%s)", self.name, len(staged), exc)
            replies = None
        lost = self._unreplicated(waits, replies)
        if replies is not None and waits:
            replies = replies[:len(replies) - len(waits)]
        seqs = replies[len(replies) - len(unsure):] if replies is not None else [None] * len(unsure)
        for (slot, base, results), seq in zip(unsure, seqs, strict=True):
            if replies is not None and not isinstance(seq, BaseException) \
                    and int(seq or 0) == base and slot.show_id not in lost:
                out[slot.show_id] = results
            else:  # behind the log (or unreadable): forget it; the retry reloads
                slot.map = None
        pos = 0
        for st in staged:
            failure: BaseException | None = None
            if replies is None:
                failure = RedisError("pipeline failed")
            else:
                if st.due is not None:
                    if not isinstance(replies[pos], BaseException):
                        st.slot.indexed_due = st.due
                    pos += 1
                reply = replies[pos]
                pos += 1
                if isinstance(reply, BaseException):
                    failure = append_error(reply)
                elif st.slot.show_id in lost:
                    failure = RedisError("no replica acknowledged the write in time")
            if failure is None:
                out[st.slot.show_id] = st.results
                if st.snapshot:
                    assert st.slot.map is not None
                    st.slot.last_snapshot = st.slot.map.version
                    st.slot.last_snapshot_at = time.monotonic()
                continue
            if isinstance(failure, NoScriptError):  # a restarted Redis forgot the script
                await self._load_script()
            elif not isinstance(failure, Fenced):
                log.warning("show %s: %s; reloading", st.slot.show_id, failure)
            # In-memory state may be ahead of Redis: forget it; the retry reloads.
            st.slot.map = None
        for show_id in list(out):
            slot = self._slots.get(show_id)
            if slot is None:
                continue
            if show_id in lost:  # answered from memory, but not yet safe to answer
                del out[show_id]
                slot.map = None
            elif waiting:
                slot.unreplicated = False
        return out

    def _queue_waits(self, pipe: Any, shows: list[str]) -> list[tuple[Any, list[str]]]:
        """A WAIT after the batch's writes on each master `shows` live on (a cluster
        pipeline sends one node's commands on one connection, in order, and WAIT covers
        what that connection wrote): [(node, the shows it covers)]."""
        by_node: dict[str, tuple[Any, list[str]]] = {}
        for sid in shows:
            node = self._redis.get_node_from_key(seq_key(sid))
            by_node.setdefault(node.name, (node, []))[1].append(sid)
        for node, _ in by_node.values():
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms, target_nodes=node)
        return list(by_node.values())

    def _unreplicated(self, waits: list[tuple[Any, list[str]]], replies: list | None
                      ) -> set[str]:
        """The shows whose WAIT did not see enough replicas (or failed)."""
        if not waits:
            return set()
        if replies is None:
            return {sid for _, shows in waits for sid in shows}
        lost: set[str] = set()
        for (node, shows), reply in zip(waits, replies[len(replies) - len(waits):], strict=True):
            if isinstance(reply, BaseException) or int(reply) < self._wait_replicas:
                log.warning("host %s: %s: a write not replicated in %d ms (%s)", self.name,
                            node.name, self._wait_ms, reply)
                lost.update(shows)
                continue
            if any(
                    self._redis.get_node_from_key(seq_key(sid)).name != node.name
                    for sid in shows):
                # The slot moved while the batch ran (a failover): the write may have been
                # redirected past this WAIT.
                lost.update(shows)
        return lost

    async def _load(self, slot: Slot) -> None:
        slot.map = await slot.store.load(self._plans)
        # Count from the snapshot in Redis, not from where this host started: a show
        # reloaded more often than every `snapshot_every` changes would otherwise never
        # snapshot (nor trim) again.
        slot.last_snapshot = slot.store.snapshot_version
        slot.indexed_due = None  # unknown: the next hold writes it
        slot.unreplicated = True

    async def _load_script(self) -> None:
        try:
            await ShowStore.load_script(self._redis)
        except (RedisError, OSError):
            pass

    async def _drop_from_index(self, show_id: str) -> None:
        try:
            await self._redis.zrem(self._due_key, show_id)
        except (RedisError, OSError):
            pass

    def _snapshot_plan(self, slot: Slot, seatmap: SeatMap) -> tuple[Snapshot | None, int | None]:
        if (
            seatmap.version - slot.last_snapshot >= self.settings.snapshot_every
            and time.monotonic() - slot.last_snapshot_at >= self.settings.snapshot_min_interval_s
        ):
            return seatmap.snapshot(), max(1, seatmap.version - self.settings.keep_log)
        return None, None

    # --- time ------------------------------------------------------------------------

    def _schedule(self, slot: Slot) -> None:
        if slot.map is not None and (due := slot.map.next_expiry_ms()) is not None:
            self._push(slot, due)
        elif slot.map is None and not slot.dead and not slot.missing:
            # A show that could not be loaded or saved: look at it again shortly (it may
            # have holds that must run out).
            self._push(slot, now_ms() + 1000)

    def _push(self, slot: Slot, due: int) -> None:
        if slot.timer_due is not None and slot.timer_due <= due:
            return
        slot.timer_due = due
        if not self._heap or due < self._heap[0][0]:
            self._wake.set()
        heapq.heappush(self._heap, (due, slot.show_id))

    async def _timer_loop(self) -> None:
        """Expire holds when their time is up; read the pool; passivate idle shows."""
        await self._refresh_pool()
        last_housekeeping = time.monotonic()
        while True:
            try:
                wait = _HOUSEKEEPING_S
                if self._heap:
                    wait = min(wait, max(0.0, (self._heap[0][0] - now_ms()) / 1000))
                if wait > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=wait)
                    except TimeoutError:
                        pass
                await self._expire_due()
                if time.monotonic() - last_housekeeping >= _HOUSEKEEPING_S:
                    last_housekeeping = time.monotonic()
                    await self._refresh_pool()
                    await self._passivate_idle()
            except asyncio.CancelledError:
                raise
            except Exception:  # the timer must outlive any one failure
                log.exception("host %s: timer", self.name)
                await asyncio.sleep(1.0)

    async def _expire_due(self) -> None:
        now = now_ms()
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            at, show_id = heapq.heappop(self._heap)
            slot = self._slots.get(show_id)
            if slot is None or slot.timer_due != at:
                continue  # stale: the show left, or has an earlier entry of its own
            slot.timer_due = None
            due.append(show_id)
        if due:
            # One commit for all of them: the sweep runs first in every batch, so empty
            # batches are sweeps, and their writes share one pipeline.
            try:
                await self._locked_commit({show_id: [] for show_id in due})
            except BaseException:
                # Whatever went wrong, these shows must come round again: their holds
                # still have to run out.
                for show_id in due:
                    if (slot := self._slots.get(show_id)) is not None:
                        self._push(slot, now_ms() + 1000)
                raise

    async def _passivate_idle(self) -> None:
        cutoff = time.monotonic() - self.settings.passivate_after_s
        idle = [slot for slot in self._slots.values()
                if slot.map is not None and not slot.map.holds and slot.users == 0
                and slot.last_call < cutoff]
        for slot in idle:
            await self._evict(slot, unindex=True)

    async def _evict(self, slot: Slot, unindex: bool) -> None:
        """Drop a show from memory (its state is in Redis). With `unindex`, a show that
        has no holds also leaves the due index - checked against its sequence, and under
        its lock so none of this host's own appends can slip in between."""
        if slot.dead:
            return
        slot.users += 1
        async with slot.lock:
            try:
                if slot.dead:
                    return
                if unindex and slot.map is not None and not slot.map.holds:
                    try:
                        await slot.store.unindex(self.pool, slot.map.version)
                    except (RedisError, OSError) as exc:
                        log.warning("show %s: cannot unindex (%s)", slot.show_id, exc)
                        return  # keep it; try again at the next round
                slot.dead = True
                slot.map = None
                if self._slots.get(slot.show_id) is slot:
                    del self._slots[slot.show_id]
            finally:
                slot.users -= 1


def _run(seatmap: SeatMap, cmd: c.Command, at: int, entries: list[LogEntry]) -> c.Result:
    outcome = seatmap.apply(cmd, at)
    if outcome.changed:
        event = Event(seatmap.version, at, outcome.changes)
        entries.append(LogEntry(at, c.command_encoder.encode(cmd), event_encoder.encode(event)))
    return outcome.result
