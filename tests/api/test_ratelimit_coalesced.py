"""Coalesced rate-limit checks (server/onsale/ratelimit.py, `Batcher`), on real Redis.

The batcher alone (session Redis): the checks of one event-loop tick go in one script call
per slot tag that decides them exactly as one call each at that instant would, a check
over two tags charges all of its buckets or none, batches are capped, cancelled and failed
checks leave nobody waiting. Through real servers: a Redis outage
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
from server.onsale.ratelimit import (_GCRA, BUCKETS, LIMITER, MAX_BATCH, Batcher, Limit,
                                     bucket_tag, slot_tag)

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
    """The script, recording how many checks each call carried and their keys' slot tags."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.sizes: list[int] = []
        self.tags: list[set[str]] = []

    async def __call__(self, keys: list[str], args: list[str]) -> Any:
        checks, p = 0, 0
        while p < len(args[0]):
            checks, p = checks + 1, p + 2 + int(args[0][p])
        self.sizes.append(checks)
        self.tags.append({slot_tag(k) for k in keys})
        return await self.real(keys=keys, args=args)


def model(requests: list[tuple[list[tuple[str, int]], str | None]], rooms: dict[str, bool]
          ) -> tuple[list[tuple[int, bool]], dict[str, int]]:
    """GCRA per request, in order, at one instant: (answers, charges per bucket)."""
    charged: dict[str, int] = {}
    expected = []
    for mine, room in requests:
        wait = max((charged.get(key, 0) + 1 - LIMITS[n - 1].burst) * 1000 / LIMITS[n - 1].per_s
                   for key, n in mine)
        if wait <= 0:
            for key, _ in mine:
                charged[key] = charged.get(key, 0) + 1
        expected.append((max(0, int(wait)), bool(room and rooms[room])))
    return expected, charged


async def redis_ms(redis: aioredis.Redis) -> int:
    sec, usec = await redis.time()
    return sec * 1000 + usec // 1000


async def check_in_one_tick(
        redis: aioredis.Redis, requests: list[tuple[list[tuple[str, int]], str | None]]
) -> tuple[list[Any], Recording, int, int]:
    """Every request (its (bucket, limit)s, its waiting room or None) checked at once, by
    one batcher whose script calls are recorded: (answers, recording, Redis ms before and
    after)."""
    batcher = batcher_on(redis)
    batcher.script = recording = Recording(batcher.script)
    before = await redis_ms(redis)
    answers = await bounded(asyncio.gather(*(
        batcher.check([key for key, _ in mine] + ([room] if room else []),
                      spec([n for _, n in mine], room is not None))
        for mine, room in requests)))
    return answers, recording, before, await redis_ms(redis)


async def assert_charged(redis: aioredis.Redis, buckets: list[tuple[str, int]],
                         charged: dict[str, int], before: int, after: int) -> None:
    """In Redis, what was charged and only that: each bucket at now + charges * interval,
    expiring when that time has passed (`now`: the call's, between before and after)."""
    for key, n in buckets:
        if not charged.get(key):
            assert await redis.get(key) is None, key
            continue
        interval = 1000 / LIMITS[n - 1].per_s
        assert before <= float(await redis.get(key)) - charged[key] * interval <= after, key
        ttl = await redis.pttl(key)
        assert charged[key] * interval + 1 - (await redis_ms(redis) - before) - 1 <= ttl \
            <= charged[key] * interval + 1


def rooms_of(tag: str) -> dict[str, bool]:
    return {f"wr:{{{tag}-on}}": True, f"wr:{{{tag}-off}}": False, f"wr:{{{tag}-none}}": False}


async def open_rooms(redis: aioredis.Redis, tag: str) -> None:
    await redis.hset(f"wr:{{{tag}-on}}", "enabled", "1")
    await redis.hset(f"wr:{{{tag}-off}}", "enabled", "0")


async def test_one_tick_of_checks_is_one_call_deciding_each_as_its_own_call_would(
        redis: aioredis.Redis) -> None:
    """200 requests over 8 buckets of one slot tag (1 or 2 each, three limits) and three
    waiting-room hashes, queued in one tick: one script call, and every answer is what GCRA
    gives each request in turn, all-or-none (a refused request charges none of its
    buckets)."""
    tag = uuid.uuid4().hex[:8]
    buckets = [(f"rl:test:{{rl-{tag}}}:{i}", i % 3 + 1) for i in range(8)]  # (key, limit)
    rooms = rooms_of(tag)
    await open_rooms(redis, tag)
    rng = random.Random(7)
    requests = [(rng.sample(buckets, rng.choice((1, 2))), rng.choice([None, *rooms]))
                for _ in range(200)]
    expected, charged = model(requests, rooms)

    answers, recording, before, after = await check_in_one_tick(redis, requests)
    assert recording.sizes == [200]
    assert answers == expected
    await assert_charged(redis, buckets, charged, before, after)


async def test_a_tick_over_many_slots_is_one_call_per_slot_each_deciding_in_order(
        redis: aioredis.Redis) -> None:
    """250 requests (one batch) over 48 buckets in every one of the BUCKETS tags (a
    request's buckets share a tag): one call per tag present, each with only its tag's
    keys, and the answers and charges are GCRA per request in order, as one call would
    decide them."""
    tag = uuid.uuid4().hex[:8]
    tags = [bucket_tag(f"{tag}-{i}") for i in range(400)]
    by_tag: dict[str, list[tuple[str, int]]] = {}
    for i, t in enumerate(tags):
        if len(by_tag.setdefault(t, [])) < 3:
            by_tag[t].append((f"rl:test:{t}:{tag}:{i}", i % 3 + 1))
    assert len(by_tag) == BUCKETS  # the CRC spreads identities over every tag
    buckets = [b for group in by_tag.values() for b in group]
    rooms = rooms_of(tag)
    await open_rooms(redis, tag)
    rng = random.Random(11)
    requests = []
    for _ in range(250):
        group = by_tag[rng.choice(sorted(by_tag))]
        requests.append((rng.sample(group, rng.choice((1, 2))), rng.choice([None, *rooms])))
    expected, charged = model(requests, rooms)

    answers, recording, before, after = await check_in_one_tick(redis, requests)
    assert answers == expected
    assert len(recording.sizes) == BUCKETS and sum(recording.sizes) == 250
    assert all(len(t) == 1 for t in recording.tags)
    assert {next(iter(t)) for t in recording.tags} == {t.strip("{}") for t in by_tag}
    await assert_charged(redis, buckets, charged, before, after)


async def test_a_check_over_two_slots_charges_all_of_its_buckets_or_none(
        redis: aioredis.Redis) -> None:
    """A customer's bucket (burst 5) and an address's (burst 2) in different slots: 4 checks
    of both in one tick admit the address's 2; the 2 it refused had charged the customer's
    bucket in the first step and are refunded, so it holds exactly 2 charges. Then a
    customer (burst 3) whose requests its own bucket refuses charges the address (burst 5)
    nothing: 8 checks admit 3 and the address holds 3."""
    tag = uuid.uuid4().hex[:8]
    ip, cust = f"rl:test:{{a-{tag}}}:ip", f"rl:test:{{b-{tag}}}:cust"
    batcher = batcher_on(redis)
    batcher.script = recording = Recording(batcher.script)
    before = await redis_ms(redis)
    answers = await bounded(asyncio.gather(*(batcher.check([ip, cust], spec([3, 2], False))
                                             for _ in range(4))))
    after = await redis_ms(redis)
    assert [retry == 0 for retry, _ in answers] == [True, True, False, False]
    assert all(0 < retry <= 50_000 for retry, _ in answers[2:])
    assert recording.tags == [{f"b-{tag}"}, {f"a-{tag}"}]  # the customer's first
    await assert_charged(redis, [(ip, 3), (cust, 2)], {ip: 2, cust: 2}, before, after)

    ip2, cust2 = f"rl:test:{{c-{tag}}}:ip", f"rl:test:{{d-{tag}}}:cust"
    before = await redis_ms(redis)
    answers = await bounded(asyncio.gather(*(batcher.check([ip2, cust2], spec([2, 1], False))
                                             for _ in range(8))))
    after = await redis_ms(redis)
    assert sum(retry == 0 for retry, _ in answers) == 3
    await assert_charged(redis, [(ip2, 2), (cust2, 1)], {ip2: 3, cust2: 3}, before, after)
    # the address's remaining burst (5 - 3) goes to anonymous requests
    rest = await bounded(asyncio.gather(*(batcher.check([ip2], spec([2], False))
                                          for _ in range(4))))
    assert [retry == 0 for retry, _ in rest] == [True, True, False, False]


async def test_a_check_whose_second_step_fails_takes_back_its_first_steps_charge(
        redis: aioredis.Redis) -> None:
    """The address's slot is down: a check over a customer's and that address's buckets
    fails with the error (503), and the customer's bucket, charged by the first step, is
    refunded; a check of the customer alone in the same batch is answered."""
    tag = uuid.uuid4().hex[:8]
    ip, cust = f"rl:test:{{a-{tag}}}:ip", f"rl:test:{{b-{tag}}}:cust"
    batcher = batcher_on(redis)
    real = batcher.script

    async def address_down(keys: list[str], args: list[str]) -> Any:
        if slot_tag(keys[0]) == f"a-{tag}":
            raise RedisConnectionError("that master is down")
        return await real(keys=keys, args=args)

    batcher.script = address_down
    both, alone = await bounded(asyncio.gather(
        batcher.check([ip, cust], spec([3, 2], False)), batcher.check([cust], spec([2], False)),
        return_exceptions=True))
    assert isinstance(both, RedisConnectionError)
    assert alone == (0, False)
    interval = 1000 / LIMITS[1].per_s
    now = await redis_ms(redis)  # one charge left (the lone check's), not two
    assert float(await redis.get(cust)) - now <= interval
    assert await redis.get(ip) is None


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
        batcher.check([f"rl:test:{{{tag}}}:{i}"], spec([2], False))
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
