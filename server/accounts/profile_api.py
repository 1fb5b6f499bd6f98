"""The customer's sensitive personal data: phone number and identity number.

`GET/PUT /api/me/profile` (routed with the rest of /api/me in account_api.py). Stored sealed (AES-256-GCM with the data key, bound to the
user id and field; server/core/pii.py) in the user record; only the owner's session reads it
back in clear. Export includes it; deleting the account deletes the record and with it
the ciphertexts.
"""
from __future__ import annotations

import msgspec
from aiohttp import web

from server.appkeys import services
from server.accounts import users as accounts
from server.core import pii
from server.accounts.users import User
from server.core.openapi import operation
from server.core.wire import json_response, read_json

TAGS = ("account",)


class Profile(msgspec.Struct):
    phone: str | None = None
    id_number: str | None = None


class ProfileIn(msgspec.Struct, forbid_unknown_fields=True):
    """Both fields are replaced: a missing or null one is removed."""

    phone: pii.Phone | None = None
    id_number: pii.IdNumber | None = None


def context(user_id: str, field: str) -> str:
    return f"user:{user_id}:{field}"


def profile_of(settings: object, user: User) -> Profile:
    return Profile(pii.unseal(settings, user.phone, context(user.user_id, "phone")),
                   pii.unseal(settings, user.id_number, context(user.user_id, "id_number")))


@operation("GET", "/api/me/profile", summary="My phone and identity numbers",
           response=Profile, tags=TAGS, security="sessionCookie")
async def get_profile(request: web.Request) -> web.Response:
    user = await accounts.require_user(request)
    return json_response(profile_of(services(request).settings, user))


@operation("PUT", "/api/me/profile", summary="Set my phone and identity numbers",
           request=ProfileIn, response=Profile, errors=(403, 503), tags=TAGS,
           security="sessionCookie")
async def put_profile(request: web.Request) -> web.Response:
    """Encrypted at rest with the platform's data key; 503 `no_data_key` if the server has
    none configured."""
    accounts.same_origin(request)
    user = await accounts.require_user(request)
    body = await read_json(request, ProfileIn)
    settings = services(request).settings
    phone = pii.normalise_phone(body.phone) if body.phone else None
    sealed_phone = pii.seal(settings, phone, context(user.user_id, "phone"))
    sealed_id = pii.seal(settings, body.id_number.upper() if body.id_number else None,
                         context(user.user_id, "id_number"))

    def change(u: User) -> None:
        u.phone, u.id_number = sealed_phone, sealed_id

    updated = await accounts.update_user(services(request).redis, user.user_id, change)
    return json_response(profile_of(settings, updated))
