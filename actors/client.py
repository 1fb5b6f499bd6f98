"""The web tier's way into the show actors: group commit per show.

Per show and per process at most one actor call is in flight; commands that arrive
meanwhile wait and go together as the next call. An idle show pays no extra latency, a
rushed one sends hundreds of commands per call (a Ray call costs ~1 ms whatever it
carries). If the actor died or passivated, the same batch goes to its successor: the
command ids make that retry safe.

Each command is stamped with the caller's request id (actors/context.py) unless it has
one, and an optional batch observer (`set_batch_observer`; server/metrics.py installs one)
sees every batch sent: its size, its results and how long the actor call took.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable

import msgspec
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from . import commands as c
from .context import request_id
from .show_actor import NAMESPACE, ActorSettings, ShowActor, actor_name

log = logging.getLogger(__name__)

MAX_BATCH = 512
RETRY_FOR_S = 30.0

# (show_id, commands, results, seconds the actor call took) for every batch sent.
BatchObserver = Callable[[str, list[c.Command], list[c.Result], float], None]
_observer: BatchObserver | None = None


def set_batch_observer(observer: BatchObserver | None) -> BatchObserver | None:
    """Install the process's batch observer (one at most); returns the one it replaces."""
    global _observer
    previous, _observer = _observer, observer
    return previous


class ShowClient:
    def __init__(self, show_id: str, connect: Callable[[str], ray.actor.ActorHandle]) -> None:
        self.show_id = show_id
        self._connect = connect
        self._handle: ray.actor.ActorHandle | None = None
        self._pending: list[tuple[c.Command, asyncio.Future[c.Result]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.calls = 0
        self.commands = 0

    async def submit(self, cmd: c.Command) -> c.Result:
        if not cmd.rid and (rid := request_id.get()):
            cmd = msgspec.structs.replace(cmd, rid=rid)
        fut: asyncio.Future[c.Result] = asyncio.get_running_loop().create_future()
        self._pending.append((cmd, fut))
        if self._flusher is None:
            # A context of its own: the flusher serves many requests, it must not log
            # (nor stamp) the request id of the one that happened to start it.
            self._flusher = asyncio.create_task(self._flush(), context=contextvars.Context())
        return await fut

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                cmds = [cmd for cmd, _ in batch]
                started = time.perf_counter()
                try:
                    results = await self._call(cmds)
                except Exception as exc:  # never leave a caller hanging
                    log.exception("show %s: batch failed", self.show_id)
                    results = [c.Rejected("unavailable", f"show unavailable: {exc}")] * len(batch)
                if _observer is not None:
                    try:
                        _observer(self.show_id, cmds, results, time.perf_counter() - started)
                    except Exception:  # metrics must never fail a booking
                        log.exception("show %s: batch observer failed", self.show_id)
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._flusher = None

    async def _call(self, cmds: list[c.Command]) -> list[c.Result]:
        blob = c.command_encoder.encode(cmds)
        self.calls += 1
        self.commands += len(cmds)
        deadline = time.monotonic() + RETRY_FOR_S
        delay = 0.02
        while True:
            try:
                if self._handle is None:
                    self._handle = await asyncio.to_thread(self._connect, self.show_id)
                return c.results_decoder.decode(await self._handle.apply.remote(blob))
            except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("show %s: actor lost (%s); retrying", self.show_id, type(exc).__name__)
                self._handle = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)


class ShowDirectory:
    """One ShowClient per show in this process; actors found or created by name."""

    def __init__(self, redis_url: str, settings: ActorSettings | None = None) -> None:
        self.redis_url = redis_url
        self.settings = settings or ActorSettings()
        self._clients: dict[str, ShowClient] = {}

    def client(self, show_id: str) -> ShowClient:
        client = self._clients.get(show_id)
        if client is None:
            client = self._clients[show_id] = ShowClient(show_id, self._connect)
        return client

    def clients(self) -> list[ShowClient]:
        return list(self._clients.values())

    async def submit(self, show_id: str, cmd: c.Command) -> c.Result:
        return await self.client(show_id).submit(cmd)

    def _connect(self, show_id: str) -> ray.actor.ActorHandle:
        return ShowActor.options(
            name=actor_name(show_id),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",  # shared by every web process; passivates itself
            # Show actors ask for no resources (num_cpus=0), so no node ever looks busier
            # than another to the scheduler, and resource-based balancing cannot see them.
            # SPREAD says what we want - shows distributed over the cluster's nodes, so
            # they share its memory and cores - rather than relying on how the default
            # policy happens to place resource-less actors (random in Ray 2.60).
            # tests/cluster/test_scale_out.py checks the spread on two nodes.
            scheduling_strategy="SPREAD",
        ).remote(show_id, self.redis_url, self.settings)

    def handle(self, show_id: str) -> ray.actor.ActorHandle:
        return self._connect(show_id)
