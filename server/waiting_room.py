"""Virtual waiting room for on-sale shows (issue 7; stub)."""
from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
