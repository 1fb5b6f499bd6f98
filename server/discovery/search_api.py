"""Catalog search (customers, no auth): GET /api/search (server/discovery/search.py does the work)."""
from __future__ import annotations

from aiohttp import web

from server.appkeys import services
from server.discovery import search
from server.core.openapi import Query, operation
from server.discovery.search import SearchResults

routes = web.RouteTableDef()

@routes.get("/api/search")
@operation("GET", "/api/search", summary="Search movies showing: filters, free text, sorting, "
           "pages", response=SearchResults, errors=(422,), tags=("browse",),
           params=(Query("q", description="free text: title, synopsis and genres; case- and "
                         "accent-insensitive words, title matches ranked first"),
                   Query("city"), Query("language", description="show language"),
                   Query("genre"), Query("format", description="show format (2D, 3D, IMAX...)"),
                   Query("date", description="YYYY-MM-DD, theatre-local; default: the "
                         "coming week"),
                   Query("sort", description="relevance (default with q) | next_show "
                         "(default without) | title | rating (best average first, unrated "
                         "last)"),
                   Query("page", int, description="1-based, default 1"),
                   Query("per_page", int, description=f"1-{search.MAX_PER_PAGE}, default "
                         f"{search.DEFAULT_PER_PAGE}")),
           description="Each hit carries the theatres running the movie (in the city, on "
           "the date) with their show times. Answers are cached briefly (`X-Cache: hit|miss`) "
           "and a partner feed write is visible at once.")
async def search_movies(request: web.Request) -> web.Response:
    params = search.SearchParams.parse(request.query,
                                       rating_available=search.rating_available())
    body, state = await search.search(services(request).redis, params)
    return web.Response(body=body, content_type="application/json",
                        headers={"X-Cache": state})
