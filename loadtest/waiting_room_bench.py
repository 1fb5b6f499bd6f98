"""The waiting room (issue 15): joins per second and Redis memory per queued visitor.

    .venv/bin/python -m loadtest.waiting_room_bench [--seconds 8] [--concurrency 64]
        [--visitors 100000]

Against a `redis-server` of its own (server.core.embedded.RedisServer: AOF, fsync always,
as the platform runs it) and the web app (`create_app`, one web process of its own, no Ray:
the waiting room never touches the show actors):

1. HTTP, one web process, `--concurrency` keep-alive connections, closed loop, for
   `--seconds` each, every request a new cookieless visitor (the bot's case and the
   costliest: each join makes a visitor id and an encrypted session cookie), into the
   pre-queue of a show whose sale opens in an hour:
   - `GET .../queue/challenge`: making a challenge;
   - `POST .../queue` with the proof of work checked (the server as it runs);
   - `POST .../queue` with the check skipped (a second web process in which `pow.check`
     only names the used-solution key: the solution is still marked used in Redis).
   The client's solving is not the server's cost: the challenges are made ahead by this
   script with the server's key and a known number (`altcha` lets the maker choose it), so
   each payload is a real, valid, unused solution without the 500 hashes a client would
   spend. Per row: requests/s, and the CPU seconds per request of the web process and of
   redis-server over the window (psutil / INFO cpu), from which the joins/s one web
   process and one Redis can take at 100 % of a core follow. The load generator shares
   this machine's cores: the observed rate is a floor, the per-core figures are the
   capacity.
2. Memory: `--visitors` joins through the waiting room's own functions (the script the
   handlers call) into the pre-queue of a fresh show, then the draw, the same number of
   joins after the start, and the admission of the first 10 %; `INFO memory`
   used_memory (less the clients' buffers) before and after each step, per visitor, and
   MEMORY USAGE of the keys. The used-solution markers (one per
   join, kept until the challenge expires, 5 minutes) are measured apart.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import altcha
import aiohttp
import msgspec
import psutil

from actors import redis_conn
from actors.layout import ShowConfig, grid_layout
from actors.store import put_config
from server.catalog.model import Money, Movie, Screen, ScreenLayout, Show, Theatre, catalog_key
from server.core.embedded import RedisServer
from server.onsale import pow, waiting_room
from server.onsale.keys import pow_used_key

ROOT = Path(__file__).resolve().parents[1]
SECRET = "waiting-room-bench-secret"
ADMIN_KEY = "waiting-room-bench-admin"
DATA_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # a bench key, not a secret
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the web process ---------------------------------------------------------------------

def serve(port: int, redis_url: str, verify: bool) -> None:
    """`create_app` on `port` (a child of the bench). `verify=False`: `pow.check` only
    names the used-solution key (what the join would do without the proof of work)."""
    from aiohttp import web

    from server.app import create_app
    from server.core.settings import Settings

    if not verify:
        def unchecked(secret: str, payload: str, show_id: str, now: float | None = None
                      ) -> pow.Checked:
            return pow.Checked(pow_used_key(show_id, secrets.token_hex(16)), 301_000)

        pow.check = unchecked  # type: ignore[assignment]
    os.environ.setdefault("BMM_GATEWAY_URL", "http://127.0.0.1:9")  # never called here
    settings = Settings(seed_demo=False, secret=SECRET, admin_key=ADMIN_KEY, data_key=DATA_KEY,
                        workers=False, reconcile=False, rate_limits=False, hold_max_inflight=0,
                        access_log_every=1_000_000,
                        data_dir=tempfile.mkdtemp(prefix="bmm-wr-bench-"))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    web.run_app(create_app(settings, redis_url), host="127.0.0.1", port=port,
                print=None, access_log=None)


class WebProcess:
    def __init__(self, redis_url: str, verify: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="bmm-wr-web-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.waiting_room_bench", "--serve", str(self.port),
             "--redis", redis_url, *([] if verify else ["--no-verify"])],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"web process did not start; see {self.log.name}")
                await asyncio.sleep(0.2)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- setup -------------------------------------------------------------------------------

async def publish_show(redis: Any) -> str:
    """A show in the catalog (what the partner feed stores), so the queue routes find it."""
    tag = uuid.uuid4().hex[:10]
    layout = grid_layout(5, 10, bands=[("gold", 5)])
    theatre = Theatre(f"th-{tag}", "Bench Cinema", "Benchville", "1 Bench Road", "partner-bench")
    screen = Screen(f"sc-{tag}", theatre.theatre_id, "Screen 1",
                    ScreenLayout(layout.seats, layout.focal_x, layout.focal_y), "partner-bench")
    movie = Movie(f"mv-{tag}", "The Bench Movie", ["en"], ["drama"], 120, "U",
                  partner_id="partner-bench")
    starts = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    show = Show(f"sh-{tag}", movie.movie_id, screen.screen_id, starts, "en", "2D",
                {"gold": Money(45000, "INR")}, "partner-bench", theatre.theatre_id,
                theatre.city, starts + timedelta(minutes=movie.runtime_min), "scheduled")
    await redis.mset({
        catalog_key("theatre", theatre.theatre_id): msgspec.json.encode(theatre),
        catalog_key("screen", screen.screen_id): msgspec.json.encode(screen),
        catalog_key("movie", movie.movie_id): msgspec.json.encode(movie),
        catalog_key("show", show.show_id): msgspec.json.encode(show),
    })
    await put_config(redis, ShowConfig(show.show_id, layout))
    return show.show_id


def presolved(show_id: str, count: int) -> list[str]:
    """`count` valid payloads for `show_id`: real challenges made with the server's key,
    with a known number (0), so nothing needs solving."""
    key = pow.hmac_key(SECRET)
    expires = datetime.now(UTC) + timedelta(seconds=pow.TTL_S)
    out = []
    for _ in range(count):
        made = altcha.create_challenge_v1(altcha.ChallengeOptionsV1(
            algorithm=pow.ALGORITHM, max_number=pow.MIN_MAX_NUMBER, hmac_key=key, number=0,
            expires=expires, params={"show": show_id}))
        out.append(base64.b64encode(json.dumps({
            "algorithm": made.algorithm, "challenge": made.challenge, "number": 0,
            "salt": made.salt, "signature": made.signature}).encode()).decode())
    return out


async def open_room(web_url: str, show_id: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{web_url}/partner/v1/shows/{show_id}/waiting-room", headers=ADMIN,
                            json={"enabled": True, "admit_per_minute": 6000,
                                  "opens_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
                                  "challenge_max_number": pow.MIN_MAX_NUMBER}) as resp:
            assert resp.status == 200, await resp.text()


async def redis_cpu(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# --- HTTP load -----------------------------------------------------------------------------

async def load(web: WebProcess, redis: Any, method: str, path: str, bodies: list[Any] | None,
               seconds: float, concurrency: int, want: int) -> dict[str, float]:
    """Closed loop: `concurrency` workers send request after request for `seconds`."""
    conn = aiohttp.TCPConnector(limit=concurrency)
    done, bad = 0, 0
    feed = iter(bodies) if bodies is not None else None
    async with aiohttp.ClientSession(web.url, connector=conn,
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:
        async def warm() -> None:
            async with http.get("/healthz") as resp:
                await resp.read()

        await asyncio.gather(*(warm() for _ in range(concurrency)))
        stop = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done, bad
            while time.monotonic() < stop:
                kwargs = {}
                if feed is not None:
                    kwargs["json"] = {"altcha": next(feed, "")}  # run out: counted bad
                async with http.request(method, path, **kwargs) as resp:
                    await resp.read()
                    if resp.status == want:
                        done += 1
                    else:
                        bad += 1

        cpu0, rcpu0, t0 = web.cpu(), await redis_cpu(redis), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
        cpu, rcpu = web.cpu() - cpu0, await redis_cpu(redis) - rcpu0
    n = done + bad
    return {"rate": done / elapsed, "bad": bad, "web_ms": cpu / n * 1000,
            "redis_us": rcpu / n * 1e6, "web_cpu": cpu / elapsed, "n": n}


def check_cost(show_id: str, payloads: list[str]) -> float:
    """µs of CPU per `pow.check` (base64 + JSON + SHA-256 + 2 HMACs), in this process."""
    t0 = time.process_time()
    for p in payloads:
        assert isinstance(pow.check(SECRET, p, show_id), pow.Checked)
    return (time.process_time() - t0) / len(payloads) * 1e6


# --- memory ----------------------------------------------------------------------------------

async def used(redis: Any) -> int:
    """used_memory without the clients' buffers (mem_clients_normal: this script's up to
    256 connections, their query and reply buffers, which come and go with the pool) and
    the AOF buffer, once idle clients' buffers have shrunk (clientsCron, after 2 s)."""
    await asyncio.sleep(2.5)
    info = await redis.info("memory")
    return int(info["used_memory"]) - int(info["mem_clients_normal"]) \
        - int(info.get("mem_aof_buffer", 0))


async def key_bytes(redis: Any, key: str) -> int:
    return int(await redis.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)


async def memory(redis: Any, visitors: int) -> dict[str, float]:
    show_id = await publish_show(redis)
    ttl = 900_000
    await waiting_room.run_queue(redis, show_id, "set", (
        "1", "6000", "100", str(int((time.time() + 3600) * 1000)), str(pow.DEFAULT_MAX_NUMBER)))
    vids = [secrets.token_urlsafe(12) for _ in range(visitors)]  # as join_queue makes them
    sem = asyncio.Semaphore(256)

    async def join(vid: str) -> None:
        async with sem:
            used_key = pow_used_key(show_id, secrets.token_hex(32))
            st = await waiting_room.join(redis, show_id, vid, ttl,
                                         pow.Checked(used_key, pow.TTL_S * 1000))
            assert st.flag == 1

    out: dict[str, float] = {}
    # warm up: the client's connections (and Redis's per-client buffers) exist before m0
    warm_show = await publish_show(redis)
    await waiting_room.run_queue(redis, warm_show, "set", ("1", "6000", "100", "", "1000"))
    await asyncio.gather(*(waiting_room.join(
        redis, warm_show, secrets.token_urlsafe(12), ttl,
        pow.Checked(pow_used_key(warm_show, secrets.token_hex(32)), 1_000))
        for _ in range(2_000)))
    m0 = await used(redis)
    t0 = time.monotonic()
    await asyncio.gather(*(join(v) for v in vids))
    out["direct_joins_per_s"] = visitors / (time.monotonic() - t0)
    m1 = await used(redis)
    markers = [k async for k in redis.scan_iter(match=f"wr:{{{show_id}}}:pow:*", count=10_000)]
    for i in range(0, len(markers), 10_000):
        await redis.unlink(*markers[i:i + 10_000])
    m2 = await used(redis)
    out["pre_queue_b"] = (m2 - m0) / visitors
    out["pre_queue_key_b"] = await key_bytes(redis, f"wr:{{{show_id}}}:pre") / visitors
    out["marker_b"] = (m1 - m2) / visitors
    # the sale opens: the draw, then as many join after the start
    await waiting_room.run_queue(redis, show_id, "set", (
        "1", "6000", "100", str(int(time.time() * 1000)), str(pow.DEFAULT_MAX_NUMBER)))
    t0 = time.monotonic()
    st = await waiting_room.run_queue(redis, show_id)
    out["draw_ms"] = (time.monotonic() - t0) * 1000
    assert st.drawn and st.tail == visitors
    late = [secrets.token_urlsafe(12) for _ in range(visitors)]
    m3 = await used(redis)
    await asyncio.gather(*(join(v) for v in late))
    markers = [k async for k in redis.scan_iter(match=f"wr:{{{show_id}}}:pow:*", count=10_000)]
    for i in range(0, len(markers), 10_000):
        await redis.unlink(*markers[i:i + 10_000])
    m4 = await used(redis)
    out["late_b"] = (m4 - m3) / visitors
    late_key = await key_bytes(redis, f"wr:{{{show_id}}}:v")
    out["late_key_b"] = late_key / visitors
    # admissions: the first 10 % of the pre-queue get their record (ticket:expiry)
    await redis.hset(f"wr:{{{show_id}}}", mapping={"head": visitors // 10})
    ranked = await redis.zrange(f"wr:{{{show_id}}}:pre", 0, visitors // 10 - 1)

    async def admit(vid: bytes) -> None:
        async with sem:
            st = await waiting_room.visitor(redis, show_id, vid.decode(), ttl)
            assert st.exp_ms

    m5 = await used(redis)
    await asyncio.gather(*(admit(v) for v in ranked))
    out["admitted_b"] = (await used(redis) - m5) / len(ranked)
    out["admitted_key_b"] = (await key_bytes(redis, f"wr:{{{show_id}}}:v") - late_key) / len(ranked)
    return out


# --- main ------------------------------------------------------------------------------------

async def run(seconds: float, concurrency: int, visitors: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        redis = redis_conn.async_client(server.url, blocking=True, max_connections=300)
        webs: list[WebProcess] = []
        try:
            checked, unchecked = WebProcess(server.url, True), WebProcess(server.url, False)
            webs = [checked, unchecked]
            await asyncio.gather(checked.ready(), unchecked.ready())
            rows = []
            show_id = await publish_show(redis)
            await open_room(checked.url, show_id)
            path = f"/api/shows/{show_id}/queue"
            rows.append(("GET  .../queue/challenge", await load(
                checked, redis, "GET", path + "/challenge", None, seconds, concurrency, 200)))
            # enough valid payloads for the window (a join takes > 150 µs of a core)
            bodies = presolved(show_id, int(seconds * 6_000))
            rows.append(("POST .../queue, proof of work checked", await load(
                checked, redis, "POST", path, bodies, seconds, concurrency, 201)))
            rows.append(("POST .../queue, check skipped", await load(
                unchecked, redis, "POST", path, [""] * int(seconds * 8_000), seconds,
                concurrency, 201)))
            for w in webs:
                w.stop()
            webs = []
            check_us = check_cost(show_id, bodies[-20_000:])
            mem = await memory(redis, visitors)
        finally:
            for w in webs:
                w.stop()
            await redis.aclose()
            server.stop()

    print(f"\nHTTP, 1 web process, {concurrency} connections, {seconds:.0f} s each, "
          f"cookieless visitors into a pre-queue (load generator on the same machine)")
    print("| request | req/s observed | web CPU ms/req | Redis CPU µs/req | "
          "web process busy | req/s per web core | req/s per Redis core |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['rate']:,.0f} | {r['web_ms']:.3f} | {r['redis_us']:.1f} | "
              f"{r['web_cpu']:.2f} | {1000 / r['web_ms']:,.0f} | {1e6 / r['redis_us']:,.0f} |")
        if r["bad"]:
            print(f"|   ({r['bad']:.0f} unexpected answers) |")
    print(f"\npow.check alone (in process, unused payloads): {check_us:.1f} µs of CPU each")
    print(f"\nMemory, {visitors:,} visitors through waiting_room.join/visitor "
          f"({mem['direct_joins_per_s']:,.0f} joins/s with 256 in flight, no HTTP)")
    print("| what | bytes per visitor: used_memory delta (less client buffers) | "
          "MEMORY USAGE of the key |")
    print("|---|---|---|")
    print(f"| a visitor in the pre-queue (sorted set member) | {mem['pre_queue_b']:.1f} | "
          f"{mem['pre_queue_key_b']:.1f} |")
    print(f"| a visitor who joined after the start (hash field) | {mem['late_b']:.1f} | "
          f"{mem['late_key_b']:.1f} |")
    print(f"| an admission record, added to a pre-queue visitor | {mem['admitted_b']:.1f} | "
          f"{mem['admitted_key_b']:.1f} |")
    print(f"| a used-solution marker (per join, for 5 min) | {mem['marker_b']:.1f} | - |")
    print(f"\nthe draw of {visitors:,}: {mem['draw_ms']:.2f} ms (one script call)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--visitors", type=int, default=100_000)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--redis", help=argparse.SUPPRESS)
    ap.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.redis, not args.no_verify)
        return
    asyncio.run(run(args.seconds, args.concurrency, args.visitors))


if __name__ == "__main__":
    main()
