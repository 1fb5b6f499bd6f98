"""Shared fixtures: a real Redis server, a real local Ray and the sandbox payment gateway
(its own process, server/sandbox), started once per session.

Every test gets fresh show ids (uuid), so tests never see each other's data.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import ray
import redis.asyncio as aioredis

from actors.client import ShowDirectory
from actors.layout import Layout, Rules, ShowConfig, grid_layout
from actors.host import ActorSettings
from actors.pool import NAMESPACE
from actors.store import put_config
from actors import redis_conn
from server.core.embedded import RedisClusterServer, RedisServer, SandboxGatewayServer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-cluster", action="store_true",
        help="run against a real Redis Cluster (3 masters, 3 replicas) instead of one "
             "Redis; tests marked `single_redis` (they kill or restart the one server) "
             "are skipped")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--redis-cluster"):
        skip = pytest.mark.skip(reason="needs the one Redis server (--redis-cluster)")
        for item in items:
            if "single_redis" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[RedisServer | RedisClusterServer]:
    """The session's Redis: one server, or with --redis-cluster a Redis Cluster (its
    `.url` is a `redis+cluster://` URL every client of the platform understands)."""
    data_dir = Path(tmp_path_factory.mktemp("redis"))
    server: RedisServer | RedisClusterServer = (
        RedisClusterServer(data_dir) if request.config.getoption("--redis-cluster")
        else RedisServer(data_dir))
    server.start()
    yield server
    server.stop()


PLATFORM_GATEWAY_SECRET = "whsec_platform_tests"


@pytest.fixture(scope="session", autouse=True)
def platform_gateway(tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[SandboxGatewayServer]:
    """The payment gateway every app the tests make talks to (create_app reads it from
    the environment when its settings name none); the processes tests/cluster starts get
    their own."""
    server = SandboxGatewayServer(Path(tmp_path_factory.mktemp("platform-gateway")),
                                  webhook_secret=PLATFORM_GATEWAY_SECRET).start()
    saved = {k: os.environ.get(k) for k in ("BMM_GATEWAY_URL", "BMM_GATEWAY_WEBHOOK_SECRET")}
    os.environ["BMM_GATEWAY_URL"] = server.url
    os.environ["BMM_GATEWAY_WEBHOOK_SECRET"] = PLATFORM_GATEWAY_SECRET
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    ray.init(namespace=NAMESPACE, include_dashboard=False, num_cpus=2,
             configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = redis_conn.async_client(redis_server.url)
    yield client
    await client.aclose()


CORE_POOL = "core-tests"  # the `settings` below; the web tier's pool has its own


@pytest.fixture
def settings() -> ActorSettings:
    return ActorSettings(snapshot_every=50, keep_log=100, passivate_after_s=30)


@pytest.fixture
async def directory(redis_server: RedisServer, ray_cluster: None,
                    settings: ActorSettings) -> AsyncIterator[ShowDirectory]:
    """The session Redis's show hosts for these settings (started once, shared by every
    test that asks for the same settings)."""
    shows = await ShowDirectory(redis_server.url, settings, pool=CORE_POOL).start()
    yield shows
    await shows.close()


@pytest.fixture
def make_show(redis: aioredis.Redis):
    """Write a show's config to Redis and return its (fresh) id."""

    async def make(layout: Layout | None = None, rules: Rules | None = None) -> str:
        show_id = f"t-{uuid.uuid4().hex[:12]}"
        config = ShowConfig(show_id, layout or grid_layout(10, 20), rules or Rules())
        await put_config(redis, config)
        return show_id

    return make
