"""Load shedding on the hold path (issue 7): one command, one table.

    .venv/bin/python -m loadtest.shed [--seconds 8] [--cap 64] [--factor 10] [--uncapped]

Starts the platform (`loadtest.bench.Server`: its own Redis and local Ray, no demo data)
with per-IP rate limits off (every simulated customer is 127.0.0.1) and the hold path's
in-flight cap at `--cap` (`BMM_HOLD_MAX_INFLIGHT`), sets up one 400-seat show through the
partner feed, then on that one hot show:

1. **capacity** (a server without the cap): `--customers` customers in a closed loop, each
   holding its own seat then releasing it (bench's generator, as `loadtest.bench` measures
   the hot show): the most holds per second this machine does.
2. **normal** and **overload** (a fresh server with the cap): an open loop offering 1× then
   `--factor` × that rate (arrivals on a fixed schedule, each a hold of a free seat, any
   seat when none is free, then its release if it got one; latency from the *scheduled*
   arrival, so a backed-up server cannot hide its queue, and from the send). Admitted =
   answers from the booking core (201 or 409); shed = 429 `overloaded`. The ratio is the
   overload's admitted p99 over the 1× run's.

`--target-ms` gives the protected server a latency target (`BMM_HOLD_LATENCY_TARGET_MS`:
the cap then adapts; default 0, a fixed cap, as the server's default).
`--uncapped` also offers the overload to the capacity server (no cap), for contrast.

`--edge` puts nginx in front of the protected server (`server.edge.Edge`: a real nginx on
its own port, shedding the hold path per show with `limit_req` at `--edge-rate` × the
measured capacity, burst `--edge-burst`, default 0.1 s worth) and offers 1× and `--factor`
× through it; the table then also reports nginx's CPU. `--also-direct` runs the direct
(cap only) measurement in the same run too, for a like-for-like comparison. The load
generators share this machine's cores with the server: the table reports the rate they
actually managed to offer.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import urllib.request
from typing import Any

import msgspec

from server.edge import Edge

from .bench import (
    GenResult,
    Server,
    cpu_seconds,
    free_port,
    merge_counts,
    pct,
    run_generators,
    run_jobs,
)
from .scenario import publish_rush


def _capacity(host: str, show: str, seats: list[str], customers: int, secs: float,
              procs: int) -> GenResult:
    t0 = time.time() + 2.0  # process start, then 1 s of warm-up
    slots = [(show, s) for s in seats[:customers]]
    jobs = [{"kind": "hold", "host": host, "slots": slots[i::procs], "t0": t0, "t1": t0 + secs}
            for i in range(procs)]
    return run_generators(jobs)[0]


class OverResult(msgspec.Struct):
    admitted: int = 0                 # answers from the booking core: 201 or 409
    shed: int = 0                     # 429
    errors: dict[str, int] = {}
    latencies: list[float] = []       # admitted, ms from the scheduled arrival
    from_send: list[float] = []       # admitted, ms from when the request was sent
    send_lag: list[float] = []        # ms the generator itself was behind schedule
    cpu_s: float = 0.0                # CPU seconds the generator process(es) used


class _Conn:
    """A bare keep-alive HTTP/1.1 connection: a request is bytes out, status + body in.
    Far cheaper than a full client per request, so one generator process can offer
    thousands of requests a second on the cores it shares with the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        i = head.lower().find(b"content-length:")
        size = int(head[i + 15:head.index(b"\r\n", i)]) if i >= 0 else 0
        return status, await self.reader.readexactly(size) if size else b""


def _request(method: str, host: str, path: str, body: bytes = b"",
             headers: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


async def _open_loop(host: str, show: str, seats: list[str], rate: float, t0: float,
                     t1: float, res: OverResult, conns: int = 256) -> None:
    """Arrivals every 1/rate s whatever happens: a hold of a free seat (any seat when none
    is free: the server answers it all the same), then its release if it got one. An
    arrival waits for a free connection if all are busy (that wait counts: latency is
    from the scheduled arrival)."""
    hostport = host.split("://", 1)[1]
    addr, port = hostport.rsplit(":", 1)
    idle: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(conns):
        idle.put_nowait(_Conn(*await asyncio.open_connection(addr, int(port))))
    free, tasks = list(seats), set()
    path = f"/api/shows/{show}/holds"

    async def arrival(at: float) -> None:
        seat = free.pop() if free else random.choice(seats)
        conn = await idle.get()
        sent = time.time()
        res.send_lag.append((sent - at) * 1000)
        try:
            status, raw = await conn.send(
                _request("POST", hostport, path, b'{"seats":["' + seat.encode() + b'"]}'))
            end = time.time()
            if status == 429:
                res.shed += 1
            elif status in (201, 409):
                res.admitted += 1
                res.latencies.append((end - at) * 1000)
                res.from_send.append((end - sent) * 1000)
            else:
                res.errors[str(status)] = res.errors.get(str(status), 0) + 1
            if status == 201:
                hold = msgspec.json.decode(raw)
                await conn.send(_request("DELETE", hostport, f"/api/holds/{hold['hold_id']}",
                                         headers=f"X-Holder-Token: {hold['holder_token']}\r\n"))
            idle.put_nowait(conn)
        except Exception as exc:  # count it; replace the connection
            res.errors[type(exc).__name__] = res.errors.get(type(exc).__name__, 0) + 1
            conn.writer.close()
            idle.put_nowait(_Conn(*await asyncio.open_connection(addr, int(port))))
        finally:
            if seat not in free:
                free.append(seat)

    k = 0
    while (at := t0 + k / rate) < t1:
        await asyncio.sleep(max(at - time.time(), 0))  # always yield: requests progress
        k += 1
        task = asyncio.create_task(arrival(at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    while not idle.empty():
        idle.get_nowait().writer.close()


def _over_main(job: dict[str, Any], out: Any) -> None:
    res = OverResult()
    if job.get("nice"):
        os.nice(job["nice"])
    cpu0 = time.process_time()
    asyncio.run(_open_loop(job["host"], job["show"], job["seats"], job["rate"], job["t0"],
                           job["t1"], res))
    res.cpu_s = time.process_time() - cpu0
    out.put(msgspec.msgpack.encode(res))


def _overload(host: str, show: str, seats: list[str], rate: float, secs: float,
              procs: int, nice: int = 0) -> OverResult:
    t0 = time.time() + 1.5
    jobs = [{"host": host, "show": show, "seats": seats[i::procs], "rate": rate / procs,
             "t0": t0, "t1": t0 + secs, "nice": nice} for i in range(procs)]
    return merge_counts(OverResult(), run_jobs(_over_main, jobs, OverResult))


def _platform(cap: int, target_ms: float | None, extra: list[str]
              ) -> tuple[Server, str, list[str]]:
    os.environ["BMM_RATE_LIMITS"] = "0"
    os.environ["BMM_HOLDER_CAPS"] = "0"  # every client is 127.0.0.1: one network
    os.environ["BMM_HOLD_MAX_INFLIGHT"] = str(cap)
    if target_ms is not None:
        os.environ["BMM_HOLD_LATENCY_TARGET_MS"] = str(target_ms)
    server = Server(None, extra).start()
    setup = publish_rush(server.host, shows=1)
    show, seats = setup["show_ids"][0], setup["seat_ids"]
    urllib.request.urlopen(urllib.request.Request(  # wake the actor (cold start untimed)
        f"{server.host}/api/shows/{show}/holds", data=msgspec.json.encode({"seats": [seats[0]]}),
        headers={"Content-Type": "application/json"}, method="POST"), timeout=60).read()
    return server, show, seats[1:]


def _cap_row(label: str, res: GenResult, secs: float) -> list[str]:
    other = sum(res.errors.values())
    return [label, f"{(res.ok + res.conflicts + other) / secs:,.0f}",
            f"{(res.ok + res.conflicts) / secs:,.0f}", "0" if not other else f"({other} errors)",
            f"{pct(res.latencies, 50):.1f} / {pct(res.latencies, 99):.1f}", "-", "same", "-",
            "-"]


def _over_row(label: str, res: OverResult, secs: float, normal: OverResult) -> list[str]:
    other = sum(res.errors.values())
    sent = res.admitted + res.shed + other
    p99, p99_sent = pct(res.latencies, 99), pct(res.from_send, 99)
    return [label, f"{sent / secs:,.0f}", f"{res.admitted / secs:,.0f}",
            f"{res.shed:,}" + (f" (+{other} errors)" if other else ""),
            f"{pct(res.latencies, 50):.1f} / {p99:.1f}",
            f"{p99 / pct(normal.latencies, 99):.2f}",
            f"{pct(res.from_send, 50):.1f} / {p99_sent:.1f}",
            f"{p99_sent / pct(normal.from_send, 99):.2f}", f"{pct(res.send_lag, 99):.1f}"]


def _cpu(server: Server, edge: Edge | None) -> dict[str, float]:
    """CPU seconds so far by role: the server's tree (web, actors, ray, redis) and nginx
    (master and workers) when there is an edge."""
    out = cpu_seconds(server.proc.pid if server.proc else None)
    if edge is not None and edge.proc is not None:
        import psutil

        total = 0.0
        try:
            root = psutil.Process(edge.proc.pid)
            for p in (root, *root.children(recursive=True)):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
        out["nginx"] = total
    return out


def _protected(args: argparse.Namespace, capacity: float, edge: bool
               ) -> tuple[dict[float, OverResult], list[tuple[str, str]], str]:
    """A fresh server with the cap (and nginx in front when `edge`): 1× then factor ×."""
    server, show, seats = _platform(args.cap, args.target_ms, args.server_arg)
    proxy, busy, runs = None, [], {}
    label = f"cap {args.cap}" + (f", target {args.target_ms:g} ms" if args.target_ms else "")
    try:
        host = server.host
        if edge:
            rate = args.edge_rate * capacity
            burst = args.edge_burst if args.edge_burst >= 0 else max(1, round(rate / 10))
            # every load client is 127.0.0.1: the per-client hold bucket would be all of it
            proxy = Edge(free_port(), [server.host.split("://", 1)[1]], rate, burst,
                         hold_timing_log=True, client_hold_rate_per_s=0).start()
            host = proxy.url
            label = f"through nginx ({rate:,.0f} holds/s per show, burst {burst}), " + label
        print(f"protected: {label}: 1× then {args.factor:g}× capacity, open loop ...",
              flush=True)
        windows = {}
        for factor in (1.0, args.factor):
            cpu0 = _cpu(server, proxy)
            started = time.time()
            runs[factor] = _overload(host, show, seats, capacity * factor, args.seconds,
                                     args.gen_procs, args.gen_nice)
            busy.append((f"{factor:g}×, {label}", _busy(cpu0, _cpu(server, proxy),
                                                        args.seconds + 1.5)
                         + f"; load generators {runs[factor].cpu_s / (args.seconds + 1.5):.2f}"))
            windows[factor] = (started, time.time())
    finally:
        if proxy is not None:
            proxy.stop(keep_files=True)  # flushes its buffered logs
        server.stop()
    if proxy is not None:
        try:
            busy.append(("admitted holds as nginx timed them ($request_time: without the "
                         "load generators' delays)", _nginx_timing(proxy, windows)))
        finally:
            proxy.remove()
    return runs, busy, label


def _nginx_timing(edge: Edge, windows: dict[float, tuple[float, float]]) -> str:
    """p50 / p99 of nginx's `$request_time` for the holds it let through, per run (from the
    edge's holds.log: `$msec $status $request_time $upstream_response_time`)."""
    times: dict[float, list[float]] = {f: [] for f in windows}
    for line in (edge.prefix / "logs/holds.log").read_text().splitlines():
        at, status, took = line.split()[:3]
        if status not in ("201", "409"):
            continue
        for factor, (start, end) in windows.items():
            if start <= float(at) <= end:
                times[factor].append(float(took) * 1000)
    base = pct(times[1.0], 99) if times.get(1.0) else float("nan")
    return "; ".join(f"{f:g}×: {pct(t, 50):.1f} / {pct(t, 99):.1f} ms (p99 {pct(t, 99) / base:.2f}"
                     f" × normal)" for f, t in times.items() if t)


def _busy(a: dict[str, float], b: dict[str, float], wall: float) -> str:
    return ", ".join(f"{k} {(b[k] - a.get(k, 0.0)) / wall:.2f}" for k in b
                     if b[k] - a.get(k, 0.0) > 0.05 * wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each measured window")
    ap.add_argument("--customers", type=int, default=200,
                    help="closed-loop customers for the capacity run (as loadtest.bench)")
    ap.add_argument("--cap", type=int, default=64, help="BMM_HOLD_MAX_INFLIGHT for the server")
    ap.add_argument("--factor", type=float, default=10.0, help="overload = factor × capacity")
    ap.add_argument("--gen-procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--target-ms", type=float, default=0.0,
                    help="BMM_HOLD_LATENCY_TARGET_MS for the protected server (0: fixed cap)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra argument for `python -m server` (repeatable)")
    ap.add_argument("--uncapped", action="store_true",
                    help="also offer the overload to the server without the cap")
    ap.add_argument("--edge", action="store_true",
                    help="offer the load through nginx in front of the protected server")
    ap.add_argument("--edge-rate", type=float, default=0.8,
                    help="the edge's holds/s per show, as a fraction of the capacity (0.8)")
    ap.add_argument("--edge-burst", type=int, default=-1,
                    help="the edge's burst (default: 0.1 s worth of its rate)")
    ap.add_argument("--gen-nice", type=int, default=0,
                    help="run the open-loop generators at this nice level (e.g. 10: the "
                         "server's processes get the CPU first, as if the crowd were "
                         "elsewhere; default 0)")
    ap.add_argument("--also-direct", action="store_true",
                    help="with --edge: also measure the cap alone (no nginx) in this run")
    args = ap.parse_args()
    secs, procs = args.seconds, args.gen_procs
    rows, busy = [], []

    print("capacity: the platform without a cap ...", flush=True)
    server, show, seats = _platform(0, 0, args.server_arg)
    try:
        cpu0 = cpu_seconds(server.proc.pid)
        cap_res = _capacity(server.host, show, seats, args.customers, secs, procs)
        busy.append(("capacity", _busy(cpu0, cpu_seconds(server.proc.pid), secs + 2)))
        capacity = cap_res.ok / secs
        rows.append(_cap_row(f"capacity: {args.customers} customers, closed loop, no cap",
                             cap_res, secs))
        print(f"capacity {capacity:,.0f} holds/s", flush=True)
        bare = None
        if args.uncapped:
            cpu0 = cpu_seconds(server.proc.pid)
            bare = _overload(server.host, show, seats, capacity * args.factor, secs, procs)
            busy.append(("overload, no cap", _busy(cpu0, cpu_seconds(server.proc.pid),
                                                   secs + 1.5)))
    finally:
        server.stop()

    if args.also_direct and args.edge:
        direct, more, label = _protected(args, capacity, edge=False)
        busy += more
        rows.append(_over_row(f"1× offered (normal), open loop, {label}", direct[1.0], secs,
                              direct[1.0]))
        rows.append(_over_row(f"{args.factor:g}× offered, open loop, {label}",
                              direct[args.factor], secs, direct[1.0]))
    runs, more, label = _protected(args, capacity, edge=args.edge)
    busy += more
    normal = runs[1.0]
    rows.append(_over_row(f"1× offered (normal), open loop, {label}", runs[1.0], secs, normal))
    over = runs[args.factor]
    rows.append(_over_row(f"{args.factor:g}× offered, open loop, {label}", over, secs, normal))
    if bare is not None:
        rows.append(_over_row(f"{args.factor:g}× offered, open loop, no cap", bare, secs,
                              normal))

    head = ["run", "sent req/s", "admitted/s", "shed (429)",
            "admitted p50 / p99 ms (from schedule)", "p99 ÷ normal",
            "admitted p50 / p99 ms (from send)", "p99 ÷ normal", "generator lag p99 ms"]
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    for name, text in busy:
        print(f"{name}: {text}" if name.startswith("admitted") else
              f"cores busy, {name}: {text}")
    ratio = pct(over.latencies, 99) / pct(normal.latencies, 99)
    ratio_sent = pct(over.from_send, 99) / pct(runs[1.0].from_send, 99)
    sent = (over.admitted + over.shed + sum(over.errors.values())) / secs
    print(f"\nadmitted p99 under {args.factor:g}× = {ratio:.2f} × normal from the schedule "
          f"({'within' if ratio <= 2 else 'NOT within'} 2×), {ratio_sent:.2f} × from the send "
          f"({'within' if ratio_sent <= 2 else 'NOT within'} 2×); "
          f"{capacity * args.factor:,.0f}/s asked, {sent:,.0f}/s sent")


if __name__ == "__main__":
    main()
