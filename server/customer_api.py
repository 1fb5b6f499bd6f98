"""Customer REST: seat map, holds, checkout, bookings."""
from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
