"""Virtual waiting room for on-sale shows (issues 7 and 15).

A partner (or the admin) turns a show's waiting room on with an admission rate and,
optionally, the time the sale opens. From then on the hold API wants an admission token
(server/onsale/admission.py), and visitors get one by queueing:

    PUT  /partner/v1/shows/{id}/waiting-room  {"enabled": true, "admit_per_minute": 600,
                                               "opens_at": "...", "challenge_max_number": N}
    GET  /partner/v1/shows/{id}/waiting-room  the setting, how many joined and were admitted
    GET  /api/shows/{id}/queue/challenge      a proof-of-work challenge (ALTCHA, pow.py)
    POST /api/shows/{id}/queue                join with the solved challenge {"altcha": ...}
    GET  /api/shows/{id}/queue                my place (or "in the pre-queue"); once
                                              admitted, the token (also set as a cookie)
    GET  /api/shows/{id}/queue/live           WebSocket: the pre-queue, then my position as
                                              it moves, then {"type": "admitted"}

State, all in Redis and moved by one Lua script (`_QUEUE`: it reads Redis's clock, so every
web process agrees):
- `wr:{<show>}` (hash): the setting and two counters, `tail` (the last place given out) and
  `head` (every place up to it is admitted). `head` advances with time at the configured
  rate; unused admissions carry over up to `burst`, so a quiet queue admits at once.
- `wr:{<show>}:pre` (sorted set): the pre-queue. Before `opens_at`, a joining visitor is
  added with a random score (ZADD NX: joining again keeps the score). The first call of the
  script at or after `opens_at`, whichever web process makes it, draws: the pre-queue's
  members take the places `pbase + 1 + ZRANK` (a uniformly random order, since the scores
  are independent and uniform), `tail` moves past them, and later joiners queue behind
  them in arrival order. O(log n) per join, O(1) for the draw.
- `wr:{<show>}:v` (hash): visitor id -> `ticket` for those who joined after the draw, and
  `ticket:expiry_ms` once a visitor is admitted. That record is the admission: the hold
  gate reads it, so a replayed cookie or token cannot renew an admission, and a visitor
  whose admission expired gets a new place at the back when they join again.
- `wr:{<show>}:pow:<challenge>`: a used challenge solution, until the challenge expires.

The visitor id lives in the encrypted session cookie (the place is keyed by it in Redis): a
browser keeps its place however often it joins. A client without a cookie gets a new
visitor id, which is why joining costs a proof of work.
"""
from __future__ import annotations

import asyncio
import math
import secrets
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from aiohttp import WSMsgType, web
from aiohttp_session import get_session

from server.appkeys import services
from server.onsale import admission, pow
from server.onsale.ratelimit import LIMITER
from server.onsale.keys import room_config_key, room_prequeue_key, room_visitors_key
from server.ops.security import check_origin
from server.accounts import api_keys as auth
from server.catalog import service as catalog
from server.ops import metrics
from server.core.errors import ApiError
from server.core.openapi import operation
from server.core.wire import json_response, read_json

routes = web.RouteTableDef()

POLL_S = 0.25        # how often a process re-reads a watched queue for its sockets
MAX_RATE = 1_000_000  # admissions per minute

# KEYS: room hash, pre-queue, visitors, and (join) the used-solution key.
# ARGV[1] = op:
#   "peek"
#   "me"   vid, admission ttl ms (0: only look, do not admit)
#   "join" vid, admission ttl ms, random score, used-solution ttl ms
#   "set"  enabled, rate, burst, opens_ms ("" keeps it), challenge max number
# Returns {enabled, head, tail, rate, burst, ticket, opens, drawn, pre, cost, exp, flag, now}:
# ticket 0 = no place, -1 = in the pre-queue (not drawn yet); exp = the admission's expiry;
# flag (join) 1 new place, 0 kept, -1 solution used before; (set) -2 opens_at refused.
# Every step first advances `head` (so a rate change applies from now on) and, at or after
# the start, draws the pre-queue.
_QUEUE = """
local k, pk, vk = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', k, 'enabled', 'rate', 'burst', 'head', 'tail', 'at', 'opens',
                     'drawn', 'pbase', 'cost')
local enabled = h[1] == '1'
local rate = tonumber(h[2] or '0')
local burst = tonumber(h[3] or '1')
local head = tonumber(h[4] or '0')
local tail = tonumber(h[5] or '0')
local at = tonumber(h[6] or '0')
local opens = tonumber(h[7] or '0')
local drawn = h[8] == '1'
local pbase = tonumber(h[9] or '0')
local cost = tonumber(h[10] or '0')
local dirty = false
local flag = 0

local function draw()
  -- the sale starts: the pre-queue, in its random order, takes the next places
  if enabled and not drawn and opens <= now then
    pbase = tail
    tail = tail + redis.call('ZCARD', pk)
    if head >= pbase then head = pbase + burst end  -- nobody was waiting: a burst goes in
    if opens > at then at = opens end
    drawn = true
    dirty = true
  end
end

draw()
if enabled and drawn and rate > 0 then
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
    dirty = true
  end
end

local function lookup(vid)
  local rec = redis.call('HGET', vk, vid)
  if rec then
    local a, b = string.match(rec, '^(%d+):?(%d*)$')
    return tonumber(a), tonumber(b) or 0
  end
  if drawn then
    local r = redis.call('ZRANK', pk, vid)
    if r then return pbase + r + 1, 0 end
  elseif redis.call('ZSCORE', pk, vid) then
    return -1, 0
  end
  return 0, 0
end

local ticket, exp = 0, 0
if op == 'set' then
  local want = ARGV[5] ~= '' and tonumber(ARGV[5]) or nil
  if want and want > now and want ~= opens and drawn and redis.call('ZCARD', pk) > 0 then
    flag = -2  -- this on-sale's pre-queue is drawn: its start cannot move again
  else
    local was = enabled
    enabled = ARGV[2] == '1'
    rate = tonumber(ARGV[3])
    burst = tonumber(ARGV[4])
    cost = tonumber(ARGV[6])
    if want then
      if want > now then drawn = false end
      opens = want
    end
    if enabled and not was then
      -- opening: nobody is waiting yet; the first `burst` visitors get straight in
      head = tail + burst
      at = now
    end
    if not drawn then at = now end
    dirty = true
    draw()
  end
elseif (op == 'me' or op == 'join') and enabled then
  local vid = ARGV[2]
  if op == 'join' and not redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[5]) then
    flag = -1
  else
    ticket, exp = lookup(vid)
    if op == 'join' and (ticket == 0 or (exp > 0 and exp <= now)) then
      -- a new place; after an admission ran out, at the back
      if exp > 0 then redis.call('HDEL', vk, vid) end
      if drawn then
        tail = tail + 1
        ticket = tail
        redis.call('HSET', vk, vid, string.format('%d', ticket))
        dirty = true
      else
        redis.call('ZADD', pk, 'NX', ARGV[4], vid)
        ticket = -1
      end
      exp = 0
      flag = 1
    end
    local ttl = tonumber(ARGV[3])
    if ticket > 0 and ticket <= head and exp == 0 and ttl > 0 then
      -- admitted: the record (and its expiry) is fixed the first time it is seen
      exp = now + ttl
      redis.call('HSET', vk, vid, string.format('%d:%d', ticket, exp))
    end
  end
end
if dirty then
  redis.call('HSET', k, 'enabled', enabled and '1' or '0', 'rate', rate, 'burst', burst,
             'head', head, 'tail', tail, 'at', string.format('%.3f', at),
             'opens', string.format('%d', opens), 'drawn', drawn and '1' or '0',
             'pbase', pbase, 'cost', cost)
end
local pre = 0
if not drawn then pre = redis.call('ZCARD', pk) end
return {enabled and 1 or 0, head, tail, rate, burst, ticket, opens, drawn and 1 or 0, pre,
        cost, exp, flag, now}
"""


class QueueState(msgspec.Struct, frozen=True):
    enabled: bool
    head: int      # every ticket <= head is admitted
    tail: int      # tickets given out so far
    rate: int      # admissions per minute
    burst: int
    ticket: int = 0     # the visitor's place (me/join): 0 none, -1 in the pre-queue
    opens_ms: int = 0   # when the sale opens (0: no pre-queue)
    drawn: bool = True  # the pre-queue has been drawn: the sale is open
    pre: int = 0        # visitors in the pre-queue, before the draw
    cost: int = 0       # the join challenge's max number (0: the default)
    exp_ms: int = 0     # the visitor's admission expiry, once admitted
    flag: int = 0       # join: 1 new place, 0 kept, -1 solution used before; set: -2 refused
    now_ms: int = 0     # Redis's clock

    def position(self, ticket: int) -> int:
        """How many places until admission (0 = admitted)."""
        return max(0, ticket - self.head)

    def eta_s(self, ticket: int) -> int:
        return math.ceil(self.position(ticket) * 60 / self.rate) if self.rate else 0

    @property
    def max_number(self) -> int:
        return self.cost or pow.DEFAULT_MAX_NUMBER

    @property
    def waiting(self) -> int:
        return self.tail - min(self.head, self.tail) + self.pre


async def run_queue(redis: object, show_id: str, op: str = "peek",
                    args: tuple[str, ...] = (), used_key: str | None = None) -> QueueState:
    script = _scripts.get(redis)
    if script is None:
        script = _scripts[redis] = redis.register_script(_QUEUE)  # type: ignore[attr-defined]
    keys = [room_config_key(show_id), room_prequeue_key(show_id), room_visitors_key(show_id)]
    if used_key is not None:
        keys.append(used_key)
    raw = await script(keys=keys, args=[op, *args])
    (enabled, head, tail, rate, burst, ticket, opens, drawn, pre, cost, exp, flag,
     now) = (int(x) for x in raw)
    st = QueueState(bool(enabled), head, tail, rate, burst, ticket, opens, bool(drawn), pre,
                    cost, exp, flag, now)
    metrics.observe_waiting_room(show_id, st.waiting)
    return st


async def visitor(redis: object, show_id: str, vid: str, ttl_ms: int) -> QueueState:
    """The room and `vid`'s place; admits them (fixing the expiry) if it is their turn and
    `ttl_ms` > 0."""
    return await run_queue(redis, show_id, "me", (vid, str(ttl_ms)))


async def join(redis: object, show_id: str, vid: str, ttl_ms: int, used: pow.Checked
               ) -> QueueState:
    """`vid` joins (keeping the place they have, if any) with a verified solution, which is
    marked used in the same step (flag -1 when it was used before: nothing done)."""
    score = str(secrets.randbits(52))  # uniform; ties (~n²/2⁵³) fall back to the id's order
    return await run_queue(redis, show_id, "join",
                           (vid, str(ttl_ms), score, str(used.ttl_ms)), used.key)


_scripts: weakref.WeakKeyDictionary[object, object] = weakref.WeakKeyDictionary()


def _dt(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


# --- wire --------------------------------------------------------------------------------

class WaitingRoomIn(msgspec.Struct, forbid_unknown_fields=True):
    """A show's waiting room: on or off, how many visitors it lets in per minute, when the
    sale opens (before that, joiners are in the pre-queue and get a random place at the
    start) and how much work joining costs."""

    enabled: bool
    admit_per_minute: int = 600
    burst: int | None = None  # admissions that may go in at once (default: one second's worth)
    opens_at: datetime | None = None  # omitted or null: keep the current one (none at first)
    challenge_max_number: int = pow.DEFAULT_MAX_NUMBER  # proof of work: ~half this many hashes


class WaitingRoomView(msgspec.Struct):
    show_id: str
    enabled: bool
    admit_per_minute: int
    burst: int
    joined: int     # places given out so far, with the pre-queue
    admitted: int   # of those, admitted
    waiting: int
    opens_at: datetime | None = None  # when the sale opens (the pre-queue is drawn)
    pre_queue: int = 0                # visitors in the pre-queue, until the draw
    challenge_max_number: int = pow.DEFAULT_MAX_NUMBER


class QueueStatus(msgspec.Struct):
    show_id: str
    on_sale: bool                  # false: no queue, hold seats directly
    in_queue: bool = False
    position: int | None = None    # places until admission; 0 once admitted
    eta_seconds: int | None = None
    admitted: bool = False
    admission_token: str | None = None   # send as X-Admission-Token (also set as a cookie)
    admission_expires_at: datetime | None = None
    pre_queue: bool = False        # in the pre-queue: a random place is drawn at opens_at
    opens_at: datetime | None = None  # when the sale opens, if it has a pre-queue
    admission_spent: bool = False  # my admission ran out: join again for a place at the back


class JoinIn(msgspec.Struct, forbid_unknown_fields=True):
    """The solved challenge of `GET .../queue/challenge`: base64 of the JSON
    `{"algorithm", "challenge", "number", "salt", "signature"}` (ALTCHA's payload)."""

    altcha: str


class Challenge(msgspec.Struct):
    """ALTCHA v1: find `number` in 0..`maxNumber` with SHA-256(`salt` + number) ==
    `challenge` (hex); send the payload back within 5 minutes, once."""

    algorithm: str
    challenge: str
    maxNumber: int  # noqa: N815 (ALTCHA's field name)
    salt: str
    signature: str


def _view(show_id: str, st: QueueState) -> WaitingRoomView:
    admitted = min(st.head, st.tail)
    return WaitingRoomView(show_id, st.enabled, st.rate, st.burst, st.tail + st.pre, admitted,
                           st.waiting, _dt(st.opens_ms), st.pre, st.max_number)


# --- partner / admin ---------------------------------------------------------------------

async def _authorise_show(request: web.Request, show_id: str) -> None:
    """The admin key, or the partner (key, token or portal session) that owns the show."""
    svc = services(request)
    if "Authorization" in request.headers:
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
           request=WaitingRoomIn, response=WaitingRoomView, errors=(403, 404, 409, 422, 429),
           tags=_PARTNER, security="partnerKey")
async def put_waiting_room(request: web.Request) -> web.Response:
    """Body `{"enabled": true, "admit_per_minute": 600, "burst": 10, "opens_at":
    "2025-03-01T10:00:00+05:30", "challenge_max_number": 100000}`. While enabled, the hold
    API refuses requests without an admission token for the show (403 `admission_required`);
    visitors queue at `/api/shows/{id}/queue` and are admitted `admit_per_minute` per minute
    (`burst` at once at most, default one second's worth). Until `opens_at` nobody is
    admitted: visitors who join are in the pre-queue, and at `opens_at` each of them gets a
    uniformly random place; later joiners queue behind them in arrival order. Omitting
    `opens_at` keeps the current one; a time in the past opens the sale now. Once a
    pre-queue has been drawn its start cannot move into the future again (409
    `pre_queue_drawn`). Joining costs a proof of work of ~`challenge_max_number` / 2
    SHA-256 hashes (1,000..20,000,000; raise it for a hot on-sale). The partner key of the
    show's owner, or the admin key. A rate change applies from now; turning it off lets
    everyone hold directly again."""
    show_id = request.match_info["show_id"]
    await _authorise_show(request, show_id)
    body = await read_json(request, WaitingRoomIn)
    if not 1 <= body.admit_per_minute <= MAX_RATE:
        raise ApiError(422, "invalid", f"admit_per_minute must be 1..{MAX_RATE}",
                       field="admit_per_minute")
    burst = body.burst if body.burst is not None else max(1, body.admit_per_minute // 60)
    if not 1 <= burst <= MAX_RATE:
        raise ApiError(422, "invalid", f"burst must be 1..{MAX_RATE}", field="burst")
    if not pow.MIN_MAX_NUMBER <= body.challenge_max_number <= pow.MAX_MAX_NUMBER:
        raise ApiError(422, "invalid", f"challenge_max_number must be "
                       f"{pow.MIN_MAX_NUMBER}..{pow.MAX_MAX_NUMBER}",
                       field="challenge_max_number")
    opens = ""
    if body.opens_at is not None:
        if body.opens_at.tzinfo is None:
            raise ApiError(422, "invalid", "opens_at needs a time zone (e.g. Z or +05:30)",
                           field="opens_at")
        opens = str(max(1, int(body.opens_at.timestamp() * 1000)))
    st = await run_queue(services(request).redis, show_id, "set",
                         ("1" if body.enabled else "0", str(body.admit_per_minute), str(burst),
                          opens, str(body.challenge_max_number)))
    if st.flag == -2:
        raise ApiError(409, "pre_queue_drawn", "this on-sale's pre-queue has been drawn: "
                       "its opening time cannot move into the future", field="opens_at")
    return json_response(_view(show_id, st))


@routes.get("/partner/v1/shows/{show_id}/waiting-room")
@operation("GET", "/partner/v1/shows/{show_id}/waiting-room",
           summary="A show's waiting room: setting and queue counts",
           response=WaitingRoomView, errors=(403, 404, 429), tags=_PARTNER,
           security="partnerKey")
async def get_waiting_room(request: web.Request) -> web.Response:
    """The setting plus how many visitors joined (and are in the pre-queue), were admitted
    and are waiting."""
    show_id = request.match_info["show_id"]
    await _authorise_show(request, show_id)
    return json_response(_view(show_id, await run_queue(services(request).redis, show_id)))


# --- visitors ----------------------------------------------------------------------------

async def _existing_show(request: web.Request, show_id: str) -> None:
    cached = await services(request).show_cache.get(show_id)
    if cached.show is None or cached.show.status == "cancelled":
        raise ApiError(404, "not_found", f"no show {show_id!r}")


def _status(request: web.Request, show_id: str, st: QueueState, vid: str | None
            ) -> web.Response:
    """The visitor's status (`st` from `visitor`/`join`: admitted means a live record)."""
    if not st.enabled:
        return json_response(QueueStatus(show_id, on_sale=False))
    opens = _dt(st.opens_ms)
    ticket = st.ticket
    if ticket == 0 or vid is None:
        return json_response(QueueStatus(show_id, True, opens_at=opens))
    if ticket < 0:
        return json_response(QueueStatus(show_id, True, True, pre_queue=True, opens_at=opens))
    pos = st.position(ticket)
    if pos > 0:
        return json_response(QueueStatus(show_id, True, True, pos, st.eta_s(ticket),
                                         opens_at=opens))
    if st.exp_ms <= st.now_ms:  # spent: join again for a place at the back
        return json_response(QueueStatus(show_id, True, opens_at=opens, admission_spent=True))
    svc = services(request)
    token = admission.sign(svc.settings.secret, show_id, vid, st.exp_ms)
    resp = json_response(QueueStatus(show_id, True, True, 0, 0, True, token, _dt(st.exp_ms),
                                     opens_at=opens))
    resp.set_cookie(admission.COOKIE, token, path=f"/api/shows/{show_id}/", httponly=True,
                    samesite="Strict", secure=svc.settings.cookie_secure or None,
                    max_age=max(1, (st.exp_ms - st.now_ms) // 1000))
    return resp


def _vid(session: object) -> str | None:
    vid = session.get("vid")  # type: ignore[attr-defined]
    return vid if isinstance(vid, str) else None


@routes.get("/api/shows/{show_id}/queue")
@operation("GET", "/api/shows/{show_id}/queue", summary="My place in a show's waiting room",
           response=QueueStatus, errors=(404, 429), tags=("customer",))
async def queue_status(request: web.Request) -> web.Response:
    """`on_sale: false`: the show has no waiting room, hold seats directly. Otherwise, if I
    joined: `pre_queue: true` until the sale opens (`opens_at`, when my random place is
    drawn), then my `position` (places until admission) and `eta_seconds`; once admitted,
    `admission_token` (send it as `X-Admission-Token` with holds; it is also set as an
    HttpOnly cookie for the show's API paths) and its expiry, fixed in Redis the first time
    I am seen admitted. `admission_spent: true` once it ran out (join again: a new place at
    the back). Bound to this session's visitor id."""
    show_id = request.match_info["show_id"]
    await _existing_show(request, show_id)
    svc = services(request)
    vid = _vid(await get_session(request))
    if vid is None:
        st = await run_queue(svc.redis, show_id)
    else:
        st = await visitor(svc.redis, show_id, vid, svc.settings.admission_ttl_s * 1000)
    return _status(request, show_id, st, vid)


@routes.get("/api/shows/{show_id}/queue/challenge")
@operation("GET", "/api/shows/{show_id}/queue/challenge",
           summary="A proof-of-work challenge to join a show's waiting room",
           response=Challenge, errors=(404, 429), tags=("customer",))
async def queue_challenge(request: web.Request) -> web.Response:
    """An ALTCHA v1 challenge (HMAC-signed, valid 5 minutes, for this show only): find the
    `number` in 0..`maxNumber` such that SHA-256(`salt` + number), in hex, is `challenge`,
    and send `{"altcha": base64(JSON {algorithm, challenge, number, salt, signature})}`
    with `POST .../queue`. `maxNumber` is the waiting room's `challenge_max_number`."""
    show_id = request.match_info["show_id"]
    await _existing_show(request, show_id)
    svc = services(request)
    cost = int(await svc.redis.hget(room_config_key(show_id), "cost") or 0)
    return json_response(pow.challenge(svc.settings.secret, show_id,
                                       cost or pow.DEFAULT_MAX_NUMBER),
                         headers={"Cache-Control": "no-store"})


@routes.post("/api/shows/{show_id}/queue")
@operation("POST", "/api/shows/{show_id}/queue", summary="Join a show's waiting room",
           request=JoinIn, response=QueueStatus, status=201, also=(200,),
           errors=(400, 403, 404, 422, 429), tags=("customer",))
async def join_queue(request: web.Request) -> web.Response:
    """Join with a solved challenge (`GET .../queue/challenge`): before the sale opens, into
    the pre-queue (a random place is drawn at `opens_at`), after it at the back (201); or my
    current place if this session has one already (200): joining again never moves anyone
    forward, and after an admission ran out it is a new place at the back. Without a
    solution 400 `challenge_required`; a wrong, expired or foreign one 403
    `challenge_invalid` (`reason`); one used before 403 `challenge_used`. A show without a
    waiting room answers `on_sale: false` (200)."""
    show_id = request.match_info["show_id"]
    await _existing_show(request, show_id)
    svc = services(request)
    session = await get_session(request)
    vid = _vid(session)
    payload = (await read_json(request, JoinIn)).altcha if await request.read() else None
    if payload is None:
        st = await run_queue(svc.redis, show_id)
        if not st.enabled:
            return _status(request, show_id, st, vid)
        raise ApiError(400, "challenge_required",
                       "solve the waiting room's challenge first and send it as "
                       '{"altcha": ...}', challenge=f"/api/shows/{show_id}/queue/challenge")
    checked = pow.check(svc.settings.secret, payload, show_id)
    if isinstance(checked, str):
        raise ApiError(403, "challenge_invalid",
                       f"this challenge solution is not valid ({checked.replace('_', ' ')})",
                       reason=checked, challenge=f"/api/shows/{show_id}/queue/challenge")
    new_vid = vid or secrets.token_urlsafe(12)
    st = await join(svc.redis, show_id, new_vid, svc.settings.admission_ttl_s * 1000, checked)
    if st.flag == -1:
        raise ApiError(403, "challenge_used", "this challenge was solved and used already: "
                       "get a new one", challenge=f"/api/shows/{show_id}/queue/challenge")
    if not st.enabled:
        return _status(request, show_id, st, vid)
    if vid is None:
        session["vid"] = new_vid
    session.pop("wr", None)  # places in the cookie (before issue 15): no longer read
    resp = _status(request, show_id, st, new_vid)
    if st.flag == 1:
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
        try:  # the clock aside: sockets wake only when the queue moved
            st = msgspec.structs.replace(await run_queue(redis, show_id), now_ms=0)
        except Exception:  # Redis hiccup: keep the sockets, try again
            st = watch.state
        if st != watch.state:
            watch.state = st
            watch.changed.set()
            watch.changed = asyncio.Event()
        await asyncio.sleep(POLL_S)


def _iso(ms: int) -> str | None:
    at = _dt(ms)
    return at.isoformat().replace("+00:00", "Z") if at else None


@routes.get("/api/shows/{show_id}/queue/live")
@operation("GET", "/api/shows/{show_id}/queue/live",
           summary="WebSocket: my waiting-room position, live", status=101,
           errors=(403, 404, 409, 429, 503), tags=("customer",))
async def queue_live(request: web.Request) -> web.WebSocketResponse:
    """Upgrade to a WebSocket (same session as the join). Messages (JSON):
    `{"type": "prequeue", "opens_at": "..."}` while I am in the pre-queue (again if the
    start moves), `{"type": "position", "position": N, "eta_seconds": S}` whenever it
    changes, then `{"type": "admitted"}` and the server closes (1000); fetch the token with
    `GET /api/shows/{id}/queue`. `{"type": "closed"}` if the waiting room is turned off
    (hold directly). 409 `not_in_queue` before joining (or once my admission ran out).
    Open sockets are capped per client address (429 `too_many_sockets`) and per server
    (503), with `Retry-After`; a client message over 4 KiB closes the socket (1009)."""
    check_origin(request)  # the session rides along: no foreign page may use it
    lim = request.app[LIMITER]
    # One place per open socket, per client address and in all, taken before any I/O.
    with lim.sockets.slot(lim.client(request.remote, request.headers.get("X-Forwarded-For"))):
        return await _queue_live(request)


QUEUE_MAX_MESSAGE = 1 << 12  # bytes from the client (it says nothing); past it: 1009


async def _queue_live(request: web.Request) -> web.WebSocketResponse:
    show_id = request.match_info["show_id"]
    await _existing_show(request, show_id)
    redis = services(request).redis
    vid = _vid(await get_session(request))
    mine = await visitor(redis, show_id, vid, 0) if vid else None
    if mine is None or (mine.enabled and (
            mine.ticket == 0 or (mine.exp_ms and mine.exp_ms <= mine.now_ms))):
        raise ApiError(409, "not_in_queue", "join the queue first (POST .../queue)")
    ticket = mine.ticket
    ws = web.WebSocketResponse(heartbeat=30, compress=False, max_msg_size=QUEUE_MAX_MESSAGE)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    watches = request.app[WATCHES]
    watch = watches.setdefault(show_id, _Watch())
    watch.sockets += 1
    if watch.task is None or watch.task.done():
        watch.task = asyncio.create_task(_poll(redis, show_id, watch))
    reader = asyncio.create_task(_drain(ws))
    try:
        last: object = None
        while not ws.closed:
            st = watch.state
            if st is not None:
                if not st.enabled:
                    await ws.send_json({"type": "closed"})
                    break
                if ticket < 0 and st.drawn:  # the draw happened: my place
                    ticket = (await visitor(redis, show_id, vid, 0)).ticket  # type: ignore[arg-type]
                if ticket < 0:
                    if last != ("pre", st.opens_ms):
                        await ws.send_json({"type": "prequeue", "opens_at": _iso(st.opens_ms)})
                        last = ("pre", st.opens_ms)
                else:
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
