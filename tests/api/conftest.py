"""A real server on a loopback port (aiohttp TestServer), backed by the session's real
Redis and Ray. `api` is an aiohttp client session pointed at it; `clients()` makes account
clients that are closed afterwards; `show` is a published show."""
from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.core.embedded import RedisServer
from server.core.settings import Settings

from .account_helpers import Client
from .builders import PublishedShow, publish_show


# A fixed AES-256 key for personal data at rest (server/core/pii.py); tests only.
TEST_DATA_KEY = "dGVzdC1kYXRhLWtleS0zMi1ieXRlcy1sb25nLi4uLi4="


@pytest.fixture
def app_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # data_dir: what the server writes (analytics export, ...) stays out of the repo.
    return Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                    data_key=TEST_DATA_KEY,
                    passivate_after_s=30, data_dir=str(tmp_path_factory.mktemp("data")))


@pytest.fixture
async def server(redis_server: RedisServer, ray_cluster: None, app_settings: Settings
                 ) -> AsyncIterator[TestServer]:
    srv = TestServer(create_app(app_settings, redis_server.url), host="127.0.0.1")
    await srv.start_server()
    yield srv
    await srv.close()


@pytest.fixture
async def api(server: TestServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as session:
        yield session


@pytest.fixture
async def clients(server: TestServer) -> AsyncIterator:
    made: list[Client] = []

    def make() -> Client:
        made.append(Client(server))
        return made[-1]

    yield make
    for c in made:
        await c.close()


@pytest.fixture
async def show(redis: aioredis.Redis) -> AsyncIterator[PublishedShow]:
    yield await publish_show(redis)
