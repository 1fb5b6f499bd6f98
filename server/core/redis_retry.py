"""The retry policy of every Redis client the web process makes."""
from __future__ import annotations

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff


def redis_retry() -> Retry:
    """Reconnect and resend on a connection error, for about 2 s in all. Clients made with
    `from_url` get no retry at all, so after a Redis restart (or failover) every pooled
    connection was dead and each request that drew one answered 500, well after Redis was
    back (tests/faults). Commands that may run twice are safe here: the request path's
    writes are SETs of whole records, idempotent scripts, or keyed by an id."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), 6)
