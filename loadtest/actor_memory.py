"""How many active shows fit on a node: memory per show actor, and what passivation frees.

    .venv/bin/python -m loadtest.actor_memory                    # 10, 50, 100 shows
    .venv/bin/python -m loadtest.actor_memory --levels 10,50 --seats 400

Starts its own Redis (AOF, fsync always) and a one-node Ray cluster with the Ray CLI
(tests/cluster/harness.py: own ports and temp dir, everything it started is stopped at the
end), then for each level N: writes N shows (a rows x per_row screen), activates each one
through the same client the web tier uses (actors/client.py ShowDirectory, group commit):
holds and bookings on 10 % of the seats, so each actor has a loaded seat map, bookings and
a log; measures every show actor process (RSS, and USS/PSS: RSS counts the pages shared
with other Ray workers - the Python runtime, Ray's libraries - once per process, USS is what
the process alone holds, what one more show costs); then waits for idle passivation
(`passivate_after_s`, 60 s as in production) - polled against Ray's actor table, with a deadline -
and measures again.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import psutil
import ray
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors import commands as c  # noqa: E402
from actors.client import ShowDirectory  # noqa: E402
from actors.layout import Rules, ShowConfig, grid_layout  # noqa: E402
from actors.show_actor import NAMESPACE, ActorSettings, actor_name  # noqa: E402
from actors.store import put_config  # noqa: E402
from tests.cluster.harness import Cluster  # noqa: E402

MB = 1024 * 1024


def actor_pids(names: set[str]) -> dict[str, int]:
    from ray._private import state as ray_state

    return {info["Name"]: info["Pid"] for info in ray_state.actors().values()
            if info.get("State") == "ALIVE" and info.get("Name") in names}


def measure(pids: list[int]) -> dict[str, float]:
    rss, uss, pss = [], [], []
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
        except psutil.Error:
            continue
        rss.append(info.rss / MB)
        uss.append(info.uss / MB)
        pss.append(info.pss / MB)
    return {"n": len(rss), "rss_total": sum(rss), "uss_total": sum(uss), "pss_total": sum(pss),
            "rss_mean": statistics.fmean(rss) if rss else 0.0,
            "uss_mean": statistics.fmean(uss) if uss else 0.0,
            "pss_mean": statistics.fmean(pss) if pss else 0.0}


async def activate(directory: ShowDirectory, redis: aioredis.Redis, n: int, rows: int,
                   per_row: int) -> list[str]:
    layout = grid_layout(rows, per_row)
    tag = uuid.uuid4().hex[:6]
    shows = [f"mem-{tag}-{i}" for i in range(n)]
    for show_id in shows:
        await put_config(redis, ShowConfig(show_id, layout, Rules()))
    seats = [s.id for s in layout.seats]
    busy = max(2, len(seats) // 10)

    async def one(show_id: str) -> None:
        client = directory.client(show_id)
        cmds: list[c.Command] = []
        for k in range(0, busy, 2):
            hold_id = f"{show_id}-h{k}"
            cmds.append(c.Hold(f"{hold_id}:hold", hold_id, "tok", seats[k:k + 2]))
        results = await asyncio.gather(*map(client.submit, cmds))
        assert all(isinstance(r, c.Held) for r in results), results[:3]
        # Book half of them, release the rest: no live hold, so the actor may passivate.
        follow = [c.Confirm(f"{h.hold_id}:c", h.hold_id, "tok", f"{h.hold_id}-b", "pay")
                  if i % 2 == 0 else c.Release(f"{h.hold_id}:r", h.hold_id, "tok")
                  for i, h in enumerate(cmds)]
        results = await asyncio.gather(*map(client.submit, follow))
        assert not any(isinstance(r, c.Rejected) for r in results), results[:3]

    # A few at a time: each new actor is a new worker process (~1-2 s of CPU to start).
    sem = asyncio.Semaphore(8)

    async def bounded(show_id: str) -> None:
        async with sem:
            await one(show_id)

    await asyncio.gather(*map(bounded, shows))
    return shows


async def wait_passivated(names: set[str], timeout: float) -> float:
    start = time.monotonic()
    while actor_pids(names):
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{len(actor_pids(names))} actors still alive after {timeout:.0f}s")
        await asyncio.sleep(0.5)
    return time.monotonic() - start


async def run(args: argparse.Namespace, cluster: Cluster) -> list[dict[str, float]]:
    settings = ActorSettings(passivate_after_s=args.passivate_after, snapshot_every=200)
    directory = ShowDirectory(cluster.redis_url, settings)
    redis = aioredis.Redis.from_url(cluster.redis_url)
    rows_out = []
    try:
        for n in args.levels:
            avail_before = psutil.virtual_memory().available / MB
            t0 = time.monotonic()
            shows = await activate(directory, redis, n, args.rows, args.per_row)
            took = time.monotonic() - t0
            names = {actor_name(s) for s in shows}
            # Touch every show (a command that changes nothing still counts as activity):
            # one that passivated while the later ones were being started is reloaded.
            for rnd in range(5):
                await asyncio.gather(*(directory.submit(s, c.Release(f"touch{rnd}-{s}", "x", "t"))
                                       for s in shows))
                pids = actor_pids(names)
                if len(pids) == n:
                    break
            active = measure(list(pids.values()))
            avail_active = psutil.virtual_memory().available / MB
            waited = await wait_passivated(names, args.passivate_after + 120)
            gone = sum(1 for pid in pids.values() if not psutil.pid_exists(pid))
            await asyncio.sleep(3)  # let the kernel account for the freed pages (a reading)
            avail_after = psutil.virtual_memory().available / MB
            rows_out.append({"shows": n, "activate_s": took, **active, "passivated_in_s": waited,
                             "exited": gone, "avail_drop": avail_before - avail_active,
                             "avail_back": avail_after - avail_active})
            print_row(rows_out[-1], args.rows * args.per_row)
            directory = ShowDirectory(cluster.redis_url, settings)  # forget old handles
    finally:
        await redis.aclose()
    return rows_out


HEADER = ("| active shows | seats/show | activated in s | actor procs | RSS/actor MB | USS/actor MB | PSS/actor MB "
          "| USS total MB | RSS total MB | node MemAvailable drop MB | passivated after s "
          "| processes exited | MemAvailable back MB |")


def print_row(r: dict[str, float], seats: int) -> None:
    print(f"| {r['shows']} | {seats} | {r['activate_s']:.0f} | {r['n']} | {r['rss_mean']:.0f} | {r['uss_mean']:.1f} "
          f"| {r['pss_mean']:.1f} | {r['uss_total']:.0f} | {r['rss_total']:.0f} "
          f"| {r['avail_drop']:.0f} | {r['passivated_in_s']:.1f} | {r['exited']}/{r['n']} "
          f"| {r['avail_back']:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="10,50,100",
                    help="active shows to measure, comma-separated (default 10,50,100)")
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--per-row", type=int, default=20)
    ap.add_argument("--passivate-after", type=float, default=60.0,
                    help="idle seconds before a show actor passivates (default 60, as in "
                         "production)")
    args = ap.parse_args()
    args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    total_mb = psutil.virtual_memory().total / MB
    print(f"machine: {psutil.cpu_count()} cores, {total_mb / 1024:.1f} GiB RAM; "
          f"Ray {ray.__version__}; one Ray node (ray start), Redis AOF fsync always")
    with Cluster(web=0, ray_nodes=1, cpus_per_node=2) as cluster:
        ray.init(address=cluster.ray_address, namespace=NAMESPACE, log_to_driver=False,
                 configure_logging=False)
        try:
            print(HEADER)
            print("|" + " --- |" * (HEADER.count("|") - 1))
            rows = asyncio.run(run(args, cluster))
        finally:
            ray.shutdown()
    if rows:
        per_show = statistics.fmean(r["uss_mean"] for r in rows)
        print(f"\nper active show: ~{per_show:.0f} MB unique (USS) per actor process; "
              f"passivation ended {sum(r['exited'] for r in rows)}/"
              f"{sum(r['n'] for r in rows)} actor processes")


if __name__ == "__main__":
    main()
