"""Ours vs the simplest competing design (loadtest/baseline.py), one run, one table.

    .venv/bin/python -m loadtest.versus [--seconds 4] [--rounds 2] [--clients 64]
        [--watchers 100] [--workers 1]

Starts both on free ports of this machine: the baseline (aiohttp + one Lua script per hold
and per release, its own Redis with AOF and `appendfsync always`) and ours (`python -m
server`, bench.Server: own Redis with the same settings, local Ray), each with `--workers`
web processes. Publishes one 400-seat show on ours (scenario.publish_rush) and the same
seats on the baseline, then measures each server with bench.py's client code:

a. HTTP ceiling: `GET /healthz`, closed loop, `--concurrency` connections;
b. closed loop: `--clients` customers, each cycling hold -> release on its own seat:
   cycles/s (201 holds, each followed by its release), hold p50/p99, and the server's CPU
   per cycle (its whole process tree, from /proc: steadier than a rate on a noisy
   machine). On ours,
   `--watchers` WebSocket watchers are connected to the show's live seat map during (b)
   and (c), and must receive every change (checked: events, seq gaps, final seq);
c. open loop at half of the cycles/s this server just made in (b): hold p50/p99 from the
   scheduled arrival (no coordinated omission).

The servers alternate, baseline-ours then ours-baseline, `--rounds` times each (ABBA: a
drift in the machine's load hits both alike); the table shows the mean and every round.
Ours keeps its rate limits on (the middleware checks and charges every bucket in Redis),
with the per-IP limits raised since every customer here is 127.0.0.1, and its default
hold in-flight cap; the run prints what the limiter did (buckets, 429s seen).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis

from server.core.settings import Settings

from .bench import (
    ROOT, GenResult, Server, WatchResult, _watch_main, http_json, pct, run_generators,
    server_processes,
)
from .scenario import publish_rush

# Rate limits stay on; only the per-IP buckets are raised, as 127.0.0.1 is every customer.
RL_PER_S = 100_000
RATE_LIMIT_ENV = {
    "BMM_RATE_LIMITS": "1",
    "BMM_RL_IP_READ_PER_S": str(RL_PER_S), "BMM_RL_IP_READ_BURST": str(RL_PER_S),
    "BMM_RL_IP_WRITE_PER_S": str(RL_PER_S), "BMM_RL_IP_WRITE_BURST": str(RL_PER_S),
    # bench.Server turns the cap off unless told: keep the platform's default.
    "BMM_HOLD_MAX_INFLIGHT": str(Settings().hold_max_inflight),
}


class Baseline(Server):
    """`python -m loadtest.baseline` as bench.Server runs ours: free port, own temp Redis."""

    def start(self, timeout: float = 60.0) -> Baseline:
        cmd = [sys.executable, "-m", "loadtest.baseline", "--port", str(self.port),
               "--workers", str(self.workers or 1), *self.extra]
        self.launch(cmd, None, "baseline", timeout)
        return self


def request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
            ) -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method, headers={
        "Content-Type": "application/json", **(headers or {})},
        data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def warm(host: str, show_id: str, seat: str) -> None:
    """One untimed hold + release: ours starts the show on its host (cold start), both
    load their scripts."""
    status, hold = request("POST", f"{host}/api/shows/{show_id}/holds", {"seats": [seat]})
    if status != 201:
        raise RuntimeError(f"warm-up hold on {host}: {status} {hold}")
    status, _ = request("DELETE", f"{host}/api/holds/{hold['hold_id']}",
                        headers={"X-Holder-Token": hold["holder_token"]})
    if status != 200:
        raise RuntimeError(f"warm-up release on {host}: {status}")


def closed(kind: str, host: str, slots: list[tuple[str, str]], secs: float, procs: int
           ) -> GenResult:
    t0 = time.time() + 2.0  # process start, then 1 s of warm-up (as bench.py)
    return run_generators([{"kind": kind, "host": host, "slots": slots[i::procs], "t0": t0,
                            "t1": t0 + secs} for i in range(procs)])[0]


def open_loop(host: str, show_id: str, seats: list[str], rate: float, secs: float,
              procs: int) -> GenResult:
    t0 = time.time() + 1.0
    return run_generators([{"kind": "open", "host": host, "show_id": show_id,
                            "seats": seats[i::procs], "rate": rate / procs, "t0": t0,
                            "t1": t0 + secs} for i in range(procs)])[0]


class Watchers:
    """bench.py's WebSocket watchers on one show, kept connected while other load runs."""

    def __init__(self, host: str, show_id: str, count: int, procs: int, nice: int) -> None:
        self.seatmap = f"{host}/api/shows/{show_id}/seatmap"
        ctx = mp.get_context("fork")
        self.ready, self.out = ctx.Queue(), ctx.Queue()
        self.gos = [ctx.Queue() for _ in range(procs)]
        url = host.replace("http://", "ws://") + f"/api/shows/{show_id}/live"
        per = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
        self.procs = [ctx.Process(target=_watch_main, daemon=True, args=(
            {"url": url, "count": n, "drain_s": 15.0, "sample_every": 50, "nice": nice},
            self.ready, self.gos[i], self.out)) for i, n in enumerate(per)]

    def start(self) -> Watchers:
        self.seq0 = http_json(self.seatmap)["seq"]  # nothing changes the show meanwhile
        for p in self.procs:
            p.start()
        for _ in self.procs:
            self.ready.get(timeout=120)
        return self

    def finish(self) -> tuple[WatchResult, int]:
        """Every watcher waits (up to its drain_s) for the show's last seq; returns the
        merged result and the events each watcher should have received."""
        final = http_json(self.seatmap)["seq"]
        for q in self.gos:
            q.put(final)
        merged = WatchResult()
        for _ in self.procs:
            r = msgspec.msgpack.decode(self.out.get(timeout=120), type=WatchResult)
            for f in ("connected", "failed", "events", "frames", "gaps", "resyncs", "behind"):
                setattr(merged, f, getattr(merged, f) + getattr(r, f))
            merged.latencies += r.latencies
            merged.cpu += r.cpu
        for p in self.procs:
            p.join(timeout=30)
        return merged, final - self.seq0


@dataclass
class Round:
    noop: float
    cycles: float
    closed_p50: float
    closed_p99: float
    rate: float
    open_p50: float
    open_p99: float
    cpu_ms: float = 0.0  # the server's CPU (its whole process tree) per closed-loop cycle
    # what was not a 201 hold / 200 release, per phase
    odd: dict[str, Any] = field(default_factory=dict)
    watch: str = ""
    cpu_roles: str = ""  # cpu_ms by role


def problems(res: GenResult) -> dict[str, Any]:
    out: dict[str, Any] = dict(res.errors)
    if res.conflicts:
        out["hold 409"] = res.conflicts
    if res.late:
        out["late (no free seat)"] = res.late
    return out


def server_cpu(root_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server's process tree, by role (web processes,
    Redis, and for ours the show hosts and Ray's daemons)."""
    out: dict[str, float] = {}
    for role, procs in server_processes(root_pid).items():
        out[role] = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                out[role] += t.user + t.system
            except Exception:  # gone meanwhile
                pass
    return out


def measure(host: str, show_id: str, seats: list[str], args: argparse.Namespace,
            watch: bool, root_pid: int) -> Round:
    secs, procs = args.seconds, args.gen_procs
    noop = closed("noop", host, [(show_id, "-")] * args.concurrency, secs, procs)
    watchers = (Watchers(host, show_id, args.watchers, args.watch_procs, args.watch_nice).start()
                if watch and args.watchers else None)
    cpu0 = server_cpu(root_pid)
    hold = closed("hold", host, [(show_id, seats[i % len(seats)]) for i in range(args.clients)],
                  secs, procs)
    cpu1 = server_cpu(root_pid)
    per_role = {k: (cpu1[k] - cpu0.get(k, 0.0)) * 1000 / max(hold.ok, 1) for k in cpu1}
    cpu_ms = sum(per_role.values())
    cycles = hold.ok / secs
    rate = max(cycles / 2, 1.0)
    lat = open_loop(host, show_id, seats, rate, secs, procs)
    r = Round(noop.ok / secs, cycles, pct(hold.latencies, 50), pct(hold.latencies, 99), rate,
              pct(lat.latencies, 50), pct(lat.latencies, 99), cpu_ms)
    r.cpu_roles = ", ".join(f"{k} {v:.2f}" for k, v in per_role.items() if v >= 0.005)
    for phase, res in (("no-op", noop), ("closed", hold), ("open", lat)):
        if p := problems(res):
            r.odd[phase] = p
    if watchers is not None:
        w, changes = watchers.finish()
        expected = w.connected * changes
        r.watch = (f"{w.connected} watchers ({w.failed} failed), {w.events:,} of {expected:,} "
                   f"events in {w.frames:,} frames, gaps {w.gaps}, resynced {w.resyncs}, "
                   f"short of final seq {w.behind}; delivery p50/p99 "
                   f"{pct(w.latencies, 50):.0f}/{pct(w.latencies, 99):.0f} ms; "
                   f"watcher CPU {w.cpu:.1f} s")
        if not w.frames or w.events < expected or w.gaps or w.behind:
            r.watch += "  <-- NOT every change delivered"
    return r


def redis_port(root_pid: int) -> int | None:
    """The port the platform's own redis-server listens on (it retitles itself, so not
    from its command line)."""
    import psutil

    for p in server_processes(root_pid)["redis"]:
        for conn in p.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN:
                return conn.laddr.port
    return None


def rate_limit_state(root_pid: int) -> str:
    """What ours' Redis shows of the limiter. Its buckets (`rl:*`) expire as soon as they
    are back under their limit, so at the end there are none; its script being loaded
    shows that checks ran."""
    from server.onsale.ratelimit import _GCRA

    port = redis_port(root_pid)
    if port is None:
        return "ours' Redis not found"
    client = redis.Redis(port=port, decode_responses=True)
    loaded = client.script_exists(hashlib.sha1(_GCRA.encode()).hexdigest())[0]
    buckets = sum(1 for _ in client.scan_iter(match="rl:*", count=1000))
    client.close()
    return (f"rate-limit script loaded in ours' Redis: {'yes' if loaded else 'NO'}; "
            f"buckets left: {buckets}")


def cell(values: list[float], fmt: str) -> str:
    return f"{statistics.fmean(values):{fmt}} ({' / '.join(f'{v:{fmt}}' for v in values)})"


COLUMNS = [("cycles/s", "cycles", ",.0f"), ("closed p50 ms", "closed_p50", ".1f"),
           ("closed p99 ms", "closed_p99", ".1f"), ("half rate /s", "rate", ",.0f"),
           ("half-rate p50 ms", "open_p50", ".1f"), ("half-rate p99 ms", "open_p99", ".1f"),
           ("no-op req/s", "noop", ",.0f"), ("server CPU ms/cycle", "cpu_ms", ".2f")]


def table(results: dict[str, list[Round]]) -> list[str]:
    rows = [["server", *(c[0] for c in COLUMNS)]]
    for name, rounds in results.items():
        rows.append([name, *(cell([getattr(r, a) for r in rounds], f) for _, a, f in COLUMNS)])
    means = {n: {a: statistics.fmean(getattr(r, a) for r in rs) for _, a, _ in COLUMNS}
             for n, rs in results.items()}
    rows.append(["ours / baseline", *(f"{means['ours'][a] / means['baseline'][a]:.2f}"
                                      for _, a, _ in COLUMNS)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="each measured window")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per server (alternating)")
    ap.add_argument("--clients", type=int, default=64, help="closed-loop customers")
    ap.add_argument("--concurrency", type=int, default=200, help="no-op connections")
    ap.add_argument("--watchers", type=int, default=100, help="live watchers on ours")
    ap.add_argument("--watch-procs", type=int, default=1)
    ap.add_argument("--watch-nice", type=int, default=19,
                    help="watchers stand for browsers elsewhere: below the servers' priority")
    ap.add_argument("--gen-procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--workers", type=int, default=1, help="web processes, both servers")
    args = ap.parse_args()
    started = time.monotonic()
    os.environ.update(RATE_LIMIT_ENV)  # bench.Server lets the environment win

    print(f"starting the baseline and ours ({args.workers} web process(es) each) ...",
          flush=True)
    baseline = Baseline(args.workers, []).start()
    ours = Server(args.workers, [], ROOT)
    results: dict[str, list[Round]] = {"baseline": [], "ours": []}
    try:
        ours.start()
        assert ours.proc is not None
        setup = publish_rush(ours.host, shows=1)
        show_id, seats = setup["show_ids"][0], setup["seat_ids"]
        status, _ = request("PUT", f"{baseline.host}/baseline/shows/{show_id}", {"seats": seats})
        if status != 200:
            raise RuntimeError(f"baseline show setup: {status}")
        hosts = {"baseline": baseline.host, "ours": ours.host}
        assert baseline.proc is not None
        roots = {"baseline": baseline.proc.pid, "ours": ours.proc.pid}
        for host in hosts.values():
            warm(host, show_id, seats[-1])
        print(f"show {show_id} ({len(seats)} seats) on both, set up in "
              f"{time.monotonic() - started:.0f} s", flush=True)
        for i in range(2 * args.rounds):
            # ABBA: baseline, ours, ours, baseline, ...
            name = ("baseline", "ours")[(i + i // 2) % 2]
            r = measure(hosts[name], show_id, seats, args, watch=name == "ours",
                        root_pid=roots[name])
            results[name].append(r)
            print(f"  {name}: {r.cycles:,.0f} cycles/s, no-op {r.noop:,.0f} req/s, "
                  f"half rate p99 {r.open_p99:.1f} ms", flush=True)
        limiter = rate_limit_state(ours.proc.pid)
    finally:
        ours.stop()
        baseline.stop()

    print()
    print("\n".join(table(results)))
    print()
    print("mean (round 1 / round 2 / ...); rounds ran baseline, ours, ours, baseline, ...; "
          f"windows of {args.seconds:g} s; latency from the request's start (closed) or its "
          "scheduled arrival (half rate)")
    for name, rounds in results.items():
        for k, r in enumerate(rounds, 1):
            print(f"{name} round {k}: not 201/200: {r.odd or 'none'}; server CPU ms/cycle: "
                  f"{r.cpu_roles}")
            if r.watch:
                print(f"{name} round {k}: live (closed + half rate): {r.watch}")
    seen_429 = sum(n for rs in results["ours"] for p in rs.odd.values() for k, n in p.items()
                   if "429" in k)
    print(f"ours' rate limits: ON (BMM_RATE_LIMITS=1; per-IP read and write {RL_PER_S:,}/s, "
          f"burst {RL_PER_S:,}; hold in-flight cap {RATE_LIMIT_ENV['BMM_HOLD_MAX_INFLIGHT']} "
          f"per web process, the default); 429s seen: {seen_429}; {limiter}")
    load = os.getloadavg()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; load average {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f}; {args.gen_procs} generator processes and {args.watchers} watchers "
          f"({args.watch_procs} process(es), nice {args.watch_nice}) on the same cores; total "
          f"{time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop both servers on TERM
    main()
