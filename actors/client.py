"""The web tier's way into the shows: group commit per host.

Each show lives in one host of a small pool (actors/host.py), chosen by rendezvous
hashing over the pool's hosts (actors/placement.py). Per host and per process at most one
call is in flight; commands that arrive meanwhile, for any of that host's shows, wait
and go together as the next call. An idle show pays no extra latency; under a rush one
call carries hundreds of commands for many shows. A call travels on the host's own
stream (actors/channel.py; Ray finds the host and tells its address), or as a Ray call
where that stream cannot be reached. If the host died, the same call goes to its
successor (Ray restarts it under its name): the command ids make that retry safe. A show that moved to another host (the
pool changed) is routed again.

Each command is stamped with the caller's request id (actors/context.py) unless it has
one, and an optional batch observer (`set_batch_observer`; server/ops/metrics.py installs one)
sees every show's share of every call: its commands, its results and how long the call
took.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from hashlib import blake2b

import msgspec
import ray
import redis.asyncio as aioredis
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import commands as c
from . import placement, redis_conn
from .channel import Channel, ChannelLost
from .context import request_id
from .host import ShowHost
from .pool import NAMESPACE, ActorSettings, Pool, create_pool, plan_hosts, read_pool, replace_pool

log = logging.getLogger(__name__)

MAX_BATCH = 512      # commands per host call
RETRY_FOR_S = 30.0   # how long a call is resent to a host that died before giving up
MAX_HOPS = 4         # routings of one command (a show that moved) before giving up
RAY_PATH_FOR_S = 5.0  # a host whose stream cannot be reached is called over Ray this long

# (show_id, commands, results, seconds the host call took) for every show of every call.
BatchObserver = Callable[[str, list[c.Command], list[c.Result], float], None]
_observer: BatchObserver | None = None


def set_batch_observer(observer: BatchObserver | None) -> BatchObserver | None:
    """Install the process's batch observer (one at most); returns the one it replaces."""
    global _observer
    previous, _observer = _observer, observer
    return previous


_Pending = tuple[c.Command, "asyncio.Future[c.Result]", int]  # command, answer, hops


class HostClient:
    """This process's queue to one host."""

    def __init__(self, directory: ShowDirectory, name: str) -> None:
        self.name = name
        self._directory = directory
        self._handle: ray.actor.ActorHandle | None = None
        self._channel: Channel | None = None
        self._ray_path_until = 0.0
        self._pending: dict[str, list[_Pending]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.calls = 0
        self.commands = 0

    def enqueue(self, show_id: str, item: _Pending) -> None:
        self._pending.setdefault(show_id, []).append(item)
        if self._flusher is None:
            # A context of its own: the flusher serves many requests, it must not log
            # (nor stamp) the request id of the one that happened to start it.
            self._flusher = asyncio.create_task(self._flush(), context=contextvars.Context())

    def _take(self) -> list[tuple[str, list[_Pending]]]:
        taken: list[tuple[str, list[_Pending]]] = []
        room = MAX_BATCH
        for show_id in list(self._pending):
            items = self._pending[show_id]
            if len(items) <= room:
                del self._pending[show_id]
                taken.append((show_id, items))
                room -= len(items)
            else:
                taken.append((show_id, items[:room]))
                self._pending[show_id] = items[room:]
                room = 0
            if room == 0:
                break
        return taken

    async def _flush(self) -> None:
        try:
            while self._pending:
                groups = self._take()
                call = c.Call(self._directory.epoch, [
                    c.Group(show_id, [cmd for cmd, _, _ in items]) for show_id, items in groups])
                started = time.perf_counter()
                try:
                    reply = await self._call(c.command_encoder.encode(call))
                except Exception as exc:  # never leave a caller hanging
                    log.exception("host %s: call failed", self.name)
                    reply = c.Reply(call.epoch, [
                        [c.Rejected("unavailable", f"show unavailable: {exc}")] * len(g.commands)
                        for g in call.groups])
                took = time.perf_counter() - started
                moved: list[tuple[str, list[_Pending]]] = []
                for (show_id, items), results in zip(groups, reply.results, strict=True):
                    if results is None:
                        moved.append((show_id, items))
                        continue
                    if _observer is not None:
                        try:
                            _observer(show_id, [cmd for cmd, _, _ in items], results, took)
                        except Exception:  # metrics must never fail a booking
                            log.exception("show %s: batch observer failed", show_id)
                    for (_, fut, _), result in zip(items, results, strict=True):
                        if not fut.done():
                            fut.set_result(result)
                if moved:
                    await self._directory.reroute(moved, reply.epoch)
        finally:
            self._flusher = None

    async def _call(self, blob: bytes) -> c.Reply:
        self.calls += 1
        deadline = time.monotonic() + RETRY_FOR_S
        delay = 0.02
        while True:
            try:
                if self._handle is None:
                    self._handle = await self._directory.host_handle(self.name)
                # Bounded: Ray queues calls to a host that is restarting rather than
                # failing them, and one that never comes back must not hang a request.
                left = max(0.1, deadline - time.monotonic())
                reply = c.reply_decoder.decode(await asyncio.wait_for(self._send(blob), left))
                self.commands += sum(len(r) for r in reply.results if r is not None)
                return reply
            except (RayActorError, ActorDiedError, ActorUnavailableError, ChannelLost,
                    TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("host %s: lost (%s); retrying", self.name, type(exc).__name__)
                self._handle = None
                await self.disconnect()
                if isinstance(exc, ActorDiedError):
                    # Dead for good (not restarting): look it up again, or start it anew,
                    # by name; a host restarting under its name keeps its handle.
                    self._directory.drop_handle(self.name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def _send(self, blob: bytes) -> bytes:
        """One call over the host's stream (actors/channel.py), opened through Ray on
        first use; over Ray itself for a while when the stream cannot be reached."""
        assert self._handle is not None
        if time.monotonic() < self._ray_path_until:
            return await self._handle.apply.remote(blob)
        if self._channel is None or self._channel.lost:
            await self.disconnect()
            address, port, token = await self._handle.endpoint.remote()
            try:
                self._channel = await Channel.open(address, port, token)
            except ChannelLost as exc:  # e.g. a firewall between nodes: Ray still gets there
                log.warning("host %s: stream unreachable (%s); calling over Ray", self.name, exc)
                self._ray_path_until = time.monotonic() + RAY_PATH_FOR_S
                return await self._handle.apply.remote(blob)
        return await self._channel.call(blob)

    async def disconnect(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()


class ShowDirectory:
    """Every show of one host pool, as this process reaches them.

    The pool's name is `pool` plus a digest of the Redis URL, so that one Ray cluster
    never sends a show to hosts writing to another Redis. Its hosts run with the settings
    recorded by whoever created the pool (`settings` here only when this directory is the
    first); directories that want other settings (tests: short passivation, small
    snapshots) name a pool of their own."""

    def __init__(self, redis_url: str, settings: ActorSettings | None = None, *,
                 pool: str = "shows", hosts_per_node: int = 0) -> None:
        self.redis_url = redis_url
        self.settings = settings or ActorSettings()
        digest = blake2b(redis_url.encode(), digest_size=4).hexdigest()
        self.pool = f"{pool}.{digest}"
        self.hosts_per_node = hosts_per_node  # 0: one host per CPU of each node
        self._hosts: dict[str, HostClient] = {}
        self._handles: dict[str, ray.actor.ActorHandle] = {}
        self._view: Pool | None = None
        self._redis: aioredis.Redis | None = None
        self._ready: asyncio.Lock | None = None
        self._starting: asyncio.Lock | None = None

    # --- routing ---------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._view is not None

    @property
    def epoch(self) -> int:
        return self._view.epoch if self._view else 0

    @property
    def hosts(self) -> list[str]:
        return list(self._view.hosts) if self._view else []

    def owner(self, show_id: str) -> str:
        assert self._view is not None, "start() the directory first"
        return placement.owner(show_id, self._view.hosts)

    async def submit(self, show_id: str, cmd: c.Command) -> c.Result:
        if self._view is None:
            await self.start()
        if not cmd.rid and (rid := request_id.get()):
            cmd = msgspec.structs.replace(cmd, rid=rid)
        fut: asyncio.Future[c.Result] = asyncio.get_running_loop().create_future()
        self._host(self.owner(show_id)).enqueue(show_id, (cmd, fut, 0))
        return await fut

    def client(self, show_id: str) -> ShowClient:
        return ShowClient(self, show_id)

    def clients(self) -> list[HostClient]:
        return list(self._hosts.values())

    async def reroute(self, moved: list[tuple[str, list[_Pending]]], host_epoch: int) -> None:
        """Shows a host said are not its own: read the pool again, send them on."""
        if host_epoch >= self.epoch:
            await self._reload_view()
        for show_id, items in moved:
            target = self._host(self.owner(show_id))
            for cmd, fut, hops in items:
                if hops + 1 >= MAX_HOPS:
                    if not fut.done():
                        fut.set_result(c.Rejected("unavailable", "the show is moving; try again"))
                else:
                    target.enqueue(show_id, (cmd, fut, hops + 1))

    def _host(self, name: str) -> HostClient:
        client = self._hosts.get(name)
        if client is None:
            client = self._hosts[name] = HostClient(self, name)
        return client

    # --- the pool --------------------------------------------------------------------

    async def start(self, create: bool = True) -> ShowDirectory:
        """Read (or, first in the cluster, record) the pool and make sure its hosts run.
        With `create=False` a pool that is not recorded yet is a LookupError."""
        if self._ready is None:
            self._ready = asyncio.Lock()
        async with self._ready:
            if self._view is not None:
                return self
            redis = self._client()
            view = await read_pool(redis, self.pool)
            if view is None and not create:
                raise LookupError(f"no pool {self.pool!r} is recorded in this Redis yet")
            if view is None:
                nodes = await asyncio.to_thread(_alive_nodes)
                counts = [(node, self.hosts_per_node or cpus) for node, cpus in nodes]
                if not any(n for _, n in counts):  # no node offers a CPU: one host each
                    counts = [(node, 1) for node, _ in nodes]
                view = await create_pool(redis, self.pool, plan_hosts(self.pool, counts),
                                         self.settings)
            await self._start_hosts(view)
            self._view = view
        return self

    async def _reload_view(self) -> None:
        view = await read_pool(self._client(), self.pool)
        if view is not None and view.epoch > self.epoch:
            await self._start_hosts(view)
            self._view = view

    async def add_hosts(self, count: int, node_id: str | None = None) -> list[str]:
        """Grow the pool by `count` hosts (on `node_id`, or on the first node), and wait
        until they run. Shows move to them by the hash; existing hosts let them go."""
        await self.start()
        assert self._view is not None
        node = node_id or (await asyncio.to_thread(_alive_nodes))[0][0]
        if count < 1:
            raise ValueError("add at least one host")
        while True:
            view = await read_pool(self._client(), self.pool)
            assert view is not None
            added = plan_hosts(self.pool, [(node, count)], start=len(view.hosts))
            grown = dict(view.nodes, **added)
            await self._start_hosts(Pool(view.epoch, list(grown), grown, view.settings))
            try:
                new = await replace_pool(self._client(), self.pool, view, grown)
            except Exception as exc:  # someone else changed it: plan again
                if "EPOCH" not in str(exc):
                    raise
                continue
            self._view = new
            return list(added)

    def drop_handle(self, name: str) -> None:
        self._handles.pop(name, None)

    async def host_handle(self, name: str) -> ray.actor.ActorHandle:
        handle = self._handles.get(name)
        if handle is None:
            node = self._view.nodes.get(name) if self._view else None
            settings = self._view.settings if self._view else self.settings
            handle = await asyncio.to_thread(self._create_host, name, node, settings)
            self._handles[name] = handle
        return handle

    async def _start_hosts(self, view: Pool) -> None:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:  # one placement at a time in this process
            await self._start_missing(view)

    async def _start_missing(self, view: Pool) -> None:
        missing = [h for h in view.hosts if h not in self._handles]
        if not missing:
            return
        await asyncio.to_thread(_wait_schedulable, {view.nodes[h] for h in missing
                                                   if view.nodes.get(h)})
        handles = await asyncio.gather(*(
            asyncio.to_thread(self._create_host, h, view.nodes.get(h), view.settings)
            for h in missing))
        self._handles.update(zip(missing, handles, strict=True))
        # Wait until each answers (the first command must not pay for a process start),
        # on its node.
        await asyncio.gather(*(self._on_its_node(h, view) for h in missing))

    async def _on_its_node(self, name: str, view: Pool, attempts: int = 5) -> None:
        """Soft node affinity places an actor elsewhere when its node counts as infeasible
        (`_wait_schedulable` waits out the usual case, a node that has only just joined):
        a host found on the wrong node while its own is alive is stopped and started
        again, so the spread is the one the pool records."""
        want = view.nodes.get(name)
        for attempt in range(attempts):
            try:
                on = await self._handles[name].node.remote()
            except RayActorError:  # another process is placing it again: find the new one
                await asyncio.sleep(0.2 * (attempt + 1))
                self._handles[name] = await asyncio.to_thread(
                    self._create_host, name, want, view.settings)
                continue
            if want is None or on == want or attempt == attempts - 1:
                return
            if want not in {n for n, _ in await asyncio.to_thread(_alive_nodes)}:
                return  # its node is gone: where Ray put it is where it lives now
            log.warning("host %s: on node %s, not %s; placing it again", name, on, want)
            try:
                ray.kill(self._handles[name], no_restart=True)
            except Exception:
                pass
            await asyncio.sleep(0.2 * (attempt + 1))
            self._handles[name] = await asyncio.to_thread(
                self._create_host, name, want, view.settings)

    def _create_host(self, name: str, node: str | None,
                     settings: ActorSettings) -> ray.actor.ActorHandle:
        options: dict = dict(name=name, namespace=NAMESPACE, get_if_exists=True,
                             lifetime="detached")  # shared by every web process
        if node and node in {n for n, _ in _alive_nodes()}:
            # Placed on its node, not by Ray's choice: hosts ask for no CPU, so the
            # scheduler could not balance them, and a deterministic spread is testable.
            # Hard: soft affinity put hosts on another node in most cluster start-ups
            # here. A host whose node is gone is started again wherever Ray likes (the
            # branch below) by the first web process that needs it.
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        return ShowHost.options(**options).remote(self.pool, name, self.redis_url, settings)

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = redis_conn.async_client(self.redis_url)
        return self._redis

    # --- looking inside (tests, admin tools, the benchmark) --------------------------

    async def inspect(self, show_id: str) -> dict:
        """The show as its owner has it in memory."""
        await self.start()
        return await (await self.host_handle(self.owner(show_id))).inspect.remote(show_id)

    async def is_loaded(self, show_id: str) -> bool:
        await self.start()
        return show_id in await (await self.host_handle(self.owner(show_id))).loaded.remote()

    async def host_pid(self, show_id: str) -> int:
        await self.start()
        return await (await self.host_handle(self.owner(show_id))).pid.remote()

    async def host_stats(self) -> list[dict]:
        await self.start()
        handles = [await self.host_handle(h) for h in self.hosts]
        return list(await asyncio.gather(*(h.stats.remote() for h in handles)))

    async def forget(self, show_id: str) -> None:
        """Drop the show from its host's memory (its state is in Redis)."""
        await self.start()
        await (await self.host_handle(self.owner(show_id))).forget.remote(show_id)

    def kill_hosts(self) -> None:
        """Stop this pool's hosts for good (tests and benchmarks clean up with it)."""
        for handle in self._handles.values():
            try:
                ray.kill(handle, no_restart=True)
            except Exception:
                pass
        self._handles.clear()

    async def close(self) -> None:
        for host in self._hosts.values():
            await host.disconnect()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


class ShowClient:
    """One show's view of the directory (the command stream of that show)."""

    def __init__(self, directory: ShowDirectory, show_id: str) -> None:
        self.directory = directory
        self.show_id = show_id

    async def submit(self, cmd: c.Command) -> c.Result:
        return await self.directory.submit(self.show_id, cmd)


def _wait_schedulable(nodes: set[str], timeout: float = 30.0) -> None:
    """Wait until the scheduler has each live node's resources. A node that has just
    joined is alive before the control store has its resource report, and until then an
    actor with soft affinity to it is placed on some other node."""
    from ray._private import state  # the per-node view; the public API only sums it

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {n for n, _ in _alive_nodes()}
        known = set(state.available_resources_per_node())
        if (nodes & alive) <= known:
            return
        time.sleep(0.1)


def _alive_nodes() -> list[tuple[str, int]]:
    """(node id, CPUs) of every live Ray node, in node-id order (the same for everyone). A
    node started with no CPUs (a head kept for the GCS) gets no hosts."""
    nodes = [(n["NodeID"], int(n["Resources"].get("CPU", 0)))
             for n in ray.nodes() if n["Alive"]]
    return sorted(nodes)
