"""Prometheus metrics of the web tier (issue 7), exposed by `GET /metrics`.

| metric | type | labels | what |
| --- | --- | --- | --- |
| `bmm_http_request_duration_seconds` | histogram | route, method, status | every request; its `_count` is the request rate |
| `bmm_holds_total` | counter | show_id | holds the show actors granted (Held answers) |
| `bmm_bookings_total` | counter | show_id | bookings confirmed (Confirmed answers) |
| `bmm_seat_commands_rejected_total` | counter | code | booking-core refusals, by code |
| `bmm_actor_batch_commands` | histogram | | commands per actor call (group commit) |
| `bmm_actor_call_seconds` | histogram | | one actor call, resends to a successor included |
| `bmm_live_watchers` | gauge | | open live seat-map WebSockets |
| `bmm_waiting_room_waiting` | gauge | show_id | visitors waiting (hook: `observe_waiting_room`) |
| `bmm_queue_length` | gauge | queue | outbox stream length, waiting-room queue, ... (read at scrape time) |
| `bmm_queue_pending` | gauge | queue, group | outbox entries delivered to a consumer group and not yet acknowledged |
| `bmm_queue_lag` | gauge | queue, group | outbox entries a consumer group has not read yet |

`route` is the route's pattern (`/api/shows/{show_id}/holds`), never the raw path, and
`status` the class (`2xx`, `4xx`, ...), so the series stay bounded whatever clients send;
an unknown method counts as `OTHER` and a path no route matches as `<unmatched>`.

Several web processes on one port (`python -m server --workers N`): a scrape reaches any one
of them, so each must answer for all. `python -m server` then runs prometheus-client's
multiprocess mode: `PROMETHEUS_MULTIPROC_DIR` (set to `<data_dir>/metrics` before
prometheus_client is imported, emptied at start) holds one memory-mapped file per process,
and every scrape sums them (the watcher gauge over live processes only). Queue lengths are
read from Redis by whichever process is scraped: they are shared state, not per process.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors import client as actor_client
from actors import commands as c
from server.core.outbox import STREAMS

log = logging.getLogger(__name__)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUEST_SECONDS = Histogram(
    "bmm_http_request_duration_seconds",
    "HTTP requests by route pattern, method and status class: latency and (as _count) rate",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HOLDS = Counter("bmm_holds", "Holds granted by the show actors", ["show_id"])
BOOKINGS = Counter("bmm_bookings", "Bookings confirmed by the show actors", ["show_id"])
REJECTED = Counter("bmm_seat_commands_rejected", "Seat commands the booking core refused",
                   ["code"])
BATCH_COMMANDS = Histogram(
    "bmm_actor_batch_commands", "Commands for one show in one host call (group commit batch size)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
ACTOR_SECONDS = Histogram(
    "bmm_actor_call_seconds", "Host call latency, per show in the call (resends included)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0),
)
GC_PAUSE = Histogram(
    "bmm_gc_pause_seconds", "Garbage-collector pauses of the web process (server/ops/gc_pauses.py)",
    ["generation"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
WATCHERS = Gauge("bmm_live_watchers", "Open live seat-map WebSockets",
                 multiprocess_mode="livesum")
WAITING_ROOM = Gauge(
    "bmm_waiting_room_waiting", "Visitors waiting in a show's waiting room, as last read",
    ["show_id"], multiprocess_mode="mostrecent")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
UNMATCHED = "<unmatched>"

# Labelled children cached by their label tuple: `.labels()` costs a few microseconds
# (argument checks, a lock); a dict hit costs tens of nanoseconds.
_request_children: dict[tuple[str, str, str], Histogram] = {}
_hold_children: dict[str, Counter] = {}
_booking_children: dict[str, Counter] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method if method in _METHODS else "OTHER", _STATUS.get(status // 100, "5xx"))
    child = _request_children.get(key)
    if child is None:
        child = _request_children[key] = REQUEST_SECONDS.labels(*key)
    child.observe(seconds)


def observe_batch(show_id: str, cmds: list[c.Command], results: list[c.Result],
                  seconds: float) -> None:
    """actors.client's batch observer: batch size, call latency, holds, bookings."""
    BATCH_COMMANDS.observe(len(cmds))
    ACTOR_SECONDS.observe(seconds)
    for result in results:
        if isinstance(result, c.Held):
            child = _hold_children.get(show_id)
            if child is None:
                child = _hold_children[show_id] = HOLDS.labels(show_id)
            child.inc()
        elif isinstance(result, c.Confirmed):
            child = _booking_children.get(show_id)
            if child is None:
                child = _booking_children[show_id] = BOOKINGS.labels(show_id)
            child.inc()
        elif isinstance(result, c.Rejected):
            REJECTED.labels(result.code).inc()


def install() -> None:
    """Hook the batch observer into this process's show clients (idempotent)."""
    actor_client.set_batch_observer(observe_batch)


def observe_waiting_room(show_id: str, waiting: int) -> None:
    """For the waiting room, wherever it reads a show's queue counters (tail - head):
    `bmm_waiting_room_waiting{show_id}` (the newest reading wins across processes)."""
    WAITING_ROOM.labels(show_id).set(max(0, waiting))


# --- queues, read at scrape time ------------------------------------------------------------

QueueReader = Callable[[], Awaitable[int]]
_queue_readers: dict[str, QueueReader] = {}


def register_queue(name: str, reader: QueueReader | None) -> None:
    """Report `bmm_queue_length{queue=name}` from `await reader()` at every scrape (the
    waiting room registers its queue here); None unregisters."""
    if reader is None:
        _queue_readers.pop(name, None)
    else:
        _queue_readers[name] = reader


class QueueCollector(Collector):
    """Holds what `refresh` read last; `collect` (sync, called by the exposition) reports it."""

    def __init__(self) -> None:
        self.lengths: dict[str, float] = {}
        self.groups: list[tuple[str, str, float, float]] = []  # queue, group, pending, lag

    async def refresh(self, redis, timeout: float = 1.0) -> None:  # noqa: ANN001
        lengths: dict[str, float] = {}
        groups: list[tuple[str, str, float, float]] = []

        async def outbox() -> None:
            # Every shard (one non-transactional pipeline: on a cluster it is split per
            # node); length, pending and lag are summed over the shards.
            async with redis.pipeline(transaction=False) as pipe:
                for stream in STREAMS:
                    pipe.xlen(stream)
                    pipe.xinfo_groups(stream)
                replies = await pipe.execute(raise_on_error=False)
            total, seen = 0, False
            by_group: dict[str, tuple[float, float]] = {}
            for length, infos in zip(replies[0::2], replies[1::2], strict=True):
                if isinstance(length, int):
                    total, seen = total + length, True
                if not isinstance(infos, list):
                    continue
                for g in infos:
                    name = g.get("name", b"")
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    lag = g.get("lag")
                    p, lg = by_group.get(name, (0.0, 0.0))
                    by_group[name] = (p + float(g.get("pending") or 0),
                                      lg + (float(lag) if lag is not None else float("nan")))
            if seen:
                lengths["outbox"] = total
            groups.extend(("outbox", name, p, lg) for name, (p, lg) in sorted(by_group.items()))

        async def other(name: str, reader: QueueReader) -> None:
            lengths[name] = float(await reader())

        jobs = [outbox(), *(other(n, r) for n, r in list(_queue_readers.items()))]
        try:
            async with asyncio.timeout(timeout):
                outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        except TimeoutError:
            outcomes = [TimeoutError("queue read timed out")]
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.warning("metrics: could not read a queue length: %r", outcome)
        self.lengths, self.groups = lengths, groups

    def collect(self) -> Iterable[Metric]:
        length = GaugeMetricFamily("bmm_queue_length", "Entries in a queue (read at scrape time)",
                                   labels=["queue"])
        for name, value in sorted(self.lengths.items()):
            length.add_metric([name], value)
        pending = GaugeMetricFamily(
            "bmm_queue_pending", "Entries delivered to a consumer group, not yet acknowledged",
            labels=["queue", "group"])
        lag = GaugeMetricFamily("bmm_queue_lag", "Entries a consumer group has not read yet",
                                labels=["queue", "group"])
        for queue, group, p, lg in self.groups:
            pending.add_metric([queue, group], p)
            lag.add_metric([queue, group], lg)
        return [length, pending, lag]


QUEUES = QueueCollector()


def _registry() -> CollectorRegistry:
    if not MULTIPROCESS:
        REGISTRY.register(QUEUES)
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(QUEUES)
    return registry


_EXPOSITION = _registry()


async def exposition(redis) -> bytes:  # noqa: ANN001
    """The text format of every metric (all processes' in multiprocess mode)."""
    await QUEUES.refresh(redis)
    return generate_latest(_EXPOSITION)


def process_exited(pid: int) -> None:
    """Forget a dead web process's live gauges (multiprocess mode)."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)

