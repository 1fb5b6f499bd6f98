"""Browse (customers, no auth): cities, movies showing, a movie's theatres and show times.

Only scheduled shows that have not started yet are listed. `date` is the theatre-local
date (YYYY-MM-DD); without it, the coming week.
"""
from __future__ import annotations

from aiohttp import web

from server.appkeys import services
from server.catalog import service as catalog
from server.discovery import listing, reviews
from server.catalog.model import CityList, MovieInfo, MovieList, MovieShows
from server.core.openapi import Query, operation
from server.core.wire import json_response

routes = web.RouteTableDef()

BROWSE = ("browse",)


def _q(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    return value or None


@routes.get("/api/cities")
@operation("GET", "/api/cities", summary="Cities with theatres", response=CityList,
           tags=BROWSE)
async def list_cities(request: web.Request) -> web.Response:
    return json_response(CityList(await catalog.cities(services(request).redis)))


@routes.get("/api/movies")
@operation("GET", "/api/movies", summary="Movies with scheduled shows matching the filters",
           response=MovieList, errors=(422,), tags=BROWSE,
           params=(Query("city"), Query("language", description="show language"),
                   Query("genre"), Query("date", description="YYYY-MM-DD, theatre-local")))
async def list_movies(request: web.Request) -> web.Response:
    date = catalog.parse_date(_q(request, "date"))
    movies = await listing.browse_movies(services(request).redis, _q(request, "city"),
                                         _q(request, "language"), _q(request, "genre"), date)
    ratings = await reviews.ratings_of(services(request).redis, "movie",
                                       [m.movie.movie_id for m in movies])
    for m in movies:
        m.rating = ratings[m.movie.movie_id]
    return json_response(MovieList(movies))


@routes.get("/api/movies/{movie_id}")
@operation("GET", "/api/movies/{movie_id}", summary="A movie", response=MovieInfo,
           errors=(404,), tags=BROWSE)
async def get_movie(request: web.Request) -> web.Response:
    return json_response(await catalog.movie(services(request).redis, request.match_info["movie_id"]))


@routes.get("/api/movies/{movie_id}/shows")
@operation("GET", "/api/movies/{movie_id}/shows",
           summary="Theatres running a movie, with show times and price ranges",
           response=MovieShows, errors=(404, 422), tags=BROWSE,
           params=(Query("city"), Query("date", description="YYYY-MM-DD, theatre-local"),
                   Query("language", description="show language, case-insensitive"),
                   Query("format", description="show format (2D, 3D, IMAX...), "
                         "case-insensitive")),
           description="Each theatre carries its IANA `timezone`: show times are UTC on the "
           "wire and meant to be shown in that zone.")
async def movie_shows(request: web.Request) -> web.Response:
    date = catalog.parse_date(_q(request, "date"))
    info, theatres = await catalog.movie_shows(services(request).redis, request.match_info["movie_id"],
                                               _q(request, "city"), date,
                                               language=_q(request, "language"),
                                               show_format=_q(request, "format"))
    ratings = await reviews.ratings_of(services(request).redis, "theatre",
                                       [t.theatre_id for t in theatres])
    for t in theatres:
        t.rating = ratings[t.theatre_id]
    movie_rating = await reviews.rating_of(services(request).redis, "movie", info.movie_id)
    return json_response(MovieShows(info, theatres, movie_rating))
