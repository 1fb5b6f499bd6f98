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


# --- stateful: the booking flow, by the document's links ---------------------------------

STATEFUL_EXAMPLES = 15  # sequences; each a few steps: hold -> extend / checkout -> cancel


@pytest.fixture(scope="module")
def flow_show(live: LiveServer, credentials: dict[str, dict[str, str]]) -> str:
    """A published show the sequences start from (a random show id is only ever a 404)."""
    from tests.api.catalog_helpers import PRICES, at, layout, uid

    key = credentials["/partner/"]
    theatre, screen, movie, show = uid("th"), uid("sc"), uid("mv"), uid("sh")
    for path, body in [
            (f"/partner/v1/theatres/{theatre}", {"name": "Fuzz", "city": "Pune",
                                                  "address": "1 Road", "timezone": "Asia/Kolkata"}),
            (f"/partner/v1/screens/{screen}", {"theatre_id": theatre, "name": "S1",
                                                "layout": layout(10, 12)}),
            (f"/partner/v1/movies/{movie}", {"title": "Fuzz", "languages": ["Hindi"],
                                              "genres": ["Drama"], "runtime_min": 100,
                                              "certificate": "UA"}),
            (f"/partner/v1/shows/{show}", {"movie_id": movie, "screen_id": screen,
                                            "starts_at": at(72), "language": "Hindi",
                                            "format": "2D", "prices": PRICES})]:
        assert requests.put(f"{live.url}{path}", json=body, headers=key,
                            timeout=30).status_code == 201, path
    return show


def test_the_booking_flow_conforms_statefully(live: LiveServer, flow_show: str) -> None:
    """Sequences along the document's links (a hold's id and token into its extension,
    release and checkout; a booking's into its read and cancellation), each answer checked
    as above: no 5xx, and every status and body as documented."""
    # The partner feed stays in (its show ids make the customer's hold a reliable first
    # step for schemathesis); every show id is then pointed at the published show.
    flow = schemathesis.openapi.from_dict(DOCUMENT).include(
        path_regex=r"^/(api/(shows/\{show_id\}/holds|holds/|bookings/\{booking_id\}(/cancel)?$)"
                   r"|partner/v1/shows)"
    ).as_state_machine()

    seen: list[tuple[str, str, int]] = []

    class Flow(flow):  # type: ignore[misc, valid-type]
        def after_call(self, response, case) -> None:  # type: ignore[no-untyped-def]
            seen.append((case.method.upper(), case.operation.path, response.status_code))

        def before_call(self, case) -> None:  # type: ignore[no-untyped-def]
            if "show_id" in (case.path_parameters or {}):
                case.path_parameters["show_id"] = flow_show
                if case.method.upper() == "POST":  # seats that exist: sequences go on from it
                    case.body = {"best": {"count": 1 + len(seen) % 3}}
            headers = dict(case.headers or {})
            headers["Origin"] = live.url  # as a browser's page would
            case.headers = headers

        def get_call_kwargs(self, case) -> dict:  # type: ignore[no-untyped-def]
            return {"base_url": live.url, "timeout": 30}

        def validate_response(self, response, case, additional_checks=None,  # type: ignore[no-untyped-def]
                              **kwargs) -> None:
            case.validate_response(response, checks=CHECKS)

    Flow.run(settings=settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=6,
                               deadline=None, derandomize=True, database=None,
                               suppress_health_check=list(HealthCheck)))
    # the links were followed: a hold made, then used by the next call with its token
    assert ("POST", "/api/shows/{show_id}/holds", 201) in seen, sorted(set(seen))
    followed = [(m, p, st) for m, p, st in seen if p.startswith("/api/holds/") and st < 300]
    assert followed, sorted(set(seen))
