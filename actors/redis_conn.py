"""Redis clients from one URL, plain or through Sentinel.

The platform passes one Redis URL everywhere (web processes, the show actors on any Ray
node, the workers). For a Redis with replicas and Sentinel the URL names the Sentinels and
the master's service name instead of a server:

    redis+sentinel://[:password@]host1:26379,host2:26379,host3:26379/<master name>[/<db>]

and every client asks the Sentinels for the current master, and again after a failover
(redis-py's Sentinel support: a connection to a server that is no longer the master is
dropped and re-resolved). `Settings.from_env` builds such a URL from
`BMM_REDIS_SENTINELS=host:port,...` and `BMM_REDIS_MASTER=<name>` (plus the optional
`BMM_REDIS_PASSWORD`, `BMM_REDIS_DB`).
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

SCHEME = "redis+sentinel"


class SentinelTarget:
    def __init__(self, sentinels: list[tuple[str, int]], master: str, db: int,
                 password: str | None) -> None:
        self.sentinels = sentinels
        self.master = master
        self.db = db
        self.password = password


def sentinel_url(sentinels: str, master: str, db: int = 0, password: str | None = None) -> str:
    """`"h1:26379,h2:26379"`, `"bmm"` -> `redis+sentinel://h1:26379,h2:26379/bmm/0`."""
    hosts = ",".join(h.strip() for h in sentinels.split(",") if h.strip())
    if not hosts or not master:
        raise ValueError("Sentinel needs at least one host:port and the master's name")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"{SCHEME}://{auth}{hosts}/{quote(master, safe='')}/{db}"


def parse_sentinel(url: str) -> SentinelTarget | None:
    """The Sentinels, master name, db and password of a `redis+sentinel://` URL; None for
    any other URL."""
    if not url.startswith(SCHEME + "://"):
        return None
    rest = url[len(SCHEME) + 3:]
    password = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        password = unquote(auth.split(":", 1)[1] if ":" in auth else auth) or None
    hosts, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError(f"no master name in {url!r}")
    sentinels = []
    for hp in hosts.split(","):
        host, _, port = hp.rpartition(":")
        sentinels.append((host or hp, int(port) if host else 26379))
    return SentinelTarget(sentinels, unquote(parts[0]), int(parts[1]) if len(parts) > 1 else 0,
                          password)


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel-managed connections, waiting for a free one like BlockingConnectionPool
    (the web tier's request pool must not fail with "Too many connections")."""


def async_client(url: str, *, blocking: bool = False, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client: `Redis.from_url` for a plain URL, the master through Sentinel for
    a `redis+sentinel://` one. `blocking` asks for a pool that waits for a free connection
    (`max_connections`, `timeout` as for BlockingConnectionPool)."""
    target = parse_sentinel(url)
    if target is None:
        if blocking:
            return aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
                url, **kwargs))
        return aioredis.Redis.from_url(url, **kwargs)
    sentinel_kwargs = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout")
                       if k in kwargs}
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs)
    options = dict(kwargs, db=target.db)
    if target.password:
        options["password"] = target.password
    if blocking:
        options["connection_pool_class"] = _BlockingSentinelPool
    return sentinel.master_for(target.master, redis_class=aioredis.Redis, **options)


def sync_client(url: str, **kwargs: Any) -> redis.Redis:
    """A blocking client (start-up checks)."""
    target = parse_sentinel(url)
    if target is None:
        return redis.Redis.from_url(url, **kwargs)
    from redis.sentinel import Sentinel as SyncSentinel

    sentinel = SyncSentinel(target.sentinels)
    options = dict(kwargs, db=target.db)
    if target.password:
        options["password"] = target.password
    return sentinel.master_for(target.master, **options)
