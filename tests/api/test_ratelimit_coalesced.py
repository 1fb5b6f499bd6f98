"""Coalesced rate-limit checks (server/onsale/ratelimit.py, `Batcher`), on real Redis.

The batcher alone (session Redis): the checks of one event-loop tick go in one script call
that decides them exactly as one call each at that instant would, batches are capped,
cancelled and failed checks leave nobody waiting. Through real servers: a Redis outage
during a batch answers every waiting request 503 + Retry-After, and two `python -m server`
processes on one Redis share one client's limit.
"""
from __future__ import annotations

import asyncio
import base64
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from redis.exceptions import ConnectionError as RedisConnectionError

from server.core.embedded import RedisServer, free_port
from server.core.settings import Settings
from server.onsale.ratelimit import _GCRA, LIMITER, MAX_BATCH, Batcher, Limit

# Integer emission intervals (20 s, 10 s, 50 s): a fresh bucket's state after c charges is
# exactly now + c * interval, so the answers below are exact whatever Redis's clock says.
LIMITS = [Limit(0.05, 3), Limit(0.1, 5), Limit(0.02, 2)]
LIMIT_ARGS = [a for limit in LIMITS for a in limit.args()]


def batcher_on(redis: aioredis.Redis, **kw: Any) -> Batcher:
    return Batcher(redis.register_script(_GCRA), LIMIT_ARGS, **kw)


async def bounded(aw: Any) -> Any:
    """Awaited with a bound: a check nobody answers fails the test instead of hanging it."""
    return await asyncio.wait_for(aw, 30)


def spec(limit_numbers: list[int], flag: bool) -> str:
    return f"{len(limit_numbers)}{int(flag)}" + "".join(map(str, limit_numbers))


class Recording:
    """The script, recording how many checks each call carried."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.sizes: list[int] = []

    async def __call__(self, keys: list[str], args: list[str]) -> Any:
        checks, p = 0, 0
        while p < len(args[0]):
            checks, p = checks + 1, p + 2 + int(args[0][p])
        self.sizes.append(checks)
        return await self.real(keys=keys, args=args)


async def test_one_tick_of_checks_is_one_call_deciding_each_as_its_own_call_would(
        redis: aioredis.Redis) -> None:
    """200 requests over 8 buckets (1 or 2 each, three limits) and three waiting-room
    hashes, queued in one tick: one script call, and every answer is what GCRA gives each
    request in turn, all-or-none (a refused request charges none of its buckets)."""
    tag = uuid.uuid4().hex[:8]
    buckets = [(f"rl:test:{tag}:{i}", i % 3 + 1) for i in range(8)]  # (key, limit number)
    rooms = {f"wr:{tag}:on": True, f"wr:{tag}:off": False, f"wr:{tag}:none": False}
    await redis.hset(f"wr:{tag}:on", "enabled", "1")
    await redis.hset(f"wr:{tag}:off", "enabled", "0")
    rng = random.Random(7)
    requests = []
    for _ in range(200):
        mine = rng.sample(buckets, rng.choice((1, 2)))
        room = rng.choice([None, *rooms])
        requests.append((mine, room))

    charged = {key: 0 for key, _ in buckets}
    expected = []
    for mine, room in requests:  # the model: GCRA per request, in order, one instant
        wait = max((charged[key] + 1 - LIMITS[n - 1].burst) * 1000 / LIMITS[n - 1].per_s
                   for key, n in mine)
        if wait <= 0:
            for key, _ in mine:
                charged[key] += 1
        expected.append((max(0, int(wait)), bool(room and rooms[room])))

    async def redis_ms() -> int:
        sec, usec = await redis.time()
        return sec * 1000 + usec // 1000

    batcher = batcher_on(redis)
    batcher.script = recording = Recording(batcher.script)
    before = await redis_ms()
    answers = await bounded(asyncio.gather(*(
        batcher.check([key for key, _ in mine] + ([room] if room else []),
                      spec([n for _, n in mine], room is not None))
        for mine, room in requests)))
    after = await redis_ms()
    assert recording.sizes == [200]
    assert answers == expected
    # in Redis, what was charged and only that: each bucket at now + charges * interval,
    # expiring when that time has passed (`now`: the call's, between before and after)
    for key, n in buckets:
        if not charged[key]:
            assert await redis.get(key) is None
            continue
        interval = 1000 / LIMITS[n - 1].per_s
        assert before <= float(await redis.get(key)) - charged[key] * interval <= after
        ttl = await redis.pttl(key)
        assert charged[key] * interval + 1 - (await redis_ms() - before) - 1 <= ttl \
            <= charged[key] * interval + 1


async def test_a_later_batch_sees_what_an_earlier_one_charged(redis: aioredis.Redis) -> None:
    key = f"rl:test:{uuid.uuid4().hex[:8]}"
    batcher = batcher_on(redis)
    first = await bounded(asyncio.gather(*(batcher.check([key], spec([1], False))
                                           for _ in range(2))))
    second = await bounded(asyncio.gather(*(batcher.check([key], spec([1], False))
                                            for _ in range(2))))
    assert [retry for retry, _ in first] == [0, 0]
    assert second[0][0] == 0 and 0 < second[1][0] <= 20_000  # burst 3: the 4th waits
    assert batcher.calls == 2


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_a_batch_carries_at_most_max_batch_checks(redis: aioredis.Redis,
                                                        in_flight: int) -> None:
    tag = uuid.uuid4().hex[:8]
    batcher = batcher_on(redis, max_in_flight=in_flight)
    batcher.script = recording = Recording(batcher.script)
    answers = await bounded(asyncio.gather(*(
        batcher.check([f"rl:test:{tag}:{i}"], spec([2], False))
        for i in range(MAX_BATCH + 44))))
    assert recording.sizes == [MAX_BATCH, 44]
    assert all(retry == 0 for retry, _ in answers)
    assert batcher.running == 0 and not batcher.queue


async def test_a_check_cancelled_before_its_call_is_left_out(redis: aioredis.Redis) -> None:
    """Five checks of one bucket (burst 3) in one tick, the second cancelled before the
    call: the others are answered, and the cancelled one took nothing from the bucket."""
    key = f"rl:test:{uuid.uuid4().hex[:8]}"
    batcher = batcher_on(redis)
    futures = [batcher.check([key], spec([1], False)) for _ in range(5)]
    futures[1].cancel()
    answers = await bounded(asyncio.gather(*(futures[i] for i in (0, 2, 3, 4))))
    assert [retry == 0 for retry, _ in answers] == [True, True, True, False]
    assert batcher.calls == 1 and batcher.checks == 4


async def test_a_check_cancelled_during_its_call_does_not_break_the_batch(
        redis: aioredis.Redis) -> None:
    batcher = batcher_on(redis)
    real = batcher.script
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(keys: list[str], args: list[str]) -> Any:
        entered.set()
        await release.wait()
        return await real(keys=keys, args=args)

    batcher.script = held
    tag = uuid.uuid4().hex[:8]
    futures = [batcher.check([f"rl:test:{tag}:{i}"], spec([1], False)) for i in range(3)]
    await bounded(entered.wait())
    futures[0].cancel()
    release.set()
    assert await bounded(asyncio.gather(futures[1], futures[2])) == [(0, False), (0, False)]
    assert batcher.running == 0 and not batcher.queue


async def test_a_failed_call_fails_every_check_it_carried_and_the_next_call_works(
        redis: aioredis.Redis) -> None:
    batcher = batcher_on(redis)
    real = batcher.script

    async def down(keys: list[str], args: list[str]) -> Any:
        raise RedisConnectionError("Redis is down")

    batcher.script = down
    tag = uuid.uuid4().hex[:8]
    results = await bounded(asyncio.gather(*(
        batcher.check([f"rl:test:{tag}:{i}"], spec([1], False)) for i in range(10)),
        return_exceptions=True))
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    assert batcher.running == 0 and not batcher.queue
    batcher.script = real
    assert await bounded(batcher.check([f"rl:test:{tag}:0"], spec([1], False))) == (0, False)


# --- a Redis outage in the middle of a batch, through a real server ------------------------

@pytest.fixture
async def crashable(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, TestServer]]:
    from server.app import create_app
    from server.appkeys import SERVICES

    redis = RedisServer(tmp_path / "redis").start()
    settings = Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                        data_dir=str(tmp_path / "data"), workers=False)
    server = TestServer(create_app(settings, redis.url), host="127.0.0.1")
    await server.start_server()
    try:
        yield redis, server
    finally:
        try:  # bounded: a broken build must fail, not hang
            await asyncio.wait_for(server.close(), 30)
        finally:
            server.app[SERVICES].shows.kill_hosts()  # if Ray was up, hosts for this Redis
            redis.stop()


async def test_redis_dying_during_a_batch_answers_every_waiting_request_503(
        crashable: tuple[RedisServer, TestServer]) -> None:
    """Redis is killed (kill -9) as the rate limiter sends a batch: every request waiting
    for it, and those queued behind it, are answered 503 + Retry-After, none hangs; once
    Redis is back the next requests are served."""
    redis, server = crashable
    async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as http:
        async def read(i: int) -> tuple[int, str | None, Any]:
            async with http.get(f"/api/shows/no-such-show-{i}/seatmap") as resp:
                return resp.status, resp.headers.get("Retry-After"), await resp.json()

        assert (await read(0))[0] == 404  # the limiter's batcher exists, Redis is fine
        batcher = server.app[LIMITER].batcher
        assert batcher is not None
        real, calls = batcher.script, []

        async def dies_first(keys: list[str], args: list[str]) -> Any:
            calls.append(len(keys))
            if len(calls) == 1:
                redis.kill9()
            return await real(keys=keys, args=args)

        batcher.script = dies_first
        async with asyncio.timeout(60):
            answers = await asyncio.gather(*(read(i) for i in range(30)))
        assert calls, "no batch was sent"
        assert all(status == 503 and retry_after == "1"
                   and body["error"]["code"] == "unavailable"
                   for status, retry_after, body in answers), answers
        assert batcher.running == 0 and not batcher.queue
        redis.start()  # same port, same data
        async with asyncio.timeout(30):
            assert (await read(1))[0] == 404


# --- two web processes, one Redis: one limit -------------------------------------------------

READ_BURST = 20


class WebProcess:
    """`python -m server` on its own port, joining the session's Redis and Ray."""

    def __init__(self, redis_url: str, ray_address: str, data_dir: Path,
                 env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = open(data_dir / "server.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--redis-url", redis_url, "--ray-address", ray_address, "--no-seed",
             "--no-access-log"],
            env={**env, "BMM_DATA_DIR": str(data_dir)}, stdout=self.log,
            stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        async with asyncio.timeout(120):
            while True:
                assert self.proc.poll() is None, "python -m server exited (see server.log)"
                try:
                    async with http.get(self.base + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)  # polling for start-up, not a synchronisation

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def two_web_processes(redis_server: RedisServer, ray_cluster: None,
                      tmp_path: Path) -> Iterator[list[WebProcess]]:
    import ray

    env = {**os.environ, "BMM_TRUSTED_PROXIES": "127.0.0.1/32",
           "BMM_RL_IP_READ_PER_S": "0.05", "BMM_RL_IP_READ_BURST": str(READ_BURST),
           "BMM_SECRET": secrets.token_urlsafe(24), "BMM_ADMIN_KEY": secrets.token_urlsafe(24),
           "BMM_DATA_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    address = ray.get_runtime_context().gcs_address
    procs: list[WebProcess] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            procs.append(WebProcess(redis_server.url, address, tmp_path / name, env))
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def test_two_web_processes_share_one_clients_limit(
        two_web_processes: list[WebProcess]) -> None:
    """25 reads at once from one client address to each of two web processes (50 in all),
    read burst 20: the two admit 20 together, not 20 each. So each process refuses at
    least 5 of its 25; another address is unaffected on both."""
    a, b = two_web_processes
    ip = f"10.77.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(a.ready(http), b.ready(http))

        async def read(proc: WebProcess, i: int, client: str) -> int:
            async with http.get(f"{proc.base}/api/shows/no-such-show-{i}/seatmap",
                                headers={"X-Forwarded-For": client}) as resp:
                return resp.status

        started = time.monotonic()
        statuses = await asyncio.gather(*(read(proc, i, ip) for i in range(25)
                                          for proc in (a, b)))
        refills = int((time.monotonic() - started) // 20)  # 0.05/s: one per 20 s
        on_a, on_b = statuses[0::2], statuses[1::2]
        assert set(statuses) <= {404, 429}, statuses
        admitted = statuses.count(404)
        assert READ_BURST <= admitted <= READ_BURST + refills, statuses
        assert on_a.count(429) >= 5 - refills and on_b.count(429) >= 5 - refills
        other = f"10.78.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"
        assert await read(a, 0, other) == 404 and await read(b, 0, other) == 404
