"""The Ray actor that owns one show's seat map.

It applies a batch of commands in order, makes the resulting log entries durable in Redis
(one atomic script call, fsynced by AOF) and only then replies. If Redis fails or the log
turns out to have moved on (a stale twin), it throws its in-memory state away, reloads
from Redis and runs the batch again; command ids make that safe.
"""
from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import ray
from redis.exceptions import RedisError

from . import commands as c
from . import redis_conn
from .seatmap import SeatMap
from .store import Event, Fenced, LogEntry, ShowStore, UnknownShow, event_encoder

log = logging.getLogger(__name__)

NAMESPACE = "bookmymovie"


class ActorSettings(msgspec.Struct, frozen=True):
    snapshot_every: int = 500        # log entries between snapshots
    # ...and at least this long between them: under a rush (~20k entries/s) a snapshot
    # per 500 entries would rewrite ~300 KB to the AOF 40 times a second.
    snapshot_min_interval_s: float = 0.0
    keep_log: int = 5_000            # entries kept before the snapshot, for `since` resumes
    passivate_after_s: float = 60.0  # idle time (with no holds) before the actor exits
    persist_attempts: int = 20       # reload-and-retry rounds before answering "unavailable"
    # The actor's log level; at DEBUG it logs every batch with its commands' request ids.
    log_level: str = "INFO"


def actor_name(show_id: str) -> str:
    return f"show:{show_id}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# Ray pickles this class by value (the decorator replaces the module attribute), so its
# methods reach shared objects through modules (`c.`), never module-level globals.
@ray.remote(num_cpus=0, max_restarts=-1)
class ShowActor:
    def __init__(self, show_id: str, redis_url: str, settings: ActorSettings) -> None:
        self.show_id = show_id
        self.settings = settings
        # A hung (not crashed) Redis must surface as an error the batch loop retries.
        self._redis = redis_conn.async_client(redis_url, socket_timeout=10,
                                              socket_connect_timeout=5)
        self._store = ShowStore(self._redis, show_id)
        self._map: SeatMap | None = None
        self._last_snapshot = 0
        self._last_snapshot_at = 0.0
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last_call = time.monotonic()
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
        # The timer starts with the actor, not with its first call: an actor Ray restarts
        # after a crash gets no call, yet the holds in its log must still run out.
        # (Ray runs an async actor's __init__ on its event loop.)
        try:
            self._timer = asyncio.get_running_loop().create_task(self._timer_loop())
        except RuntimeError:
            pass  # no loop here: _loaded() starts the timer with the first call

    # --- remote API ------------------------------------------------------------------

    async def apply(self, batch: bytes) -> bytes:
        """Apply a msgpack list of commands; reply with a msgpack list of results."""
        cmds = c.commands_decoder.decode(batch)
        self._last_call = time.monotonic()
        self.calls += 1
        self.commands += len(cmds)
        async with self._lock:
            try:
                results = await self._apply_durably(cmds)
            except UnknownShow:
                results = [c.Rejected("not_found", f"no show {self.show_id!r}")] * len(cmds)
        self._wake.set()  # a new hold may be the next one to expire
        if log.isEnabledFor(logging.DEBUG):
            log.debug("show %s: batch of %d commands, seq %d, rids %s", self.show_id,
                      len(cmds), self._map.version if self._map else -1,
                      ",".join(dict.fromkeys(cmd.rid for cmd in cmds if cmd.rid)) or "-")
        return c.command_encoder.encode(results)

    async def inspect(self) -> dict:
        """The seat map as the actor has it in memory (for tests and admin tools)."""
        async with self._lock:
            seatmap = await self._loaded()
            return {
                "version": seatmap.version,
                "status": dict(seatmap.status),
                "holds": {k: msgspec.to_builtins(v) for k, v in seatmap.holds.items()},
                "bookings": {k: msgspec.to_builtins(v) for k, v in seatmap.bookings.items()},
                "calls": self.calls,
                "commands": self.commands,
            }

    async def pid(self) -> int:
        import os

        return os.getpid()

    # --- durability ------------------------------------------------------------------

    async def _loaded(self) -> SeatMap:
        if self._map is None:
            self._map = await self._store.load()
            # Count from the snapshot in Redis, not from where this instance started: an
            # actor restarted or passivated more often than every `snapshot_every`
            # changes would otherwise never snapshot (nor trim) again.
            self._last_snapshot = self._store.snapshot_version
            if self._timer is None:
                self._timer = asyncio.create_task(self._timer_loop())
        return self._map

    async def _apply_durably(self, cmds: list[c.Command]) -> list[c.Result]:
        for attempt in range(self.settings.persist_attempts):
            try:
                seatmap = await self._loaded()
                at = now_ms()
                base = seatmap.version
                entries: list[LogEntry] = []
                # Sweep first: a seat whose hold ran out is free for this batch.
                self._run(seatmap, c.Expire("expire"), at, entries)
                results = [self._run(seatmap, cmd, at, entries) for cmd in cmds]
                await self._persist(seatmap, base, entries)
                return results
            except (RedisError, Fenced, OSError) as exc:
                # In-memory state may be ahead of Redis: forget it, reload, try again.
                log.warning("show %s: %s; reloading (attempt %d)", self.show_id, exc, attempt)
                self._map = None
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        return [c.Rejected("unavailable", "the show could not be saved; try again")] * len(cmds)

    @staticmethod
    def _run(seatmap: SeatMap, cmd: c.Command, at: int, entries: list[LogEntry]) -> c.Result:
        outcome = seatmap.apply(cmd, at)
        if outcome.changed:
            event = Event(seatmap.version, at, outcome.changes)
            entries.append(
                LogEntry(at, c.command_encoder.encode(cmd), event_encoder.encode(event))
            )
        return outcome.result

    async def _persist(self, seatmap: SeatMap, base: int, entries: list[LogEntry]) -> None:
        if not entries:
            return
        snapshot = trim = None
        if (
            seatmap.version - self._last_snapshot >= self.settings.snapshot_every
            and time.monotonic() - self._last_snapshot_at >= self.settings.snapshot_min_interval_s
        ):
            snapshot = seatmap.snapshot()
            trim = max(1, seatmap.version - self.settings.keep_log)
        await self._store.append(base, entries, snapshot, trim)
        if snapshot is not None:
            self._last_snapshot = seatmap.version
            self._last_snapshot_at = time.monotonic()

    # --- time ------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        """Expire holds when their time is up, and passivate when idle with none left."""
        while True:
            try:
                if await self._tick():
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # the timer must outlive any one failure
                log.exception("show %s: timer", self.show_id)
                await asyncio.sleep(1.0)

    async def _tick(self) -> bool:
        """One round of the timer; True once the actor is on its way out."""
        seatmap = self._map
        if seatmap is None:
            # Not loaded (just started or restarted, or a failed batch threw the state
            # away): load it, so holds expire even if no call ever comes.
            async with self._lock:
                try:
                    await self._loaded()
                except UnknownShow:
                    # Nothing to keep for a show that does not exist: do not linger.
                    if self._idle_for() > min(self.settings.passivate_after_s, 1.0):
                        await self._exit("no such show")
                except (RedisError, OSError) as exc:
                    log.warning("show %s: cannot load (%s)", self.show_id, exc)
            if self._map is None:
                await asyncio.sleep(1.0)
                return False
            seatmap = self._map
        next_due = seatmap.next_expiry_ms()
        wait = 1.0 if next_due is None else max(0.0, (next_due - now_ms()) / 1000)
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=min(wait, 1.0))
            return False
        except TimeoutError:
            pass
        async with self._lock:
            seatmap = self._map
            if seatmap is None:
                return False
            due = seatmap.next_expiry_ms()
            if due is not None and due <= now_ms():
                await self._apply_durably([])  # the sweep runs first in every batch
            elif due is None and self._idle_for() > self.settings.passivate_after_s:
                await self._exit("idle, passivating")
        return False

    async def _exit(self, why: str) -> None:
        """Kill this actor for good (its state is in Redis). Called with the lock held,
        and never gives it back: no batch may start in an actor that is going away;
        calls that wait for it fail with ActorDiedError and clients resend them to the
        successor."""
        log.info("show %s: %s", self.show_id, why)
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
        await asyncio.Event().wait()

    def _idle_for(self) -> float:
        return time.monotonic() - self._last_call
