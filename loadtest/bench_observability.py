"""What observability costs per request, measured in-process (no network, no server):

    .venv/bin/python -m loadtest.bench_observability [--n 200000]

For a request matched by the real router to `/api/shows/{show_id}/holds`, it times
- the handler alone (builds a small JSON response), and inside two empty middlewares
  (the slots as they were before: the baseline),
- the handler inside `request_id_middleware` + `metrics_middleware` (server/ops/observability.py),
- one access-log record: the old text line written synchronously to a file, and the JSON
  record of `AccessLogger` through the queue (server/ops/logs.py; what the request pays: the
  writing happens on the listener thread).
and prints microseconds per request. Compare with a hold's end-to-end time (~1-3 ms on this
machine, loadtest/RESULTS.md) to see the share.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from functools import partial

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_log import AccessLogger as AiohttpAccessLogger

from server.ops import logs
from server.ops.observability import (
    AccessLogger,
    _echo_request_id,
    metrics_middleware,
    request_id_middleware,
)

BODY = b'{"hold_id": "x", "seats": ["A1"]}'


async def handler(request: web.Request) -> web.Response:
    return web.Response(status=201, body=BODY, content_type="application/json")


@web.middleware
async def _passthrough(request: web.Request, handler) -> web.StreamResponse:  # noqa: ANN001
    return await handler(request)


async def _request(app: web.Application) -> web.Request:
    req = make_mocked_request("POST", "/api/shows/sh-123/holds", app=app,
                              headers={"X-Request-Id": "bench-1"})
    match = await app.router.resolve(req)
    req._match_info = match  # what the server does before the middlewares
    return req


async def _time(n: int, call) -> float:  # noqa: ANN001
    for _ in range(1000):
        await call()
    started = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - started) / n * 1e6


def _time_sync(n: int, call) -> float:  # noqa: ANN001
    for _ in range(1000):
        call()
    started = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    app = web.Application()
    app.router.add_post("/api/shows/{show_id}/holds", handler)
    req = await _request(app)
    async def wrapped() -> web.StreamResponse:
        response = await request_id_middleware(req, partial(metrics_middleware, handler=handler))
        await _echo_request_id(req, response)  # the on_response_prepare hook
        return response

    empty = partial(_passthrough, req, partial(_passthrough, handler=handler))
    base = min([await _time(args.n, partial(handler, req)) for _ in range(3)])
    stubs = min([await _time(args.n, empty) for _ in range(3)])
    both = min([await _time(args.n, wrapped) for _ in range(3)])
    print(f"handler alone                      {base:7.2f} us")
    print(f"+ two empty middlewares (before)   {stubs:7.2f} us")
    print(f"+ request id + metrics middleware  {both:7.2f} us  (+{both - stubs:.2f} us)")

    response = await handler(req)
    req[("request_id")] = "bench-1"
    devnull = open(os.devnull, "w")  # noqa: SIM115
    old = logging.getLogger("bench.old")
    old.propagate = False
    h = logging.StreamHandler(devnull)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old.addHandler(h)
    old.setLevel(logging.INFO)
    text_sync = AiohttpAccessLogger(old, AiohttpAccessLogger.LOG_FORMAT)
    t_old = min(_time_sync(args.n // 4, partial(text_sync.log, req, response, 0.001))
                for _ in range(3))
    installed = logs.configure("json", "INFO", devnull)
    json_async = AccessLogger(logging.getLogger("aiohttp.access"), "")
    t_new = min(_time_sync(args.n // 4, partial(json_async.log, req, response, 0.001))
                for _ in range(3))
    installed.stop()
    print(f"access log, text, synchronous      {t_old:7.2f} us  (before)")
    print(f"access log, JSON, queued           {t_new:7.2f} us  (now; written off-thread)")


if __name__ == "__main__":
    asyncio.run(main())
