"""The caller's address, seen through the proxies we trust (pure functions, no I/O).

`settings.trusted_proxies` (BMM_TRUSTED_PROXIES) names the networks whose X-Forwarded-For
is believed: the rate limiter's per-IP buckets (server/onsale/ratelimit.py) and a partner
API key's IP allow-list (server/accounts/api_keys.py) both ask `client_ip`, so the two can
never disagree about who is calling (security review M4: the allow-list once read
`request.remote`, i.e. the edge proxy's own address).
"""
from __future__ import annotations

import functools
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> tuple[Network, ...]:
    """`"10.0.0.0/8, 127.0.0.1"` -> networks; raises ValueError on a bad entry (at start)."""
    return tuple(ipaddress.ip_network(p.strip(), strict=False)
                 for p in spec.replace(";", ",").split(",") if p.strip())


@functools.lru_cache(maxsize=8)
def trusted_networks(spec: str) -> tuple[Network, ...]:
    """`parse_networks`, once per distinct setting (a per-request caller's version)."""
    return parse_networks(spec)


def client_ip(remote: str | None, forwarded_for: str | None,
              trusted: tuple[Network, ...]) -> str:
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


def _trusted(addr: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
