"""Redis behind Sentinel, on real processes: a master (AOF), a replica and a Sentinel
(`redis-server --sentinel`). The platform's clients (actors/redis_conn.py) find the master
through the Sentinel, and after kill -9 of the master and the Sentinel's failover they
write to the promoted replica; a show's log written through them reads back whole.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from actors import commands as c
from actors import redis_conn
from actors.layout import ShowConfig, grid_layout
from actors.store import Event, LogEntry, ShowStore, event_encoder, put_config
from server.core.embedded import RedisServer, free_port
from server.core.settings import Settings

MASTER = "bmm"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server not installed")


class _Proc:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _wait(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[dict]:
    master = RedisServer(tmp_path / "master").start()
    replica_port = free_port()
    (tmp_path / "replica").mkdir()
    replica = _Proc(["redis-server", "--port", str(replica_port), "--bind", "127.0.0.1",
                     "--dir", str(tmp_path / "replica"), "--appendonly", "yes",
                     "--appendfsync", "always", "--save", "",
                     "--replicaof", "127.0.0.1", str(master.port)], tmp_path / "replica.log")
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
                    f"sentinel down-after-milliseconds {MASTER} 1000\n"
                    f"sentinel failover-timeout {MASTER} 10000\n")
    sentinel = _Proc(["redis-server", str(conf), "--sentinel"], tmp_path / "sentinel.log")
    procs = [replica, sentinel]
    try:
        _wait(lambda: redis.Redis(port=replica_port).info("replication")
              .get("master_link_status") == "up", 30, "the replica to sync")
        _wait(lambda: redis.Redis(port=sentinel_port).execute_command(
            "SENTINEL", "REPLICAS", MASTER), 30, "the Sentinel to see the replica")
        yield {"master": master, "replica_port": replica_port, "sentinel_port": sentinel_port,
               "url": redis_conn.sentinel_url(f"127.0.0.1:{sentinel_port}", MASTER)}
    finally:
        for p in procs:
            p.stop()
        master.stop()


def test_settings_build_the_sentinel_url(monkeypatch):
    monkeypatch.delenv("BMM_REDIS_URL", raising=False)
    monkeypatch.setenv("BMM_REDIS_SENTINELS", "10.0.0.1:26379, 10.0.0.2:26379")
    monkeypatch.setenv("BMM_REDIS_MASTER", "bmm")
    monkeypatch.setenv("BMM_REDIS_PASSWORD", "p@ss")
    url = Settings.from_env().redis_url
    assert url == "redis+sentinel://:p%40ss@10.0.0.1:26379,10.0.0.2:26379/bmm/0"
    target = redis_conn.parse_sentinel(url)
    assert target is not None
    assert target.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert (target.master, target.db, target.password) == ("bmm", 0, "p@ss")
    assert redis_conn.parse_sentinel("redis://127.0.0.1:6379/0") is None


async def test_clients_follow_the_master_across_a_failover(sentinel_setup):
    url = sentinel_setup["url"]
    master: RedisServer = sentinel_setup["master"]
    layout = grid_layout(2, 5)
    show_id = "sentinel-show"
    # The request pool (blocking) and the actor's client, both through the Sentinel.
    web = redis_conn.async_client(url, blocking=True, max_connections=8, timeout=5,
                                  retry=None)
    actor = redis_conn.async_client(url, socket_timeout=5, socket_connect_timeout=2)
    try:
        assert (await web.info("replication"))["role"] == "master"
        assert (await web.connection_pool.get_master_address())[1] == master.port
        await put_config(web, ShowConfig(show_id, layout))
        store = ShowStore(actor, show_id)
        seatmap = await store.load()
        seq = await _append(store, seatmap, c.Hold("h1:hold", "h1", "tok", ["A1", "A2"]))
        assert seq == 1
        # The replica has it before the master dies (replication is asynchronous: the
        # deployment docs require min-replicas-to-write for this in production).
        replica = redis.Redis(port=sentinel_setup["replica_port"])
        _wait(lambda: replica.get(f"show:{{{show_id}}}:seq") == b"1", 10, "replication")

        master.kill9()
        sentinel = redis.Redis(port=sentinel_setup["sentinel_port"])
        await asyncio.to_thread(
            _wait, lambda: int(sentinel.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)[1])
            == sentinel_setup["replica_port"], 60, "the Sentinel to promote the replica")

        # The same client objects now reach the new master (the dead connections are
        # dropped and the master re-resolved through the Sentinel).
        async def write_through() -> bool:
            try:
                seatmap = await ShowStore(actor, show_id).load()
                await _append(ShowStore(actor, show_id), seatmap,
                              c.Hold("h2:hold", "h2", "tok", ["B1"]))
                return True
            except (redis.RedisError, OSError):
                return False

        deadline = time.monotonic() + 30
        while not await write_through():
            assert time.monotonic() < deadline, "no write through the new master"
            await asyncio.sleep(0.2)
        assert (await web.info("replication"))["role"] == "master"
        assert (await web.connection_pool.get_master_address())[1] == \
            sentinel_setup["replica_port"]
        again = await ShowStore(web, show_id).load()
        assert set(again.holds) == {"h1", "h2"}
        assert again.status["A1"] == again.status["B1"] == "held"
    finally:
        await web.aclose()
        await actor.aclose()


async def _append(store: ShowStore, seatmap, cmd: c.Command) -> int:  # noqa: ANN001
    at = int(time.time() * 1000)
    base = seatmap.version
    outcome = seatmap.apply(cmd, at)
    assert outcome.changed
    event = Event(seatmap.version, at, outcome.changes)
    entry = LogEntry(at, c.command_encoder.encode(cmd), event_encoder.encode(event))
    return await store.append(base, [entry], None, None)
