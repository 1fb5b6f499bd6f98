"""Rate-limit checks per second: one script call per request vs coalesced, in one run.

    .venv/bin/python -m loadtest.ratelimit_bench [--seconds 5] [--concurrency 64 256]
        [--in-flight 1 2 4] [--kind hold|read] [--think-ms 0] [--rounds 1]

`--concurrency` requests at a time (closed loop: each does its next check as soon as the
last one is answered) against a real `redis-server` of its own (temp dir), through a
client made as the web process makes it (blocking pool of 64, the same retry policy):

1. per request - the previous middleware's path, copied here: one EVALSHA per check;
2. coalesced   - server/onsale/ratelimit.Batcher (what the middleware uses now), with 1,
                 2 and 4 batches in flight (a batch: one script call per bucket tag
                 present, and for a hold, whose two buckets are mostly in different tags,
                 a second step; the flag is one HGET per batch).

Each check is what a request makes: `hold` = client IP bucket + customer bucket + the
show's waiting-room flag (the hold path of a signed-in customer), `read` = the IP bucket
only. Every simulated request has its own IP and customer, and the limits are high, so
every check is admitted and charges its buckets (the costlier case for the script). Per
mode: checks/s, script calls/s, mean checks per call, check latency p50/p99, and CPU per
check in this process (what the web process pays) and in redis-server (INFO cpu).
`--think-ms` makes each client pause (exponential, that mean) before each check, so that
arrivals spread out instead of moving in lockstep with the batches. The machine is small
and shared: compare the rows of one run; `--rounds` runs the modes in turn that many
times and reports each column's median.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

from actors import redis_conn
from server.core.embedded import RedisServer
from server.core.redis_retry import redis_retry
from server.onsale.ratelimit import _GCRA, Batcher, Limit, bucket_tag

# The per-request script as it was before the checks were coalesced (one call per request).
PER_REQUEST_GCRA = """
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait, tats = 0, {}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then
    local w = allow_at - now
    if w > wait then wait = w end
  end
  tats[i] = new_tat
end
local flag = false
if #KEYS > n then flag = redis.call('HGET', KEYS[n + 1], 'enabled') end
if wait > 0 then return {math.ceil(wait), flag} end
for i = 1, n do
  redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', math.ceil(tats[i] - now) + 1)
end
return {0, flag}
"""

LIMIT = Limit(1000.0, 100_000)  # never refuses here: every check charges its buckets

Check = Callable[[list[str], list[str]], Awaitable[tuple[int, object]]]


def request_of(kind: str, i: int) -> tuple[list[str], list[str]]:
    """(keys, per-bucket args) of simulated request `i`."""
    ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    cust = f"u:bench-{i}"
    if kind == "read":
        return [f"rl:ip:read:{bucket_tag(ip)}:{LIMIT.tag}:{ip}"], [*LIMIT.args()]
    # the middleware's keys: each bucket in its identity's tag, the flag in the show's slot
    return ([f"rl:ip:write:{bucket_tag(ip)}:{LIMIT.tag}:{ip}",
             f"rl:cust:{bucket_tag(cust)}:{LIMIT.tag}:{cust}", "wr:{bench}"],
            [*LIMIT.args(), *LIMIT.args()])


def per_request(redis: aioredis.Redis, kind: str) -> tuple[Check, Callable[[], int]]:
    script = redis.register_script(PER_REQUEST_GCRA)
    n = "1" if kind == "read" else "2"
    calls = [0]

    async def check(keys: list[str], pairs: list[str]) -> tuple[int, object]:
        calls[0] += 1
        retry_ms, flag = await script(keys=keys, args=[n, *pairs])
        return retry_ms, flag

    return check, lambda: calls[0]


def coalesced(redis: aioredis.Redis, kind: str, in_flight: int
              ) -> tuple[Check, Callable[[], int]]:
    batcher = Batcher(redis.register_script(_GCRA), [*LIMIT.args()], max_in_flight=in_flight)
    spec = "101" if kind == "read" else "2111"  # (see _GCRA) n, flag wanted, limit numbers

    def check(keys: list[str], pairs: list[str]) -> Awaitable[tuple[int, object]]:
        return batcher.check(keys, spec)

    return check, lambda: batcher.calls


async def redis_cpu(redis: aioredis.Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def measure(redis: aioredis.Redis, check: Check, calls: Callable[[], int],
                  kind: str, concurrency: int, seconds: float, think_ms: float = 0.0
                  ) -> dict[str, float]:
    """`redis` is a client of its own (the checks may hold every pooled connection)."""
    await redis.flushall()
    requests = [request_of(kind, i) for i in range(concurrency)]
    latencies: list[float] = []
    done = 0
    measuring = False
    stop = False

    async def client(i: int) -> None:
        nonlocal done
        keys, pairs = requests[i]
        rng = random.Random(i)
        while not stop:
            if think_ms:  # arrivals spread out, as from many independent customers
                await asyncio.sleep(rng.expovariate(1000 / think_ms))
            t0 = time.perf_counter()
            retry_ms, _ = await check(keys, pairs)
            assert retry_ms == 0, retry_ms
            if measuring:
                latencies.append(time.perf_counter() - t0)
                done += 1

    tasks = [asyncio.create_task(client(i)) for i in range(concurrency)]
    await asyncio.sleep(1.0)  # warm-up: connections made, script loaded
    calls0, cpu0, rcpu0 = calls(), own_cpu(), await redis_cpu(redis)
    t0 = time.perf_counter()
    measuring = True
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.perf_counter() - t0
    n, ncalls = done, calls() - calls0
    cpu, rcpu = own_cpu() - cpu0, await redis_cpu(redis) - rcpu0
    stop = True
    await asyncio.gather(*tasks)
    latencies.sort()
    return {"checks/s": n / elapsed, "calls/s": ncalls / elapsed,
            "per call": n / max(1, ncalls),
            "p50 ms": latencies[len(latencies) // 2] * 1000,
            "p99 ms": latencies[int(len(latencies) * 0.99)] * 1000,
            "client CPU us/check": cpu / n * 1e6, "redis CPU us/check": rcpu / n * 1e6}


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        redis = redis_conn.async_client(server.url, blocking=True, max_connections=64,
                                        timeout=10.0, retry=redis_retry())
        admin = aioredis.Redis.from_url(server.url)
        try:
            modes: list[tuple[str, Callable[[], tuple[Check, Callable[[], int]]]]] = [
                ("per request", lambda: per_request(redis, args.kind))]
            for k in args.in_flight:
                modes.append((f"coalesced, {k} in flight",
                              lambda k=k: coalesced(redis, args.kind, k)))
            cols = ["checks/s", "calls/s", "per call", "p50 ms", "p99 ms",
                    "client CPU us/check", "redis CPU us/check"]
            print(f"kind={args.kind}, {args.seconds:g} s per mode x {args.rounds} rounds "
                  "(medians), think time "
                  f"{args.think_ms:g} ms, Redis {server.url}")
            for conc in args.concurrency:
                print(f"\nconcurrency {conc}")
                print(f"{'mode':<24}" + "".join(f"{c:>21}" for c in cols) + f"{'ratio':>8}")
                rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in modes}
                for _ in range(args.rounds):  # round-robin: a busy minute hits every mode
                    for name, make in modes:
                        check, calls = make()
                        rows[name].append(await measure(admin, check, calls, args.kind, conc,
                                                        args.seconds, args.think_ms))
                base = None
                for name, _ in modes:
                    row = {c: statistics.median(r[c] for r in rows[name]) for c in cols}
                    base = base or row["checks/s"]
                    print(f"{name:<24}" + "".join(f"{row[c]:>21,.2f}" for c in cols)
                          + f"{row['checks/s'] / base:>7.2f}x", flush=True)
        finally:
            await admin.aclose()
            await redis.aclose()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--kind", choices=("hold", "read"), default="hold")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every mode this many times, in turn; report medians")
    parser.add_argument("--think-ms", type=float, default=0.0,
                        help="mean pause (exponential) before each check: spread arrivals")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
