"""Virtual waiting room for on-sale shows (issue 7).

A partner (or the admin) turns a show's waiting room on with an admission rate. From then
on the hold API wants an admission token (server/onsale/admission.py), and visitors get one by
queueing:

    PUT  /partner/v1/shows/{id}/waiting-room  {"enabled": true, "admit_per_minute": 600}
    GET  /partner/v1/shows/{id}/waiting-room  the setting, how many joined and were admitted
    POST /api/shows/{id}/queue                join (once per session; again only once spent)
    GET  /api/shows/{id}/queue                my position; once admitted, the token (also
                                              set as a cookie for the hold API)
    GET  /api/shows/{id}/queue/live           WebSocket: my position as it moves, then
                                              {"type": "admitted"}

The queue is two counters in one Redis hash (`wr:<show>`): `tail`, the last ticket given
out, and `head`, every ticket up to which is admitted. `head` advances with time at the
configured rate (one Lua script reads the clock, moves it and answers, so every web process
agrees); unused admissions carry over up to `burst`, so a quiet queue admits at once. A
visitor's ticket lives in their encrypted session cookie (with a random visitor id the
token is bound to), so joining again from the same browser keeps the place, and nothing
per visitor is stored in Redis.
"""
from __future__ import annotations

import asyncio
import math
import secrets
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from aiohttp import WSMsgType, web
from aiohttp_session import Session, get_session

from server.appkeys import services
from server.onsale import admission
from server.onsale.keys import room_config_key
from server.ops.security import check_origin
from server.accounts import api_keys as auth
from server.catalog import service as catalog
from server.ops import metrics
from server.core.errors import ApiError
from server.core.openapi import operation
from server.core.wire import json_response, read_json

routes = web.RouteTableDef()

POLL_S = 0.25        # how often a process re-reads a watched queue for its sockets
MAX_SHOWS_IN_SESSION = 8
MAX_RATE = 1_000_000  # admissions per minute


# ARGV[1] = "peek" | "join" | "set" (then enabled, rate, burst). Returns
# {enabled, head, tail, rate, burst, ticket}. Advancing first means a rate change only
# applies from now on.
_QUEUE = """
local k = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', k, 'enabled', 'rate', 'burst', 'head', 'tail', 'at')
local enabled = h[1] == '1'
local rate = tonumber(h[2] or '0')
local burst = tonumber(h[3] or '1')
local head = tonumber(h[4] or '0')
local tail = tonumber(h[5] or '0')
local at = tonumber(h[6] or '0')
if enabled and rate > 0 then
  local interval = 60000 / rate
  local n = math.floor((now - at) / interval)
  if n > 0 then
    local cap = tail + burst
    if head + n >= cap then
      if cap > head then head = cap end
      at = now
    else
      head = head + n
      at = at + n * interval
    end
  end
else
  at = now
end
local ticket = 0
if ARGV[1] == 'join' and enabled then
  tail = tail + 1
  ticket = tail
elseif ARGV[1] == 'set' then
  local was = enabled
  enabled = ARGV[2] == '1'
  rate = tonumber(ARGV[3])
  burst = tonumber(ARGV[4])
  if enabled and not was then
    -- opening: nobody is waiting yet; the first `burst` visitors get straight in
    if head < tail then head = tail end
    head = tail + burst
    at = now
  end
end
redis.call('HSET', k, 'enabled', enabled and '1' or '0', 'rate', rate, 'burst', burst,
           'head', head, 'tail', tail, 'at', string.format('%.3f', at))
return {enabled and 1 or 0, head, tail, rate, burst, ticket}
"""


class QueueState(msgspec.Struct, frozen=True):
    enabled: bool
    head: int      # every ticket <= head is admitted
    tail: int      # tickets given out so far
    rate: int      # admissions per minute
    burst: int
    ticket: int = 0  # the ticket just given out (join)

    def position(self, ticket: int) -> int:
        """How many places until admission (0 = admitted)."""
        return max(0, ticket - self.head)

    def eta_s(self, ticket: int) -> int:
        return math.ceil(self.position(ticket) * 60 / self.rate) if self.rate else 0


async def run_queue(redis: object, show_id: str, op: str = "peek",
                    args: tuple[str, ...] = ()) -> QueueState:
    script = _scripts.get(redis)
    if script is None:
        script = _scripts[redis] = redis.register_script(_QUEUE)  # type: ignore[attr-defined]
    raw = await script(keys=[room_config_key(show_id)], args=[op, *args])
    enabled, head, tail, rate, burst, ticket = (int(x) for x in raw)
    metrics.observe_waiting_room(show_id, tail - min(head, tail))
    return QueueState(bool(enabled), head, tail, rate, burst, ticket)


_scripts: weakref.WeakKeyDictionary[object, object] = weakref.WeakKeyDictionary()


# --- wire --------------------------------------------------------------------------------

class WaitingRoomIn(msgspec.Struct, forbid_unknown_fields=True):
    """A show's waiting room: on or off, and how many visitors it lets in per minute."""

    enabled: bool
    admit_per_minute: int = 600
    burst: int | None = None  # admissions that may go in at once (default: one second's worth)


class WaitingRoomView(msgspec.Struct):
    show_id: str
    enabled: bool
    admit_per_minute: int
    burst: int
    joined: int     # tickets given out so far
    admitted: int   # of those, admitted
    waiting: int


class QueueStatus(msgspec.Struct):
    show_id: str
    on_sale: bool                  # false: no queue, hold seats directly
    in_queue: bool = False
    position: int | None = None    # places until admission; 0 once admitted
    eta_seconds: int | None = None
    admitted: bool = False
    admission_token: str | None = None   # send as X-Admission-Token (also set as a cookie)
    admission_expires_at: datetime | None = None


def _view(show_id: str, st: QueueState) -> WaitingRoomView:
    admitted = min(st.head, st.tail)
    return WaitingRoomView(show_id, st.enabled, st.rate, st.burst, st.tail, admitted,
                           st.tail - admitted)


# --- partner / admin ---------------------------------------------------------------------

async def _authorise_show(request: web.Request, show_id: str) -> None:
    """The admin key, or a partner key whose partner owns the show."""
    svc = services(request)
    token = auth.bearer(request)
    if svc.settings.admin_key and secrets.compare_digest(token.encode(),
                                                          svc.settings.admin_key.encode()):
        await _existing_show(request, show_id)
        return
    partner = await auth.partner_of(request, svc.redis)
    await catalog.owned_show(svc.redis, partner, show_id)


_PARTNER = ("partner",)


@routes.put("/partner/v1/shows/{show_id}/waiting-room")
@operation("PUT", "/partner/v1/shows/{show_id}/waiting-room",
           summary="Turn a show's waiting room on or off (on-sale protection)",
           request=WaitingRoomIn, response=WaitingRoomView, errors=(403, 404, 429),
           tags=_PARTNER, security="partnerKey")
async def put_waiting_room(request: web.Request) -> web.Response:
    """Body `{"enabled": true, "admit_per_minute": 600, "burst": 10}`. While enabled, the
    hold API refuses requests without an admission token for the show (403
    `admission_required`); visitors queue at `/api/shows/{id}/queue` and are admitted
    `admit_per_minute` per minute (`burst` at once at most, default one second's worth).
    The partner key of the show's owner, or the admin key. A rate change applies from now;
    turning it off lets everyone hold directly again."""
    show_id = request.match_info["show_id"]
    await _authorise_show(request, show_id)
    body = await read_json(request, WaitingRoomIn)
    if not 1 <= body.admit_per_minute <= MAX_RATE:
        raise ApiError(422, "invalid", f"admit_per_minute must be 1..{MAX_RATE}",
                       field="admit_per_minute")
    burst = body.burst if body.burst is not None else max(1, body.admit_per_minute // 60)
    if not 1 <= burst <= MAX_RATE:
        raise ApiError(422, "invalid", f"burst must be 1..{MAX_RATE}", field="burst")
    st = await run_queue(services(request).redis, show_id, "set",
                         ("1" if body.enabled else "0", str(body.admit_per_minute), str(burst)))
    return json_response(_view(show_id, st))


@routes.get("/partner/v1/shows/{show_id}/waiting-room")
@operation("GET", "/partner/v1/shows/{show_id}/waiting-room",
           summary="A show's waiting room: setting and queue counts",
           response=WaitingRoomView, errors=(403, 404, 429), tags=_PARTNER,
           security="partnerKey")
async def get_waiting_room(request: web.Request) -> web.Response:
    """The setting plus how many visitors joined, were admitted and are waiting."""
    show_id = request.match_info["show_id"]
    await _authorise_show(request, show_id)
    return json_response(_view(show_id, await run_queue(services(request).redis, show_id)))


# --- visitors ----------------------------------------------------------------------------

def _tickets(session: Session) -> dict[str, list[int]]:
    raw = session.get("wr")
    return raw if isinstance(raw, dict) else {}


async def _existing_show(request: web.Request, show_id: str) -> None:
    cached = await services(request).show_cache.get(show_id)
    if cached.show is None or cached.show.status == "cancelled":
        raise ApiError(404, "not_found", f"no show {show_id!r}")


async def _status(request: web.Request, show_id: str, st: QueueState, session: Session
                  ) -> web.Response:
    """The visitor's status; the first time it finds them admitted, the token's expiry
    is fixed in the session (a fresh token later keeps that expiry)."""
    if not st.enabled:
        return json_response(QueueStatus(show_id, on_sale=False))
    mine = _tickets(session).get(show_id)
    if mine is None:
        return json_response(QueueStatus(show_id, on_sale=True))
    ticket, exp_ms = mine
    pos = st.position(ticket)
    if pos > 0:
        return json_response(QueueStatus(show_id, True, True, pos, st.eta_s(ticket)))
    now = time.time_ns() // 1_000_000
    if not exp_ms:
        exp_ms = now + services(request).settings.admission_ttl_s * 1000
        tickets = _tickets(session)
        tickets[show_id] = [ticket, exp_ms]
        session["wr"] = tickets
    if exp_ms <= now:  # spent: join again for another go
        return json_response(QueueStatus(show_id, on_sale=True))
    token = admission.sign(services(request).settings.secret, show_id, session["vid"], exp_ms)
    resp = json_response(QueueStatus(show_id, True, True, 0, 0, True, token,
                                     datetime.fromtimestamp(exp_ms / 1000, UTC)))
    resp.set_cookie(admission.COOKIE, token, path=f"/api/shows/{show_id}/", httponly=True,
                    samesite="Strict", secure=services(request).settings.cookie_secure or None,
                    max_age=max(1, (exp_ms - now) // 1000))
    return resp


@routes.get("/api/shows/{show_id}/queue")
@operation("GET", "/api/shows/{show_id}/queue", summary="My place in a show's waiting room",
           response=QueueStatus, errors=(404, 429), tags=("customer",))
async def queue_status(request: web.Request) -> web.Response:
    """`on_sale: false`: the show has no waiting room, hold seats directly. Otherwise my
    `position` (places until admission) and `eta_seconds` if I joined; once admitted,
    `admission_token` (send it as `X-Admission-Token` with holds; it is also set as an
    HttpOnly cookie for the show's API paths) and its expiry. Bound to this session."""
    show_id = request.match_info["show_id"]
    await _existing_show(request, show_id)
    st = await run_queue(services(request).redis, show_id)
    return await _status(request, show_id, st, await get_session(request))


@routes.post("/api/shows/{show_id}/queue")
@operation("POST", "/api/shows/{show_id}/queue", summary="Join a show's waiting room",
           response=QueueStatus, status=201, errors=(404, 429), tags=("customer",))
async def join_queue(request: web.Request) -> web.Response:
    """Takes a place at the back of the queue (201), or answers my current place if this
    session has one already (200): joining again never moves anyone forward. No body."""
    show_id = request.match_info["show_id"]
    await _existing_show(request, show_id)
    redis = services(request).redis
    session = await get_session(request)
    st = await run_queue(redis, show_id)
    mine = _tickets(session).get(show_id)
    now = time.time_ns() // 1_000_000
    if not st.enabled or (mine is not None and not (mine[1] and mine[1] <= now)):
        return await _status(request, show_id, st, session)
    st = await run_queue(redis, show_id, "join")
    if not isinstance(session.get("vid"), str):
        session["vid"] = secrets.token_urlsafe(12)
    tickets = _tickets(session)
    tickets.pop(show_id, None)
    tickets[show_id] = [st.ticket, 0]
    while len(tickets) > MAX_SHOWS_IN_SESSION:  # oldest first (dicts keep insertion order)
        tickets.pop(next(iter(tickets)))
    session["wr"] = tickets
    resp = await _status(request, show_id, st, session)
    resp.set_status(201)
    return resp


# --- live position -----------------------------------------------------------------------

@dataclass
class _Watch:
    """One poller per watched show per process: every socket waits on its `changed`."""

    state: QueueState | None = None
    sockets: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


WATCHES = web.AppKey("waiting_room_watches", dict[str, _Watch])  # show id -> its poller
SOCKETS = web.AppKey("waiting_room_sockets", weakref.WeakSet[web.WebSocketResponse])


def setup(app: web.Application) -> None:
    app[WATCHES] = {}
    app[SOCKETS] = weakref.WeakSet()
    app.on_shutdown.append(close_sockets)  # the server need not wait for them


async def _poll(redis: object, show_id: str, watch: _Watch) -> None:
    while watch.sockets:
        try:
            st = await run_queue(redis, show_id)
        except Exception:  # Redis hiccup: keep the sockets, try again
            st = watch.state
        if st != watch.state:
            watch.state = st
            watch.changed.set()
            watch.changed = asyncio.Event()
        await asyncio.sleep(POLL_S)


@routes.get("/api/shows/{show_id}/queue/live")
@operation("GET", "/api/shows/{show_id}/queue/live",
           summary="WebSocket: my waiting-room position, live", status=101,
           errors=(403, 404, 409, 429), tags=("customer",))
async def queue_live(request: web.Request) -> web.WebSocketResponse:
    """Upgrade to a WebSocket (same session as the join). Messages (JSON):
    `{"type": "position", "position": N, "eta_seconds": S}` whenever it changes, then
    `{"type": "admitted"}` and the server closes (1000); fetch the token with
    `GET /api/shows/{id}/queue`. `{"type": "closed"}` if the waiting room is turned off
    (hold directly). 409 `not_in_queue` before joining."""
    check_origin(request)  # the session rides along: no foreign page may use it
    show_id = request.match_info["show_id"]
    await _existing_show(request, show_id)
    mine = _tickets(await get_session(request)).get(show_id)
    if mine is None:
        raise ApiError(409, "not_in_queue", "join the queue first (POST .../queue)")
    ticket = mine[0]
    ws = web.WebSocketResponse(heartbeat=30, compress=False)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    watches = request.app[WATCHES]
    watch = watches.setdefault(show_id, _Watch())
    watch.sockets += 1
    if watch.task is None or watch.task.done():
        watch.task = asyncio.create_task(_poll(services(request).redis, show_id, watch))
    reader = asyncio.create_task(_drain(ws))
    try:
        last = None
        while not ws.closed:
            st = watch.state
            if st is not None:
                if not st.enabled:
                    await ws.send_json({"type": "closed"})
                    break
                pos = st.position(ticket)
                if pos == 0:
                    await ws.send_json({"type": "admitted"})
                    break
                if pos != last:
                    await ws.send_json({"type": "position", "position": pos,
                                        "eta_seconds": st.eta_s(ticket)})
                    last = pos
            waiter = asyncio.ensure_future(watch.changed.wait())
            await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if reader.done():
                break
    finally:
        reader.cancel()
        watch.sockets -= 1
        if not watch.sockets:
            watches.pop(show_id, None)
        await ws.close()
    return ws


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends; ends when it goes away."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


async def close_sockets(app: web.Application) -> None:
    """App shutdown: close queue sockets so the server need not wait for them."""
    for ws in list(app[SOCKETS]):
        await ws.close(code=1001, message=b"server shutting down")
