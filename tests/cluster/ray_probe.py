"""`python -m tests.cluster.ray_probe <gcs address>`: answers questions about a Ray cluster.

A separate process so that the test process never calls `ray.init` for the cluster under
test (it may run its own in-process Ray for the other test folders). One JSON request per
stdin line, one JSON answer per stdout line; the first line out is `{"ready": true}`.

    {"op": "nodes"}                       alive nodes
    {"op": "actors", "prefix": "shows."}  alive actors by name, with pid and node id
    {"op": "loaded", "hosts": [...]}      for each show host: the shows in its memory and
                                          its pid (asked of the host itself)
    {"op": "inspect", "host": ..., "show_ids": [...]}
                                          each show as that host has it in memory
    {"op": "add_hosts", "redis_url": ..., "count": N, "node_id": ...}
                                          grow the platform's host pool (what
                                          `python -m server.hosts add` does)

Ray's actor table is read from the GCS (`ray._private.state`), which works without the
dashboard (the cluster runs without one to save memory; `ray.util.state` needs it).
"""
from __future__ import annotations

import asyncio
import json
import sys
import traceback
from typing import Any

import ray
from ray._private import state as ray_state

from actors.client import ShowDirectory
from actors.pool import NAMESPACE


def nodes() -> list[dict[str, Any]]:
    return [{"node_id": n["NodeID"], "resources": n.get("Resources", {})}
            for n in ray.nodes() if n.get("Alive")]


def actors(prefix: str) -> list[dict[str, Any]]:
    out = []
    for actor_id, info in ray_state.actors().items():
        name = info.get("Name") or ""
        if info.get("State") != "ALIVE" or not name.startswith(prefix):
            continue
        if info.get("RayNamespace", NAMESPACE) != NAMESPACE:
            continue
        out.append({"name": name, "actor_id": actor_id, "pid": info.get("Pid"),
                    "node_id": (info.get("Address") or {}).get("NodeID"),
                    "state": info.get("State")})
    return out


def loaded(hosts: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in hosts:
        handle = ray.get_actor(name, namespace=NAMESPACE)
        out[name] = {"shows": ray.get(handle.loaded.remote(), timeout=60),
                     "pid": ray.get(handle.pid.remote(), timeout=60)}
    return out


def inspect(host: str, show_ids: list[str]) -> dict[str, dict[str, Any]]:
    handle = ray.get_actor(host, namespace=NAMESPACE)
    return {show_id: ray.get(handle.inspect.remote(show_id), timeout=60) for show_id in show_ids}


def add_hosts(redis_url: str, count: int, node_id: str) -> list[str]:
    async def run() -> list[str]:
        directory = await ShowDirectory(redis_url).start(create=False)
        try:
            return await directory.add_hosts(count, node_id)
        finally:
            await directory.close()

    return asyncio.run(run())


def main() -> None:
    ray.init(address=sys.argv[1], namespace=NAMESPACE, log_to_driver=False,
             configure_logging=False)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            op = req.pop("op")
            result = {"nodes": nodes, "actors": actors, "loaded": loaded,
                      "inspect": inspect, "add_hosts": add_hosts}[op](**req)
            print(json.dumps({"result": result}), flush=True)
        except Exception:
            print(json.dumps({"error": traceback.format_exc()}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
