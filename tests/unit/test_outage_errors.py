"""What a request that meets a Redis error answers: a store that cannot take the command
now (down, failing over, refusing writes it cannot replicate) is 503 + Retry-After, with
the error's own reply; anything else is a bug, 500."""
from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis import exceptions as rx

from server.core.errors import error_middleware

OUTAGES = [
    rx.ConnectionError("Connection refused"),
    rx.TimeoutError("Timeout reading from socket"),
    rx.MaxConnectionsError(),
    rx.ClusterDownError("CLUSTERDOWN The cluster is down"),
    rx.MasterDownError("MASTERDOWN Link with MASTER is down"),
    rx.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
    rx.ReadOnlyError("You can't write against a read only replica."),
    rx.SlotNotCoveredError("Slot 42 is not covered by the cluster"),
    rx.ResponseError("NOREPLICAS Not enough good replicas to write."),
    rx.ResponseError("Command # 1 (DEL lease:{sh-1}:x) of pipeline caused error: "
                     "NOREPLICAS Not enough good replicas to write."),
    rx.BusyLoadingError("Redis is loading the dataset in memory"),
]
BUGS = [rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        rx.ResponseError("ERR wrong number of arguments for 'get' command"),
        rx.ClusterCrossSlotError(),
        rx.ResponseError("Command # 2 (INCR a) of pipeline caused error: WRONGTYPE Operation "
                         "against a key holding the wrong kind of value")]


async def answer(exc: Exception) -> tuple[int, str | None, str]:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/")
        return resp.status, resp.headers.get("Retry-After"), (await resp.json())["error"]["code"]


@pytest.mark.parametrize("exc", OUTAGES, ids=lambda e: type(e).__name__ + ":" + str(e)[:10])
async def test_an_outage_is_503_with_retry_after(exc: Exception) -> None:
    assert await answer(exc) == (503, "1", "unavailable")


@pytest.mark.parametrize("exc", BUGS, ids=lambda e: type(e).__name__ + ":" + str(e)[:10])
async def test_a_wrong_command_is_a_500(exc: Exception) -> None:
    assert await answer(exc) == (500, None, "internal")
