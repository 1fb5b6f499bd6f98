"""Partner webhook endpoints (API key in `Authorization: Bearer`):

    POST   /partner/v1/webhooks                      {url, events?, description?}
                                                     -> 201 with the signing secret (shown once)
    GET    /partner/v1/webhooks?limit=&cursor=       your endpoints (no secrets), oldest first
    GET    /partner/v1/webhooks/{webhook_id}         one endpoint
    DELETE /partner/v1/webhooks/{webhook_id}         -> 200 {webhook_id, deleted: true}
    GET    /partner/v1/webhooks/{webhook_id}/deliveries?limit=&cursor=
                                                     the delivery log: attempts, status codes,
                                                     answer excerpts, next retry (newest first)
    POST   /partner/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend
                                                     -> 202 the new delivery (same event id)

Lists are cursor-paginated (server/core/pagination.py): `{"items": [...], "next_cursor"}`,
plus, for clients of the unpaginated lists, their old key with the same items (`webhooks`;
`deliveries` and `webhook_id` in the log).

URLs must be https://, or http:// to a loopback host (127.0.0.1, ::1, localhost: local
development and tests). Another partner's endpoint answers 404, as if it did not exist.
Deliveries are described in webhooks.py (signature: HMAC-SHA256 over "<timestamp>.<body>").
"""
from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from server.appkeys import services
from server.accounts import api_keys as auth
from server.partner import webhooks as wh
from server.core.errors import ApiError
from server.partner.ssrf import TargetRefused, check_target
from server.core.openapi import Query, operation
from server.core.pagination import decode_cursor, encode_cursor, limit_of
from server.core.wire import json_response, read_json

routes = web.RouteTableDef()

TAGS = ("partner",)
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}

EventName = Annotated[str, msgspec.Meta(max_length=64)]


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    events: list[EventName] | None = None  # default: every partner event
    description: Annotated[str, msgspec.Meta(max_length=200)] = ""


class Webhook(msgspec.Struct):
    webhook_id: str
    url: str
    events: list[str]
    description: str
    created_at: datetime


class WebhookCreated(Webhook):
    secret: str = ""  # HMAC-SHA256 key for X-BMM-Signature; returned only here


class WebhookPage(msgspec.Struct):
    """A page of your webhooks (`Page`; `webhooks` repeats `items` for clients of the
    unpaginated list, such as the portal's page until it moves to `items`)."""
    items: list[Webhook]
    next_cursor: str | None
    webhooks: list[Webhook]


class WebhookDeleted(msgspec.Struct):
    webhook_id: str
    deleted: bool


class DeliveryAttempt(msgspec.Struct):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int
    # The first bytes of the receiver's answer (at most 4 KiB for the newest attempt,
    # 256 for earlier ones); the rest is never read.
    response_excerpt: str | None = None


class DeliveryView(msgspec.Struct):
    delivery_id: str
    event_id: str
    event_type: str
    status: str            # pending | delivered | failed
    created_at: datetime
    attempts: list[DeliveryAttempt]
    next_retry_at: datetime | None
    resend_of: str | None = None  # set on a resend: the delivery it repeats


class DeliveryPage(msgspec.Struct):
    """A page of the delivery log (`Page` plus the webhook id; `deliveries` repeats
    `items` for clients of the unpaginated list)."""
    items: list[DeliveryView]
    next_cursor: str | None
    webhook_id: str
    deliveries: list[DeliveryView]


LIST_PARAMS = (
    Query("limit", int, description="1-200, default 50"),
    Query("cursor", str, description="`next_cursor` of the previous page (absent: the first)"),
)


async def _partner(request: web.Request) -> str:
    return await auth.partner_of(request, services(request).redis)


def validate_url(url: str) -> str:
    """The URL as given if deliverable, else 422."""
    def bad(why: str) -> ApiError:
        return ApiError(422, "invalid_url", f"webhook url {why}", field="url")

    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise bad("is not a valid URL") from None
    if any(ch.isspace() for ch in url) or not host:
        raise bad("must be an absolute URL with a host")
    if parts.username or parts.password:
        raise bad("must not carry credentials")
    if parts.fragment:
        raise bad("must not have a #fragment")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http":
        loopback = host.lower() in LOOPBACK_HOSTS
        if not loopback:
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
        if loopback:
            return url
        raise bad("must use https (plain http only to 127.0.0.1 / localhost)")
    raise bad("must use https")


def _cursor_secret(request: web.Request) -> str:
    return services(request).settings.secret


def _position(request: web.Request, kind: str, scope: str) -> list | None:
    """The cursor's position, if it was given out for this list (`kind` of `scope`)."""
    found = decode_cursor(_cursor_secret(request), request)
    if found is None:
        return None
    if (not isinstance(found, list) or len(found) != 4 or found[:2] != [kind, scope]
            or not isinstance(found[2], (int, str)) or not isinstance(found[3], str)):
        raise ApiError(422, "invalid_cursor", "this cursor is not for this list",
                       field="cursor")
    return found[2:]


def _delivery_view(d: wh.Delivery) -> DeliveryView:
    return DeliveryView(d.delivery_id, d.event_id, d.event_type, d.status, d.created_at,
                        [DeliveryAttempt(a.at, a.status_code, a.error, a.duration_ms,
                                         a.response_excerpt) for a in d.attempts],
                        d.next_retry_at, d.resend_of)


def _view(endpoint: wh.Endpoint) -> Webhook:
    return Webhook(endpoint.webhook_id, endpoint.url, endpoint.events, endpoint.description,
                   endpoint.created_at)


async def _own_endpoint(request: web.Request) -> wh.Endpoint:
    partner = await _partner(request)
    webhook_id = request.match_info["webhook_id"]
    endpoint = await wh.load_endpoint(services(request).redis, partner, webhook_id)
    if endpoint is None or endpoint.partner_id != partner:
        raise ApiError(404, "not_found", f"no webhook {webhook_id!r}")
    return endpoint


@routes.post("/partner/v1/webhooks")
@operation("POST", "/partner/v1/webhooks", summary="Register a webhook URL",
           request=WebhookCreate, response=WebhookCreated, status=201, errors=(401, 409, 422),
           tags=TAGS, security="partnerKey")
async def create_webhook(request: web.Request) -> web.Response:
    """Events: booking.confirmed, booking.cancelled, show.sold_out, show.cancelled (all by
    default) for your own shows. The response carries the endpoint's signing `secret`,
    shown this once: verify `X-BMM-Signature` = `sha256=` + hex HMAC-SHA256(secret,
    X-BMM-Timestamp + "." + raw body)."""
    partner = await _partner(request)
    body = await read_json(request, WebhookCreate)
    url = validate_url(body.url.strip())
    if not services(request).settings.webhook_private_targets:
        try:
            check_target(url, allow_private=False)  # delivery checks again, names included
        except TargetRefused as exc:
            raise ApiError(422, "invalid_url", f"webhook url {exc}", field="url") from None
    events = list(dict.fromkeys(body.events)) if body.events is not None else list(wh.PARTNER_EVENTS)
    unknown = [e for e in events if e not in wh.PARTNER_EVENTS]
    if unknown or not events:
        raise ApiError(422, "invalid_events", "events must be a non-empty subset of "
                       + ", ".join(wh.PARTNER_EVENTS), field="events", events=unknown)
    made = await wh.create_endpoint(services(request).redis, services(request).settings,
                                    partner, url, events, body.description)
    if made is None:
        raise ApiError(409, "too_many_webhooks",
                       f"at most {wh.MAX_ENDPOINTS} webhooks per partner; delete one first")
    endpoint, secret = made  # stored sealed with the data key; in clear only in this answer
    created = WebhookCreated(endpoint.webhook_id, endpoint.url, endpoint.events,
                             endpoint.description, endpoint.created_at, secret)
    return json_response(created, status=201)


@routes.get("/partner/v1/webhooks")
@operation("GET", "/partner/v1/webhooks", summary="Your webhooks", response=WebhookPage,
           errors=(401, 422), tags=TAGS, security="partnerKey", params=LIST_PARAMS)
async def list_webhooks(request: web.Request) -> web.Response:
    """Oldest first (by `created_at`, then id), `limit` per page; pass `next_cursor` back
    as `cursor` for the next page (null: the last). No secrets."""
    partner = await _partner(request)
    limit = limit_of(request)
    after = _position(request, "webhooks", partner)
    endpoints = await wh.partner_endpoints(services(request).redis, partner)
    if after is not None:
        endpoints = [e for e in endpoints
                     if (e.created_at.isoformat(), e.webhook_id) > (str(after[0]), after[1])]
    page, more = endpoints[:limit], len(endpoints) > limit
    cursor = None
    if more:
        last = page[-1]
        cursor = encode_cursor(_cursor_secret(request), ["webhooks", partner,
                                                         last.created_at.isoformat(),
                                                         last.webhook_id])
    views = [_view(e) for e in page]
    return json_response(WebhookPage(views, cursor, views))


@routes.get("/partner/v1/webhooks/{webhook_id}")
@operation("GET", "/partner/v1/webhooks/{webhook_id}", summary="One of your webhooks",
           response=Webhook, errors=(401, 404), tags=TAGS, security="partnerKey")
async def get_webhook(request: web.Request) -> web.Response:
    return json_response(_view(await _own_endpoint(request)))


@routes.delete("/partner/v1/webhooks/{webhook_id}")
@operation("DELETE", "/partner/v1/webhooks/{webhook_id}", summary="Delete a webhook",
           response=WebhookDeleted, errors=(401, 404), tags=TAGS, security="partnerKey",
           description="Pending deliveries to it are dropped (marked failed).")
async def delete_webhook(request: web.Request) -> web.Response:
    endpoint = await _own_endpoint(request)
    await wh.delete_endpoint(services(request).redis, endpoint)
    return json_response(WebhookDeleted(endpoint.webhook_id, True))


@routes.get("/partner/v1/webhooks/{webhook_id}/deliveries")
@operation("GET", "/partner/v1/webhooks/{webhook_id}/deliveries",
           summary="A webhook's delivery log", response=DeliveryPage, errors=(401, 404, 422),
           tags=TAGS, security="partnerKey", params=LIST_PARAMS)
async def list_deliveries(request: web.Request) -> web.Response:
    """Every delivery, newest first, with its attempts (time, HTTP status or error,
    duration, the first bytes of the answer), its status (pending / delivered / failed),
    while pending when it is retried next, and for a resend the delivery it repeats.
    Cursor-paginated: pass `next_cursor` back as `cursor` (null: the last page)."""
    endpoint = await _own_endpoint(request)
    limit = limit_of(request)
    after = _position(request, "deliveries", endpoint.webhook_id)
    if after is not None and not isinstance(after[0], int):
        raise ApiError(422, "invalid_cursor", "this cursor is not for this list",
                       field="cursor")
    deliveries, position = await wh.endpoint_deliveries(
        services(request).redis, endpoint.partner_id, endpoint.webhook_id, limit,
        (after[0], after[1]) if after is not None else None)
    cursor = None
    if position is not None:
        cursor = encode_cursor(_cursor_secret(request), ["deliveries", endpoint.webhook_id,
                                                         *position])
    views = [_delivery_view(d) for d in deliveries]
    return json_response(DeliveryPage(views, cursor, endpoint.webhook_id, views))


@routes.post("/partner/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend")
@operation("POST", "/partner/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend",
           summary="Send a delivery's event again", response=DeliveryView, status=202,
           errors=(401, 404), tags=TAGS, security="partnerKey")
async def resend_delivery(request: web.Request) -> web.Response:
    """Queues the delivery's event for this webhook again, now, whatever its status: a new
    delivery (its own id, attempts and retries, `resend_of` naming the original) at the
    top of the log, with the same body and `X-BMM-Event-Id`, so a receiver that already
    has the event can recognise it. No request body."""
    endpoint = await _own_endpoint(request)
    delivery_id = request.match_info["delivery_id"]
    redis = services(request).redis
    original = await wh.load_delivery(redis, endpoint.partner_id, delivery_id)
    if original is None or original.webhook_id != endpoint.webhook_id:
        raise ApiError(404, "not_found", f"no delivery {delivery_id!r} for this webhook")
    again = await wh.resend(redis, original)
    worker = request.app.get(wh.WEBHOOKS)  # this process's, if it runs one (else: <= 1 s)
    if worker is not None:
        worker.wake()
    return json_response(_delivery_view(again), status=202)
