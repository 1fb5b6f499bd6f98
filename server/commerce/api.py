"""Offers and promo codes: partners make their own, the platform admin makes platform-wide ones.

    POST /partner/v1/offers                          {name, rule, scope?, valid_from?, valid_until?}
    GET  /partner/v1/offers
    POST /partner/v1/offers/{offer_id}/disable
    POST /partner/v1/promo-codes                     {code, name, percent_off | amount_off, scope?,
                                                      valid_from?, valid_until?, max_uses?,
                                                      max_uses_per_customer?}
    GET  /partner/v1/promo-codes                     with usage (used, reserved by live holds)
    POST /partner/v1/promo-codes/{code}/disable
    ... and the same under /admin/v1/ with the admin key (platform offers, every partner's shows)

A partner's offers and codes only ever apply to that partner's own shows (whatever their
scope says); the platform's apply to every show in scope. Rules, scopes and how offers
combine: server/commerce/pricing.py. Offers are never deleted, only disabled, so what a booking was
quoted stays explainable. A disabled offer or code no longer applies to new holds; holds
already quoted keep their price.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, TypeVar

import msgspec
from aiohttp import web

from server.core.clock import now_ms
from server.appkeys import services
from server.accounts import api_keys as auth
from server.commerce import offers as store
from server.core.errors import ApiError
from server.core.openapi import Query, operation
from server.core.pagination import decode_cursor, encode_cursor, limit_of
from server.commerce.pricing import Offer, PromoCode, Rule, Scope
from server.core.wire import json_response, read_json

T = TypeVar("T")

routes = web.RouteTableDef()

TAGS_PARTNER = ("partner", "offers")
TAGS_ADMIN = ("admin", "offers")

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Code = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{3,32}$")]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class OfferIn(msgspec.Struct, forbid_unknown_fields=True):
    """`rule`: `{"type": "nth_ticket", "n": 3, "percent_off": 50}` or `{"type":
    "time_window", "start": "12:00", "end": "17:00", "percent_off": 20}` (theatre-local)."""

    name: Name
    rule: Rule
    scope: Scope = Scope()
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None


class PromoIn(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of `percent_off` (1-100) or `amount_off` (minor units per ticket)."""

    code: Code  # case-insensitive; stored upper-case, unique across the platform
    name: Name
    percent_off: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    amount_off: Annotated[int, msgspec.Meta(ge=1)] | None = None
    scope: Scope = Scope()
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    max_uses: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_uses_per_customer: Annotated[int, msgspec.Meta(ge=1)] | None = None


class OfferList(msgspec.Struct):
    offers: list[Offer]  # this page (as `items`, kept for earlier clients)
    items: list[Offer] = []
    next_cursor: str | None = None


class PromoView(msgspec.Struct):
    promo: PromoCode
    used: int      # bookings paid with it
    reserved: int  # live holds that reserved a use


class PromoList(msgspec.Struct):
    promo_codes: list[PromoView]  # this page (as `items`, kept for earlier clients)
    items: list[PromoView] = []
    next_cursor: str | None = None


def _check_period(valid_from: datetime | None, valid_until: datetime | None, scope: Scope
                  ) -> None:
    if valid_from and valid_until and valid_until <= valid_from:
        raise ApiError(422, "invalid", "valid_until must be after valid_from")
    if scope.dates_from and scope.dates_to and scope.dates_to < scope.dates_from:
        raise ApiError(422, "invalid", "scope.dates_to must not be before scope.dates_from")


async def _owner(request: web.Request, admin: bool) -> str | None:
    if admin:
        auth.require_admin(request, services(request).settings.admin_key)
        return None
    return await auth.partner_of(request, services(request).redis)


# --- handlers shared by the partner and admin routes -----------------------------------

async def _create_offer(request: web.Request, admin: bool) -> web.Response:
    owner = await _owner(request, admin)
    body = await read_json(request, OfferIn)
    _check_period(body.valid_from, body.valid_until, body.scope)
    offer = Offer(store.new_offer_id(), body.name, body.rule, body.scope, body.valid_from,
                  body.valid_until, owner, True)
    await store.save_offer(services(request).redis, offer)
    services(request).show_cache.invalidate()  # this process's next hold sees it at once
    return json_response(offer, status=201)


_PAGE = (Query("limit", description="page size, 1-200 (default 50)"),
         Query("cursor", description="the previous page's next_cursor"))


def _page(request: web.Request, items: list[T], key: Callable[[T], str]
          ) -> tuple[list[T], str | None]:
    """One cursor page of a partner's (small) list, in key order."""
    secret = services(request).settings.secret
    after, limit = decode_cursor(secret, request), limit_of(request)
    ordered = sorted(items, key=key)
    if after is not None:
        ordered = [i for i in ordered if key(i) > str(after)]
    page = ordered[:limit]
    more = len(ordered) > limit
    return page, encode_cursor(secret, key(page[-1])) if more and page else None


async def _list_offers(request: web.Request, admin: bool) -> web.Response:
    owner = await _owner(request, admin)
    offers, nxt = _page(request, await store.list_offers(services(request).redis, owner),
                        lambda o: o.offer_id)
    return json_response(OfferList(offers, offers, nxt))


async def _disable_offer(request: web.Request, admin: bool) -> web.Response:
    owner = await _owner(request, admin)
    redis = services(request).redis
    offer = await store.get_offer(redis, owner, request.match_info["offer_id"])
    if offer is None:
        raise ApiError(404, "not_found", "no such offer of yours")
    offer = msgspec.structs.replace(offer, active=False)
    await store.save_offer(redis, offer)
    services(request).show_cache.invalidate()
    return json_response(offer)


async def _view(request: web.Request, promo: PromoCode) -> PromoView:
    usage = await store.usage(services(request).redis, promo.code,
                              now_ms())
    return PromoView(promo, usage.used, usage.reserved)


async def _create_promo(request: web.Request, admin: bool) -> web.Response:
    owner = await _owner(request, admin)
    body = await read_json(request, PromoIn)
    if (body.percent_off is None) == (body.amount_off is None):
        raise ApiError(422, "invalid", 'give exactly one of "percent_off" or "amount_off"')
    _check_period(body.valid_from, body.valid_until, body.scope)
    promo = PromoCode(store.normalise_code(body.code), body.name, body.percent_off,
                      body.amount_off, body.scope, body.valid_from, body.valid_until,
                      body.max_uses, body.max_uses_per_customer, owner, True)
    if not await store.create_promo(services(request).redis, promo):
        raise ApiError(409, "code_taken", f"the promo code {promo.code!r} exists already")
    return json_response(await _view(request, promo), status=201)


async def _list_promos(request: web.Request, admin: bool) -> web.Response:
    owner = await _owner(request, admin)
    promos, nxt = _page(request, await store.list_promos(services(request).redis, owner),
                        lambda p: p.code)
    views = [await _view(request, p) for p in promos]
    return json_response(PromoList(views, views, nxt))


async def _disable_promo(request: web.Request, admin: bool) -> web.Response:
    owner = await _owner(request, admin)
    redis = services(request).redis
    promo = await store.get_promo(redis, request.match_info["code"])
    if promo is None or promo.partner_id != owner:
        raise ApiError(404, "not_found", "no such promo code of yours")
    promo = msgspec.structs.replace(promo, active=False)
    await store.save_promo(redis, promo)
    return json_response(await _view(request, promo))


# --- routes ----------------------------------------------------------------------------

def _register(prefix: str, admin: bool, tags: tuple[str, ...]) -> None:
    who = "the platform's" if admin else "your"

    async def create_offer(request: web.Request) -> web.Response:
        return await _create_offer(request, admin)

    async def list_offers(request: web.Request) -> web.Response:
        return await _list_offers(request, admin)

    async def disable_offer(request: web.Request) -> web.Response:
        return await _disable_offer(request, admin)

    async def create_promo(request: web.Request) -> web.Response:
        return await _create_promo(request, admin)

    async def list_promos(request: web.Request) -> web.Response:
        return await _list_promos(request, admin)

    async def disable_promo(request: web.Request) -> web.Response:
        return await _disable_promo(request, admin)

    table = [
        ("POST", f"{prefix}/offers", create_offer, f"Create one of {who} offers",
         dict(request=OfferIn, response=Offer, status=201, errors=(401, 403, 422))),
        ("GET", f"{prefix}/offers", list_offers, f"List {who} offers",
         dict(response=OfferList, errors=(401, 403, 422), params=_PAGE)),
        ("POST", f"{prefix}/offers/{{offer_id}}/disable", disable_offer,
         f"Disable one of {who} offers", dict(response=Offer, errors=(401, 403, 404))),
        ("POST", f"{prefix}/promo-codes", create_promo, f"Create one of {who} promo codes",
         dict(request=PromoIn, response=PromoView, status=201, errors=(401, 403, 409, 422))),
        ("GET", f"{prefix}/promo-codes", list_promos, f"List {who} promo codes with usage",
         dict(response=PromoList, errors=(401, 403, 422), params=_PAGE)),
        ("POST", f"{prefix}/promo-codes/{{code}}/disable", disable_promo,
         f"Disable one of {who} promo codes", dict(response=PromoView, errors=(401, 403, 404))),
    ]
    for method, path, handler, summary, kw in table:
        handler.__doc__ = f"{summary}. See server/commerce/api.py and server/commerce/pricing.py."
        operation(method, path, summary=summary, tags=tags, **kw)(handler)
        routes.route(method, path)(handler)


_register("/partner/v1", False, TAGS_PARTNER)
_register("/admin/v1", True, TAGS_ADMIN)
