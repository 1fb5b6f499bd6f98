"""Redis clients from one URL: plain, through Sentinel, or a Redis Cluster.

The platform passes one Redis URL everywhere (web processes, the show actors on any Ray
node, the workers). For a Redis with replicas and Sentinel the URL names the Sentinels and
the master's service name instead of a server:

    redis+sentinel://[:password@]host1:26379,host2:26379,host3:26379/<master name>[/<db>]

and every client asks the Sentinels for the current master, and again after a failover
(redis-py's Sentinel support: a connection to a server that is no longer the master is
dropped and re-resolved). `Settings.from_env` builds such a URL from
`BMM_REDIS_SENTINELS=host:port,...` and `BMM_REDIS_MASTER=<name>` (plus the optional
`BMM_REDIS_PASSWORD`, `BMM_REDIS_DB`).

For a Redis Cluster the URL names some of its nodes (any, masters or replicas: the client
reads the slot map from them and follows it through resharding and failovers):

    redis+cluster://[:password@]host1:6379,host2:6379,host3:6379/[?wait_replicas=1&wait_ms=2000]

and every client is a redis-py `RedisCluster`. Every key the platform writes is placed on
purpose (docs/DESIGN.md "Key map"): the keys one script or transaction touches share a
hash tag, so they live in one slot.
"""
from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"


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


def _split_url(url: str, scheme: str) -> tuple[str, str | None] | None:
    """(what follows the scheme and the credentials, the password) of a `scheme://` URL;
    None for any other URL."""
    if not url.startswith(scheme + "://"):
        return None
    rest = url[len(scheme) + 3:]
    password = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        password = unquote(auth.split(":", 1)[1] if ":" in auth else auth) or None
    return rest, password


def parse_sentinel(url: str) -> SentinelTarget | None:
    """The Sentinels, master name, db and password of a `redis+sentinel://` URL; None for
    any other URL."""
    split = _split_url(url, SCHEME)
    if split is None:
        return None
    rest, password = split
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


class ClusterTarget:
    def __init__(self, nodes: list[tuple[str, int]], password: str | None,
                 wait_replicas: int = 1, wait_ms: int = 2000) -> None:
        self.nodes = nodes
        self.password = password
        self.wait_replicas = wait_replicas
        self.wait_ms = wait_ms


def parse_cluster(url: str) -> ClusterTarget | None:
    """The nodes and password of a `redis+cluster://` URL; None for any other URL."""
    split = _split_url(url, CLUSTER_SCHEME)
    if split is None:
        return None
    rest, password = split
    rest, _, query = rest.partition("?")
    hosts, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {path!r} in {url!r}")
    options = dict(parse_qsl(query))
    unknown = set(options) - {"wait_replicas", "wait_ms"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} in {url!r}")
    nodes = []
    for hp in hosts.split(","):
        host, _, port = hp.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{hp!r} in {url!r} is not host:port")
        nodes.append((host, int(port)))
    return ClusterTarget(nodes, password, int(options.get("wait_replicas", 1)),
                         int(options.get("wait_ms", 2000)))


def replica_wait(client: Any) -> tuple[int, int]:
    """(replicas, timeout ms) a write must reach before it is acknowledged: for a client
    of a Redis Cluster 1 replica within 2 s unless its URL said otherwise
    (`?wait_replicas=0` for a cluster without replicas); for any other client none
    (DESIGN "Redis Cluster")."""
    return getattr(client, "bmm_replica_wait", (0, 0))


def is_cluster(client: Any) -> bool:
    return isinstance(client, aioredis.RedisCluster)


_CLUSTER_IGNORED = ("timeout", "connection_pool_class", "db")


class _WaitingCluster(aioredis.RedisCluster):
    """A cluster client whose commands wait for a free connection, as the web tier's
    BlockingConnectionPool does: redis-py's cluster pools have no blocking mode, and past
    `max_connections` on a node raise MaxConnectionsError at once, so a burst of requests
    (80 log-ins at a time) answered 503 instead of queueing for a few milliseconds. At
    most `permits` commands run at once; each node pool may open twice that, which leaves
    pipelines and transactions (not counted here) room of their own."""

    def __init__(self, *args: Any, permits: int, wait_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._permits = asyncio.Semaphore(permits)
        self._wait_s = wait_s

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._wait_s):
                await self._permits.acquire()
        except TimeoutError:
            raise redis.exceptions.MaxConnectionsError(
                f"no Redis connection free within {self._wait_s} s") from None
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._permits.release()


def _cluster_client(target: ClusterTarget, kwargs: dict[str, Any],
                    blocking: bool = False) -> aioredis.RedisCluster:
    from redis.asyncio.cluster import ClusterNode

    options = {k: v for k, v in kwargs.items() if k not in _CLUSTER_IGNORED}
    if target.password:
        options["password"] = target.password
    if "retry" not in options:
        # A failover takes the cluster node timeout plus an election (seconds): a
        # command retries through it (re-reading the slot map) before it gives up.
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        options["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.05), 8)
    nodes = [ClusterNode(h, p) for h, p in target.nodes]
    if blocking:
        permits = int(options.pop("max_connections", 64))
        client: aioredis.RedisCluster = _WaitingCluster(
            startup_nodes=nodes, permits=permits, wait_s=float(kwargs.get("timeout") or 20),
            max_connections=2 * permits, **options)
    else:
        client = aioredis.RedisCluster(startup_nodes=nodes, **options)
    client.bmm_replica_wait = (target.wait_replicas, target.wait_ms)  # `replica_wait`
    return client


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel-managed connections, waiting for a free one like BlockingConnectionPool
    (the web tier's request pool must not fail with "Too many connections")."""


def async_client(url: str, *, blocking: bool = False, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client: `Redis.from_url` for a plain URL, the master through Sentinel for
    a `redis+sentinel://` one. `blocking` asks for a pool that waits for a free connection
    (`max_connections`, `timeout` as for BlockingConnectionPool)."""
    cluster = parse_cluster(url)
    if cluster is not None:
        return _cluster_client(cluster, kwargs, blocking)  # type: ignore[return-value]
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
    cluster = parse_cluster(url)
    if cluster is not None:
        from redis.cluster import ClusterNode, RedisCluster

        if cluster.password:
            kwargs = dict(kwargs, password=cluster.password)
        return RedisCluster(  # type: ignore[return-value]
            startup_nodes=[ClusterNode(h, p) for h, p in cluster.nodes], **kwargs)
    target = parse_sentinel(url)
    if target is None:
        return redis.Redis.from_url(url, **kwargs)
    from redis.sentinel import Sentinel as SyncSentinel

    sentinel = SyncSentinel(target.sentinels)
    options = dict(kwargs, db=target.db)
    if target.password:
        options["password"] = target.password
    return sentinel.master_for(target.master, **options)


def connection_option(client: Any, name: str) -> Any:
    """A connection setting (`socket_timeout`, ...) of a plain, Sentinel or cluster client."""
    pool = getattr(client, "connection_pool", None)
    kwargs = pool.connection_kwargs if pool is not None else client.connection_kwargs
    return kwargs.get(name)


async def ready(client: Any) -> Any:
    """The client, its slot map read first if it is a cluster client (a cluster pub/sub
    needs it before its first SUBSCRIBE; commands read it themselves)."""
    if is_cluster(client):
        await client.initialize()
    return client


def _same_slot(key: str) -> str:
    """A marker key in `key`'s hash slot."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    tag = key[start + 1:end] if start >= 0 and end > start + 1 else key
    return f"replicated:{{{tag}}}"


async def replicated(client: Any, key: str) -> bool:
    """Whether what was written so far to `key`'s master is on the replicas the URL asks
    for (`?wait_replicas`, 1 on a cluster): a marker write in the key's slot and `WAIT`
    on the same connection (WAIT covers what that connection wrote, and a master
    replicates in order, so every earlier write to it, from any connection, is covered).
    True at once for a client that waits for no replica."""
    replicas, wait_ms = replica_wait(client)
    if not replicas:
        return True
    node = client.get_node_from_key(key)
    pipe = client.pipeline(transaction=False)
    pipe.set(_same_slot(key), 1, px=60_000)
    pipe.execute_command("WAIT", replicas, wait_ms, target_nodes=node)
    try:
        _, acked = await pipe.execute()
    except redis.exceptions.RedisError:
        return False
    return int(acked) >= replicas and client.get_node_from_key(key).name == node.name


# Replies that mean "the store cannot take this now", not "this request is wrong": a
# failover in progress (CLUSTERDOWN, TRYAGAIN, MASTERDOWN, a demoted master's READONLY, a
# slot nobody serves yet), or a master refusing writes it could not replicate
# (min-replicas-to-write: NOREPLICAS). A request meeting one answers 503, not 500.
_OUTAGE_TYPES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                 redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
                 redis.exceptions.ReadOnlyError, redis.exceptions.SlotNotCoveredError,
                 redis.exceptions.RedisClusterUnreachableError)
_OUTAGE_REPLIES = ("NOREPLICAS", "MASTERDOWN", "LOADING", "CLUSTERDOWN", "TRYAGAIN", "READONLY")


def is_outage(exc: BaseException) -> bool:
    if isinstance(exc, _OUTAGE_TYPES):
        return True
    if not isinstance(exc, redis.exceptions.ResponseError):
        return False
    # A pipeline's error reads "Command # 1 (...) of pipeline caused error: NOREPLICAS ...".
    reply = str(exc).rpartition("caused error: ")[2]
    return reply.startswith(_OUTAGE_REPLIES)
