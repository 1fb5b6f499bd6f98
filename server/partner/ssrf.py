"""Outbound requests to partner-chosen URLs (webhooks) reach public addresses only
(OWASP API7, server-side request forgery): not loopback, private, link-local (cloud
metadata at 169.254.169.254), carrier-grade NAT, multicast or reserved ranges.

Checked where the connection is made, so a name that resolves to a public address when
the webhook is created and to an internal one later (DNS rebinding) is still refused:
names through `PublicResolver` (aiohttp's resolver hook), IP literals (which aiohttp does
not resolve) through `check_target` before sending. Development and tests deliver to
receivers on 127.0.0.1: `BMM_WEBHOOK_PRIVATE_TARGETS=1` allows that.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver


class TargetRefused(OSError):
    """Counted as a failed delivery, like a refused connection."""


# IPv6 prefixes that carry an IPv4 address in their low 32 bits (RFC 6052 NAT64, the
# well-known and the local-use prefix): on a NAT64 network they reach that IPv4 host, so
# they are judged by it.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif any(ip in net for net in _NAT64):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:  # 2002::/16 embeds an IPv4 address too
            ip = ip.sixtofour
    return ip.is_global and not ip.is_multicast


def literal_host(url: str) -> str | None:
    """The URL's host if it is an IP address, else None."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return host


def check_target(url: str, allow_private: bool) -> None:
    """IP literals only (at registration, and before sending: aiohttp does not resolve them)."""
    host = literal_host(url)
    if host is not None and not allow_private and not is_public(host):
        raise TargetRefused(f"{host} is not a public address")


async def check_delivery(url: str, allow_private: bool) -> None:
    """Before sending: literals, and names resolved now, so the delivery log can say why
    (PublicResolver still guards the connection itself against a name that changes)."""
    check_target(url, allow_private)
    host = urlsplit(url).hostname or ""
    if allow_private or literal_host(url) is not None:
        return
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return  # not resolvable: the connection fails with the usual DNS error
    if not any(is_public(str(info[4][0])) for info in found):
        raise TargetRefused(f"{host} resolves to no public address")


class PublicResolver(AbstractResolver):
    """aiohttp's resolver, keeping only public addresses (unless private ones are allowed)."""

    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        found = await self._inner.resolve(host, port, family)
        if self.allow_private:
            return found
        public = [entry for entry in found if is_public(entry["host"])]
        if not public:
            raise TargetRefused(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()
