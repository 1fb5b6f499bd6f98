"""On-sale protection at the door: load shedding and Redis-backed rate limits (issue 7).

Every request but static files and health probes is checked, in this order:

1. **Shedding** (hold path only, per web process, no I/O): at most `limit` hold requests
   are being worked on at once; one more is answered 429 `overloaded` with `Retry-After`
   at once instead of joining a queue that would make every admitted hold slow. `limit`
   starts at `settings.hold_max_inflight` and adapts (`AdaptiveCap`): when holds take
   longer than `settings.hold_latency_target_ms` on average it shrinks, when they are fast
   it grows back (docs/DESIGN.md, "On-sale protection").
2. **Rate limits** (one Lua script, one round trip): GCRA buckets per client IP (`read` or
   `write` class), per logged-in customer (writes) and per partner API key (the key's
   SHA-256, so the key itself never reaches Redis). All buckets of a request are checked and
   charged atomically: a refused request charges none. Over a limit: 429 `rate_limited`
   with `Retry-After` (whole seconds, at least 1) and `error.retry_after_ms`.

For a hold (`POST /api/shows/{id}/holds`) the same script also reads the show's waiting-room
flag, so the queue check (server/onsale/waiting_room.py) costs no second round trip.
"""
from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from server.appkeys import services
from server.onsale.admission import session_customer
from server.onsale.keys import ON_SALE, room_config_key
from server.core.errors import Handler, error_response
from server.core.settings import Settings

Kind = Literal["read", "write", "hold"]

EXEMPT_PREFIXES = ("/static/", "/healthz", "/readyz", "/metrics", "/favicon")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# GCRA over several buckets at once. KEYS[1..n] buckets, KEYS[n+1] (optional) a hash whose
# `enabled` field is returned. ARGV[1] = n, then per bucket: emission interval (ms), burst.
# The clock is Redis's (TIME), so every web process agrees on it. Returns
# {0, flag} when allowed (every bucket charged) or {retry_ms, flag} (nothing charged).
_GCRA = """
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait, tats = 0, {}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then
    local w = allow_at - now
    if w > wait then wait = w end
  end
  tats[i] = new_tat
end
local flag = false
if #KEYS > n then flag = redis.call('HGET', KEYS[n + 1], 'enabled') end
if wait > 0 then return {math.ceil(wait), flag} end
for i = 1, n do
  redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', math.ceil(tats[i] - now) + 1)
end
return {0, flag}
"""


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


def parse_networks(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """`"10.0.0.0/8, 127.0.0.1"` -> networks; raises ValueError on a bad entry (at start)."""
    return tuple(ipaddress.ip_network(p.strip(), strict=False)
                 for p in spec.replace(";", ",").split(",") if p.strip())


def client_ip(remote: str | None, forwarded_for: str | None,
              trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    """The caller's address. X-Forwarded-For is believed only when the peer is a trusted
    proxy, and then read from the right: the first hop that is not a trusted proxy is the
    client (entries further left are whatever the client chose to send)."""
    ip = remote or "unknown"
    if not trusted or not forwarded_for or not _trusted(ip, trusted):
        return ip
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not _trusted(hop, trusted):
            return hop if _valid(hop) else ip
        ip = hop
    return ip


def _valid(addr: str) -> bool:
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        return False
    return True


def _trusted(addr: str, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
             ) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


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


@dataclass
class Limiter:
    """Per app (per web process): the limits from settings, the script, the shed counter."""

    settings: Settings
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    limits: dict[str, Limit]
    cap: AdaptiveCap
    inflight: int = 0
    shed: int = 0                     # requests shed since start (observability reads it)
    limited: int = 0                  # requests refused by a rate limit since start
    script: object | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, s: Settings) -> Limiter:
        return cls(s, parse_networks(s.trusted_proxies), {
            "read": Limit(s.rl_ip_read_per_s, s.rl_ip_read_burst),
            "write": Limit(s.rl_ip_write_per_s, s.rl_ip_write_burst),
            "customer": Limit(s.rl_customer_write_per_s, s.rl_customer_write_burst),
            "partner": Limit(s.rl_partner_per_s, s.rl_partner_burst),
        }, AdaptiveCap(s.hold_max_inflight, s.hold_latency_target_ms))


LIMITER = web.AppKey("rate_limiter", Limiter)


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
    lim = limiter(request.app)
    if kind != "hold":
        refused = await _check(request, lim, kind)
        return refused or await handler(request)
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


async def _check(request: web.Request, lim: Limiter, kind: Kind) -> web.Response | None:
    redis = services(request).redis
    keys: list[str] = []
    args: list[str] = []
    if lim.settings.rate_limits:
        ip = client_ip(request.remote, request.headers.get("X-Forwarded-For"), lim.trusted)
        ip_class = "read" if kind == "read" else "write"
        keys.append(f"rl:ip:{ip_class}:{lim.limits[ip_class].tag}:{ip}")
        args.extend(lim.limits[ip_class].args())
        if request.path.startswith("/partner/"):
            auth = request.headers.get("Authorization", "")
            if auth[:7].lower() == "bearer " and auth[7:].strip():
                digest = hashlib.sha256(auth[7:].strip().encode()).hexdigest()[:32]
                keys.append(f"rl:key:{lim.limits['partner'].tag}:{digest}")
                args.extend(lim.limits["partner"].args())
        elif kind != "read" and (who := (await session_customer(request))[0]):
            keys.append(f"rl:cust:{lim.limits['customer'].tag}:{who}")
            args.extend(lim.limits["customer"].args())
    n = len(keys)
    if kind == "hold":
        keys.append(room_config_key(show_of_hold_path(request.path)))
    if not keys:
        return None
    if lim.script is None:
        lim.script = redis.register_script(_GCRA)
    retry_ms, flag = await lim.script(keys=keys, args=[str(n), *args])  # type: ignore[operator]
    if kind == "hold":
        request[ON_SALE] = flag == b"1"
    if retry_ms:
        lim.limited += 1
        return too_many("rate_limited", "too many requests; slow down", int(retry_ms))
    return None

