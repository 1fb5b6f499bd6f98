"""schemathesis against /api/openapi.json of a live server: generated requests for every
documented operation, as anonymous, customer, partner and admin; no 5xx, and every answer
(status code, content type, body) is what the document says.

aiohttp is not ASGI and schemathesis calls synchronously (requests), so the server runs on
its own event loop in a thread, on the session's real Redis and Ray.
"""
from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import msgspec
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, settings

from server.app import create_app
from server.core.openapi import build_document
from server.core.embedded import RedisServer
from server.core.settings import Settings

ADMIN_KEY = "schemathesis-admin-key"
EXAMPLES = 20  # per operation: ~100 operations on a slow 2-core machine, under ~90 s


class LiveServer:
    """create_app on a loopback port, served from a thread with its own loop."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings, self.redis_url = settings, redis_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def start(self) -> LiveServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        return self

    async def _start(self) -> None:
        self.runner = web.AppRunner(create_app(self.settings, self.redis_url))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, ray_cluster: None,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # a test key, not a secret
    server = LiveServer(Settings(
        seed_demo=False, secret="schemathesis-secret", admin_key=ADMIN_KEY, data_key=data_key,
        workers=False, rate_limits=False, hold_max_inflight=0,  # fuzz the API, not the limits
        data_dir=str(tmp_path_factory.mktemp("st-data"))),
        redis_server.url).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def credentials(live: LiveServer) -> dict[str, dict[str, str]]:
    """Headers per area: a partner's API key, the admin key, a customer's session cookie."""
    http = requests.Session()
    made = http.post(f"{live.url}/admin/v1/partners", json={"name": "Fuzz Cinemas"},
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    made.raise_for_status()
    signup = http.post(f"{live.url}/api/accounts", timeout=30, json={
        "email": f"fuzz-{uuid.uuid4().hex[:8]}@example.test", "password": "a long fuzz password",
        "name": "Fuzz"}, headers={"Origin": live.url})
    signup.raise_for_status()
    cookie = "; ".join(f"{c.name}={c.value}" for c in http.cookies)
    # the customer is a browser: its cookie, and the Origin it names on every write
    return {"/partner/": {"Authorization": f"Bearer {made.json()['api_key']}"},
            "/admin/": {"Authorization": f"Bearer {ADMIN_KEY}"},
            "/api/": {"Cookie": cookie, "Origin": live.url}}


# The document GET /api/openapi.json serves, built the same way (importing server.app
# registers every operation); loaded at collection so each operation is its own test
# (schemathesis' lazy fixture loader does not work with pytest 9). The test below checks the
# served document is this one.
DOCUMENT = msgspec.json.decode(msgspec.json.encode(build_document()))
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_served_document_is_the_one_tested(live: LiveServer) -> None:
    served = requests.get(f"{live.url}/api/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == DOCUMENT

CHECKS = [schemathesis.checks.not_a_server_error,
          schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance,
          schemathesis.checks.response_schema_conformance]


@schema.exclude(path_regex=r"/live$").parametrize()  # WebSockets: tested with real clients
@settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_api_conforms_to_its_document(case, live: LiveServer,
                                      credentials: dict[str, dict[str, str]]) -> None:
    headers = next((h for prefix, h in credentials.items()
                    if case.operation.path.startswith(prefix)), {})
    # DELETE /api/me would end the customer session the other operations run under.
    if case.operation.path == "/api/me" and case.method.upper() == "DELETE":
        headers = {}
    case.call_and_validate(base_url=live.url, headers=headers, checks=CHECKS, timeout=30)
