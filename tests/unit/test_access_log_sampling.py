"""The access log keeps every error and slow request and 1 in N of the rest, per route."""
from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from server.ops.observability import AccessLogger


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_errors_and_slow_requests_always_the_rest_one_in_n() -> None:
    logger = logging.getLogger("test.access.sampling")
    lines = _Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    access = AccessLogger(logger, "")
    access.every = 3
    request = make_mocked_request("POST", "/api/shows/s1/holds")
    for _ in range(7):
        access.log(request, web.Response(status=201), 0.002)
    access.log(request, web.Response(status=409), 0.002)
    access.log(request, web.Response(status=201), 2.0)
    statuses = [(r.status, getattr(r, "sampled", 1)) for r in lines.records]  # type: ignore[attr-defined]
    # 1st, 4th and 7th of the fast 201s (each standing for 3), the 409, the slow one
    assert statuses == [(201, 3), (201, 3), (201, 3), (409, 1), (201, 1)]
