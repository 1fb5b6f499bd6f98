"""Test helpers for shows on their hosts (actors/host.py) in the session's local Ray."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import ray
from ray.exceptions import RayActorError

from actors import commands as c
from actors.client import ShowDirectory


async def host_of(directory: ShowDirectory, show_id: str) -> ray.actor.ActorHandle:
    """The handle of the host that owns the show (started if need be)."""
    await directory.start()
    return await directory.host_handle(directory.owner(show_id))


async def raw_apply(handle: ray.actor.ActorHandle, directory: ShowDirectory, show_id: str,
                    cmds: list[c.Command] | bytes) -> list[c.Result]:
    """One host call carrying commands for one show, bypassing the coalescing client."""
    if isinstance(cmds, bytes):
        cmds = c.commands_decoder.decode(cmds)
    blob = c.command_encoder.encode(c.Call(directory.epoch, [c.Group(show_id, cmds)]))
    reply = c.reply_decoder.decode(await handle.apply.remote(blob))
    [results] = reply.results
    assert results is not None, f"{show_id} is not this host's"
    return results


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


async def gone(pid: int, timeout: float = 30.0) -> None:
    """Wait until the process has exited (ray.kill only asks Ray to kill it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still there after {timeout}s")
        await asyncio.sleep(0.05)


async def restarted(handle: ray.actor.ActorHandle, old_pid: int, timeout: float = 60.0) -> int:
    """Wait until Ray has replaced the killed host; its new pid."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid = await handle.pid.remote()
            if pid != old_pid:
                return pid
        except RayActorError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"host not restarted within {timeout}s")
        await asyncio.sleep(0.1)
