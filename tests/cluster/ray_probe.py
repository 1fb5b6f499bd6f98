"""`python -m tests.cluster.ray_probe <gcs address>`: answers questions about a Ray cluster.

A separate process so that the test process never calls `ray.init` for the cluster under
test (it may run its own in-process Ray for the other test folders). One JSON request per
stdin line, one JSON answer per stdout line; the first line out is `{"ready": true}`.

    {"op": "nodes"}                       alive nodes
    {"op": "actors", "prefix": "show:"}   alive actors by name, with pid and node id
    {"op": "place", "show_ids": [...]}    for each show: its actor's pid (asked of the
                                          actor itself) and node (Ray's actor table)

Ray's actor table is read from the GCS (`ray._private.state`), which works without the
dashboard (the cluster runs without one to save memory; `ray.util.state` needs it).
"""
from __future__ import annotations

import json
import sys
import traceback
from typing import Any

import ray
from ray._private import state as ray_state

from actors.show_actor import NAMESPACE, actor_name


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


def place(show_ids: list[str]) -> dict[str, dict[str, Any]]:
    table = {a["name"]: a for a in actors("show:")}
    out: dict[str, dict[str, Any]] = {}
    for show_id in show_ids:
        handle = ray.get_actor(actor_name(show_id), namespace=NAMESPACE)
        pid = ray.get(handle.pid.remote(), timeout=60)
        row = table.get(actor_name(show_id)) or {}
        out[show_id] = {"pid": pid, "node_id": row.get("node_id"), "table_pid": row.get("pid")}
    return out


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
            result = {"nodes": nodes, "actors": actors, "place": place}[op](**req)
            print(json.dumps({"result": result}), flush=True)
        except Exception:
            print(json.dumps({"error": traceback.format_exc()}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
