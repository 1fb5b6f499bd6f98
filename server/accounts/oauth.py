"""OAuth 2.0 client credentials for the partner API (RFC 6749 §4.4).

    POST /oauth/token              form: grant_type=client_credentials [&scope=read|read write]
                                   client authentication: HTTP Basic (client_id:client_secret)
                                   or the form fields client_id + client_secret
                                   -> {"access_token", "token_type": "Bearer",
                                       "expires_in": 900, "scope"}
    GET  /.well-known/jwks.json    the public keys tokens are signed with (RFC 7517)
    POST /admin/v1/oauth/rotate    a new signing key (the admin key or an admin user)

The client is an existing API key: `client_id` is its public id (the `key_id` the portal
lists), `client_secret` the key itself. No new kind of credential: the key's scope caps
the token's (a `read` key gets `read` tokens only; asking for more is `invalid_scope`),
its IP allow-list applies to the token request and to every request made with the token,
and revoking the key ends its tokens at once (api_keys.partner_of reads the key on each
request, as it does for the key itself). The token is a JWT (access_tokens.py), valid for
15 minutes; the client asks for a new one, there are no refresh tokens.

Errors are RFC 6749 §5.2 JSON, `{"error": ..., "error_description": ...}`:
`invalid_client` (401, with `WWW-Authenticate: Basic`), `invalid_request`,
`unsupported_grant_type`, `invalid_scope`, `unauthorized_client` (the key's allow-list
refuses this address), all 400. That shape is not the project's error body, so the token
endpoint is described in the OpenAPI document as the token URL of its OAuth 2.0 security
scheme (`partnerOAuth`), where OAuth clients look for it, rather than as an operation
whose errors every generated check would read as ErrorBody.
"""
from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import unquote_plus

import msgspec
from aiohttp import web

from server.accounts import access_tokens, api_keys, signing_keys, users
from server.accounts.bearer_auth import AUTH_KEY_ID
from server.appkeys import services
from server.core import openapi
from server.core.openapi import operation
from server.core.wire import json_response

routes = web.RouteTableDef()

TOKEN_PATH = "/oauth/token"
JWKS_PATH = "/.well-known/jwks.json"
FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 8192
MAX_SECRET_CHARS = 256
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# The OpenAPI document's description of the flow (see the module's docstring).
openapi.SECURITY_SCHEMES.setdefault("partnerOAuth", {
    "type": "oauth2",
    "description": (
        "OAuth 2.0 client credentials: POST /oauth/token (form-encoded, "
        "grant_type=client_credentials) with an API key's key_id as client_id and the key "
        "as client_secret (HTTP Basic or form fields) gives a 15-minute access token (an "
        "ES256 JWT, keys at /.well-known/jwks.json). Send it as `Authorization: Bearer "
        "<token>` wherever a partner API key is accepted. Errors follow RFC 6749 §5.2."),
    "flows": {"clientCredentials": {
        "tokenUrl": TOKEN_PATH,
        "scopes": {"read": "GET the partner API (the only scope of a read key)",
                   "write": "change things too (implies read; write keys only)"}}},
})


class TokenResponse(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
    scope: str


class Jwk(msgspec.Struct):
    kty: str
    crv: str
    x: str
    y: str
    kid: str
    alg: str
    use: str


class Jwks(msgspec.Struct):
    keys: list[Jwk]


class Rotated(msgspec.Struct):
    kid: str                  # the new current signing key
    previous: str | None      # the key it replaced (still verifying for its tokens' lifetime)
    published: list[str]      # every kid the JWKS lists now, current first


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def _oauth_error(exc: _OAuthError) -> web.Response:
    headers = dict(NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="oauth", charset="UTF-8"'
    return json_response({"error": exc.error, "error_description": exc.description},
                         status=exc.status, headers=headers)


def _single(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name, [])
    if len(values) > 1:
        raise _OAuthError(400, "invalid_request", f"{name} is given more than once")
    return values[0] if values else None


def _basic(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise _OAuthError(401, "invalid_client",
                          "authenticate the client with HTTP Basic or the client_id and "
                          "client_secret form fields")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise _OAuthError(401, "invalid_client", "malformed HTTP Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _OAuthError(401, "invalid_client", "malformed HTTP Basic credentials")
    return unquote_plus(client_id), unquote_plus(secret)


async def _form(request: web.Request) -> dict[str, list[str]] | None:
    """The form's fields (None: the body is not a form)."""
    if request.content_type != FORM:
        return None
    if (request.content_length or 0) > MAX_FORM_BYTES:
        raise _OAuthError(400, "invalid_request", "the token request is too large")
    body = await request.read()  # bounded by the app's client_max_size (1 MiB) when chunked
    if len(body) > MAX_FORM_BYTES:
        raise _OAuthError(400, "invalid_request", "the token request is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _OAuthError(400, "invalid_request", "the form is not UTF-8") from None
    form: dict[str, list[str]] = {}
    for pair in text.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            form.setdefault(unquote_plus(name), []).append(unquote_plus(value))
    return form


def _granted(requested: str | None, key: api_keys.KeyRecord) -> frozenset[str]:
    allowed = {"read", "write"} if key.scope == "write" else {"read"}
    if requested is None or not requested.strip():
        return frozenset(allowed)
    scopes = set(requested.split())
    unknown = scopes - {"read", "write"}
    if unknown:
        raise _OAuthError(400, "invalid_scope", f"unknown scope {sorted(unknown)[0]!r} "
                          "(the scopes are read and write)")
    if not scopes <= allowed:
        raise _OAuthError(400, "invalid_scope", "this client's API key is read-only")
    if "write" in scopes:
        scopes.add("read")  # write implies read, as for the key itself
    return frozenset(scopes)


@routes.post(TOKEN_PATH)
async def token(request: web.Request) -> web.Response:
    """The client credentials grant (see the module's docstring)."""
    try:
        return await _token(request)
    except _OAuthError as exc:
        return _oauth_error(exc)


async def _token(request: web.Request) -> web.Response:
    svc = services(request)
    form = await _form(request)
    fields = form or {}
    header = request.headers.get("Authorization")
    if header:
        if _single(fields, "client_secret") is not None:
            raise _OAuthError(400, "invalid_request",
                              "use one client authentication method, not two")
        client_id, secret = _basic(header)
        body_id = _single(fields, "client_id")
        if body_id is not None and body_id != client_id:
            raise _OAuthError(401, "invalid_client", "client_id differs from the credentials")
    else:
        client_id, secret = _single(fields, "client_id") or "", \
            _single(fields, "client_secret") or ""
        if not client_id or not secret:
            raise _OAuthError(401, "invalid_client", "no client authentication (HTTP Basic, "
                              "or the client_id and client_secret form fields)")
    key = None
    if secret.startswith(api_keys.KEY_PREFIX) and len(secret) <= MAX_SECRET_CHARS:
        key = await api_keys.key_record(svc.redis, api_keys.hash_key(secret))
    if key is None or not hmac.compare_digest(key.key_id.encode(), client_id.encode()):
        raise _OAuthError(401, "invalid_client", "unknown client or wrong client secret")
    request[AUTH_KEY_ID] = key.key_id  # the token request counts in the key's usage
    if not api_keys.address_allowed(request, key):
        raise _OAuthError(400, "unauthorized_client",
                          "this API key may not be used from this address")
    if form is None:
        raise _OAuthError(400, "invalid_request",
                          f"the token request is a form ({FORM}), RFC 6749 §4.4.2")
    grant = _single(fields, "grant_type")
    if not grant:
        raise _OAuthError(400, "invalid_request", "grant_type is required")
    if grant != "client_credentials":
        raise _OAuthError(400, "unsupported_grant_type",
                          "only the client_credentials grant is supported")
    scopes = _granted(_single(fields, "scope"), key)
    await api_keys.remember_key_id(svc.redis, key.digest)
    jwt = await access_tokens.mint(svc.redis, svc.settings, key.partner_id, key.key_id, scopes)
    return json_response(TokenResponse(jwt, "Bearer", access_tokens.TOKEN_TTL_S,
                                       access_tokens.scope_string(scopes)), headers=NO_STORE)


@routes.get(JWKS_PATH)
@operation("GET", JWKS_PATH, summary="The public keys access tokens are signed with",
           response=Jwks, tags=("oauth",),
           description="RFC 7517 JWK set: the current ES256 key first, then keys retired by "
                       "a rotation while tokens they signed may still be valid. Pick the key "
                       "by the token header's `kid`; on an unknown kid, fetch this again.")
async def jwks(request: web.Request) -> web.Response:
    keys = await signing_keys.published(services(request).redis)
    return json_response(Jwks([msgspec.convert(k, Jwk) for k in keys]),
                         headers={"Cache-Control": "public, max-age=60"})


@routes.post("/admin/v1/oauth/rotate")
@operation("POST", "/admin/v1/oauth/rotate", summary="Rotate the access-token signing key",
           response=Rotated, errors=(403,), tags=("admin",), security="adminKey",
           description="A new ES256 key signs every token from now on (in every web "
                       "process: they read the current key when they issue). The previous "
                       "key stays in the JWKS and keeps verifying until the tokens it "
                       "signed have expired (15 minutes, plus a margin); older keys are "
                       "dropped. The admin key, or a logged-in admin user with MFA.")
async def rotate(request: web.Request) -> web.Response:
    await users.require_admin(request)
    svc = services(request)
    before = await signing_keys.load(svc.redis)
    ring = await signing_keys.rotate(svc.redis, svc.settings)
    return json_response(Rotated(ring.current, before.current if before else None,
                                 [k.kid for k in ring.keys]))
