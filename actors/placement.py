"""Which host owns a show: rendezvous (highest-random-weight) hashing. Pure.

Every web process and every host computes the same owner from the same host set, with no
coordination. Adding or removing a host moves only the shows whose highest weight was (or
becomes) that host's: about 1/N of them, the least any placement can move.
"""
from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b


def weight(host: str, show_id: str) -> int:
    # A keyed-free cryptographic hash: uniform, the same on every machine and Python
    # version (hash() is salted per process).
    digest = blake2b(f"{host}\x00{show_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(show_id: str, hosts: Sequence[str]) -> str:
    """The host of `hosts` that owns the show; ties (never seen in 64 bits) go to the
    larger name so the answer does not depend on the order of `hosts`."""
    if not hosts:
        raise ValueError("no hosts to place a show on")
    return max(hosts, key=lambda h: (weight(h, show_id), h))
