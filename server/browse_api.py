"""Browse (customers, no auth): cities, movies, a movie's shows."""
from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
