"""The web process's event loop."""
from __future__ import annotations

import asyncio


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """uvloop's loop where wanted: its transports and scheduling are C, and a web process
    under a rush spends most of its time in them (loadtest/RESULTS.md, "Issue 13")."""
    if use_uvloop:
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()
