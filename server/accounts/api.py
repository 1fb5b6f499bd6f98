"""Customer accounts over HTTP: sign-up, log-in (with TOTP when turned on), log-out, MFA
set-up. (My bookings, the export of my data and deleting the account read booking records:
they are booking/mine_api.py's.)

    POST   /api/accounts               {email, password, name} -> 201, logged in
    POST   /api/login                  {email, password} -> {status: "ok" | "mfa_required"}
    POST   /api/login/mfa              {code} or {recovery_code} -> {status: "ok"}
    POST   /api/logout                 ends this session
    GET    /api/me                     the account
    POST   /api/me/mfa                 start TOTP set-up: otpauth URI + QR code (SVG)
    POST   /api/me/mfa/verify          {code} -> MFA on; the one-time recovery codes
    POST   /api/me/mfa/recovery-codes  {code} -> a fresh set (the old ones stop working)
    DELETE /api/me/mfa                 {code} -> MFA off (customers only)

The session is an encrypted cookie (see accounts.py). Guest checkout (no account) stays.
"""
from __future__ import annotations

import io
from datetime import datetime
from typing import Annotated

import msgspec
import segno
from aiohttp import web

from server.appkeys import services
from server.accounts import users as accounts
from server.accounts.users import User
from server.core.errors import ApiError
from server.accounts.profile_api import get_profile, put_profile
from server.core.openapi import operation
from server.core.wire import json_response, read_json

routes = web.RouteTableDef()
TAGS = ("account",)
SESSION = "sessionCookie"

Email = Annotated[str, msgspec.Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=256)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Code = Annotated[str, msgspec.Meta(min_length=6, max_length=8, pattern=r"^[0-9 ]+$")]
RecoveryCode = Annotated[str, msgspec.Meta(min_length=8, max_length=32)]


# --- wire -------------------------------------------------------------------------------

class SignUp(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    name: Name


class Login(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class MfaLogin(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of `code` (from the authenticator app) or `recovery_code`."""

    code: Code | None = None
    recovery_code: RecoveryCode | None = None


class CodeIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Code


class Me(msgspec.Struct):
    user_id: str
    email: str
    name: str
    role: str
    mfa_enabled: bool
    mfa_setup_required: bool  # partners and admins: set up MFA before anything else works
    created_at: datetime
    partner_id: str | None = None
    recovery_codes_left: int = 0


class LoginResult(msgspec.Struct):
    status: str  # "ok" | "mfa_required"
    user: Me | None = None


class LoggedOut(msgspec.Struct):
    logged_out: bool = True


class MfaSetup(msgspec.Struct):
    otpauth_uri: str  # for the authenticator app (the QR code encodes it)
    secret: str       # the same secret, to type in by hand
    qr_svg: str       # an SVG image of the QR code


class RecoveryCodes(msgspec.Struct):
    recovery_codes: list[str]  # shown once; each works once
    user: Me


class MfaOff(msgspec.Struct):
    mfa_enabled: bool = False


def me_view(user: User) -> Me:
    return Me(user.user_id, user.email, user.name, user.role, user.mfa_enabled,
              user.needs_mfa_setup, user.created_at, user.partner_id,
              len(user.recovery_codes))


def _secret(request: web.Request) -> str:
    return services(request).settings.secret


# --- sign-up, log-in, log-out ------------------------------------------------------------

@routes.post("/api/accounts")
@operation("POST", "/api/accounts", summary="Sign up (customer) and log in",
           request=SignUp, response=Me, status=201, errors=(403, 409), tags=TAGS)
async def sign_up(request: web.Request) -> web.Response:
    """409 `email_taken` if the address has an account. The password (8+ characters) is
    stored as an argon2id hash. Sets the session cookie."""
    accounts.same_origin(request)
    body = await read_json(request, SignUp)
    user = await accounts.new_user(body.email, body.name, "customer", body.password)
    await accounts.create_user(services(request).redis, user)
    await accounts.start_session(request, user)
    return json_response(me_view(user), status=201)


@routes.post("/api/login")
@operation("POST", "/api/login", summary="Log in with e-mail and password",
           request=Login, response=LoginResult, errors=(401, 403, 429), tags=TAGS)
async def log_in(request: web.Request) -> web.Response:
    """`status: "ok"`: logged in. `status: "mfa_required"`: the password was right and the
    account has MFA: send the code to `POST /api/login/mfa` within 5 minutes. 401
    `invalid_credentials` for a wrong address or password (the same answer for both);
    429 `too_many_attempts` after 5 failures for an address within 15 minutes."""
    accounts.same_origin(request)
    body = await read_json(request, Login)
    redis = services(request).redis
    client = accounts.login_client(request)
    await accounts.check_throttle(redis, body.email, client)
    user = await accounts.user_by_email(redis, body.email)
    ok = await accounts.verify_password(user.password_hash if user else None, body.password)
    if not ok or user is None:
        await accounts.record_failure(redis, body.email, client)
        raise ApiError(401, "invalid_credentials", "wrong e-mail address or password")
    if user.mfa_enabled:
        await accounts.start_mfa_challenge(request, user)
        return json_response(LoginResult("mfa_required"))
    await accounts.clear_failures(redis, body.email, client)
    await accounts.start_session(request, user)
    return json_response(LoginResult("ok", me_view(user)))


@routes.post("/api/login/mfa")
@operation("POST", "/api/login/mfa", summary="Finish a log-in with a TOTP or recovery code",
           request=MfaLogin, response=LoginResult, errors=(401, 403, 429), tags=TAGS)
async def log_in_mfa(request: web.Request) -> web.Response:
    """After `POST /api/login` answered `mfa_required`. A code works once; a recovery code
    is used up. Wrong codes count towards the same 5-per-15-minutes limit as passwords."""
    accounts.same_origin(request)
    body = await read_json(request, MfaLogin)
    if (body.code is None) == (body.recovery_code is None):
        raise ApiError(422, "invalid", 'give exactly one of "code" or "recovery_code"')
    redis = services(request).redis
    user_id = await accounts.mfa_challenge(request)
    user = await accounts.load_user(redis, user_id) if user_id else None
    if user is None or not user.mfa_enabled or \
            await accounts.mfa_challenge_version(request) != user.session_version:
        raise ApiError(401, "login_required", "log in with your password first")
    client = accounts.login_client(request)
    await accounts.check_throttle(redis, user.email, client)
    if body.code is not None:
        ok = await accounts.use_totp(redis, _secret(request), user, body.code)
    else:
        ok = await accounts.use_recovery_code(redis, _secret(request), user.user_id,
                                              body.recovery_code)
    if not ok:
        await accounts.record_failure(redis, user.email, client)
        raise ApiError(401, "invalid_code", "that code is not valid")
    await accounts.clear_failures(redis, user.email, client)
    user = await accounts.load_user(redis, user.user_id) or user
    await accounts.start_session(request, user)
    return json_response(LoginResult("ok", me_view(user)))


@routes.post("/api/logout")
@operation("POST", "/api/logout", summary="Log out (end this session)", response=LoggedOut,
           tags=TAGS)
async def log_out(request: web.Request) -> web.Response:
    accounts.same_origin(request)
    await accounts.end_session(request)
    return json_response(LoggedOut())


@routes.post("/api/logout/everywhere")
@operation("POST", "/api/logout/everywhere", summary="Log out of every session",
           response=LoggedOut, errors=(401,), tags=TAGS, security=SESSION)
async def log_out_everywhere(request: web.Request) -> web.Response:
    """Ends every session of this account, on every device, this one included (a copied
    cookie stops working at once)."""
    user = await accounts.require_user(request)
    redis = services(request).redis

    def bump(u: User) -> None:
        u.session_version += 1

    await accounts.update_user(redis, user.user_id, bump)
    await accounts.end_all_sessions(redis, user.user_id)
    await accounts.end_session(request)
    return json_response(LoggedOut())


class PasswordChange(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    new_password: Password


@routes.post("/api/me/password")
@operation("POST", "/api/me/password", summary="Change my password", request=PasswordChange,
           response=Me, errors=(401, 422, 429), tags=TAGS, security=SESSION)
async def change_password(request: web.Request) -> web.Response:
    """Needs the current password. Every other session of the account ends; this one goes
    on with a new session."""
    user = await accounts.require_user(request)
    body = await read_json(request, PasswordChange)
    redis = services(request).redis
    client = accounts.login_client(request)
    await accounts.check_throttle(redis, user.email, client)
    if not await accounts.verify_password(user.password_hash, body.current_password):
        await accounts.record_failure(redis, user.email, client)
        raise ApiError(401, "invalid_credentials", "the current password is not right")
    new_hash = await accounts.hash_password(body.new_password)

    def change(u: User) -> None:
        u.password_hash = new_hash
        u.session_version += 1

    user = await accounts.update_user(redis, user.user_id, change)
    await accounts.end_all_sessions(redis, user.user_id)
    await accounts.start_session(request, user)
    return json_response(me_view(user))


# --- me --------------------------------------------------------------------------------

@routes.get("/api/me")
@operation("GET", "/api/me", summary="My account", response=Me, tags=TAGS, security=SESSION)
async def get_me(request: web.Request) -> web.Response:
    return json_response(me_view(await accounts.require_user(request)))


routes.get("/api/me/profile")(get_profile)  # phone and identity numbers (profile_api.py)
routes.put("/api/me/profile")(put_profile)

# --- MFA set-up ---------------------------------------------------------------------------

def qr_svg(data: str) -> str:
    out = io.BytesIO()
    segno.make(data, error="m").save(out, kind="svg", scale=4, border=2, xmldecl=False,
                                     svgns=True, title="Scan with your authenticator app")
    return out.getvalue().decode()


@routes.post("/api/me/mfa")
@operation("POST", "/api/me/mfa", summary="Start TOTP set-up (QR code)", response=MfaSetup,
           errors=(409,), tags=TAGS, security=SESSION)
async def mfa_setup(request: web.Request) -> web.Response:
    """A new TOTP secret (pending until verified): scan the QR code, then send a code to
    `POST /api/me/mfa/verify`. 409 if MFA is on already."""
    user = await accounts.require_user(request)
    secret = _secret(request)
    totp_secret = accounts.new_totp_secret()

    def start(u: User) -> None:
        if u.mfa_enabled:
            raise ApiError(409, "mfa_enabled", "two-factor authentication is on already")
        u.mfa_pending = accounts.seal(secret, totp_secret)

    await accounts.update_user(services(request).redis, user.user_id, start)
    uri = accounts.otpauth_uri(totp_secret, user.email)
    return json_response(MfaSetup(uri, totp_secret, qr_svg(uri)))


@routes.post("/api/me/mfa/verify")
@operation("POST", "/api/me/mfa/verify", summary="Turn MFA on with a first code",
           request=CodeIn, response=RecoveryCodes, errors=(401, 409), tags=TAGS,
           security=SESSION)
async def mfa_verify(request: web.Request) -> web.Response:
    """A code from the app proves the secret was stored; MFA is then on and the response
    carries 10 one-time recovery codes (shown only here; stored as HMAC digests). Other
    sessions of this account end."""
    user = await accounts.require_user(request)
    body = await read_json(request, CodeIn)
    redis, secret = services(request).redis, _secret(request)
    if user.mfa_enabled:
        raise ApiError(409, "mfa_enabled", "two-factor authentication is on already")
    if not user.mfa_pending:
        raise ApiError(409, "mfa_not_started", "start with POST /api/me/mfa")
    if not await accounts.use_totp(redis, secret, user, body.code, pending=True):
        raise ApiError(401, "invalid_code", "that code is not valid; check the device's clock")
    codes = accounts.new_recovery_codes()
    pending = user.mfa_pending

    def turn_on(u: User) -> None:
        if u.mfa_pending != pending:
            raise ApiError(409, "mfa_changed", "the set-up was restarted; scan the new code")
        u.mfa_secret, u.mfa_pending, u.mfa_enabled = u.mfa_pending, None, True
        u.recovery_codes = [accounts.recovery_digest(secret, c) for c in codes]
        u.session_version += 1

    user = await accounts.update_user(redis, user.user_id, turn_on)
    await accounts.start_session(request, user)
    return json_response(RecoveryCodes(codes, me_view(user)))


@routes.post("/api/me/mfa/recovery-codes")
@operation("POST", "/api/me/mfa/recovery-codes", summary="New recovery codes",
           request=CodeIn, response=RecoveryCodes, errors=(401, 409), tags=TAGS,
           security=SESSION)
async def new_recovery_codes(request: web.Request) -> web.Response:
    """Needs a current TOTP code; the previous recovery codes stop working."""
    user = await accounts.require_user(request)
    body = await read_json(request, CodeIn)
    redis, secret = services(request).redis, _secret(request)
    if not user.mfa_enabled:
        raise ApiError(409, "mfa_not_enabled", "two-factor authentication is off")
    if not await accounts.use_totp(redis, secret, user, body.code):
        raise ApiError(401, "invalid_code", "that code is not valid")
    codes = accounts.new_recovery_codes()

    def replace(u: User) -> None:
        u.recovery_codes = [accounts.recovery_digest(secret, c) for c in codes]

    user = await accounts.update_user(redis, user.user_id, replace)
    return json_response(RecoveryCodes(codes, me_view(user)))


@routes.delete("/api/me/mfa")
@operation("DELETE", "/api/me/mfa", summary="Turn MFA off (customers)", request=CodeIn,
           response=MfaOff, errors=(401, 403, 409), tags=TAGS, security=SESSION)
async def mfa_off(request: web.Request) -> web.Response:
    """Needs a current TOTP code. Partners and admins cannot turn it off (403)."""
    user = await accounts.require_user(request)
    body = await read_json(request, CodeIn)
    redis, secret = services(request).redis, _secret(request)
    if user.role != "customer":
        raise ApiError(403, "mfa_required", "partner and admin accounts must keep MFA on")
    if not user.mfa_enabled:
        raise ApiError(409, "mfa_not_enabled", "two-factor authentication is off")
    if not await accounts.use_totp(redis, secret, user, body.code):
        raise ApiError(401, "invalid_code", "that code is not valid")

    def turn_off(u: User) -> None:
        u.mfa_enabled, u.mfa_secret, u.mfa_pending, u.recovery_codes = False, None, None, []
        u.session_version += 1

    user = await accounts.update_user(redis, user.user_id, turn_off)
    await accounts.start_session(request, user)
    return json_response(MfaOff())

