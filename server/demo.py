"""Demo data, published through the partner feed on startup."""
from __future__ import annotations

from aiohttp import web


async def seed_on_startup(app: web.Application) -> None:
    pass
