"""The data path into a show host: a direct stream, with Ray as the control plane.

Ray places, names, restarts and finds the hosts; a command batch, though, goes over a
plain TCP connection that the host listens on. A Ray call to an async actor costs 2.5-5 ms
on these machines whatever it carries (a gRPC hop through the core worker, a thread
hand-off into the actor's loop), a round trip on this stream ~0.15 ms
(loadtest/RESULTS.md, "Issue 13"). The host tells its address and a random token through
a Ray call (`ShowHost.endpoint`), so only a process that can reach the actor through Ray
can use its stream, and a host that Ray restarted answers on a new port with a new token.

Frames are `u32 length | u32 call id | payload`, both ways; the connection opens with the
token. Calls on one connection may be answered in any order (the id pairs them).
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import struct
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

HEADER = struct.Struct(">II")
TOKEN_BYTES = 16
MAX_FRAME = 64 * 1024 * 1024   # a batch of MAX_BATCH commands is well under 1 MiB
HELLO_TIMEOUT_S = 5.0


class ChannelLost(ConnectionError):
    """The stream broke (the host died, restarted or refused us): look it up again."""


Handler = Callable[[bytes], Awaitable[bytes]]


class Listener:
    """The host's side: accepts connections that open with its token and answers each
    frame with `handler(payload)`, concurrently."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str) -> int:
        self._server = await asyncio.start_server(self._serve, host, 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await asyncio.wait_for(reader.readexactly(TOKEN_BYTES), HELLO_TIMEOUT_S)
            if not hmac.compare_digest(hello, self.token):
                return
            while True:
                size, call_id = HEADER.unpack(await reader.readexactly(HEADER.size))
                if size > MAX_FRAME:
                    return
                payload = await reader.readexactly(size)
                task = asyncio.create_task(self._answer(writer, call_id, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, call_id: int, payload: bytes) -> None:
        try:
            reply = await self.handler(payload)
        except Exception:
            # The caller times out and retries (over Ray if need be); say why here.
            log.exception("channel: call %d failed", call_id)
            writer.close()
            return
        if not writer.is_closing():
            writer.write(HEADER.pack(len(reply), call_id) + reply)


class Channel:
    """The caller's side: one connection to one host, calls matched to answers by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._next = 0
        self._lost: BaseException | None = None
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, host: str, port: int, token: bytes, timeout: float = 5.0) -> Channel:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise ChannelLost(f"cannot reach {host}:{port}: {exc}") from exc
        writer.write(token)
        return cls(reader, writer)

    @property
    def lost(self) -> bool:
        return self._lost is not None

    async def call(self, payload: bytes) -> bytes:
        if self._lost is not None:
            raise ChannelLost(str(self._lost))
        self._next = (self._next + 1) & 0xFFFFFFFF
        call_id = self._next
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = fut
        try:
            self._writer.write(HEADER.pack(len(payload), call_id) + payload)
            return await fut
        finally:
            self._waiting.pop(call_id, None)

    async def _read(self) -> None:
        try:
            while True:
                size, call_id = HEADER.unpack(await self._reader.readexactly(HEADER.size))
                payload = await self._reader.readexactly(size)
                fut = self._waiting.get(call_id)
                if fut is not None and not fut.done():
                    fut.set_result(payload)
        except asyncio.CancelledError:
            self._fail(ChannelLost("closed"))
            raise
        except (asyncio.IncompleteReadError, OSError) as exc:
            self._fail(ChannelLost(f"stream broke: {exc!r}"))

    def _fail(self, exc: BaseException) -> None:
        self._lost = exc
        self._writer.close()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)

    async def close(self) -> None:
        self._reading.cancel()
        try:
            await self._reading
        except asyncio.CancelledError:
            pass
