"""The sandbox payment gateway as a real process (`python -m server.sandbox`), talked to
over HTTP by the platform's client (`HttpGateway`).

`gateway_server` is one gateway for the session (tests use fresh idempotency keys, so they
never see each other's payments); `start_gateway` starts gateways of a test's own, in its
tmp dir, for the tests that kill or stop them. TIMES_OUT hangs 3 s here (`HANG_S`).
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from server.commerce.gateway_client import HttpGateway
from server.core.embedded import SandboxGatewayServer

SECRET = "whsec_tests_gateway"
HANG_S = 3.0

StartGateway = Callable[..., Awaitable[SandboxGatewayServer]]


@pytest.fixture(scope="session")
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxGatewayServer]:
    server = SandboxGatewayServer(Path(tmp_path_factory.mktemp("gateway")),
                                  webhook_secret=SECRET, hang_s=HANG_S).start()
    yield server
    server.stop()


@pytest.fixture
async def gateway(gateway_server: SandboxGatewayServer) -> AsyncIterator[HttpGateway]:
    client = HttpGateway(gateway_server.url, gateway_server.webhook_secret)
    yield client
    await client.close()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """`await start_gateway(data_dir=..., port=..., webhook_url=...)`: a started gateway
    of this test's own (stopped at the end of the test). Defaults: tmp_path/"gateway", a
    free port."""
    started: list[SandboxGatewayServer] = []

    async def start(data_dir: Path | None = None, port: int | None = None,
                    **kw: object) -> SandboxGatewayServer:
        server = SandboxGatewayServer(data_dir or tmp_path / "gateway", port,
                                      webhook_secret=SECRET, hang_s=HANG_S, **kw)
        started.append(server)
        return await asyncio.to_thread(server.start)  # its readiness poll must not block the loop

    yield start
    for server in started:
        server.stop()
