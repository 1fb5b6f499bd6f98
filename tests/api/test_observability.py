"""Observability against the real server, Redis and Ray: /metrics (parsed with
prometheus_client's parser), /healthz and /readyz, request ids web -> actor -> Redis, and
the JSON access log."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from actors import commands as c
from actors.store import log_key
from server.ops import logs
from server.app import create_app
from server.appkeys import SERVICES
from server.core.embedded import RedisServer
from server.ops.observability import AccessLogger
from server.core.settings import Settings

from .builders import GOOD_CARD, PublishedShow

BUYER = {"email": "asha@example.com", "name": "Asha Rao"}
HOLDS_ROUTE = "/api/shows/{show_id}/holds"
TIMEOUT = 10.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(api: aiohttp.ClientSession) -> Samples:
    async with api.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def hold(api: aiohttp.ClientSession, show_id: str, seats: list[str],
               headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, dict]:
    async with api.post(f"/api/shows/{show_id}/holds", json={"seats": seats},
                        headers=headers or {}) as resp:
        return resp, await resp.json()


async def stats(api: aiohttp.ClientSession) -> dict:
    async with api.get("/api/_stats") as resp:
        return await resp.json()


# --- /metrics ------------------------------------------------------------------------------

async def test_holds_bookings_requests_and_batches_move_by_exactly_what_happened(
        api: aiohttp.ClientSession, show: PublishedShow) -> None:
    sid = show.show_id
    before, calls_before = await scrape(api), await stats(api)

    (r1, h1), (r2, _) = await hold(api, sid, ["A1"]), await hold(api, sid, ["A2", "A3"])
    assert (r1.status, r2.status) == (201, 201)
    r3, refused = await hold(api, sid, ["A1"])  # taken: 409, no hold
    assert r3.status == 409, refused
    async with api.post(f"/api/holds/{h1['hold_id']}/checkout", json={"card": GOOD_CARD, **BUYER},
                        headers={"X-Holder-Token": h1["holder_token"],
                                 "Idempotency-Key": uuid.uuid4().hex}) as resp:
        assert resp.status == 201, await resp.text()
    async with api.get("/no/such/page/4711") as resp:
        assert resp.status == 404

    after, calls_after = await scrape(api), await stats(api)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731

    assert delta("bmm_holds_total", show_id=sid) == 2
    assert delta("bmm_bookings_total", show_id=sid) == 1
    assert delta("bmm_seat_commands_rejected_total", code="seats_unavailable") == 1
    # per route pattern, method and status class; its _count is the request rate
    hist = "bmm_http_request_duration_seconds"
    assert delta(f"{hist}_count", route=HOLDS_ROUTE, method="POST", status="2xx") == 2
    assert delta(f"{hist}_count", route=HOLDS_ROUTE, method="POST", status="4xx") == 1
    assert delta(f"{hist}_count", route="/api/holds/{hold_id}/checkout", method="POST",
                 status="2xx") == 1
    assert delta(f"{hist}_count", route="<unmatched>", method="GET", status="4xx") == 1
    assert delta(f"{hist}_bucket", route=HOLDS_ROUTE, method="POST", status="2xx", le="+Inf") == 2
    buckets = [k for k in after if k[0] == f"{hist}_bucket"
               and ("route", HOLDS_ROUTE) in k[1] and ("status", "2xx") in k[1]]
    assert len(buckets) == 14  # 13 bounds + Inf
    # raw paths never become labels (bounded cardinality)
    routes = {dict(k[1]).get("route") for k in after if k[0].startswith(hist)}
    assert not any(sid in r or "4711" in r for r in routes if r)
    # batch sizes and actor latency: exactly the show clients' own counters
    calls = calls_after["calls"] - calls_before["calls"]
    commands = calls_after["commands"] - calls_before["commands"]
    assert calls >= 4 and commands >= 4
    assert delta("bmm_actor_batch_commands_count") == calls
    assert delta("bmm_actor_batch_commands_sum") == commands
    assert delta("bmm_actor_call_seconds_count") == calls
    assert delta("bmm_actor_call_seconds_sum") > 0
    assert value(after, "bmm_actor_batch_commands_bucket", le="512.0") >= calls
    # the outbox stream (the confirmed booking went there), read at scrape time
    assert value(after, "bmm_queue_length", queue="outbox") >= 1


async def test_watcher_gauge_follows_websocket_clients(
        api: aiohttp.ClientSession, server: TestServer, show: PublishedShow) -> None:
    url = str(server.make_url(f"/api/shows/{show.show_id}/live").with_scheme("ws"))
    base = value(await scrape(api), "bmm_live_watchers")
    sockets = []
    try:
        for i in range(3):
            ws = await connect(url, additional_headers={"X-Request-Id": f"watcher-{i}"})
            sockets.append(ws)
            assert ws.response.headers["X-Request-Id"] == f"watcher-{i}"  # handshake too
            # the gauge moves before the snapshot is sent: once it arrived, it counts
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "snapshot"
        assert value(await scrape(api), "bmm_live_watchers") == base + 3
        await sockets.pop().close()
        await wait_for_gauge(api, base + 2)
    finally:
        for ws in sockets:
            await ws.close()
    await wait_for_gauge(api, base)


async def wait_for_gauge(api: aiohttp.ClientSession, expected: float) -> None:
    """The server notices a close a moment after the client's close handshake: poll the
    condition (bounded), do not sleep a fixed time."""
    async with asyncio.timeout(TIMEOUT):
        while value(await scrape(api), "bmm_live_watchers") != expected:
            await asyncio.sleep(0.02)


# --- request ids ---------------------------------------------------------------------------

async def test_request_id_reaches_the_actor_and_the_shows_redis_log(
        api: aiohttp.ClientSession, redis: aioredis.Redis, show: PublishedShow) -> None:
    rid = f"trace-{uuid.uuid4().hex}"
    resp, body = await hold(api, show.show_id, ["B4"], headers={"X-Request-Id": rid})
    assert resp.status == 201, body
    assert resp.headers["X-Request-Id"] == rid
    entries = await redis.xrange(log_key(show.show_id), "-", "+")
    logged = [c.command_decoder.decode(fields[b"c"]) for _, fields in entries]
    mine = [cmd for cmd in logged if cmd.rid == rid]
    assert len(mine) == 1 and isinstance(mine[0], c.Hold) and mine[0].seats == ["B4"]
    assert mine[0].hold_id == body["hold_id"]


@pytest.mark.parametrize("incoming", ["has spaces", "x" * 129, "<script>", "é-unicode", ""])
async def test_invalid_incoming_request_id_is_replaced(api: aiohttp.ClientSession,
                                                       incoming: str) -> None:
    async with api.get("/healthz", headers={"X-Request-Id": incoming}) as resp:
        assert resp.status == 200
        rid = resp.headers["X-Request-Id"]
    assert rid != incoming and re.fullmatch(r"[0-9a-f]{16}", rid)


async def test_each_request_gets_its_own_id_and_errors_quote_it(
        api: aiohttp.ClientSession, show: PublishedShow) -> None:
    async with api.get("/healthz") as a, api.get("/healthz") as b:
        assert a.headers["X-Request-Id"] != b.headers["X-Request-Id"]
    resp, body = await hold(api, show.show_id, ["Z99"], headers={"X-Request-Id": "err-1"})
    assert resp.status == 422 and body["error"]["code"] == "unknown_seats"
    assert body["error"]["request_id"] == "err-1" == resp.headers["X-Request-Id"]
    async with api.get("/no/such/thing") as resp:
        assert (await resp.json())["error"]["request_id"] == resp.headers["X-Request-Id"]


# --- /healthz and /readyz ------------------------------------------------------------------

async def test_healthz_and_readyz_when_all_is_well(api: aiohttp.ClientSession,
                                                  server: TestServer) -> None:
    async with api.get("/healthz") as resp:
        assert resp.status == 200 and await resp.json() == {"ok": True}
    await server.app[SERVICES].shows.start()  # the warm-up started at start-up, finished
    async with api.get("/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"ready": True, "checks": {
            "redis": "ok", "ray": "ok", "hosts": "ok", "shutdown": "ok"}}


async def test_readyz_is_503_once_shutdown_starts(api: aiohttp.ClientSession,
                                                  server: TestServer) -> None:
    await server.app[SERVICES].shows.start()
    await server.app.shutdown()  # what a SIGTERM starts: the on_shutdown hooks
    async with api.get("/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body == {"ready": False, "checks": {"redis": "ok", "ray": "ok", "hosts": "ok",
                                               "shutdown": "shutting down"}}
    async with api.get("/healthz") as resp:  # still alive: in-flight work finishes
        assert resp.status == 200


@pytest.fixture
async def lonely_redis(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("lonely-redis")).start()
    yield server
    server.stop()


async def test_readyz_is_503_while_redis_is_down_and_says_so(
        lonely_redis: RedisServer, ray_cluster: None, app_settings: Settings) -> None:
    settings = msgspec.structs.replace(app_settings, workers=False)
    srv = TestServer(create_app(settings, lonely_redis.url), host="127.0.0.1")
    await srv.start_server()
    shows = srv.app[SERVICES].shows
    try:
        await shows.start()
        async with aiohttp.ClientSession(base_url=str(srv.make_url(""))) as api:
            async with api.get("/readyz") as resp:
                assert resp.status == 200, await resp.text()
            lonely_redis.stop()
            async with api.get("/readyz") as resp:
                assert resp.status == 503
                body = await resp.json()
            assert body["ready"] is False
            # A connection error, or (as the pool retries a lost Redis with backoff) no
            # answer within the probe's deadline: either way not ready, and it says why.
            problem = body["checks"]["redis"]
            assert "Connect" in problem or problem.startswith("no answer within"), problem
            assert body["checks"]["ray"] == "ok" and body["checks"]["shutdown"] == "ok"
            async with api.get("/healthz") as resp:  # liveness does not depend on Redis
                assert resp.status == 200
    finally:
        shows.kill_hosts()  # a pool of their own, for this Redis only
        await srv.close()


# --- the JSON access log -------------------------------------------------------------------

async def test_access_log_is_json_lines_with_request_id_route_status_duration(
        redis_server: RedisServer, ray_cluster: None, app_settings: Settings,
        show: PublishedShow) -> None:
    out = io.StringIO()
    installed = logs.configure("json", "INFO", out)
    settings = msgspec.structs.replace(app_settings, workers=False)
    srv = TestServer(create_app(settings, redis_server.url), host="127.0.0.1")
    try:
        await srv.start_server(access_log_class=AccessLogger,
                               access_log=logging.getLogger("aiohttp.access"))
        async with aiohttp.ClientSession(base_url=str(srv.make_url(""))) as api:
            resp, body = await hold(api, show.show_id, ["C5"],
                                    headers={"X-Request-Id": "log-me-1"})
            assert resp.status == 201, body
            async with api.get(f"/api/shows/{show.show_id}/seatmap?token=secret") as resp:
                seatmap_rid = resp.headers["X-Request-Id"]
    finally:
        await srv.close()
        installed.stop()  # writes out the queue
    lines = [json.loads(line) for line in out.getvalue().splitlines()]  # every line is JSON
    access = {r["request_id"]: r for r in lines if r["logger"] == "aiohttp.access"}
    held = access["log-me-1"]
    assert held["route"] == HOLDS_ROUTE and held["path"] == f"/api/shows/{show.show_id}/holds"
    assert held["method"] == "POST" and held["status"] == 201 and held["level"] == "INFO"
    assert held["duration_ms"] > 0 and held["message"].startswith("POST /api/shows/")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", held["time"])
    seatmap = access[seatmap_rid]
    assert seatmap["route"] == "/api/shows/{show_id}/seatmap" and seatmap["status"] == 200
    assert "secret" not in json.dumps(seatmap)  # no query string in the log


# --- several web processes on one port ---------------------------------------------------

async def test_any_of_several_web_processes_answers_metrics_for_all(
        redis_server: RedisServer, ray_cluster: None,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """`python -m server --workers 2`: SO_REUSEPORT spreads connections over both
    processes, and whichever answers /metrics reports the requests of both."""
    import base64
    import os
    import secrets
    import signal
    import subprocess
    import sys

    import ray

    from server.core.embedded import free_port

    port = free_port()
    data_dir = tmp_path_factory.mktemp("multi")
    env = {**os.environ, "BMM_DATA_DIR": str(data_dir), "BMM_LOG_FORMAT": "json",
           "BMM_RATE_LIMITS": "0",  # every request comes from 127.0.0.1
           "BMM_SECRET": secrets.token_urlsafe(24), "BMM_ADMIN_KEY": secrets.token_urlsafe(24),
           "BMM_DATA_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
         "--redis-url", redis_server.url, "--ray-address",
         ray.get_runtime_context().gcs_address, "--no-seed", "--workers", "2",
         "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        # a fresh connection per request, so the kernel picks a process each time
        async with aiohttp.ClientSession(
                base_url=base, connector=aiohttp.TCPConnector(force_close=True)) as api:
            counted: dict[int, int] = {}  # answers to /api/_stats per process

            async def stats_call() -> int:
                pid = (await stats(api))["pid"]
                counted[pid] = counted.get(pid, 0) + 1
                return pid

            async with asyncio.timeout(90):
                while len(counted) < 2:  # both processes up and answering
                    try:
                        await stats_call()
                    except aiohttp.ClientError:
                        assert proc.poll() is None, "python -m server exited"
                        await asyncio.sleep(0.2)
            for _ in range(40):
                await stats_call()
            assert len(counted) == 2 and min(counted.values()) > 1, counted
            # whichever process answers a scrape reports both processes' requests
            for _ in range(8):
                samples = await scrape(api)
                assert value(samples, "bmm_http_request_duration_seconds_count",
                             route="/api/_stats", method="GET",
                             status="2xx") == sum(counted.values())
                await stats_call()
        files = sorted(p.name for p in (data_dir / "metrics").iterdir())
        assert len([f for f in files if f.startswith("histogram_")]) == 2, files
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the actor's side of the request id ----------------------------------------------------

async def test_show_host_logs_its_batches_with_the_request_ids(
        redis_server: RedisServer, ray_cluster: None, show: PublishedShow) -> None:
    """At DEBUG (ActorSettings.log_level: the web process's level) the show's host logs
    each batch with its commands' rids, to its Ray worker's stderr log file."""
    from pathlib import Path

    import ray

    from actors.client import ShowDirectory
    from actors.context import request_id
    from actors.host import ActorSettings

    directory = await ShowDirectory(redis_server.url, ActorSettings(log_level="DEBUG"),
                                    pool="debug-log", hosts_per_node=1).start()
    rid = f"actor-{uuid.uuid4().hex[:12]}"
    token = request_id.set(rid)
    try:
        result = await directory.submit(show.show_id, c.Hold("c-log", "h-log", "tok", ["D1"]))
    finally:
        request_id.reset(token)
    assert isinstance(result, c.Held)
    pid = await directory.host_pid(show.show_id)
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    [err] = (session / "logs").glob(f"worker-*-{pid}.err")
    lines = [x for x in err.read_text().splitlines() if rid in x]
    assert len(lines) == 1
    assert f"DEBUG actors.host: show {show.show_id}: batch of 1 commands" in lines[0]
    directory.kill_hosts()  # a pool of its own, for this test only
    await directory.close()
