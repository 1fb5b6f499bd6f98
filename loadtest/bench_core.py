"""Seat commands per second through the booking core, measured three ways in one run.

1. coalesced   - the real show host (actors/host.py) behind ShowDirectory's group commit
                 (the production path: one call in flight per host, batches of commands);
2. one call    - the same host, one Ray call per command (a `Call` of one group of one
                 command): one at a time, and with many calls in flight but no batching
                 (the fair comparison);
3. domain      - SeatMap.apply in a loop in this process: the ceiling for any host path.

The machine is small and shared, so absolute figures are noisy; the ratios from one run
(same machine, same minute, same workload) are what to compare over time.

    .venv/bin/python -m loadtest.bench_core [--seconds 5] [--submitters 1000]

Workload: simulated customers on one show. Each takes a "lot" (a group of 1-4 seats it
may hold: exact seats in the standard rows, or a best-available count in the premium
rows), holds it, then releases it (most) or confirms and later cancels it (the rest), and
gives the lot back. Lots never overlap, so the workload runs forever and nearly every
command succeeds; the number of lots caps how many customers are active at once.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import ray
import redis.asyncio as aioredis

from actors import commands as c
from actors.client import ShowDirectory
from actors.host import ActorSettings
from actors.layout import Layout, ShowConfig, grid_layout
from actors.pool import NAMESPACE
from actors.seatmap import SeatMap
from actors.store import put_config
from server.core.embedded import RedisServer

GROUP_SIZES = (2, 3, 1, 4, 2, 2, 1, 3)  # party sizes, cycled when cutting rows into lots
STANDARD, PREMIUM = "standard", "premium"

Submit = Callable[[c.Command], Awaitable[c.Result]]


# --- workload --------------------------------------------------------------------------

class Lot(NamedTuple):
    """Seats one customer may hold at a time: exact seats, or a best-available count."""

    seats: tuple[str, ...] | None
    count: int


def screen(rows: int, per_row: int, premium_share: float) -> Layout:
    # Front rows standard (exact picks), back rows premium (best-available): the two kinds
    # of hold never compete for a seat, so every hold can succeed.
    premium_rows = round(rows * premium_share)
    return grid_layout(
        rows, per_row, bands=[(STANDARD, rows - premium_rows), (PREMIUM, premium_rows)]
    )


def make_lots(layout: Layout, rng: random.Random) -> list[Lot]:
    """Cut standard rows into exact-seat lots and premium capacity into best-available
    lots; the premium counts add up to at most its seats, so best-available never fails."""
    sizes = iter(GROUP_SIZES * len(layout.seats))
    lots: list[Lot] = []
    rows: dict[str, list[str]] = collections.defaultdict(list)
    premium = 0
    for seat in layout.seats:
        if seat.category == STANDARD:
            rows[seat.row].append(seat.id)
        else:
            premium += 1
    for seats in rows.values():
        while seats:
            n = next(sizes)
            lots.append(Lot(tuple(seats[:n]), len(seats[:n])))
            seats = seats[n:]
    while premium > 0:
        n = min(next(sizes), premium)
        lots.append(Lot(None, n))
        premium -= n
    rng.shuffle(lots)  # so explicit and best-available sessions interleave
    return lots


def plan(lot: Lot, n: int, confirm_share: float, rng: random.Random) -> list[c.Command]:
    """One customer session: hold, then release it or confirm it (and later cancel, which
    frees the seats again). Ids are client-chosen, as in production."""
    hold_id, token = f"h{n}", f"t{n}"
    hold: c.Command
    if lot.seats is not None:
        hold = c.Hold(f"{n}.h", hold_id, token, list(lot.seats))
    else:
        hold = c.HoldBest(f"{n}.h", hold_id, token, lot.count, PREMIUM)
    if rng.random() < confirm_share:
        booking = f"b{n}"
        return [
            hold,
            c.Confirm(f"{n}.c", hold_id, token, booking, f"pay{n}"),
            c.Cancel(f"{n}.x", booking, token),
        ]
    return [hold, c.Release(f"{n}.r", hold_id, token)]


# --- counting --------------------------------------------------------------------------

@dataclass
class Tally:
    done: int = 0
    ok: int = 0
    leaked: int = 0  # sessions that failed after their hold: the lot is not reused
    latencies: list[float] = field(default_factory=list)

    def add(self, result: c.Result, latency: float | None = None) -> bool:
        self.done += 1
        ok = not isinstance(result, c.Rejected)
        self.ok += ok
        if latency is not None:
            self.latencies.append(latency)
        return ok

    def mark(self) -> tuple[int, int, int]:
        return self.done, self.ok, len(self.latencies)


@dataclass
class Row:
    """One mode's figures, summed over its measured slices."""

    mode: str
    in_flight: str
    seconds: float = 0.0
    commands: int = 0
    ok: int = 0
    calls: int = 0  # host calls that carried `commands` (coalesced mode only)
    call_commands: int = 0
    leaked: int = 0
    latencies: list[float] = field(default_factory=list)
    slice_rates: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.commands / self.seconds if self.seconds else 0.0

    @property
    def per_call(self) -> float:
        return self.call_commands / self.calls if self.calls else 1.0

    def add_slice(self, tally: Tally, start: tuple[int, int, int], end: tuple[int, int, int],
                  seconds: float, calls: int = 0, call_commands: int = 0) -> None:
        commands = end[0] - start[0]
        self.seconds += seconds
        self.commands += commands
        self.ok += end[1] - start[1]
        self.calls += calls
        self.call_commands += call_commands
        self.latencies += tally.latencies[start[2]:end[2]]
        self.slice_rates.append(commands / seconds)


# --- drivers ---------------------------------------------------------------------------

class Ids:
    """Session numbers, unique per show across all its slices."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


async def customer(pool: asyncio.Queue[Lot | None], submit: Submit, tally: Tally, ids: Ids,
                   stop: asyncio.Event, confirm_share: float, rng: random.Random) -> None:
    """One simulated customer: sessions back to back; waits when every lot is taken."""
    while True:
        lot = await pool.get()
        if lot is None or stop.is_set():
            return
        reuse = True
        for i, cmd in enumerate(plan(lot, ids.next(), confirm_share, rng)):
            t0 = time.perf_counter()
            result = await submit(cmd)
            if not tally.add(result, time.perf_counter() - t0):
                reuse = i == 0  # a rejected hold holds nothing; later failures may
                break
        if reuse:
            pool.put_nowait(lot)
        else:
            tally.leaked += 1


class ActorMode:
    """One show on a real show host, driven by `submitters` concurrent customers in slices.
    Between slices every session has finished, so the free lots carry over."""

    def __init__(self, row: Row, show_id: str, submit: Submit, submitters: int,
                 lots: list[Lot], args: argparse.Namespace,
                 counters: Callable[[], tuple[int, int]] | None = None) -> None:
        self.row, self.show_id, self.submit, self.submitters = row, show_id, submit, submitters
        self.lots, self.args, self.counters = list(lots), args, counters
        self.ids, self.rng = Ids(), random.Random(args.seed)

    async def run_slice(self, warmup: float, seconds: float) -> None:
        pool: asyncio.Queue[Lot | None] = asyncio.Queue()
        for lot in self.lots:
            pool.put_nowait(lot)
        tally, stop = Tally(), asyncio.Event()
        tasks = [
            asyncio.create_task(customer(pool, self.submit, tally, self.ids, stop,
                                         self.args.confirm_share, self.rng))
            for _ in range(self.submitters)
        ]
        await asyncio.sleep(warmup)  # let the customers ramp up before counting
        start, calls0, t0 = tally.mark(), self._counters(), time.perf_counter()
        await asyncio.sleep(seconds)
        end, calls1 = tally.mark(), self._counters()
        elapsed = time.perf_counter() - t0
        stop.set()
        for _ in tasks:  # wake customers waiting for a lot
            pool.put_nowait(None)
        await asyncio.gather(*tasks)  # in-flight sessions finish before the next slice
        self.lots = [lot for lot in _drain(pool) if lot is not None]
        self.row.leaked += tally.leaked
        self.row.add_slice(tally, start, end, elapsed,
                           calls1[0] - calls0[0], calls1[1] - calls0[1])

    def _counters(self) -> tuple[int, int]:
        return self.counters() if self.counters else (0, 0)


def _drain(pool: asyncio.Queue[Lot | None]) -> list[Lot | None]:
    items = []
    while not pool.empty():
        items.append(pool.get_nowait())
    return items


class DomainMode:
    """The ceiling: the same sessions, in lockstep like one batch after another, applied
    to a SeatMap in this process (no Ray, no Redis, no encoding, no expiry sweep)."""

    def __init__(self, row: Row, config: ShowConfig, lots: list[Lot], submitters: int,
                 args: argparse.Namespace) -> None:
        self.row, self.seatmap, self.submitters = row, SeatMap(config), submitters
        self.free, self.active = collections.deque(lots), []  # type: ignore[var-annotated]
        self.ids, self.rng, self.args = Ids(), random.Random(args.seed), args

    async def run_slice(self, warmup: float, seconds: float) -> None:
        tally = Tally()
        warm_until = time.perf_counter() + warmup
        start: tuple[int, int, int] | None = None
        t0 = 0.0
        while True:
            self._round(tally)
            clock = time.perf_counter()
            if start is None and clock >= warm_until:
                start, t0 = tally.mark(), clock
            elif start is not None and clock - t0 >= seconds:
                self.row.leaked += tally.leaked
                self.row.add_slice(tally, start, tally.mark(), clock - t0)
                return

    def _round(self, tally: Tally) -> None:
        """Every active session advances one command, like one coalesced batch."""
        while self.free and len(self.active) < self.submitters:
            lot = self.free.popleft()
            self.active.append((lot, plan(lot, self.ids.next(), self.args.confirm_share,
                                          self.rng), 0))
        now, still = time.time_ns() // 1_000_000, []
        for lot, cmds, i in self.active:
            ok = tally.add(self.seatmap.apply(cmds[i], now).result)
            if ok and i + 1 < len(cmds):
                still.append((lot, cmds, i + 1))
            elif ok or i == 0:
                self.free.append(lot)
            else:
                tally.leaked += 1
        self.active = still


Mode = ActorMode | DomainMode


# --- setting up the modes --------------------------------------------------------------

async def new_show(redis: aioredis.Redis, layout: Layout, tag: str) -> ShowConfig:
    config = ShowConfig(f"bench-{tag}-{uuid.uuid4().hex[:8]}", layout)
    await put_config(redis, config)
    return config


def raw_submit(handle: ray.actor.ActorHandle, show_id: str, epoch: int) -> Submit:
    """One Ray call per command (a host call carrying one group of one command): what the
    web tier would do without group commit."""
    async def submit(cmd: c.Command) -> c.Result:
        blob = await handle.apply.remote(c.command_encoder.encode(
            c.Call(epoch, [c.Group(show_id, [cmd])])))
        results = c.reply_decoder.decode(blob).results[0]
        if results is None:  # the pool does not change during the bench
            return c.Rejected("unavailable", f"show {show_id} is not on this host")
        return results[0]
    return submit


def active_label(submitters: int, lots: list[Lot]) -> str:
    return f"{submitters} ({min(submitters, len(lots))} active)"


async def coalesced_mode(directory: ShowDirectory, redis: aioredis.Redis, layout: Layout,
                         lots: list[Lot], args: argparse.Namespace) -> ActorMode:
    config = await new_show(redis, layout, "coalesced")
    client = directory.client(config.show_id)
    await client.submit(c.Expire("warm"))  # activate the show in its host first
    row = Row("host, coalesced (ShowDirectory)", active_label(args.submitters, lots))

    def counters() -> tuple[int, int]:
        # Only this mode goes through the directory's host clients (the one-call modes
        # call the host handle directly), so their counters are this mode's.
        clients = directory.clients()
        return sum(h.calls for h in clients), sum(h.commands for h in clients)

    return ActorMode(row, config.show_id, client.submit, args.submitters, lots, args,
                     counters=counters)


async def one_call_mode(directory: ShowDirectory, redis: aioredis.Redis, layout: Layout,
                        lots: list[Lot], args: argparse.Namespace, in_flight: int) -> ActorMode:
    config = await new_show(redis, layout, f"single{in_flight}")
    handle = await directory.host_handle(directory.owner(config.show_id))
    submit = raw_submit(handle, config.show_id, directory.epoch)
    await submit(c.Expire("warm"))
    kind = "sequential" if in_flight == 1 else "concurrent"
    row = Row(f"host, 1 call/cmd, {kind}", active_label(in_flight, lots))
    return ActorMode(row, config.show_id, submit, in_flight, lots, args)


async def run_all(redis_url: str, layout: Layout, lots: list[Lot],
                  args: argparse.Namespace) -> list[Row]:
    """Interleave the modes in short slices, rotating the order each round, so a noisy
    neighbour slows all of them alike and the ratios stay meaningful."""
    redis = aioredis.Redis.from_url(redis_url)
    # Snapshot cadence as the server runs it (server/app.py): at most one a second. The
    # pool's hosts (one per CPU, as the server runs them) start here, before any timing.
    directory = ShowDirectory(redis_url, ActorSettings(snapshot_min_interval_s=1.0),
                              pool="bench-core", hosts_per_node=args.hosts_per_node)
    modes: list[Mode] = []
    try:
        await directory.start()
        modes.append(await coalesced_mode(directory, redis, layout, lots, args))
        modes.append(await one_call_mode(directory, redis, layout, lots, args, 1))
        modes.append(await one_call_mode(directory, redis, layout, lots, args,
                                         args.in_flight or args.submitters))
        domain_row = Row("domain: SeatMap.apply in-process",
                         f"{min(args.submitters, len(lots))} (lockstep)")
        modes.append(DomainMode(domain_row, ShowConfig("bench-domain", layout), lots,
                                args.submitters, args))
        slice_s = args.seconds / args.rounds
        for r in range(args.rounds):
            progress(f"round {r + 1}/{args.rounds}")
            warmup = args.warmup if r == 0 else args.warmup / 4
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                await mode.run_slice(warmup, slice_s)
        return [m.row for m in modes]
    finally:
        directory.kill_hosts()  # the hosts are detached: stop them explicitly
        await directory.close()
        await redis.aclose()


def progress(what: str) -> None:
    print(f"  {what} ...", file=sys.stderr, flush=True)


# --- reporting -------------------------------------------------------------------------

def git_commit() -> str:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}{' (+ uncommitted changes in the tree)' if dirty else ''}"


def machine_facts() -> str:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {platform.machine()} {platform.system()} {platform.release()}, "
            f"{cores} cores ({usable} usable), load avg {load}\n"
            f"python {platform.python_version()}, ray {ray.__version__}, "
            f"commit {git_commit()}")


def pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


def print_table(rows: list[Row]) -> None:
    head = (f"{'mode':<34} {'submitters':>17} {'secs':>5} {'commands':>9} {'ok %':>6} "
            f"{'cmd/s':>8} {'slices min-max':>15} {'cmd/call':>8} {'p50 ms':>7} "
            f"{'p99 ms':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ok = 100 * r.ok / r.commands if r.commands else 0.0
        spread = f"{min(r.slice_rates):.0f}-{max(r.slice_rates):.0f}"
        print(f"{r.mode:<34} {r.in_flight:>17} {r.seconds:>5.1f} {r.commands:>9} {ok:>6.1f} "
              f"{r.rate:>8.0f} {spread:>15} {r.per_call:>8.1f} {pct(r.latencies, .5):>7} "
              f"{pct(r.latencies, .99):>7}")
    leaked = sum(r.leaked for r in rows)
    if leaked:
        print(f"note: {leaked} sessions failed after their hold (their lots were retired)")


def print_ratios(coalesced: Row, sequential: Row, concurrent: Row, domain: Row,
                 goal: float) -> None:
    def ratio(a: Row, b: Row) -> float:
        return a.rate / b.rate if b.rate else float("inf")

    for name, other in (("sequential", sequential), ("concurrent", concurrent)):
        x = ratio(coalesced, other)
        verdict = "meets" if x >= goal else "MISSES"
        print(f"coalesced / one call per command ({name}): {x:7.1f}x  "
              f"({verdict} the {goal:.0f}x goal)")
    print(f"coalesced / domain ceiling:                 {ratio(coalesced, domain):7.3f}  "
          f"(share of the in-process ceiling the host path reaches)")


# --- main ------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=5.0, help="measured time per mode")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="unmeasured time before a mode's first slice (a quarter before the rest)")
    p.add_argument("--rounds", type=int, default=5,
                   help="slices per mode, interleaved with the other modes")
    p.add_argument("--submitters", type=int, default=1000, help="concurrent customers (coalesced)")
    p.add_argument("--in-flight", type=int, default=None,
                   help="concurrent customers for one-call-per-command (default: --submitters)")
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--per-row", type=int, default=20)
    p.add_argument("--premium-share", type=float, default=0.4,
                   help="share of rows sold best-available (the rest: exact seats)")
    p.add_argument("--confirm-share", type=float, default=0.25,
                   help="sessions that confirm (then cancel) instead of releasing")
    p.add_argument("--goal", type=float, default=50.0, help="coalesced / one-call ratio to meet")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hosts-per-node", type=int, default=0,
                   help="show hosts in the pool (default 0: one per CPU, as the server)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    layout = screen(args.rows, args.per_row, args.premium_share)
    lots = make_lots(layout, random.Random(args.seed))
    explicit = sum(1 for lot in lots if lot.seats is not None)
    print(machine_facts())
    print(f"show: {len(layout.seats)} seats; {len(lots)} lots ({explicit} exact-seat, "
          f"{len(lots) - explicit} best-available); {args.confirm_share:.0%} of sessions "
          f"confirm+cancel; {args.seconds:g} s per mode in {args.rounds} interleaved slices")
    print("redis: AOF, appendfsync always (server.embedded.RedisServer)\n")
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        redis_server = RedisServer(Path(tmp)).start()
        try:
            # address="local": always a fresh Ray of our own, never a `ray start` head
            # that happens to run on this machine (a bare ray.init() would join it).
            ray.init(address="local", namespace=NAMESPACE, include_dashboard=False,
                     configure_logging=False, log_to_driver=False)
            rows = asyncio.run(run_all(redis_server.url, layout, lots, args))
        finally:
            ray.shutdown()
            redis_server.stop()
    print_table(rows)
    print()
    print_ratios(*rows, goal=args.goal)
    print(f"\nload avg at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
