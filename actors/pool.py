"""A pool of show hosts as it is recorded in Redis: which hosts exist, on which Ray node
each was placed, the settings they run with, and an epoch that grows with every change.

Web processes route by it (actors/placement.py over `hosts`), hosts decide by it which
shows are theirs. It lives in Redis rather than in Ray's actor table because a host that
is dead and being restarted must stay in the set (its shows must not move for a crash),
and because every reader must see one agreed set, numbered, not a listing that changes
while it is read.
"""
from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

NAMESPACE = "bookmymovie"  # Ray namespace of the hosts (and of the web tier's driver)


class ActorSettings(msgspec.Struct, frozen=True):
    snapshot_every: int = 500        # log entries between a show's snapshots
    # ...and at least this long between them: under a rush (~20k entries/s) a snapshot
    # per 500 entries would rewrite ~300 KB to the AOF 40 times a second.
    snapshot_min_interval_s: float = 0.0
    keep_log: int = 5_000            # entries kept before the snapshot, for `since` resumes
    passivate_after_s: float = 60.0  # idle time (with no holds) before a show leaves memory
    persist_attempts: int = 20       # reload-and-retry rounds before answering "unavailable"
    # The hosts' log level; at DEBUG they log every batch with its commands' request ids.
    log_level: str = "INFO"
    # "module:function" of the hold quoter (seatmap.Quoter), imported by each host: the
    # pricing rules belong to the web tier, which the actors package never imports.
    quoter: str = "server.commerce.quoting:quote_hold"


class Pool(msgspec.Struct, frozen=True):
    epoch: int
    hosts: list[str]
    # host -> the Ray node it was placed on (soft affinity: Ray moves it if that node goes)
    nodes: dict[str, str] = {}
    # What every host of the pool runs with: recorded by whoever created the pool, so a
    # host added later (or by an admin tool) runs like the others.
    settings: ActorSettings = ActorSettings()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Pool)


def pool_key(pool: str) -> str:
    return f"pool:{{{pool}}}:hosts"


def host_name(pool: str, index: int) -> str:
    return f"{pool}-{index}"


def plan_hosts(pool: str, nodes: list[tuple[str, int]], start: int = 0) -> dict[str, str]:
    """Host names for `nodes` ([(node id, hosts on it)], in that order), numbered from
    `start`: {host: node}."""
    out: dict[str, str] = {}
    index = start
    for node, count in nodes:
        for _ in range(count):
            out[host_name(pool, index)] = node
            index += 1
    return out


async def read_pool(redis: aioredis.Redis, pool: str) -> Pool | None:
    raw = await redis.get(pool_key(pool))
    return _decoder.decode(raw) if raw else None


async def create_pool(redis: aioredis.Redis, pool: str, nodes: dict[str, str],
                      settings: ActorSettings) -> Pool:
    """Record the pool unless one is recorded already (several web processes start at
    once: the first one's plan wins); returns the recorded one."""
    await redis.set(pool_key(pool), _encoder.encode(Pool(1, list(nodes), nodes, settings)),
                    nx=True)
    recorded = await read_pool(redis, pool)
    assert recorded is not None
    return recorded


_ADD = """
local raw = redis.call('GET', KEYS[1])
if not raw then return redis.error_reply('NOPOOL') end
local pool = cjson.decode(raw)
if tonumber(pool['epoch']) ~= tonumber(ARGV[1]) then return redis.error_reply('EPOCH') end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


async def replace_pool(redis: aioredis.Redis, pool: str, current: Pool,
                       nodes: dict[str, str]) -> Pool:
    """Move the pool to a new host set, if nobody changed it since `current` (raises
    redis ResponseError EPOCH otherwise)."""
    expected_epoch = current.epoch
    new = Pool(expected_epoch + 1, list(nodes), nodes, current.settings)
    await redis.register_script(_ADD)(keys=[pool_key(pool)],
                                      args=[expected_epoch, _encoder.encode(new)])
    return new
