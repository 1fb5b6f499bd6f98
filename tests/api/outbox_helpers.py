"""Helpers for the outbox tests: a real local SMTP server (aiosmtpd) and HTTP receiver
(aiohttp) that hand what arrives to the test's event loop, and waits on Redis state."""
from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage

import redis.asyncio as aioredis
from aiohttp import web
from aiosmtpd.controller import Controller

from server.core.outbox import STREAMS, retries_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpSink:
    """aiosmtpd on 127.0.0.1:<port>; every message arrives in `inbox` (an asyncio.Queue on
    the test's loop). `stop()` / `start()` take it down and bring it back on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[EmailMessage] = asyncio.Queue()
        self.received: list[EmailMessage] = []
        self.controller: Controller | None = None

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd hook)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        msg["X-Test-Rcpt"] = ",".join(envelope.rcpt_tos)
        self.loop.call_soon_threadsafe(self._arrived, msg)
        return "250 OK"

    def _arrived(self, msg: EmailMessage) -> None:
        self.received.append(msg)
        self.inbox.put_nowait(msg)

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    async def next_to(self, rcpt: str, timeout: float = 10.0) -> EmailMessage:
        """The next message for `rcpt` (others are kept in `received` but skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.inbox.get()
                if msg["To"] == rcpt:
                    return msg

    def to(self, rcpt: str) -> list[EmailMessage]:
        return [m for m in self.received if m["To"] == rcpt]


class Receiver:
    """An aiohttp server on 127.0.0.1:<port> that records each POST and answers with the
    next status from `statuses` (200 when empty). `check` (if set) may reject a request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.statuses: list[int] = []
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.inbox: asyncio.Queue[tuple[dict[str, str], bytes, int]] = asyncio.Queue()
        self.check: Callable[[dict[str, str], bytes], bool] | None = None
        self.runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        status = self.statuses.pop(0) if self.statuses else 200
        if self.check is not None and not self.check(headers, body):
            status = 401
        self.requests.append((headers, body, status))
        self.inbox.put_nowait((headers, body, status))
        return web.Response(status=status, text="ok" if status < 300 else "no")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def next(self, timeout: float = 10.0) -> tuple[dict[str, str], bytes, int]:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0,
                what: str = "condition") -> None:
    """Wait for state in Redis / the server that has no event to await (short polls)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def locate(redis: aioredis.Redis, event_id: str) -> tuple[str, str] | None:
    """(the shard's stream, the entry id) of an event (each shard's newest entries first)."""
    for stream in STREAMS:
        for entry_id, fields in await redis.xrevrange(stream, count=500):
            if fields.get(b"id", b"").decode() == event_id:
                return stream, entry_id.decode()
    return None


async def entry_of(redis: aioredis.Redis, event_id: str) -> str | None:
    """The stream entry id of an event."""
    found = await locate(redis, event_id)
    return found[1] if found else None


async def retry_record(redis: aioredis.Redis, group: str, event_id: str) -> bytes | None:
    """The group's "attempts:next_at_ms" for an event (None: no failed attempt pending)."""
    found = await locate(redis, event_id)
    if found is None:
        return None
    stream, entry = found
    return await redis.hget(retries_key(stream, group), entry)


async def acked(redis: aioredis.Redis, group: str, event_id: str) -> bool:
    """The group has read the event's entry and it is no longer pending."""
    found = await locate(redis, event_id)
    if found is None:
        return False
    stream, entry = found
    groups = {g["name"].decode(): g for g in await redis.xinfo_groups(stream)}
    info = groups.get(group)
    if info is None:
        return False
    last = info["last-delivered-id"].decode()
    if tuple(map(int, last.split("-"))) < tuple(map(int, entry.split("-"))):
        return False
    pending = await redis.xpending_range(stream, group, entry, entry, 1)
    return not pending


async def destroy_group(redis: aioredis.Redis, group: str) -> None:
    """A test's consumer group, gone from every shard."""
    for stream in STREAMS:
        await redis.xgroup_destroy(stream, group)
