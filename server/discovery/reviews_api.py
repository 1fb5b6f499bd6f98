"""Ratings and reviews of movies and theatres (server/discovery/reviews.py has the rules and storage).

    GET    /api/movies/{movie_id}/reviews             public, newest first, paginated
    GET    /api/movies/{movie_id}/reviews/mine        the logged-in customer's review
    PUT    /api/movies/{movie_id}/reviews/mine        create or edit it (needs a booking)
    DELETE /api/movies/{movie_id}/reviews/mine
    (the same four under /api/theatres/{theatre_id}/reviews)
    POST   /partner/v1/reviews/{review_id}/reports    a partner reports a review (API key)
    GET    /admin/v1/reviews?status=reported|hidden   moderation queue (admin)
    POST   /admin/v1/reviews/{review_id}/hide         hide (leaves the listing and average)
    POST   /admin/v1/reviews/{review_id}/restore
"""
from __future__ import annotations

from aiohttp import web

from server.appkeys import services
from server.accounts import users as accounts
from server.accounts import api_keys as auth
from server.discovery import reviews
from server.core.errors import ApiError
from server.core.openapi import Query, operation
from server.core.wire import json_response, read_json

routes = web.RouteTableDef()

REVIEWS = ("reviews",)
PAGE = (Query("offset", int, description="reviews to skip (default 0)"),
        Query("limit", int, description=f"page size, 1-{reviews.MAX_PAGE} (default 20)"))


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid", f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(422, "invalid", f"{name} must be between {lo} and {hi}")
    return value


def _page(request: web.Request) -> tuple[int, int]:
    return (_int(request, "offset", 0, 0, 1_000_000),
            _int(request, "limit", 20, 1, reviews.MAX_PAGE))


def _item(request: web.Request, kind: str) -> str:
    return request.match_info[f"{kind}_id"]


# --- public listing ----------------------------------------------------------------------

async def _list(request: web.Request, kind: str) -> web.Response:
    redis = services(request).redis
    item_id = _item(request, kind)
    offset, limit = _page(request)
    await reviews.require_item(redis, kind, item_id)
    return json_response(await reviews.listing(redis, kind, item_id, offset, limit))


@routes.get("/api/movies/{movie_id}/reviews")
@operation("GET", "/api/movies/{movie_id}/reviews", summary="A movie's reviews, newest first",
           response=reviews.ReviewList, errors=(404, 422), tags=REVIEWS, params=PAGE,
           description="With the movie's average rating and count; reviews hidden by "
           "moderation are left out (and out of the average).")
async def movie_reviews(request: web.Request) -> web.Response:
    return await _list(request, "movie")


@routes.get("/api/theatres/{theatre_id}/reviews")
@operation("GET", "/api/theatres/{theatre_id}/reviews",
           summary="A theatre's reviews, newest first", response=reviews.ReviewList,
           errors=(404, 422), tags=REVIEWS, params=PAGE)
async def theatre_reviews(request: web.Request) -> web.Response:
    return await _list(request, "theatre")


# --- the customer's own review ------------------------------------------------------------

async def _customer(request: web.Request, kind: str) -> tuple[accounts.User, str]:
    user = await accounts.require_role(request, "customer")
    item_id = _item(request, kind)
    await reviews.require_item(services(request).redis, kind, item_id)
    return user, item_id


async def _get_mine(request: web.Request, kind: str) -> web.Response:
    user, item_id = await _customer(request, kind)
    redis = services(request).redis
    found = await reviews.mine(redis, user.user_id, kind, item_id)
    if found is None:
        raise ApiError(404, "not_found", f"you have not reviewed this {kind}")
    review, hidden = found
    return json_response(reviews.MyReview(review, hidden,
                                          await reviews.rating_of(redis, kind, item_id)))


async def _put_mine(request: web.Request, kind: str) -> web.Response:
    user, item_id = await _customer(request, kind)
    body = await read_json(request, reviews.ReviewIn)
    redis = services(request).redis
    if not await reviews.eligible(redis, user.user_id, kind, item_id):
        raise ApiError(403, "no_booking", f"only customers with a confirmed booking for "
                       f"this {kind} can review it")
    review, created = await reviews.upsert(redis, user, kind, item_id, body)
    found = await reviews.mine(redis, user.user_id, kind, item_id)
    hidden = bool(found and found[1])
    return json_response(reviews.MyReview(review, hidden,
                                          await reviews.rating_of(redis, kind, item_id)),
                         status=201 if created else 200)


async def _delete_mine(request: web.Request, kind: str) -> web.Response:
    user, item_id = await _customer(request, kind)
    if not await reviews.delete(services(request).redis, user.user_id, kind, item_id):
        raise ApiError(404, "not_found", f"you have not reviewed this {kind}")
    return web.Response(status=204)


_PUT_DOC = ("Create (201) or edit (200) the logged-in customer's review: one per customer "
            "and item. 401 not logged in; 403 without a confirmed booking for it (cancelled "
            "bookings do not count); 422 rating outside 1-5 or text over "
            f"{reviews.MAX_TEXT} characters.")

for _kind in reviews.KINDS:
    _path = f"/api/{_kind}s/{{{_kind}_id}}/reviews/mine"

    def _bind(kind: str, fn):  # noqa: ANN001, ANN202
        async def handler(request: web.Request) -> web.Response:
            return await fn(request, kind)
        handler.__name__ = f"{fn.__name__}_{kind}"
        return handler

    routes.get(_path)(operation(
        "GET", _path, summary=f"My review of a {_kind}", response=reviews.MyReview,
        errors=(401, 403, 404), tags=REVIEWS,
        security="sessionCookie")(_bind(_kind, _get_mine)))
    routes.put(_path)(operation(
        "PUT", _path, summary=f"Write or edit my review of a {_kind}",
        request=reviews.ReviewIn, response=reviews.MyReview, status=200,
        errors=(401, 403, 404, 422), tags=REVIEWS, description=_PUT_DOC,
        security="sessionCookie")(
        _bind(_kind, _put_mine)))
    routes.delete(_path)(operation(
        "DELETE", _path, summary=f"Delete my review of a {_kind}", status=204,
        errors=(401, 403, 404), tags=REVIEWS,
        security="sessionCookie")(_bind(_kind, _delete_mine)))


# --- partners -----------------------------------------------------------------------------

@routes.post("/partner/v1/reviews/{review_id}/reports")
@operation("POST", "/partner/v1/reviews/{review_id}/reports",
           summary="Report a review of your theatre or of a movie you show",
           request=reviews.ReportIn, response=reviews.ReportAck, status=201,
           errors=(401, 403, 404, 422), tags=("partner",), security="partnerKey",
           description="One report per partner and review (reporting again replaces the "
           "reason). The review waits for a platform admin's decision.")
async def report_review(request: web.Request) -> web.Response:
    redis = services(request).redis
    partner = await auth.partner_of(request, redis)
    body = await read_json(request, reviews.ReportIn)
    ack = await reviews.report(redis, partner, request.match_info["review_id"], body.reason)
    return json_response(ack, status=201)


# --- admin moderation ----------------------------------------------------------------------

ADMIN = ("admin",)


@routes.get("/admin/v1/reviews")
@operation("GET", "/admin/v1/reviews", summary="Reviews waiting for moderation, or hidden",
           response=reviews.ModerationList, errors=(401, 403, 422), tags=ADMIN,
           security="adminKey",
           params=(Query("status", description="reported (default) or hidden"), *PAGE))
async def moderation_queue(request: web.Request) -> web.Response:
    await accounts.require_admin(request)
    status = request.query.get("status", "reported")
    if status not in ("reported", "hidden"):
        raise ApiError(422, "invalid", "status must be 'reported' or 'hidden'")
    offset, limit = _page(request)
    return json_response(await reviews.moderation_queue(services(request).redis, status, offset,
                                                        limit))


async def _moderate(request: web.Request, hide: bool) -> web.Response:
    who = await accounts.require_admin(request)
    return json_response(await reviews.moderate(services(request).redis,
                                                request.match_info["review_id"], hide, who))


@routes.post("/admin/v1/reviews/{review_id}/hide")
@operation("POST", "/admin/v1/reviews/{review_id}/hide",
           summary="Hide a review (out of the listing and the average)",
           response=reviews.ModeratedReview, errors=(401, 403, 404), tags=ADMIN,
           security="adminKey")
async def hide_review(request: web.Request) -> web.Response:
    return await _moderate(request, True)


@routes.post("/admin/v1/reviews/{review_id}/restore")
@operation("POST", "/admin/v1/reviews/{review_id}/restore",
           summary="Restore a review (back in the listing and the average)",
           response=reviews.ModeratedReview, errors=(401, 403, 404), tags=ADMIN,
           security="adminKey")
async def restore_review(request: web.Request) -> web.Response:
    return await _moderate(request, False)
