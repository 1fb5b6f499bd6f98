"""A real nginx edge (server/edge.py) in front of the real server of tests/api (real Redis,
real Ray). The server trusts X-Forwarded-For from 127.0.0.1 only: nginx's address."""
from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from aiohttp.test_utils import TestServer

from server.edge import Edge
from server.core.settings import Settings
from tests.api.conftest import TEST_DATA_KEY, api, server, show  # noqa: F401 (fixtures)

# The edge's limit on the hold path in these tests: 5 holds/s per show, 5 more at once.
HOLD_RATE, HOLD_BURST = 5.0, 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # The app's own limits stay out of the way (a burst of 1000, and no in-flight cap):
    # every 429 in these tests comes from the edge. The write rate is slow so that a
    # client's bucket (named after its address) lives for a while: a test reads the name.
    return Settings(seed_demo=False, secret="test-secret", admin_key="test-admin-key",
                    data_key=TEST_DATA_KEY, passivate_after_s=30,
                    data_dir=str(tmp_path_factory.mktemp("data")),
                    trusted_proxies="127.0.0.1/32",
                    rl_ip_read_per_s=1000, rl_ip_read_burst=1000,
                    rl_ip_write_per_s=0.01, rl_ip_write_burst=1000,
                    hold_max_inflight=0, hold_cap_seats=0)


@pytest.fixture
def edge(server: TestServer) -> Iterator[Edge]:  # noqa: F811
    proxy = Edge(free_port(), [f"127.0.0.1:{server.port}"], HOLD_RATE, HOLD_BURST).start()
    yield proxy
    proxy.stop()
