"""Partner webhook endpoints (API key in `Authorization: Bearer`):

    POST   /partner/v1/webhooks                      {url, events?, description?}
                                                     -> 201 with the signing secret (shown once)
    GET    /partner/v1/webhooks                      your endpoints (no secrets)
    GET    /partner/v1/webhooks/{webhook_id}         one endpoint
    DELETE /partner/v1/webhooks/{webhook_id}         -> 200 {webhook_id, deleted: true}
    GET    /partner/v1/webhooks/{webhook_id}/deliveries?limit=50
                                                     the delivery log: attempts, status codes,
                                                     next retry (newest first)

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


class WebhookList(msgspec.Struct):
    webhooks: list[Webhook]


class WebhookDeleted(msgspec.Struct):
    webhook_id: str
    deleted: bool


class DeliveryAttempt(msgspec.Struct):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryView(msgspec.Struct):
    delivery_id: str
    event_id: str
    event_type: str
    status: str            # pending | delivered | failed
    created_at: datetime
    attempts: list[DeliveryAttempt]
    next_retry_at: datetime | None


class DeliveryList(msgspec.Struct):
    webhook_id: str
    deliveries: list[DeliveryView]


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


def _view(endpoint: wh.Endpoint) -> Webhook:
    return Webhook(endpoint.webhook_id, endpoint.url, endpoint.events, endpoint.description,
                   endpoint.created_at)


async def _own_endpoint(request: web.Request) -> wh.Endpoint:
    partner = await _partner(request)
    webhook_id = request.match_info["webhook_id"]
    endpoint = await wh.load_endpoint(services(request).redis, webhook_id)
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
    endpoint = await wh.create_endpoint(services(request).redis, partner, url, events,
                                        body.description)
    if endpoint is None:
        raise ApiError(409, "too_many_webhooks",
                       f"at most {wh.MAX_ENDPOINTS} webhooks per partner; delete one first")
    created = WebhookCreated(endpoint.webhook_id, endpoint.url, endpoint.events,
                             endpoint.description, endpoint.created_at, endpoint.secret)
    return json_response(created, status=201)


@routes.get("/partner/v1/webhooks")
@operation("GET", "/partner/v1/webhooks", summary="Your webhooks", response=WebhookList,
           errors=(401,), tags=TAGS, security="partnerKey")
async def list_webhooks(request: web.Request) -> web.Response:
    partner = await _partner(request)
    endpoints = await wh.partner_endpoints(services(request).redis, partner)
    return json_response(WebhookList([_view(e) for e in endpoints]))


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
           summary="A webhook's delivery log", response=DeliveryList, errors=(401, 404, 422),
           tags=TAGS, security="partnerKey",
           params=(Query("limit", int, description="newest first; 1-200, default 50"),))
async def list_deliveries(request: web.Request) -> web.Response:
    """Every delivery with its attempts (time, HTTP status or error, duration), its status
    (pending / delivered / failed) and, while pending, when it is retried next."""
    endpoint = await _own_endpoint(request)
    raw = request.query.get("limit", "50")
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 200:
        raise ApiError(422, "invalid_limit", "limit must be 1-200", field="limit")
    deliveries = await wh.endpoint_deliveries(services(request).redis, endpoint.webhook_id,
                                              limit)
    views = [DeliveryView(d.delivery_id, d.event_id, d.event_type, d.status, d.created_at,
                          [DeliveryAttempt(a.at, a.status_code, a.error, a.duration_ms)
                           for a in d.attempts], d.next_retry_at) for d in deliveries]
    return json_response(DeliveryList(endpoint.webhook_id, views))
