"""On-sale protection at the door: load shedding and Redis-backed rate limits (issue 7).

Every request but static files and health probes is checked, in this order:

1. **Shedding** (hold path only, per web process, no I/O): at most `limit` hold requests
   are being worked on at once; one more is answered 429 `overloaded` with `Retry-After`
   at once instead of joining a queue that would make every admitted hold slow. `limit`
   starts at `settings.hold_max_inflight` and adapts (`AdaptiveCap`): when holds take
   longer than `settings.hold_latency_target_ms` on average it shrinks, when they are fast
   it grows back (docs/DESIGN.md, "On-sale protection").
2. **Rate limits** (a Lua script, shared round trips): GCRA buckets per client IP (`read`
   or `write` class), per logged-in customer (writes) and per partner API key (the key's
   SHA-256, so the key itself never reaches Redis). All buckets of a request are checked and
   charged atomically: a refused request charges none. Over a limit: 429 `rate_limited`
   with `Retry-After` (whole seconds, at least 1) and `error.retry_after_ms`.

   A partner key's bucket is charged only by requests that authenticated with it from an
   address its allow-list admits (L7): otherwise anyone holding a leaked, IP-restricted key
   could keep its partner at 429. The middleware cannot know before the handler ran, so
   this process remembers the (key, address) pairs that authenticated (`Verified`, no
   I/O): theirs are charged up front as before; any other request with a key is only
   *checked* against the key's bucket (refused if it is empty, charging nothing) and
   charged to the caller's address bucket, and once its handler authenticated it the key's
   bucket is charged after the fact (one coalesced script call, not awaited).

For a hold (`POST /api/shows/{id}/holds`) the batch also reads the show's waiting-room
flag, alongside its script calls, so the queue check (server/onsale/waiting_room.py) costs
no round trip of its own.

The checks are coalesced (`Batcher`, group commit): a request queues its check and waits;
the checks queued in this process (up to `MAX_BATCH`) are sent together, while the checks
arriving meanwhile gather for the next batch. The buckets are the same Redis keys whichever
process or batch charges them, so a limit means the same with any number of web
processes; a Redis error fails the checks of its call (the error middleware answers 503
for a connection error, as before).

Redis Cluster: a script may touch one slot only, so the buckets are spread over `BUCKETS`
hash tags `{rl<i>}` (i from a CRC-32 of the address, key digest or customer, so the same
client always has the same key; the tags spread over the masters). A batch is one script
call per tag present in it, sent concurrently, each deciding its checks in order exactly as
one call per request at that instant would. A request whose buckets have different tags
(an address and a customer or a key) is split into ordered single-slot steps: first the
other buckets are charged (if they admit it), then its address's bucket in a second call
(only checked, charging nothing, when one of them refused); if the address refuses, the
charges of the first step are refunded (`_REFUND`). So a refused request still ends up
charging none of its buckets, but for the round trip between the steps its customer's
(key's) bucket may hold a charge that is refunded later, which can refuse one of that
customer's own concurrent requests early. The waiting-room flag of a hold is in the
show's slot: it is read (HGET, once per show in the batch) alongside the first calls.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import math
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from redis.commands.core import AsyncScript

from server.accounts.bearer_auth import AUTH_KEY_ID
from server.appkeys import services
from server.onsale.admission import session_customer
from server.onsale.keys import ON_SALE, room_config_key
# The address helpers live in core (the accounts layer needs them too, for the IP
# allow-list); re-exported here for this module's callers.
from server.core.client_address import client_ip, parse_networks  # noqa: F401
from server.core.errors import Handler, error_response
from server.core.refusals import Refused
from server.core.settings import Settings

log = logging.getLogger(__name__)

Kind = Literal["read", "write", "hold"]

EXEMPT_PREFIXES = ("/static/", "/healthz", "/readyz", "/metrics", "/favicon")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# GCRA over several requests' buckets at once, the requests in order, at one instant.
# ARGV[1] describes the requests, 2 + n characters each: n (its buckets, '0'-'9'), '1' if
# it wants the waiting-room flag else '0', then per bucket the number of its limit
# ('1'-'9'; 16 more, 'A'-'I', for a bucket only checked, never charged: it can refuse the
# request but is not written); ARGV[2j], ARGV[2j + 1] are limit j's emission interval (ms)
# and burst. KEYS:
# per request its n buckets, then (when it wants the flag) a hash whose `enabled` field is
# the flag. The clock is Redis's (TIME), so every web process agrees on it. Returns a
# comma-separated string, per request 2 * retry_ms + (1 if the flag is "1" else 0):
# retry_ms 0 = allowed, every bucket of it charged; otherwise nothing of it charged.
# A bucket's state is kept in `tat` as it would be read back from Redis (rounded as
# stored), so a batch decides exactly what one call per request at `now` would; each
# charged bucket is written once, at the end. (Few, short arguments and a one-string
# reply: packing and parsing them is the web process's cost per check.) Every KEY must be
# in one slot on a cluster: the batcher sends each slot tag's checks in a call of their own
# and reads the waiting-room flags (the show's slot) itself, so it never asks for a flag.
_GCRA = """
local spec = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local intervals, bursts = {}, {}
for j = 1, (#ARGV - 1) / 2 do
  intervals[j] = tonumber(ARGV[2 * j])
  bursts[j] = tonumber(ARGV[2 * j + 1])
end
local tat, flags, dirty, out = {}, {}, {}, {}
local k, p = 1, 1
while p <= #spec do
  local n = string.byte(spec, p) - 48
  local wait, new = 0, {}
  for i = 0, n - 1 do
    local key = KEYS[k + i]
    local j = string.byte(spec, p + 2 + i) - 48
    local peek = j > 16
    if peek then j = j - 16 end
    local interval, burst = intervals[j], bursts[j]
    local cur = tat[key]
    if cur == nil then
      cur = tonumber(redis.call('GET', key) or '0')
      tat[key] = cur
    end
    if cur < now then cur = now end
    local new_tat = cur + interval
    local allow_at = new_tat - burst * interval
    if allow_at > now then
      local w = allow_at - now
      if w > wait then wait = w end
    end
    if peek then new[i] = false else new[i] = new_tat end
  end
  if wait == 0 then
    for i = 0, n - 1 do
      if new[i] then
        local key = KEYS[k + i]
        local s = string.format('%.3f', new[i])
        if dirty[key] == nil then dirty[#dirty + 1] = key end
        dirty[key] = s
        tat[key] = tonumber(s)
      end
    end
  end
  local bit = 0
  if string.byte(spec, p + 1) == 49 then
    local fk = KEYS[k + n]
    local flag = flags[fk]
    if flag == nil then
      flag = redis.call('HGET', fk, 'enabled')
      flags[fk] = flag
    end
    if flag == '1' then bit = 1 end
    k = k + 1
  end
  out[#out + 1] = string.format('%d', 2 * math.ceil(wait) + bit)
  k = k + n
  p = p + 2 + n
end
for i = 1, #dirty do
  local key = dirty[i]
  local s = dirty[key]
  redis.call('SET', key, s, 'PX', math.ceil(tonumber(s) - now) + 1)
end
return table.concat(out, ',')
"""

# KEYS: buckets to refund one charge each (a key may repeat); ARGV[i]: KEYS[i]'s emission
# interval (ms). Takes back a charge `_GCRA` made: the bucket's state moves back by its
# interval (a state at or before now is an empty bucket: deleted).
_REFUND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local cur = tonumber(redis.call('GET', KEYS[i]) or '')
  if cur then
    local new = cur - tonumber(ARGV[i])
    if new <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1)
    end
  end
end
return #KEYS
"""

MAX_BATCH = 256      # checks per batch: bounds KEYS (<= 3 each) and ARGV[1] (<= 4 chars each)
MAX_IN_FLIGHT = 1    # batches in flight per process: 1 measured best (loadtest/ratelimit_bench.py)
BUCKETS = 16         # hash tags the buckets are spread over (each a Redis Cluster slot)


def bucket_tag(ident: str) -> str:
    """The hash tag of a limited identity's buckets (stable: CRC-32, not Python's hash)."""
    return f"{{rl{zlib.crc32(ident.encode()) % BUCKETS}}}"


def slot_tag(key: str) -> str:
    """What Redis Cluster hashes of `key`: its `{...}` tag, else the whole key. Keys with
    the same one may go in one script call."""
    i = key.find("{")
    if i >= 0:
        j = key.find("}", i + 1)
        if j > i + 1:
            return key[i + 1:j]
    return key


@dataclass(frozen=True)
class Limit:
    per_s: float
    burst: int

    def args(self) -> tuple[str, str]:
        return f"{1000.0 / self.per_s:.6f}", str(max(1, self.burst))

    @property
    def tag(self) -> str:
        """Part of the bucket's key: a bucket's state means something only under the limit
        it was charged with, so a changed limit starts from fresh buckets."""
        return f"{self.per_s:g}/{self.burst}"


def classify(method: str, path: str) -> Kind | None:
    """Which limits apply: None for exempt paths, `hold` for a new hold (shed + limits +
    waiting-room flag), `write` for other changes, `read` for the rest."""
    if path.startswith(EXEMPT_PREFIXES) or path == "/":
        return None
    if method in WRITE_METHODS:
        if method == "POST" and path.startswith("/api/shows/") and path.endswith("/holds"):
            return "hold"
        return "write"
    return "read"


def show_of_hold_path(path: str) -> str:
    return path[len("/api/shows/"):-len("/holds")]


@dataclass
class AdaptiveCap:
    """The hold path's in-flight cap. A fixed cap bounds the queue, but not the latency:
    when the shed answers themselves take most of the CPU, admitted holds complete more
    slowly and the same number in flight waits longer (latency = in flight / rate). So
    every `WINDOW_S` the mean latency of the holds that completed is compared with the
    target: over it, the cap is scaled down by target/mean (at most halved); under it,
    the cap grows by 5% (at least 1) back towards the ceiling."""

    ceiling: int
    target_ms: float
    floor: int = 4
    limit: float = 0.0
    _sum: float = 0.0
    _n: int = 0
    _t0: float = 0.0

    WINDOW_S = 0.1
    MIN_SAMPLES = 8

    def __post_init__(self) -> None:
        self.limit = float(self.ceiling)
        self.floor = min(self.floor, self.ceiling)

    def admits(self, inflight: int) -> bool:
        return not self.ceiling or inflight < int(self.limit)

    def done(self, latency_ms: float, now: float) -> None:
        if not self.target_ms or not self.ceiling:
            return
        self._sum += latency_ms
        self._n += 1
        if now - self._t0 < self.WINDOW_S or self._n < self.MIN_SAMPLES:
            return
        mean = self._sum / self._n
        if mean > self.target_ms:
            self.limit = max(self.floor, self.limit * max(0.5, self.target_ms / mean))
        else:
            self.limit = min(self.ceiling, self.limit + max(1.0, self.limit * 0.05))
        self._sum, self._n, self._t0 = 0.0, 0, now


Pending = tuple[list[str], str, "asyncio.Future[tuple[int, bool]]"]
Script = Callable[..., Awaitable[object]]  # (keys=, args=) -> the script's reply


@dataclass
class _Part:
    """The buckets of one check that have one slot tag: one request of one script call."""

    keys: list[str]
    limits: str       # per bucket its limit's character (see `_GCRA`)
    check: int        # the check's index in its batch
    wait: int = 0     # its answer: ms until allowed (0 = allowed, its buckets charged)
    ok: bool = False  # its call answered (a failed call may or may not have charged)


def _peek(limits: str) -> str:
    """The same buckets only checked, never charged."""
    return "".join(c if c > "9" else chr(ord(c) + 16) for c in limits)


class Batcher:
    """Group commit of rate-limit checks, per web process. `check` queues one request's
    keys and description (see `_GCRA`) and returns a future; a runner sends the queued
    checks (up to `max_batch`, in arrival order) as one script call per slot tag present
    (concurrently; a check whose buckets have several tags in ordered steps, see the module
    docstring) and answers each future with (retry_ms, waiting-room flag). A runner is
    started when checks wait and none is about to take them, and fewer than
    `max_in_flight` batches are in flight; it takes them on the next turn of the event
    loop, so the checks of one tick go together, and checks arriving while every allowed
    batch is in flight wait for the next one. A failed call fails every check it carried
    with its exception (their other buckets charged in that batch are refunded); a check
    whose request was cancelled before its batch is left out."""

    def __init__(self, script: AsyncScript, limit_args: list[str], max_batch: int = MAX_BATCH,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        redis = script.registered_client
        self.script: Script = script
        self.refund: Script = redis.register_script(_REFUND)
        self.redis = redis            # the waiting-room flags are read with it
        self.limit_args = limit_args  # limit j's (interval, burst) at 2(j-1), 2(j-1) + 1
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.queue: deque[Pending] = deque()
        self.running = 0           # runners (each with at most one batch in flight)
        self.calls = 0             # deciding script calls answered (tests, benchmark)
        self.checks = 0            # checks they answered
        self._starting = False     # a runner was started and has not taken its batch yet
        self._tasks: set[asyncio.Task[None]] = set()

    def check(self, keys: list[str], spec: str) -> asyncio.Future[tuple[int, bool]]:
        fut = asyncio.get_running_loop().create_future()
        self.queue.append((keys, spec, fut))
        if not self._starting and self.running < self.max_in_flight:
            self._start()
        return fut

    def _start(self) -> None:
        self._starting = True
        self.running += 1
        task = asyncio.get_running_loop().create_task(self._run())
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        self._starting = False
        try:
            while self.queue:
                batch: list[Pending] = []
                while self.queue and len(batch) < self.max_batch:
                    item = self.queue.popleft()
                    if not item[2].done():  # done = cancelled: its request went away
                        batch.append(item)
                if self.queue and not self._starting and self.running < self.max_in_flight:
                    self._start()  # more than a batch waits: its rest need not wait for us
                if batch:
                    await self._send(batch)
        except BaseException:  # cancelled (the loop is shutting down): nobody is left waiting
            if self.running == 1 and not self._starting:
                while self.queue:
                    self.queue.popleft()[2].cancel()
            raise
        finally:
            self.running -= 1

    async def _send(self, batch: list[Pending]) -> None:
        try:
            answers = await self._decide(batch)
        except Exception as exc:  # a bug (-> 500 per request): the runner goes on
            answers = [exc] * len(batch)
        except BaseException:  # this runner cancelled (loop shutting down): nobody hangs
            for _, _, fut in batch:
                fut.cancel()
            raise
        for answer, (_, _, fut) in zip(answers, batch):
            if fut.done():
                continue
            if isinstance(answer, BaseException):
                fut.set_exception(answer)
            else:
                fut.set_result(answer)
        self.checks += sum(1 for a in answers if not isinstance(a, BaseException))

    async def _decide(self, batch: list[Pending]
                      ) -> list[tuple[int, bool] | BaseException]:
        first: dict[str, list[_Part]] = {}   # slot tag -> parts decided in the first step
        last: dict[int, _Part] = {}          # check -> its address's part, for the second
        flags: dict[str, bool] = {}          # waiting-room hash -> its flag
        parts: list[list[_Part]] = []        # per check its first-step parts
        for c, (keys, spec, _) in enumerate(batch):
            n = ord(spec[0]) - 48
            if spec[1] == "1":
                flags[keys[n]] = False
            mine: dict[str, _Part] = {}
            for key, limit in zip(keys[:n], spec[2:2 + n]):
                part = mine.get(tag := slot_tag(key))
                if part is None:
                    part = mine[tag] = _Part([], "", c)
                part.keys.append(key)
                part.limits += limit
            if len(mine) > 1:  # several slots: the address's (the first key's) goes last
                last[c] = mine.pop(slot_tag(keys[0]))
            for tag, part in mine.items():
                first.setdefault(tag, []).append(part)
            parts.append(list(mine.values()))
        failed: dict[int, BaseException] = {}
        flag_keys = list(flags)
        results = await asyncio.gather(self._flags(flag_keys),
                                       *(self._call(p) for p in first.values()),
                                       return_exceptions=True)
        if isinstance(results[0], BaseException):
            for c, (keys, spec, _) in enumerate(batch):
                if spec[1] == "1":
                    failed.setdefault(c, results[0])
        else:
            flags.update(zip(flag_keys, results[0]))  # type: ignore[arg-type]
        for group, result in zip(first.values(), results[1:]):
            if isinstance(result, BaseException):
                for part in group:
                    failed.setdefault(part.check, result)
        if last:
            for c, part in last.items():
                if any(p.wait for p in parts[c]) or c in failed:
                    part.limits = _peek(part.limits)  # refused already: only its wait
            second: dict[str, list[_Part]] = {}
            for part in last.values():
                second.setdefault(slot_tag(part.keys[0]), []).append(part)
            results = await asyncio.gather(*(self._call(p) for p in second.values()),
                                           return_exceptions=True)
            for group, result in zip(second.values(), results):
                if isinstance(result, BaseException):
                    for part in group:
                        failed.setdefault(part.check, result)
        # A request refused or failed after its first step charged some of its buckets
        # (another part refused it, or a call or its flag failed): take those back.
        undo = [p for c, firsts in enumerate(parts)
                if c in failed or (c in last and last[c].wait) or any(q.wait for q in firsts)
                for p in firsts if p.ok and not p.wait]
        if undo:
            await self._refund(undo)
        answers: list[tuple[int, bool] | BaseException] = []
        for c, (keys, spec, _) in enumerate(batch):
            if c in failed:
                answers.append(failed[c])
                continue
            wait = max([p.wait for p in parts[c]] + ([last[c].wait] if c in last else []),
                       default=0)
            answers.append((wait, spec[1] == "1" and flags[keys[ord(spec[0]) - 48]]))
        return answers

    async def _call(self, group: list[_Part]) -> None:
        """One script call deciding `group` (parts of one slot tag), in order."""
        keys: list[str] = []
        for part in group:
            keys += part.keys
        spec = "".join([f"{len(p.keys)}0{p.limits}" for p in group])
        out = await self.script(keys=keys, args=[spec, *self.limit_args])
        values = out.split(b"," if isinstance(out, bytes) else ",")  # type: ignore[union-attr]
        if len(values) != len(group):
            raise RuntimeError(f"rate-limit script: {len(values)} answers to {len(group)}")
        self.calls += 1
        for v, part in zip(values, group):
            part.wait = int(v) >> 1
            part.ok = True

    async def _flags(self, keys: list[str]) -> list[bool]:
        """The waiting-room flags (`enabled` == "1") of these show hashes."""
        if not keys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:  # one slot per show
            for key in keys:
                pipe.hget(key, "enabled")
            return [raw == b"1" for raw in await pipe.execute()]

    async def _refund(self, undo: list[_Part]) -> None:
        by_tag: dict[str, tuple[list[str], list[str]]] = {}
        for part in undo:
            for key, limit in zip(part.keys, part.limits):
                if limit <= "9":  # charged (a checked-only bucket was not)
                    keys, args = by_tag.setdefault(slot_tag(key), ([], []))
                    keys.append(key)
                    args.append(self.limit_args[2 * (ord(limit) - 49)])
        results = await asyncio.gather(*(self.refund(keys=k, args=a)
                                         for k, a in by_tag.values()), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):  # the request is refused anyway; the charge
                log.warning("rate limit: a refund failed (%s)", result)  # expires in time


# Each limit's number in the script's table of limits (`Limiter.limit_args`).
LIMIT_NUMBER = {"read": "1", "write": "2", "customer": "3", "partner": "4"}
# The same limit for a bucket the script only checks (refuses when empty, never charges).
PEEK_NUMBER = {name: chr(ord(n) + 16) for name, n in LIMIT_NUMBER.items()}

# A partner request's refusals that mean it did not authenticate (or came from an address
# its key's allow-list refuses): its key's bucket is not charged for it.
AUTH_REFUSALS = frozenset({"unauthorized", "invalid_token", "ip_not_allowed"})


class Verified:
    """The (key digest, client address) pairs whose requests authenticated lately, in this
    process: only theirs are charged to the key's bucket before the handler runs. Bounded
    (forgotten wholesale past `kept`) and each pair for `ttl_s` at most, so a key revoked
    or an allow-list narrowed soon stops charging up front."""

    def __init__(self, kept: int = 16_384, ttl_s: float = 300.0) -> None:
        self.kept, self.ttl_s = kept, ttl_s
        self._until: dict[tuple[str, str], float] = {}

    def __contains__(self, pair: tuple[str, str]) -> bool:
        until = self._until.get(pair)
        return until is not None and until > time.monotonic()

    def add(self, pair: tuple[str, str]) -> None:
        if len(self._until) >= self.kept and pair not in self._until:
            self._until.clear()
        self._until[pair] = time.monotonic() + self.ttl_s

    def discard(self, pair: tuple[str, str]) -> None:
        self._until.pop(pair, None)


class SocketCaps:
    """Open WebSockets in this web process, per client address and in all (M8): each is a
    file descriptor, and a watched show a blocking Redis connection. Checked before the
    upgrade (no I/O): over a client's share 429 `too_many_sockets`, over the total 503
    `unavailable`, both JSON with `Retry-After`. 0 = no such cap."""

    RETRY_AFTER_S = 5

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client, self.total = per_client, total
        self.open = 0
        self.by_client: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self, client: str) -> Iterator[None]:
        """Hold one place for the socket's lifetime (raises the refusal when full)."""
        mine = self.by_client.get(client, 0)
        if self.total and self.open >= self.total:
            raise _refusal(503, "unavailable",
                           "this server has too many live connections; retry shortly")
        if self.per_client and mine >= self.per_client:
            raise _refusal(429, "too_many_sockets",
                           f"at most {self.per_client} live connections per address; "
                           "close one first")
        self.open += 1
        self.by_client[client] = mine + 1
        try:
            yield
        finally:
            self.open -= 1
            left = self.by_client[client] - 1
            if left:
                self.by_client[client] = left
            else:
                del self.by_client[client]


def _refusal(status: int, code: str, message: str) -> web.HTTPException:
    resp = error_response(status, code, message, retry_after_ms=SocketCaps.RETRY_AFTER_S * 1000)
    cls = web.HTTPTooManyRequests if status == 429 else web.HTTPServiceUnavailable
    assert isinstance(resp.body, bytes)
    # A JSON HTTPException passes the error middleware as it is.
    return cls(text=resp.body.decode(), content_type="application/json",
               headers={"Retry-After": str(SocketCaps.RETRY_AFTER_S)})


@dataclass
class Limiter:
    """Per app (per web process): the limits from settings, the batcher, the shed counter."""

    settings: Settings
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    limits: dict[str, Limit]
    cap: AdaptiveCap
    inflight: int = 0
    shed: int = 0                     # requests shed since start (observability reads it)
    limited: int = 0                  # requests refused by a rate limit since start
    batcher: Batcher | None = field(default=None, repr=False)
    sockets: SocketCaps = field(default_factory=lambda: SocketCaps(0, 0))
    verified: Verified = field(default_factory=Verified, repr=False)

    CLIENTS_KEPT = 4096

    def __post_init__(self) -> None:
        # Per request only string joins and a CRC: each bucket's key and script arguments.
        self.prefix = {"read": "rl:ip:read:", "write": "rl:ip:write:", "partner": "rl:key:",
                       "customer": "rl:cust:"}
        self.suffix = {name: f":{limit.tag}:" for name, limit in self.limits.items()}
        by_number = sorted(LIMIT_NUMBER, key=LIMIT_NUMBER.__getitem__)
        self.limit_args = [a for name in by_number for a in self.limits[name].args()]
        self._clients: dict[tuple[str | None, str], str] = {}

    def key(self, limit: str, ident: str) -> str:
        """The bucket of `ident` (an address, key digest or customer) under `limit`:
        `rl:<kind>:{rl<i>}:<limit's tag>:<ident>` (the hash tag from `ident`, so one client's
        bucket is one key whichever process charges it)."""
        return f"{self.prefix[limit]}{bucket_tag(ident)}{self.suffix[limit]}{ident}"

    def client(self, remote: str | None, forwarded_for: str | None) -> str:
        """`client_ip`, remembered: behind a proxy the same (peer, X-Forwarded-For) pairs
        come request after request, and parsing them costs more than the rest of the
        check (bounded: forgotten wholesale past `CLIENTS_KEPT`)."""
        if not self.trusted or not forwarded_for:
            return remote or "unknown"
        key = (remote, forwarded_for)
        ip = self._clients.get(key)
        if ip is None:
            if len(self._clients) >= self.CLIENTS_KEPT:
                self._clients.clear()
            ip = self._clients[key] = client_ip(remote, forwarded_for, self.trusted)
        return ip

    @classmethod
    def from_settings(cls, s: Settings) -> Limiter:
        return cls(s, parse_networks(s.trusted_proxies), {
            "read": Limit(s.rl_ip_read_per_s, s.rl_ip_read_burst),
            "write": Limit(s.rl_ip_write_per_s, s.rl_ip_write_burst),
            "customer": Limit(s.rl_customer_write_per_s, s.rl_customer_write_burst),
            "partner": Limit(s.rl_partner_per_s, s.rl_partner_burst),
        }, AdaptiveCap(s.hold_max_inflight, s.hold_latency_target_ms),
            sockets=SocketCaps(s.ws_per_client, s.ws_total))

    def _batcher(self, request: web.Request) -> Batcher:
        if self.batcher is None:
            self.batcher = Batcher(services(request).redis.register_script(_GCRA),
                                   self.limit_args)
        return self.batcher


LIMITER = web.AppKey("rate_limiter", Limiter)
# A partner request's (key digest, client address, charged up front?) for after its handler.
_PARTNER = web.RequestKey("bmm.rl_partner", tuple)


def setup(app: web.Application, settings: Settings) -> None:
    """This process's limits and hold cap (the middleware reads them from the app)."""
    app[LIMITER] = Limiter.from_settings(settings)


def limiter(app: web.Application) -> Limiter:
    return app[LIMITER]


def too_many(code: str, message: str, retry_ms: int) -> web.Response:
    retry_s = max(1, math.ceil(retry_ms / 1000))
    resp = error_response(429, code, message, retry_after_ms=retry_ms)
    resp.headers["Retry-After"] = str(retry_s)
    return resp


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    kind = classify(request.method, request.path)
    if kind is None:
        return await handler(request)
    lim = request.app[LIMITER]
    if kind != "hold":
        refused = await _check(request, lim, kind)
        if refused is not None:
            return refused
        if _PARTNER not in request:
            return await handler(request)
        return await _partner_request(request, lim, handler)
    if not lim.cap.admits(lim.inflight):
        lim.shed += 1
        return too_many("overloaded", "too many holds are being made right now; retry shortly",
                        1000)
    lim.inflight += 1
    start = time.monotonic()
    try:
        refused = await _check(request, lim, kind)
        return refused or await handler(request)
    finally:
        lim.inflight -= 1
        now = time.monotonic()
        lim.cap.done((now - start) * 1000, now)


async def _partner_request(request: web.Request, lim: Limiter, handler: Handler
                           ) -> web.StreamResponse:
    """Run a partner request's handler, then settle its key's bucket: a request that
    authenticated from an allowed address is (or was already) charged to it, any other
    is not, and its (key, address) is forgotten."""
    digest, ip, charged = request[_PARTNER]
    authenticated = False
    try:
        resp = await handler(request)
        authenticated = AUTH_KEY_ID in request
        return resp
    except Refused as exc:
        authenticated = AUTH_KEY_ID in request and exc.code not in AUTH_REFUSALS
        raise
    finally:
        pair = (digest, ip)
        if authenticated:
            lim.verified.add(pair)
            if not charged:  # after the fact, not awaited: the answer need not wait
                fut = lim._batcher(request).check(
                    [lim.key("partner", digest)], "10" + LIMIT_NUMBER["partner"])
                fut.add_done_callback(_ignore)
        elif charged:
            lim.verified.discard(pair)


def _ignore(fut: asyncio.Future[tuple[int, bool]]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a Redis error here only means one request went free


async def _check(request: web.Request, lim: Limiter, kind: Kind) -> web.Response | None:
    keys: list[str] = []
    limits = ""  # per bucket the number of its limit (LIMIT_NUMBER)
    if lim.settings.rate_limits:
        ip = lim.client(request.remote, request.headers.get("X-Forwarded-For"))
        ip_class = "read" if kind == "read" else "write"
        keys.append(lim.key(ip_class, ip))
        limits = LIMIT_NUMBER[ip_class]
        if request.path.startswith("/partner/"):
            auth = request.headers.get("Authorization", "")
            if auth[:7].lower() == "bearer " and (token := auth[7:].strip()):
                digest = hashlib.sha256(token.encode()).hexdigest()[:32]
                keys.append(lim.key("partner", digest))
                # Charged up front only for a (key, address) that authenticated lately;
                # otherwise only checked, and charged once the handler authenticated it.
                charged = (digest, ip) in lim.verified
                limits += (LIMIT_NUMBER if charged else PEEK_NUMBER)["partner"]
                request[_PARTNER] = (digest, ip, charged)
        elif kind != "read" and (who := (await session_customer(request))[0]):
            keys.append(lim.key("customer", who))
            limits += LIMIT_NUMBER["customer"]
    n = len(keys)
    if kind == "hold":
        keys.append(room_config_key(show_of_hold_path(request.path)))
        spec = f"{n}1{limits}"
    elif not n:
        return None
    else:
        spec = f"{n}0{limits}"
    retry_ms, on_sale = await lim._batcher(request).check(keys, spec)
    if kind == "hold":
        request[ON_SALE] = on_sale
    if retry_ms:
        lim.limited += 1
        return too_many("rate_limited", "too many requests; slow down", retry_ms)
    return None
