"""Partner show feed: /partner/v1/... (API key in `Authorization: Bearer`), and the platform
admin's /admin/v1/partners that makes partners and their first key."""
from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server.appkeys import services
from server.accounts import api_keys as auth
from server.catalog import service as catalog
from server.booking import holding, lifecycle
from server.booking.adapters import booking_ports
from server.catalog.model import (
    BulkItemResult,
    BulkShowsRequest,
    BulkShowsResponse,
    ItemError,
    Movie,
    MovieIn,
    PartnerCreate,
    PartnerCreated,
    PartnerShowList,
    Screen,
    ScreenIn,
    SeatsRequest,
    SeatsResponse,
    Show,
    ShowIn,
    Theatre,
    TheatreIn,
)
from server.core.errors import ApiError
from server.core.openapi import Query, operation
from server.core.wire import json_response, read_json

routes = web.RouteTableDef()

PARTNER = ("partner",)
PUT_ERRORS = (403, 409, 422)


async def _partner(request: web.Request) -> str:
    return await auth.partner_of(request, services(request).redis)


def _put_response(record: object, created: bool) -> web.Response:
    return json_response(record, status=201 if created else 200)


async def _upsert(request: web.Request, body_type: type, id_name: str,
                  put: Callable[[Any, str, str, Any], Awaitable[tuple[Any, bool]]]
                  ) -> tuple[Any, bool]:
    """A catalog PUT: the partner's key, then the body, then the path id, then `put`."""
    partner = await _partner(request)
    body = await read_json(request, body_type)
    item_id = _id(request, id_name)
    return await put(services(request).redis, partner, item_id, body)


# --- admin ----------------------------------------------------------------------------

@routes.post("/admin/v1/partners")
@operation("POST", "/admin/v1/partners", summary="Create a partner and its first API key",
           request=PartnerCreate, response=PartnerCreated, status=201, errors=(409,),
           tags=("admin",), security="adminKey")
async def create_partner(request: web.Request) -> web.Response:
    """The API key is in the response only; the platform stores its SHA-256."""
    svc = services(request)
    auth.require_admin(request, svc.settings.admin_key)
    body = await read_json(request, PartnerCreate)
    partner_id, key = await auth.create_partner(svc.redis, body.name, body.partner_id)
    return json_response(PartnerCreated(partner_id, body.name, key), status=201)


# --- catalog upserts ------------------------------------------------------------------

@routes.put("/partner/v1/theatres/{theatre_id}")
@operation("PUT", "/partner/v1/theatres/{theatre_id}", summary="Create or replace a theatre",
           request=TheatreIn, response=Theatre, errors=PUT_ERRORS, tags=PARTNER,
           security="partnerKey", also=(201,),
           description="201 when created, 200 when replaced.")
async def put_theatre(request: web.Request) -> web.Response:
    return _put_response(*await _upsert(request, TheatreIn, "theatre_id", catalog.put_theatre))


@routes.put("/partner/v1/screens/{screen_id}")
@operation("PUT", "/partner/v1/screens/{screen_id}", summary="Create or replace a screen",
           request=ScreenIn, response=Screen, errors=PUT_ERRORS, tags=PARTNER,
           security="partnerKey", also=(201,),
           description="Seats carry id/row/number/category/x/y and flags; an aisle is a gap "
                       "in x. Shows already published keep the layout they were made with.")
async def put_screen(request: web.Request) -> web.Response:
    return _put_response(*await _upsert(request, ScreenIn, "screen_id", catalog.put_screen))


@routes.put("/partner/v1/movies/{movie_id}")
@operation("PUT", "/partner/v1/movies/{movie_id}", summary="Create or replace a movie",
           request=MovieIn, response=Movie, errors=PUT_ERRORS, tags=PARTNER,
           security="partnerKey", also=(201,))
async def put_movie(request: web.Request) -> web.Response:
    return _put_response(*await _upsert(request, MovieIn, "movie_id", catalog.put_movie))


@routes.put("/partner/v1/shows/{show_id}")
@operation("PUT", "/partner/v1/shows/{show_id}", summary="Create or replace a show",
           request=ShowIn, response=Show, errors=PUT_ERRORS, tags=PARTNER,
           security="partnerKey", also=(201,),
           description="Validated: screen and movie exist and are yours, the language is "
                       "one of the movie's, a price for every seat category, a start in the "
                       "future, no overlap with another show on the screen.")
async def put_show(request: web.Request) -> web.Response:
    result = await _upsert(request, ShowIn, "show_id", catalog.put_show)
    _changed(request, request.match_info["show_id"])  # valid: _upsert checked it
    return _put_response(*result)


@routes.post("/partner/v1/shows:bulk")
@operation("POST", "/partner/v1/shows:bulk", summary="Create or replace many shows",
           request=BulkShowsRequest, response=BulkShowsResponse, tags=PARTNER,
           security="partnerKey",
           description="Each show is upserted on its own (as its PUT would be); the "
                       "response reports every item's status and error.")
async def bulk_shows(request: web.Request) -> web.Response:
    partner = await _partner(request)
    body = await read_json(request, BulkShowsRequest)
    redis = services(request).redis
    results: list[BulkItemResult] = []
    created = replaced = failed = 0
    seen: set[str] = set()
    for item in body.shows:
        if item.show_id in seen:
            failed += 1
            results.append(BulkItemResult(item.show_id, 422, error=ItemError(
                "duplicate_item", "this show id appears earlier in the same request")))
            continue
        seen.add(item.show_id)
        show_in = ShowIn(item.movie_id, item.screen_id, item.starts_at, item.language,
                         item.format, item.prices)
        try:
            show, was_created = await catalog.put_show(redis, partner, item.show_id, show_in)
            _changed(request, item.show_id)
        except ApiError as exc:
            failed += 1
            results.append(BulkItemResult(item.show_id, exc.status,
                                          error=ItemError(exc.code, exc.message)))
            continue
        created += was_created
        replaced += not was_created
        results.append(BulkItemResult(item.show_id, 201 if was_created else 200, show=show))
    return json_response(BulkShowsResponse(created, replaced, failed, results))


@routes.get("/partner/v1/shows/{show_id}")
@operation("GET", "/partner/v1/shows/{show_id}", summary="One of your shows",
           response=Show, errors=(403, 404), tags=PARTNER, security="partnerKey")
async def get_show(request: web.Request) -> web.Response:
    partner = await _partner(request)
    show = await catalog.owned_show(services(request).redis, partner, _id(request, "show_id"))
    return json_response(show)


@routes.delete("/partner/v1/shows/{show_id}")
@operation("DELETE", "/partner/v1/shows/{show_id}", summary="Cancel a show before it starts",
           response=Show, errors=(403, 404, 409, 503), tags=PARTNER, security="partnerKey",
           description="Marks it cancelled and takes it out of every listing; every booking "
                       "is cancelled and refunded in full, customers are notified "
                       "(booking.cancelled per booking, then show.cancelled). 503 with "
                       "Retry-After if some refunds could not be made yet: the show stays "
                       "cancelled and repeating the request finishes them.")
async def delete_show(request: web.Request) -> web.Response:
    partner = await _partner(request)
    show = await catalog.cancel_show(services(request).redis, partner, _id(request, "show_id"))
    try:  # server/booking/lifecycle.py: cancel + refund every booking, publish the events
        await lifecycle.cancel_show_bookings(services(request), show)
    except lifecycle.RetryLater as exc:
        return exc.response()
    _changed(request, show.show_id)
    return json_response(show)


@routes.get("/partner/v1/shows")
@operation("GET", "/partner/v1/shows", summary="Your shows on a date, with live counts",
           response=PartnerShowList, errors=(422,), tags=PARTNER, security="partnerKey",
           params=(Query("date", required=True, description="theatre-local date, YYYY-MM-DD"),),
           description="Availability (free/held/booked/blocked) is read from the show's "
                       "snapshot and log in Redis, without waking its actor.")
async def list_shows(request: web.Request) -> web.Response:
    partner = await _partner(request)
    date = catalog.parse_date(request.query.get("date"))
    if date is None:
        raise ApiError(422, "invalid_date", "date (YYYY-MM-DD) is required", field="date")
    shows = await catalog.partner_shows(services(request).redis, partner, date)
    return json_response(PartnerShowList(date, shows))


# --- house seats, through the show actor ----------------------------------------------

async def _seats_command(request: web.Request, block: bool) -> web.Response:
    partner = await _partner(request)
    body = await read_json(request, SeatsRequest)
    svc = services(request)
    show = await catalog.owned_show(svc.redis, partner, _id(request, "show_id"))
    seats = await holding.set_house_seats(booking_ports(svc), show, body.seats, block=block,
                                          command_id=str(uuid.uuid4()))
    return json_response(SeatsResponse(show.show_id, seats))


@routes.post("/partner/v1/shows/{show_id}/blocks")
@operation("POST", "/partner/v1/shows/{show_id}/blocks", summary="Block seats (house seats)",
           request=SeatsRequest, response=SeatsResponse, errors=(403, 404, 409, 503),
           tags=PARTNER, security="partnerKey",
           description="Goes through the show actor; 409 names seats held or booked by "
                       "customers.")
async def block_seats(request: web.Request) -> web.Response:
    return await _seats_command(request, block=True)


@routes.delete("/partner/v1/shows/{show_id}/blocks")
@operation("DELETE", "/partner/v1/shows/{show_id}/blocks", summary="Release blocked seats",
           request=SeatsRequest, response=SeatsResponse, errors=(403, 404, 409, 503),
           tags=PARTNER, security="partnerKey")
async def unblock_seats(request: web.Request) -> web.Response:
    return await _seats_command(request, block=False)


def _changed(request: web.Request, show_id: str) -> None:
    """This process's own next request sees the change at once; the others drop their
    copy when the write's message (catalog.SHOWS_CHANNEL) reaches them."""
    cache = services(request).show_cache
    if cache is not None:
        cache.invalidate(show_id)


def _id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not catalog.valid_id(value):
        raise ApiError(422, "invalid_id", f"{name} must match [A-Za-z0-9_-]{{1,64}}",
                       field=name)
    return value
