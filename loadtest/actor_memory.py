"""How many active shows fit on a node: the show hosts' memory with N shows loaded, and
what passivation gives back.

    .venv/bin/python -m loadtest.actor_memory                        # 1,000 then 10,000 shows
    .venv/bin/python -m loadtest.actor_memory --levels 100,1000 --booked 0 --no-passivation
    .venv/bin/python -m loadtest.actor_memory --levels 10000 --json /tmp/mem.json

Starts its own Redis (AOF, fsync always; `server.embedded.RedisServer` in a temp dir) and
its own local Ray (`address="local"`: never a Ray head that happens to run here), and a pool
of show hosts as the web tier runs them (actors/host.py; one host per CPU unless
`--hosts-per-node`). For each level N (cumulative: each level adds shows to the ones
already loaded) it writes the new shows' configs (`actors.store.put_config`, a rows x
per_row screen, 400 seats by default), activates each through the client the web tier
uses (actors/client.py `ShowDirectory`, group commit per host, `--concurrency` shows at a
time): `--booked` of the seats (default 10 %) held in pairs, half of the pairs confirmed
(bookings) and the rest released, so every show has a seat map, bookings and a log, and
no live hold (it may passivate); `--booked 0` does one hold + release per show instead.
Then it measures every host: shows in memory and RSS from the host itself (`stats()`), USS
and PSS with psutil (RSS counts the pages shared with other Ray workers - the Python
runtime, Ray's libraries; USS is what the process alone holds), the Ray worker processes
(the hosts, and idle pooled workers), and the node's MemAvailable drop. Unless
`--no-passivation`, it then waits for idle passivation (`--passivate-after`, 60 s as in
production; polled against the hosts' stats with a deadline) and measures again: the
shows leave memory but the host processes stay, so how much RSS the allocator gives
back is what that row shows.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import ray
import redis.asyncio as aioredis

from actors import commands as c
from actors.client import ShowDirectory
from actors.host import ActorSettings
from actors.layout import Rules, ShowConfig, grid_layout
from actors.pool import NAMESPACE
from actors.store import put_config
from server.core.embedded import RedisServer

MB = 1024 * 1024


def ray_workers() -> dict[str, list[int]]:
    """This driver's Ray worker processes by what they run: "ShowHost", "IDLE", ..."""
    kinds: dict[str, list[int]] = {}
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if cmd.startswith("ray::"):
            kind = cmd[5:].split(".")[0].split()[0] or "?"
            kinds.setdefault(kind, []).append(p.pid)
    return kinds


async def measure(directory: ShowDirectory) -> dict[str, Any]:
    stats = await directory.host_stats()
    uss = pss = 0
    for s in stats:
        try:
            info = psutil.Process(s["pid"]).memory_full_info()
        except psutil.Error:
            continue
        uss += info.uss
        pss += info.pss
    workers = ray_workers()
    return {
        "hosts": len(stats), "shows": sum(s["shows"] for s in stats),
        "shows_per_host": [s["shows"] for s in stats],
        "layouts": sum(s["layouts"] for s in stats),
        "rss_mb": sum(s["rss"] for s in stats) / MB,
        "rss_per_host_mb": [round(s["rss"] / MB, 1) for s in stats],
        "uss_mb": uss / MB, "pss_mb": pss / MB,
        "host_procs": len(workers.get("ShowHost", [])),
        "ray_workers": sum(len(v) for v in workers.values()),
        "avail_mb": psutil.virtual_memory().available / MB,
    }


async def write_configs(redis: aioredis.Redis, shows: list[str], config: ShowConfig) -> None:
    for i in range(0, len(shows), 500):
        async with redis.pipeline(transaction=False) as pipe:
            for show_id in shows[i:i + 500]:
                await put_config(pipe, ShowConfig(show_id, config.layout, config.rules))
            await pipe.execute()


async def activate(directory: ShowDirectory, shows: list[str], seats: list[str],
                   booked: float, concurrency: int) -> dict[str, int]:
    """Bring every show into memory with some state; returns result type -> count."""
    pairs = max(1, round(len(seats) * booked / 2)) if booked > 0 else 0
    outcome: dict[str, int] = {}

    def count(results: list[c.Result]) -> None:
        for r in results:
            kind = type(r).__name__ if not isinstance(r, c.Rejected) else f"Rejected:{r.code}"
            outcome[kind] = outcome.get(kind, 0) + 1

    async def one(show_id: str) -> None:
        if pairs == 0:
            held = await directory.submit(show_id, c.Hold(f"{show_id}:h", "h", "tok", [seats[0]]))
            done = await directory.submit(show_id, c.Release(f"{show_id}:r", "h", "tok"))
            count([held, done])
            return
        holds = [c.Hold(f"{show_id}:h{k}", f"h{k}", "tok", seats[2 * k:2 * k + 2])
                 for k in range(pairs)]
        results = await asyncio.gather(*(directory.submit(show_id, h) for h in holds))
        count(results)
        # Book half of them, release the rest: no live hold, so the show may passivate.
        follow = [c.Confirm(f"{h.hold_id}:c", h.hold_id, "tok", f"{show_id}-b{k}", "pay")
                  if k % 2 == 0 else c.Release(f"{h.hold_id}:r", h.hold_id, "tok")
                  for k, h in enumerate(holds)]
        count(await asyncio.gather(*(directory.submit(show_id, f) for f in follow)))

    sem = asyncio.Semaphore(concurrency)

    async def bounded(show_id: str) -> None:
        async with sem:
            await one(show_id)

    await asyncio.gather(*map(bounded, shows))
    return outcome


async def wait_passivated(directory: ShowDirectory, timeout: float) -> float:
    start = time.monotonic()
    while True:
        loaded = sum(s["shows"] for s in await directory.host_stats())
        if loaded == 0:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{loaded} shows still in memory after {timeout:.0f}s")
        await asyncio.sleep(1.0)


async def run(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    settings = ActorSettings(passivate_after_s=args.passivate_after, snapshot_min_interval_s=1.0)
    directory = ShowDirectory(redis_url, settings, pool="memory",
                              hosts_per_node=args.hosts_per_node)
    redis = aioredis.Redis.from_url(redis_url)
    layout = grid_layout(args.rows, args.per_row)
    config = ShowConfig("template", layout, Rules())
    seats = [s.id for s in layout.seats]
    tag = uuid.uuid4().hex[:6]
    out: dict[str, Any] = {"seats_per_show": len(seats), "levels": []}
    try:
        await directory.start()
        await asyncio.sleep(1.0)  # the hosts' first housekeeping round
        empty = await measure(directory)
        out["empty"] = empty
        print_row("empty hosts", None, empty, None)
        loaded = 0
        for n in args.levels:
            new = [f"mem-{tag}-{i}" for i in range(loaded, n)]
            t0 = time.monotonic()
            await write_configs(redis, new, config)
            t1 = time.monotonic()
            outcome = await activate(directory, new, seats, args.booked, args.concurrency)
            t2 = time.monotonic()
            loaded = max(loaded, n)
            row = await measure(directory)
            row.update({"level": n, "configs_s": t1 - t0, "activate_s": t2 - t1,
                        "outcome": outcome,
                        "avail_drop_mb": empty["avail_mb"] - row["avail_mb"],
                        "rss_growth_per_show_kb": (row["rss_mb"] - empty["rss_mb"]) * 1024 / max(n, 1)})
            out["levels"].append(row)
            print_row(f"{n:,} shows loaded", t2 - t1, row, empty)
            rejected = {k: v for k, v in outcome.items() if k.startswith("Rejected")}
            if rejected:
                print(f"  note: rejected commands while activating: {rejected}")
        if not args.no_passivation and args.levels:
            waited = await wait_passivated(directory, args.passivate_after + 120)
            await asyncio.sleep(3)  # let the kernel account for freed pages (one reading)
            after = await measure(directory)
            after["passivated_in_s"] = waited
            out["passivated"] = after
            print_row(f"after passivation ({waited:.0f} s)", None, after, empty)
    finally:
        directory.kill_hosts()
        await directory.close()
        await redis.aclose()
    return out


HEADER = ("| state | activated in s | shows in memory (per host) | host procs / Ray workers "
          "| hosts RSS MB (per host) | hosts USS MB | hosts PSS MB | RSS growth per show KB "
          "| node MemAvailable drop MB |")


def print_row(label: str, took: float | None, r: dict[str, Any], empty: dict[str, Any] | None) -> None:
    per_show = drop = "-"
    if empty is not None:
        if r["shows"]:
            per_show = f"{(r['rss_mb'] - empty['rss_mb']) * 1024 / r['shows']:.1f}"
        drop = f"{empty['avail_mb'] - r['avail_mb']:,.0f}"
    per_host = " + ".join(f"{x:,.0f}" for x in r["rss_per_host_mb"])
    print(f"| {label} | {'-' if took is None else f'{took:.1f}'} "
          f"| {r['shows']:,} ({' + '.join(f'{x:,}' for x in r['shows_per_host'])}) "
          f"| {r['host_procs']} / {r['ray_workers']} | {r['rss_mb']:,.0f} ({per_host}) "
          f"| {r['uss_mb']:,.0f} | {r['pss_mb']:,.0f} | {per_show} | {drop} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1000,10000",
                    help="shows loaded, comma-separated, cumulative (default 1000,10000)")
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--per-row", type=int, default=20)
    ap.add_argument("--booked", type=float, default=0.1,
                    help="share of each show's seats held in pairs, half of them then booked "
                         "(default 0.1; 0: one hold + release per show)")
    ap.add_argument("--concurrency", type=int, default=500, help="shows activated at a time")
    ap.add_argument("--hosts-per-node", type=int, default=0,
                    help="show hosts (default 0: one per CPU, as the server)")
    ap.add_argument("--passivate-after", type=float, default=60.0,
                    help="idle seconds before a show leaves its host (default 60, as in production)")
    ap.add_argument("--no-passivation", action="store_true", help="do not wait for passivation")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    args.levels = sorted(int(x) for x in args.levels.split(",") if x.strip())
    vm = psutil.virtual_memory()
    print(f"machine: {psutil.cpu_count()} cores, {vm.total / 2**30:.1f} GiB RAM "
          f"({vm.available / 2**30:.1f} available); Ray {ray.__version__} (local); Redis AOF "
          f"fsync always; shows of {args.rows * args.per_row} seats, "
          f"{args.booked:.0%} of seats held in pairs, half of them booked", flush=True)
    with tempfile.TemporaryDirectory(prefix="bmm-memory-") as tmp:
        redis_server = RedisServer(Path(tmp)).start()
        try:
            ray.init(address="local", namespace=NAMESPACE, include_dashboard=False,
                     configure_logging=False, log_to_driver=False)
            print(HEADER)
            print("|" + " --- |" * (HEADER.count("|") - 1))
            out = asyncio.run(run(args, redis_server.url))
        finally:
            ray.shutdown()
            redis_server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
