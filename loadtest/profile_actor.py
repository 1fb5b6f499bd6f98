"""Profile a show host under a coalesced rush: py-spy records the host process that owns
show "p1" while 180 clients hold and release one seat each through one ShowDirectory
(group commit per host). Prints commands/s and commands per host call; the folded stacks
go to /tmp/actor.folded.

    .venv/bin/python -m loadtest.profile_actor   (needs py-spy in the venv)
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import redis.asyncio as aioredis

from actors import commands as c
from actors.client import ShowDirectory
from actors.host import ActorSettings
from actors.layout import ShowConfig, grid_layout
from actors.pool import NAMESPACE
from actors.store import put_config
from server.core.embedded import RedisServer


async def main() -> None:
    rs = RedisServer(Path(tempfile.mkdtemp())).start()
    ray.init(address="local", namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    r = aioredis.Redis.from_url(rs.url)
    await put_config(r, ShowConfig("p1", grid_layout(20, 20)))
    d = await ShowDirectory(rs.url, ActorSettings(snapshot_min_interval_s=1.0),
                            pool="profile").start()
    try:
        await d.submit("p1", c.Block("b0", ["A1"]))  # activates the show in its host
        pid = await d.host_pid("p1")
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p",
                                str(pid), "-d", "8", "-f", "raw", "-o", "/tmp/actor.folded",
                                "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seats = [f"{row}{n}" for row in "BCDEFGHIJKLMNOPQRST" for n in range(1, 21)]
        stop = time.monotonic() + 9
        n = 0

        async def user(i: int) -> None:
            nonlocal n
            seat = seats[i]
            k = 0
            while time.monotonic() < stop:
                k += 1
                hid = f"h{i}-{k}"
                await d.submit("p1", c.Hold(f"c{hid}", hid, "t", [seat]))
                await d.submit("p1", c.Release(f"r{hid}", hid, "t"))
                n += 2

        await asyncio.gather(*[user(i) for i in range(180)])
        calls = sum(h.calls for h in d.clients())
        commands = sum(h.commands for h in d.clients())
        print("host", d.owner("p1"), "pid", pid, "cmd/s", n / 9, "cmds/call", commands / max(calls, 1))
        spy.wait()
    finally:
        d.kill_hosts()
        await d.close()
        await r.aclose()
        ray.shutdown()
        rs.stop()


if __name__ == "__main__":
    asyncio.run(main())
