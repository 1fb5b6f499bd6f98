"""The many-shows rush against one Redis master and against a Redis Cluster, one run.

    python -m loadtest.cluster_rush [--shows 120] [--seconds 8] [--concurrency 200]

Each configuration gets its own Redis (started here, on loopback) and its own server
(`python -m server --redis-url ...`, one web process, local Ray), the same shows published
through the partner feed, every show woken first, then the same closed-loop customers
cycling hold → release over all the shows. Measured per configuration: holds/s, hold
p50 / p99, and per master its CPU (psutil, the redis-server process) and commands/s
(INFO commandstats), from which the Redis CPU per hold follows.

Configurations: 1 master (AOF, fsync always); 3 masters without replicas; 3 masters with
a replica each and the platform's `WAIT 1` before every acknowledgement (the setting a
production cluster runs). On a 2-core machine all of them share the cores with the server
and the load generator, so this shows how the work spreads over masters, not how it
scales; RESULTS.md turns the measured cost per append into a count of masters.
"""
from __future__ import annotations

import argparse
import base64
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from loadtest.bench import Server, _wake_all, pct, run_generators
from loadtest.scenario import publish_rush
from server.core.embedded import RedisClusterServer, RedisServer


def _commands(port: int) -> int:
    client = redis.Redis(port=port)
    try:
        return sum(v["calls"] for v in client.info("commandstats").values())
    finally:
        client.close()


class Setup:
    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.dir = Path(tempfile.mkdtemp(prefix="bmm-cluster-rush-"))
        self.redis: RedisServer | RedisClusterServer | None = None

    def start(self) -> str:
        if self.kind == "single":
            self.redis = RedisServer(self.dir).start()
            return self.redis.url
        replicas = 1 if self.kind == "replicated" else 0
        self.redis = RedisClusterServer(self.dir, masters=3, replicas=replicas).start()
        return self.redis.url + ("" if replicas else "?wait_replicas=0")

    def masters(self) -> list[RedisServer]:
        if isinstance(self.redis, RedisServer):
            return [self.redis]
        assert self.redis is not None
        return self.redis.masters_now()

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()


def run(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    url = setup.start()
    # A server given its Redis must be given its secrets (only the embedded mode makes them).
    os.environ.setdefault("BMM_SECRET", secrets.token_urlsafe(32))
    os.environ.setdefault("BMM_DATA_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    server = Server(None, ["--redis-url", url, "--no-access-log"]).start()
    try:
        published = publish_rush(server.host, shows=args.shows)
        shows, seats = published["show_ids"], published["seat_ids"]
        _wake_all(server.host, shows, seats[0])
        slots = [(shows[i % len(shows)], seats[1 + (i // len(shows)) % (len(seats) - 1)])
                 for i in range(args.concurrency)]
        masters = setup.masters()
        procs = {m.port: psutil.Process(m.proc.pid) for m in masters if m.proc}
        t0 = time.time() + 2.0  # warm-up: connections open, batches settle
        t1 = t0 + args.seconds
        per_gen = len(slots) // args.gen_procs + 1
        jobs = [{"kind": "hold", "host": server.host, "slots": slots[i:i + per_gen],
                 "t0": t0, "t1": t1} for i in range(0, len(slots), per_gen)]
        cpu0: dict[int, float] = {}
        cmd0: dict[int, int] = {}

        # the generators run in forked processes; sample the masters at the window's start
        def sample_at_start() -> None:
            time.sleep(max(0.0, t0 - time.time()))
            for port, p in procs.items():
                cpu0[port] = sum(p.cpu_times()[:2])
                cmd0[port] = _commands(port)

        sampler = threading.Thread(target=sample_at_start)
        sampler.start()
        res, _ = run_generators(jobs)
        sampler.join()
        per_master = []
        for port, p in procs.items():
            cpu = sum(p.cpu_times()[:2]) - cpu0[port]
            cmds = _commands(port) - cmd0[port]
            per_master.append((port, cpu / args.seconds, cmds / args.seconds))
        redis_cpu = sum(c for _, c, _ in per_master) * args.seconds
        return {"holds": res.ok / args.seconds, "p50": pct(res.latencies, 50),
                "p99": pct(res.latencies, 99), "errors": res.errors,
                "conflicts": res.conflicts, "masters": per_master,
                "cpu_per_hold_us": redis_cpu / max(res.ok, 1) * 1e6}
    finally:
        server.stop()
        setup.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shows", type=int, default=120)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--gen-procs", type=int, default=2)
    ap.add_argument("--only", default="", help="comma list of: single,cluster,replicated")
    args = ap.parse_args()
    setups = [Setup("1 master", "single"), Setup("3 masters", "cluster"),
              Setup("3 masters + 3 replicas, WAIT 1", "replicated")]
    if args.only:
        setups = [s for s in setups if s.kind in args.only.split(",")]
    results = []
    for setup in setups:
        print(f"{setup.name}: {args.shows} shows, {args.concurrency} customers ...", flush=True)
        results.append((setup.name, run(setup, args)))
    base = results[0][1]["holds"]
    print()
    print("| Redis | holds/s (each + release) | vs first | hold p50 / p99 ms | "
          "per master: CPU % of a core, commands/s | Redis CPU per hold |")
    print("|---|---|---|---|---|---|")
    for name, r in results:
        masters = "; ".join(f"{cpu * 100:.0f} %, {cmds:,.0f}/s" for _, cpu, cmds in r["masters"])
        print(f"| {name} | {r['holds']:,.0f} | {r['holds'] / base:.2f}× | "
              f"{r['p50']:.1f} / {r['p99']:.1f} | {masters} | {r['cpu_per_hold_us']:.0f} µs |")
        if r["errors"]:
            print(f"|  errors | {r['errors']} |")
    print()
    print(f"(hold+release cycles; {args.shows} shows, {args.concurrency} closed-loop customers, "
          f"{args.seconds:g} s windows; {psutil.cpu_count()} cores shared by Redis, the server "
          "and the load generator)")


if __name__ == "__main__":
    main()
