"""The simplest competing design, as fast as it honestly goes: aiohttp + one Redis Lua script
per hold and one per release, Redis with `appendonly yes` + `appendfsync always`.

    .venv/bin/python -m loadtest.baseline [--port 8090] [--workers N] [--redis-url URL]

It speaks the platform's hot-path HTTP, so the same client drives both (loadtest/versus.py):

    PUT    /baseline/shows/{show_id}    {"seats": ["A1", ...]} -> 200: (re)creates the show, all free
    POST   /api/shows/{show_id}/holds   {"seats": ["A1"]} -> 201 {hold_id, holder_token, show_id,
                                        seats, expires_at}
    DELETE /api/holds/{hold_id}         X-Holder-Token (or Authorization: Bearer) -> 200
                                        {hold_id, seats, released: true}
    GET    /healthz                     the no-op

Status codes are the platform's: 400 bad JSON, 422 invalid body / unknown or too many seats,
404 unknown show or hold (a released hold is gone), 409 `seats_unavailable` (`error.seats`),
401 no token, 403 wrong token, 410 expired hold.

State, per show: a hash seat -> "" (free) or "<hold_id>|<expires ms>"; per hold: a hash
{t: token SHA-256, s: seats, e: expires ms} with a TTL. A seat whose hold has expired counts
as free, so expiry needs no sweeper and no second round trip. The clock is Redis's (TIME).
Without --redis-url it starts its own redis-server in a temp dir, configured as the
platform's embedded one (server/core/embedded.py). `--workers N` runs N processes on one
port (SO_REUSEPORT), as `python -m server --workers N` does: this process starts Redis, the
N-1 others join it by URL. It runs on the platform's runtime: uvloop's event loop
(server/core/eventloop.py) and redis-py with its hiredis parser.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from redis.commands.core import AsyncScript

from server.core.embedded import RedisServer
from server.core.errors import ApiError
from server.core.eventloop import new_event_loop
from server.core.wire import read_json

MAX_SEATS_PER_HOLD = 10             # the platform's default rules (actors/layout.Rules)
HOLD_TTL_S = 600.0
KEEP_EXPIRED_MS = 60 * 1000         # an expired hold's record lingers, so a late release is 410

# KEYS: show's seat hash, the hold's record. ARGV: hold id, token hash, ttl ms, keep ms, seats.
# Returns {0, expires_ms} | {1} no show | {2, unknown seats...} | {3, taken seats...}.
HOLD_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HMGET', KEYS[1], unpack(ARGV, 5))
local unknown, taken = {}, {}
for i = 1, #cur do
  local v = cur[i]
  if not v then
    unknown[#unknown + 1] = ARGV[i + 4]
  elseif v ~= '' and tonumber(string.match(v, '|(%d+)$')) > now then
    taken[#taken + 1] = ARGV[i + 4]
  end
end
if #unknown > 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {1} end
  return {2, unpack(unknown)}
end
if #taken > 0 then return {3, unpack(taken)} end
local exp = string.format('%d', now + tonumber(ARGV[3]))
local mine = ARGV[1] .. '|' .. exp
local set = {}
for i = 5, #ARGV do
  set[#set + 1] = ARGV[i]
  set[#set + 1] = mine
end
redis.call('HSET', KEYS[1], unpack(set))
redis.call('HSET', KEYS[2], 't', ARGV[2], 's', table.concat(ARGV, ',', 5), 'e', exp)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]))
return {0, tonumber(exp)}
"""

# KEYS: the hold's record, the show's seat hash. ARGV: token hash, hold id.
# Returns {200, seats} | {404} | {403} | {410, seats}.
RELEASE_LUA = """
local h = redis.call('HMGET', KEYS[1], 't', 's', 'e')
if not h[1] then return {404} end
if h[1] ~= ARGV[1] then return {403} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(h[3]) <= now then return {410, h[2]} end
local mine = ARGV[2] .. '|' .. h[3]
local seats = {}
for s in string.gmatch(h[2], '[^,]+') do seats[#seats + 1] = s end
local cur = redis.call('HMGET', KEYS[2], unpack(seats))
local free = {}
for i = 1, #seats do
  if cur[i] == mine then
    free[#free + 1] = seats[i]
    free[#free + 1] = ''
  end
end
if #free > 0 then redis.call('HSET', KEYS[2], unpack(free)) end
redis.call('DEL', KEYS[1])
return {200, h[2]}
"""

SeatList = Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]],
                     msgspec.Meta(min_length=1, max_length=100)]
# Seat ids are stored joined by "," and next to "|": the layout may not contain either.
LayoutSeats = Annotated[list[Annotated[str, msgspec.Meta(pattern=r"^[^,|]{1,64}$")]],
                        msgspec.Meta(min_length=1, max_length=10_000)]


class HoldRequest(msgspec.Struct, forbid_unknown_fields=True):
    seats: SeatList


class ShowRequest(msgspec.Struct, forbid_unknown_fields=True):
    seats: LayoutSeats


class HoldResponse(msgspec.Struct):
    hold_id: str
    holder_token: str
    show_id: str
    seats: list[str]
    expires_at: dt.datetime


class Released(msgspec.Struct):
    hold_id: str
    seats: list[str]
    released: bool = True


class State(msgspec.Struct):
    redis: Any  # aioredis.Redis
    hold: AsyncScript
    release: AsyncScript
    ttl_ms: int


STATE = web.AppKey("state", State)
_encode = msgspec.json.Encoder().encode
_HEALTHZ = b'{"ok": true}'


def seats_key(show_id: str) -> str:
    return f"bl:{{{show_id}}}:seats"  # hash tag: a show's keys share one cluster slot


def hold_key(show_id: str, hold_id: str) -> str:
    return f"bl:{{{show_id}}}:h:{hold_id}"


def answer(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(obj), status=status, content_type="application/json")


def error(status: int, code: str, message: str, **details: Any) -> web.Response:
    return answer({"error": {"code": code, "message": message, **details}}, status)


async def decode(request: web.Request, type_: type[Any]) -> Any:
    """The body as `type_`, or the platform's own 400 / 422 answer (no middleware here to
    turn its ApiError into one)."""
    try:
        return await read_json(request, type_)
    except ApiError as exc:
        return error(exc.status, exc.code, exc.message)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=_HEALTHZ, content_type="application/json")


async def put_show(request: web.Request) -> web.Response:
    body = await decode(request, ShowRequest)
    if isinstance(body, web.Response):
        return body
    show_id = request.match_info["show_id"]
    if "." in show_id:  # hold ids are "<show_id>.<random>"
        return error(422, "invalid", "a show id may not contain '.'")
    key = seats_key(show_id)
    async with request.app[STATE].redis.pipeline(transaction=True) as pipe:
        await pipe.delete(key).hset(key, mapping=dict.fromkeys(body.seats, "")).execute()
    return answer({"show_id": show_id, "seats": len(set(body.seats))})


async def create_hold(request: web.Request) -> web.Response:
    body = await decode(request, HoldRequest)
    if isinstance(body, web.Response):
        return body
    seats = list(dict.fromkeys(body.seats))
    if len(seats) > MAX_SEATS_PER_HOLD:
        return error(422, "too_many_seats", f"at most {MAX_SEATS_PER_HOLD} seats per hold")
    show_id = request.match_info["show_id"]
    hold_id, token = f"{show_id}.{secrets.token_urlsafe(9)}", secrets.token_urlsafe(24)
    digest = hashlib.sha256(token.encode()).hexdigest()
    state = request.app[STATE]
    out = await state.hold(keys=[seats_key(show_id), hold_key(show_id, hold_id)],
                           args=[hold_id, digest, state.ttl_ms, KEEP_EXPIRED_MS, *seats])
    kind = out[0]
    if kind == 0:
        expires = dt.datetime.fromtimestamp(out[1] / 1000, dt.UTC)
        return answer(HoldResponse(hold_id, token, show_id, seats, expires), 201)
    if kind == 1:
        return error(404, "not_found", f"no show {show_id!r}")
    named = [s.decode() for s in out[1:]]
    if kind == 2:
        return error(422, "unknown_seats", "no such seats in this show", seats=named)
    return error(409, "seats_unavailable", "some seats are taken", seats=named)


async def release_hold(request: web.Request) -> web.Response:
    hold_id = request.match_info["hold_id"]
    token = request.headers.get("X-Holder-Token", "").strip()
    if not token:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not token:
        return error(401, "token_required",
                     "send the holder token in X-Holder-Token or Authorization: Bearer")
    show_id, dot, rest = hold_id.rpartition(".")
    if not (dot and show_id and rest):
        return error(404, "not_found", f"no hold {hold_id!r}")
    out = await request.app[STATE].release(
        keys=[hold_key(show_id, hold_id), seats_key(show_id)],
        args=[hashlib.sha256(token.encode()).hexdigest(), hold_id])
    status = out[0]
    if status == 200:
        return answer(Released(hold_id, out[1].decode().split(",")))
    if status == 403:
        return error(403, "not_owner", "this hold belongs to someone else")
    if status == 410:
        return error(410, "hold_expired", "the hold's time is up",
                     seats=out[1].decode().split(","))
    return error(404, "not_found", f"no hold {hold_id!r}")


def create_app(redis_url: str, pool_size: int, hold_ttl_s: float = HOLD_TTL_S) -> web.Application:
    app = web.Application(client_max_size=1 << 20)

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        # Blocking pool: a request waits for a free connection instead of failing.
        client = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=pool_size, timeout=10))
        app[STATE] = State(client, client.register_script(HOLD_LUA),
                           client.register_script(RELEASE_LUA), int(hold_ttl_s * 1000))
        yield
        await client.aclose()

    app.cleanup_ctx.append(redis_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_put("/baseline/shows/{show_id}", put_show)
    app.router.add_post("/api/shows/{show_id}/holds", create_hold)
    app.router.add_delete("/api/holds/{hold_id}", release_hold)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    ap.add_argument("--redis-url", help="use this Redis instead of starting one")
    ap.add_argument("--redis-pool", type=int, default=128,
                    help="Redis connections per process (>= the clients in flight)")
    ap.add_argument("--hold-ttl-s", type=float, default=HOLD_TTL_S, help="how long a hold lasts")
    ap.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    redis_server = None
    if args.redis_url is None:
        redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="bmm-baseline-"))).start()
    redis_url = args.redis_url or redis_server.url  # type: ignore[union-attr]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        if args.workers > 1:
            cmd = [sys.executable, "-m", "loadtest.baseline", "--host", args.host,
                   "--port", str(args.port), "--redis-url", redis_url,
                   "--redis-pool", str(args.redis_pool), "--hold-ttl-s", str(args.hold_ttl_s),
                   "--reuse-port"]
            workers = [subprocess.Popen(cmd) for _ in range(args.workers - 1)]
        # As the platform does (server/ops/gc_pauses.calm): start-up objects out of the
        # collector's sight, rarer collections.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 1_000)
        print(f"baseline is up: http://{args.host}:{args.port}/ (pid {os.getpid()}, "
              f"{args.workers} processes, Redis {redis_url})", flush=True)
        web.run_app(create_app(redis_url, args.redis_pool, args.hold_ttl_s), host=args.host, port=args.port,
                    reuse_port=bool(workers) or args.reuse_port, access_log=None, print=None,
                    loop=new_event_loop(True))
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if redis_server is not None:
            redis_server.stop()


if __name__ == "__main__":
    main()
