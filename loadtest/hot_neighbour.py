"""Does one very hot show hurt the other shows on its host?

    python -m loadtest.hot_neighbour [--seconds 5] [--quiet 30] [--hot-clients 64]

Through the production client (actors/client.py ShowDirectory, group commit per host),
against a local Ray and an embedded Redis (AOF, fsync always), three phases of the same
length, each printing the quiet shows' command latency (p50/p99) and throughput:

1. quiet: `--quiet` shows, one client each, hold -> release cycles with a 20 ms pause;
2. hot on the same host: the same, plus `--hot-clients` clients cycling as fast as they
   can on one show placed on the quiet shows' host;
3. hot on a host of its own: the same, with the hot show placed on the other host (what
   giving an on-sale show a host of its own would buy).

The decision it informs is in docs/DESIGN.md ("One hot show on a host").
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import ray

from actors import commands as c
from actors.client import ShowDirectory
from actors.host import ActorSettings
from actors.layout import ShowConfig, grid_layout
from actors.placement import owner
from actors.pool import NAMESPACE
from actors.store import put_config
from server.core.embedded import RedisServer

LAYOUT = grid_layout(20, 20)
SEATS = [s.id for s in LAYOUT.seats]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


async def cycle(directory: ShowDirectory, show_id: str, seat: str, tag: str, until: float,
                pause: float, lat: list[float] | None) -> int:
    n = 0
    while time.monotonic() < until:
        hold_id = f"{tag}-{n}"
        t0 = time.perf_counter()
        held = await directory.submit(show_id, c.Hold(f"{hold_id}:h", hold_id, "t", [seat]))
        t1 = time.perf_counter()
        if isinstance(held, c.Held):
            await directory.submit(show_id, c.Release(f"{hold_id}:r", hold_id, "t"))
        t2 = time.perf_counter()
        if lat is not None:
            lat += [(t1 - t0) * 1000, (t2 - t1) * 1000]
        n += 1
        if pause:
            await asyncio.sleep(pause)
    return n


async def phase(directory: ShowDirectory, quiet: list[str], hot: str | None, seconds: float,
                hot_clients: int, tag: str) -> dict[str, float]:
    until = time.monotonic() + seconds
    lat: list[float] = []
    quiet_jobs = [cycle(directory, s, SEATS[0], f"{tag}q{i}", until, 0.02, lat)
                  for i, s in enumerate(quiet)]
    hot_jobs = [cycle(directory, hot, SEATS[i], f"{tag}h{i}", until, 0.0, None)
                for i in range(hot_clients)] if hot else []
    counts = await asyncio.gather(*quiet_jobs, *hot_jobs)
    q, h = sum(counts[:len(quiet)]), sum(counts[len(quiet):])
    return {"quiet_p50": statistics.median(lat), "quiet_p99": pct(lat, 99),
            "quiet_cycles_s": q / seconds, "hot_cycles_s": h / seconds}


async def main(args: argparse.Namespace) -> None:
    redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="bmm-hot-"))).start()
    ray.init(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    directory = await ShowDirectory(redis_server.url, ActorSettings(snapshot_min_interval_s=1.0),
                                    pool="hot-neighbour", hosts_per_node=2).start()
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        hosts = directory.hosts
        home, other = hosts[0], hosts[1]
        ids = [f"show-{i}" for i in range(20 * args.quiet + 100)]
        mine = [s for s in ids if owner(s, hosts) == home]
        quiet, hot_here = mine[:args.quiet], mine[args.quiet]
        hot_there = next(s for s in ids if owner(s, hosts) == other)
        for show_id in [*quiet, hot_here, hot_there]:
            await put_config(redis, ShowConfig(show_id, LAYOUT))
            await directory.inspect(show_id)  # loaded: no activation in the windows
        rows = [("quiet shows alone", await phase(directory, quiet, None, args.seconds, 0, "a")),
                ("hot show on the same host", await phase(directory, quiet, hot_here, args.seconds,
                                                          args.hot_clients, "b")),
                ("hot show on a host of its own", await phase(directory, quiet, hot_there,
                                                              args.seconds, args.hot_clients, "c"))]
        print(f"{args.quiet} quiet shows (1 client each, 20 ms pause), hot show "
              f"{args.hot_clients} clients; {args.seconds:.0f} s each; hosts {len(hosts)}")
        print("| phase | quiet p50 ms | quiet p99 ms | quiet cycles/s | hot cycles/s |")
        print("|---|---|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r['quiet_p50']:.1f} | {r['quiet_p99']:.1f} | "
                  f"{r['quiet_cycles_s']:.0f} | {r['hot_cycles_s']:.0f} |")
    finally:
        directory.kill_hosts()
        await directory.close()
        await redis.aclose()
        ray.shutdown()
        redis_server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--quiet", type=int, default=30)
    ap.add_argument("--hot-clients", type=int, default=64)
    asyncio.run(main(ap.parse_args()))
