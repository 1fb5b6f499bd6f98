"""WebSocket origin check: a foreign page must not open the live seat map in a visitor's
name (cross-site WebSocket hijacking). Real `websockets` clients against the real server."""
from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestServer
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server.ops.security import origin_allowed

from ..api.builders import PublishedShow


def _live_url(server: TestServer, show_id: str) -> str:
    return f"ws://{server.host}:{server.port}/api/shows/{show_id}/live"


async def test_foreign_origin_refused(server: TestServer, show: PublishedShow) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(_live_url(server, show.show_id), origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    body = json.loads(refused.value.response.body)
    assert body["error"]["code"] == "forbidden_origin"


async def test_same_origin_and_no_origin_work(server: TestServer, show: PublishedShow) -> None:
    own = f"http://{server.host}:{server.port}"
    for origin in (own, None):
        async with connect(_live_url(server, show.show_id), origin=origin) as ws:
            first = json.loads(await ws.recv())
            assert first["type"] == "snapshot"


async def test_same_host_other_port_refused(server: TestServer, show: PublishedShow) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(_live_url(server, show.show_id),
                           origin=f"http://{server.host}:{server.port + 1}"):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(("origin", "host", "secure", "allowed", "ok"), [
    ("http://a.example:8080", "a.example:8080", False, (), True),
    ("https://a.example", "a.example", True, (), True),
    ("https://a.example", "a.example:443", True, (), True),
    ("https://A.EXAMPLE", "a.example", True, (), True),
    ("http://a.example.evil.com", "a.example", False, (), False),
    ("null", "a.example", False, (), False),
    ("file://", "a.example", False, (), False),
    ("https://app.example", "api.example", True, ("https://app.example",), True),
    ("http://app.example", "api.example", True, ("https://app.example",), False),
    ("https://app.example:8443", "api.example", True, ("https://app.example",), False),
])
def test_origin_rules(origin: str, host: str, secure: bool, allowed: tuple[str, ...],
                      ok: bool) -> None:
    assert origin_allowed(origin, host, secure, allowed) is ok
