"""The web tier across a Redis crash (kill -9), on a real Redis: requests after the restart
are served (the pooled connections that died with the old server are reconnected, not
turned into 500s), and while Redis is down the answer is 503 with Retry-After, not 500.

Found by the fault suite (test_faults.py::test_kill9_redis): clients made with `from_url`
have no retry, so every pooled connection was dead after the restart and each request that
drew one answered 500.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.appkeys import SERVICES
from server.core.embedded import RedisServer
from server.core.settings import Settings


@pytest.fixture
async def crashable(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, aiohttp.ClientSession]]:
    redis = RedisServer(tmp_path / "redis").start()
    settings = Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                        data_dir=str(tmp_path / "data"), workers=False)
    server = TestServer(create_app(settings, redis.url), host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession(base_url=str(server.make_url("")))
    try:
        yield redis, session
    finally:
        try:  # bounded: a broken build must fail, not hang
            await asyncio.wait_for(session.close(), 20)
            await asyncio.wait_for(server.close(), 30)
        finally:
            server.app[SERVICES].shows.kill_hosts()  # if Ray was up, hosts for this Redis
            redis.stop()


async def _many(session: aiohttp.ClientSession, n: int = 20) -> list[int]:
    """n concurrent reads, so that several pooled connections are in use."""
    async def one(i: int) -> int:
        async with session.get(f"/api/shows/no-such-show-{i}/seatmap") as resp:
            return resp.status

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_requests_after_a_redis_restart_are_served(crashable):
    redis, session = crashable
    assert set(await _many(session)) == {404}  # the pool now holds live connections
    redis.kill9()
    redis.start()  # same port, same data dir
    assert set(await _many(session)) == {404}  # not 500: stale connections reconnected


async def test_redis_down_answers_503_with_retry_after(crashable):
    redis, session = crashable
    assert set(await _many(session, 5)) == {404}
    redis.kill9()
    async with session.get("/api/shows/no-such-show/seatmap") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["code"] == "unavailable"
