"""Who holds seats, beyond the customer: the device and the network (issue 15).

- **Device**: a signed cookie (`bmm_dev`, `<id>.<HMAC>`), given to a browser the first
  time it opens a seat map or holds; a cookie that does not verify is a new device.
- **Network**: the client address as the rate limiter sees it (X-Forwarded-For believed
  only from trusted proxies), an IPv6 address widened to its /64 (one subscriber's
  allocation: 2^64 addresses are one network), keyed by an HMAC so no address is written to
  the show's log.

Both travel in the hold command with the show's caps (actors/seatmap.py counts them), so a
client that drops its cookies and opens new connections is still one network.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from functools import lru_cache

from aiohttp import web

from server.accounts.users import derive_key
from server.onsale.ratelimit import LIMITER

DEVICE_COOKIE = "bmm_dev"
DEVICE_MAX_AGE_S = 400 * 24 * 3600  # browsers cap cookie lifetimes at about 400 days


@dataclass(frozen=True)
class Device:
    key: str               # "d:<id>": what the caps count
    new_cookie: str | None  # set this cookie on the answer (a device seen for the first time)


@lru_cache(maxsize=8)
def _device_key(secret: str) -> bytes:
    return derive_key(secret, "device-id")


@lru_cache(maxsize=8)
def _network_key(secret: str) -> bytes:
    return derive_key(secret, "network-id")


def _mac(key: bytes, text: str) -> str:
    digest = hmac.new(key, text.encode(), hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def device(request: web.Request, secret: str) -> Device:
    raw = request.cookies.get(DEVICE_COOKIE, "")
    dev_id, _, mac = raw.partition(".")
    if dev_id and mac and hmac.compare_digest(mac, _mac(_device_key(secret), dev_id)):
        return Device("d:" + dev_id, None)
    dev_id = secrets.token_urlsafe(12)
    return Device("d:" + dev_id, f"{dev_id}.{_mac(_device_key(secret), dev_id)}")


def set_device_cookie(resp: web.StreamResponse, value: str, secure: bool) -> None:
    resp.set_cookie(DEVICE_COOKIE, value, max_age=DEVICE_MAX_AGE_S, path="/", httponly=True,
                    samesite="Lax", secure=secure)


def network_prefix(address: str) -> str:
    """The network an address counts as: itself for IPv4, its /64 for IPv6 (an
    IPv4-mapped IPv6 address is its IPv4 address)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address  # "unknown" (no peer address): one bucket for all such
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def network(request: web.Request, secret: str) -> str:
    address = request.app[LIMITER].client(request.remote,
                                          request.headers.get("X-Forwarded-For"))
    return "n:" + _mac(_network_key(secret), network_prefix(address))
