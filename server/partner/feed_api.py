"""Partner show feed: /partner/v1/... (API key in `Authorization: Bearer`), and the platform
admin's /admin/v1/partners that makes partners and their first key.

For each of theatres, screens, movies and shows: PUT (create or replace), GET one, DELETE
(a show is cancelled; a theatre, screen or movie is retired) and a cursor-paginated list
(server/core/pagination.py). GET one, PUT and DELETE answer with the record's `ETag`; a
PUT or DELETE with `If-Match` (or a PUT with `If-None-Match: *`, create only) is checked
inside the write's transaction (catalog.service.Precondition), 412 if it does not hold.
GET /partner/v1/changes pages through what changed (server/partner/changes.py)."""
from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
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
    ChangesPage,
    ItemError,
    Movie,
    MovieIn,
    PartnerCreate,
    PartnerCreated,
    PartnerShowPage,
    Screen,
    ScreenIn,
    SeatsRequest,
    SeatsResponse,
    Show,
    ShowIn,
    Theatre,
    TheatreIn,
)
from server.catalog.service import Precondition, etag_of
from server.core.errors import ApiError
from server.core.openapi import Header, Query, operation
from server.core.pagination import MAX_LIMIT, Page, decode_cursor, encode_cursor, limit_of
from server.core.wire import json_response, read_json
from server.partner import changes  # app.py starts its worker as partner_api.changes

routes = web.RouteTableDef()

PARTNER = ("partner",)
PUT_ERRORS = (403, 409, 412, 422)

IF_MATCH = Header("If-Match", description="an ETag of the record (or *): the write is "
                  "refused with 412 precondition_failed unless the record is still that")
IF_NONE_MATCH = Header("If-None-Match", description="*: create only (412 if the record "
                       "exists already)")
ETAG = Header("ETag", required=True, description="the record's entity tag, for If-Match")
LIMIT = Query("limit", Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)],
              description=f"items per page, 1-{MAX_LIMIT} (default 50)")
CURSOR = Query("cursor", description="next_cursor of the previous page")
PAGE_PARAMS = (LIMIT, CURSOR)


async def _partner(request: web.Request) -> str:
    return await auth.partner_of(request, services(request).redis)


def _etagged(record: msgspec.Struct, status: int = 200) -> web.Response:
    return json_response(record, status=status, headers={"ETag": etag_of(record)})


def _put_response(record: msgspec.Struct, created: bool) -> web.Response:
    return _etagged(record, status=201 if created else 200)


def _tags(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(t for t in (part.strip() for part in value.split(",")) if t)


def _precondition(request: web.Request) -> Precondition | None:
    """If-Match / If-None-Match as the write's Precondition (None: neither was sent).
    Entity tags compare strongly: a weak one (W/"...") never matches."""
    if_match = _tags(request.headers.get("If-Match"))
    if_none_match = _tags(request.headers.get("If-None-Match"))
    if if_match is None and if_none_match is None:
        return None
    return Precondition(if_match, if_none_match)


async def _upsert(request: web.Request, body_type: type, id_name: str,
                  put: Callable[..., Awaitable[tuple[Any, bool]]]) -> tuple[Any, bool]:
    """A catalog PUT: the partner's key, then the body, then the path id, then `put`."""
    partner = await _partner(request)
    body = await read_json(request, body_type)
    item_id = _id(request, id_name)
    return await put(services(request).redis, partner, item_id, body,
                     pre=_precondition(request))


# --- cursors: [list name, position], signed (server/core/pagination.py) ------------------

def _bad_cursor(param: str) -> ApiError:
    return ApiError(422, "invalid_cursor", f"this {param} was not given out by this list",
                    field=param)


def _after(request: web.Request, kind: str, param: str = "cursor") -> Any | None:
    """The position a cursor names for the list `kind` (None: the first page)."""
    raw = request.query.get(param)
    if not raw:
        return None
    probe = request if param == "cursor" else request.clone(
        rel_url=request.rel_url.with_query({"cursor": raw}))
    try:
        position = decode_cursor(services(request).settings.secret, probe)
    except ApiError:
        raise _bad_cursor(param) from None
    if not (isinstance(position, list) and len(position) == 2 and position[0] == kind):
        raise _bad_cursor(param)
    return position[1]


def _cursor(request: web.Request, kind: str, position: Any | None) -> str | None:
    if position is None:
        return None
    return encode_cursor(services(request).settings.secret, [kind, position])


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
           security="partnerKey", also=(201,), params=(IF_MATCH, IF_NONE_MATCH),
           response_headers=(ETAG,),
           description="201 when created, 200 when replaced.")
async def put_theatre(request: web.Request) -> web.Response:
    return _put_response(*await _upsert(request, TheatreIn, "theatre_id", catalog.put_theatre))


@routes.get("/partner/v1/theatres")
@operation("GET", "/partner/v1/theatres", summary="Your theatres, by id",
           response=Page[Theatre], errors=(403, 422), tags=PARTNER, security="partnerKey",
           params=PAGE_PARAMS, description="Retired ones too (status). Pages: pass "
           "next_cursor back as cursor until it is null.")
async def list_theatres(request: web.Request) -> web.Response:
    return await _list(request, Theatre)


@routes.get("/partner/v1/theatres/{theatre_id}")
@operation("GET", "/partner/v1/theatres/{theatre_id}", summary="One of your theatres",
           response=Theatre, errors=(403, 404), tags=PARTNER, security="partnerKey",
           response_headers=(ETAG,))
async def get_theatre(request: web.Request) -> web.Response:
    return await _get_one(request, Theatre, "theatre_id")


@routes.delete("/partner/v1/theatres/{theatre_id}")
@operation("DELETE", "/partner/v1/theatres/{theatre_id}", summary="Retire a theatre",
           response=Theatre, errors=(403, 404, 409, 412), tags=PARTNER,
           security="partnerKey", params=(IF_MATCH,), response_headers=(ETAG,),
           description="Marks it retired: it leaves customer browse and its screens get no "
                       "new shows; a PUT of it makes it active again. 409 in_use (with "
                       "show_ids, at most 20) while a future scheduled show is on one of "
                       "its screens.")
async def retire_theatre(request: web.Request) -> web.Response:
    return await _retire(request, Theatre, "theatre_id")


@routes.put("/partner/v1/screens/{screen_id}")
@operation("PUT", "/partner/v1/screens/{screen_id}", summary="Create or replace a screen",
           request=ScreenIn, response=Screen, errors=PUT_ERRORS, tags=PARTNER,
           security="partnerKey", also=(201,), params=(IF_MATCH, IF_NONE_MATCH),
           response_headers=(ETAG,),
           description="Seats carry id/row/number/category/x/y and flags; an aisle is a gap "
                       "in x. Shows already published keep the layout they were made with.")
async def put_screen(request: web.Request) -> web.Response:
    return _put_response(*await _upsert(request, ScreenIn, "screen_id", catalog.put_screen))


@routes.get("/partner/v1/screens")
@operation("GET", "/partner/v1/screens", summary="Your screens, by id",
           response=Page[Screen], errors=(403, 422), tags=PARTNER, security="partnerKey",
           params=PAGE_PARAMS, description="Retired ones too (status), with their layouts.")
async def list_screens(request: web.Request) -> web.Response:
    return await _list(request, Screen)


@routes.get("/partner/v1/screens/{screen_id}")
@operation("GET", "/partner/v1/screens/{screen_id}", summary="One of your screens",
           response=Screen, errors=(403, 404), tags=PARTNER, security="partnerKey",
           response_headers=(ETAG,))
async def get_screen(request: web.Request) -> web.Response:
    return await _get_one(request, Screen, "screen_id")


@routes.delete("/partner/v1/screens/{screen_id}")
@operation("DELETE", "/partner/v1/screens/{screen_id}", summary="Retire a screen",
           response=Screen, errors=(403, 404, 409, 412), tags=PARTNER,
           security="partnerKey", params=(IF_MATCH,), response_headers=(ETAG,),
           description="Marks it retired: it gets no new shows; a PUT of it makes it "
                       "active again. 409 in_use (with show_ids, at most 20) while a future "
                       "scheduled show is on it.")
async def retire_screen(request: web.Request) -> web.Response:
    return await _retire(request, Screen, "screen_id")


@routes.put("/partner/v1/movies/{movie_id}")
@operation("PUT", "/partner/v1/movies/{movie_id}", summary="Create or replace a movie",
           request=MovieIn, response=Movie, errors=PUT_ERRORS, tags=PARTNER,
           security="partnerKey", also=(201,), params=(IF_MATCH, IF_NONE_MATCH),
           response_headers=(ETAG,))
async def put_movie(request: web.Request) -> web.Response:
    return _put_response(*await _upsert(request, MovieIn, "movie_id", catalog.put_movie))


@routes.get("/partner/v1/movies")
@operation("GET", "/partner/v1/movies", summary="Your movies, by id",
           response=Page[Movie], errors=(403, 422), tags=PARTNER, security="partnerKey",
           params=PAGE_PARAMS, description="Retired ones too (status).")
async def list_partner_movies(request: web.Request) -> web.Response:
    return await _list(request, Movie)


@routes.get("/partner/v1/movies/{movie_id}")
@operation("GET", "/partner/v1/movies/{movie_id}", summary="One of your movies",
           response=Movie, errors=(403, 404), tags=PARTNER, security="partnerKey",
           response_headers=(ETAG,))
async def get_partner_movie(request: web.Request) -> web.Response:
    return await _get_one(request, Movie, "movie_id")


@routes.delete("/partner/v1/movies/{movie_id}")
@operation("DELETE", "/partner/v1/movies/{movie_id}", summary="Retire a movie",
           response=Movie, errors=(403, 404, 409, 412), tags=PARTNER,
           security="partnerKey", params=(IF_MATCH,), response_headers=(ETAG,),
           description="Marks it retired: it leaves customer browse and gets no new "
                       "shows; a PUT of it makes it active again. 409 in_use (with "
                       "show_ids, at most 20) while a future scheduled show is of it.")
async def retire_movie(request: web.Request) -> web.Response:
    return await _retire(request, Movie, "movie_id")


_LIST_NAME = {Theatre: "theatres", Screen: "screens", Movie: "movies"}


async def _list(request: web.Request, kind: type) -> web.Response:
    partner = await _partner(request)
    limit = limit_of(request)
    name = _LIST_NAME[kind]
    after = _after(request, name)
    if after is not None and not (isinstance(after, str) and catalog.valid_id(after)):
        raise _bad_cursor("cursor")
    items, last = await catalog.partner_items(services(request).redis, kind, partner,
                                              after, limit)
    return json_response(Page(items, _cursor(request, name, last)))


async def _get_one(request: web.Request, kind: type, id_name: str) -> web.Response:
    partner = await _partner(request)
    record = await catalog.owned(services(request).redis, kind, partner, _id(request, id_name))
    return _etagged(record)


async def _retire(request: web.Request, kind: type, id_name: str) -> web.Response:
    partner = await _partner(request)
    record = await catalog.retire(services(request).redis, kind, partner,
                                  _id(request, id_name), pre=_precondition(request))
    return _etagged(record)


@routes.put("/partner/v1/shows/{show_id}")
@operation("PUT", "/partner/v1/shows/{show_id}", summary="Create or replace a show",
           request=ShowIn, response=Show, errors=PUT_ERRORS, tags=PARTNER,
           security="partnerKey", also=(201,), params=(IF_MATCH, IF_NONE_MATCH),
           response_headers=(ETAG,),
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
           response=Show, errors=(403, 404), tags=PARTNER, security="partnerKey",
           response_headers=(ETAG,))
async def get_show(request: web.Request) -> web.Response:
    partner = await _partner(request)
    show = await catalog.owned_show(services(request).redis, partner, _id(request, "show_id"))
    return _etagged(show)


@routes.delete("/partner/v1/shows/{show_id}")
@operation("DELETE", "/partner/v1/shows/{show_id}", summary="Cancel a show before it starts",
           response=Show, errors=(403, 404, 409, 412, 503), tags=PARTNER,
           security="partnerKey", params=(IF_MATCH,), response_headers=(ETAG,),
           description="Marks it cancelled and takes it out of every listing; every booking "
                       "is cancelled and refunded in full, customers are notified "
                       "(booking.cancelled per booking, then show.cancelled). 503 with "
                       "Retry-After if some refunds could not be made yet: the show stays "
                       "cancelled and repeating the request finishes them.")
async def delete_show(request: web.Request) -> web.Response:
    partner = await _partner(request)
    show = await catalog.cancel_show(services(request).redis, partner, _id(request, "show_id"),
                                     pre=_precondition(request))
    try:  # server/booking/lifecycle.py: cancel + refund every booking, publish the events
        await lifecycle.cancel_show_bookings(services(request), show)
    except lifecycle.RetryLater as exc:
        return exc.response()
    _changed(request, show.show_id)
    return _etagged(show)


@routes.get("/partner/v1/shows")
@operation("GET", "/partner/v1/shows", summary="Your shows by start time, with live counts",
           response=PartnerShowPage, errors=(403, 422), tags=PARTNER, security="partnerKey",
           params=(Query("date", description="theatre-local date, YYYY-MM-DD: that day's "
                         "shows, cancelled ones too; without it every show not yet started"),
                   *PAGE_PARAMS),
           description="Availability (free/held/booked/blocked) is read from the show's "
                       "snapshot and log in Redis, without waking its actor. With a date "
                       "the answer also repeats the page as `shows` (its shape before it "
                       "had pages).")
async def list_shows(request: web.Request) -> web.Response:
    partner = await _partner(request)
    date = catalog.parse_date(request.query.get("date"))
    limit = limit_of(request)
    name = f"shows:{date or ''}"  # a cursor is good for the listing it came from
    after = _after(request, name)
    if after is not None:
        if not (isinstance(after, list) and len(after) == 2 and isinstance(after[0], int)
                and isinstance(after[1], str) and catalog.valid_id(after[1])):
            raise _bad_cursor("cursor")
        after = (after[0], after[1])
    rows, last = await catalog.partner_show_page(services(request).redis, partner, date,
                                                 after, limit)
    page = PartnerShowPage(rows, _cursor(request, name, list(last) if last else None), date)
    if date is not None:
        page.shows = rows
    return json_response(page)


# --- what changed ---------------------------------------------------------------------

@routes.get("/partner/v1/changes")
@operation("GET", "/partner/v1/changes", summary="What changed, in order (for polling)",
           response=ChangesPage, errors=(403, 422), tags=PARTNER, security="partnerKey",
           params=(Query("since", description="next_cursor of the previous answer; "
                         "without it, from the oldest change kept"), LIMIT),
           description="Shows created, updated, cancelled; theatres, screens, movies "
                       "upserted, retired; bookings confirmed, cancelled (with the show's "
                       "seat availability). next_cursor is always given: poll with it "
                       "again, even after an empty page. About the last 100,000 changes "
                       "are kept.")
async def list_changes(request: web.Request) -> web.Response:
    partner = await _partner(request)
    limit = limit_of(request)
    after = _after(request, "changes", param="since")
    if after is not None and not changes.valid_stream_id(after):
        raise _bad_cursor("since")
    items, last = await changes.read_changes(services(request).redis, partner, after,
                                                 limit)
    return json_response(ChangesPage(items, _cursor(request, "changes", last) or ""))


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
