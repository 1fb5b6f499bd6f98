"""Operate the show-host pool of a running platform.

    python -m server.hosts --redis-url URL --ray-address HEAD:6379 list
    python -m server.hosts --redis-url URL --ray-address HEAD:6379 add 2 --node <ray node id>

`list` prints the pool (epoch, each host, its node, pid, shows in memory, RSS) and the Ray
nodes; `add` grows the pool by hosts pinned to a node (a new worker machine): about 1/N of
the shows move to them while the platform runs, nothing is lost (actors/client.py
`add_hosts`). Settings come from the environment like the web tier's (BMM_REDIS_URL,
BMM_RAY_ADDRESS).
"""
from __future__ import annotations

import argparse
import asyncio
import sys

import ray

from actors.client import ShowDirectory
from actors.pool import NAMESPACE

from server.core.settings import Settings


async def _run(args: argparse.Namespace, redis_url: str) -> int:
    try:
        directory = await ShowDirectory(redis_url).start(create=False)
    except LookupError as exc:
        print(f"{exc}: start the web tier first (it records the pool)", file=sys.stderr)
        return 1
    try:
        if args.command == "add":
            added = await directory.add_hosts(args.count, args.node)
            print(f"added {', '.join(added)}; pool epoch {directory.epoch}")
        print(f"pool {directory.pool}, epoch {directory.epoch}")
        for host in await directory.host_stats():
            print(f"  {host['name']:<28} pid {host['pid']:<8} shows {host['shows']:<7} "
                  f"rss {host['rss'] / 2**20:7.1f} MB  calls {host['calls']}")
        for node in ray.nodes():
            if node["Alive"]:
                print(f"  node {node['NodeID']}  {node['NodeManagerAddress']}  "
                      f"CPU {node['Resources'].get('CPU', 0):g}")
    finally:
        await directory.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.hosts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--ray-address")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the pool and its hosts")
    add = sub.add_parser("add", help="grow the pool")
    add.add_argument("count", type=int)
    add.add_argument("--node", help="Ray node id to pin the new hosts to (default: the first)")
    args = parser.parse_args(argv)
    settings = Settings.from_env(redis_url=args.redis_url, ray_address=args.ray_address)
    if not settings.redis_url or not settings.ray_address:
        parser.error("give the platform's Redis URL and Ray address (or BMM_REDIS_URL, "
                     "BMM_RAY_ADDRESS)")
    ray.init(address=settings.ray_address, namespace=NAMESPACE, log_to_driver=False)
    try:
        return asyncio.run(_run(args, settings.redis_url))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
