"""Accounts: customers, partner users and platform admins; login sessions; TOTP MFA.

Other modules use three things from here:

    user = await current_user(request)            # the logged-in User, or None
    user = await require_role(request, "customer") # 401 not logged in, 403 wrong role
    await link_booking(redis, user.user_id, booking_id, created_ms)  # "my bookings"

Storage (Redis). A customer's own keys share the hash tag `{u:<user_id>}`, so one
customer's transactions stay in one Redis Cluster slot and customers spread over the
masters:

- `user:{u:<user_id>}` -> a `User` record (msgspec JSON). Passwords are argon2id hashes;
  the TOTP secret is encrypted at rest (Fernet, key derived from `settings.secret`);
  recovery codes are kept as HMAC-SHA256 digests only (each works once). An empty value is
  a tombstone: the id's sign-up lost its e-mail address (see `create_user`).
- `user:{u:<user_id>}:bookings` -> sorted set of booking ids by creation time.
- `user:{u:<user_id>}:sessions` -> hash of live session ids (the cookie names one); a
  cookie whose session is not there is logged out.
- `totpused:{u:<user_id>}:<code>` -> a TOTP code that was used (for 2 minutes: no replay).
- `useremail:{e:<normalised email>}` -> user id (one account per e-mail address). Looked up
  by address, so it cannot share the customer's slot: it is written in ordered steps
  (`create_user`), and an entry whose user record is missing or names another address is
  stale: nobody's, free to take over.
- `loginfail:<sha256(email)>[:<client>]`, `loginfail:client:<client>` -> failed attempts
  in the current 15-minute window (one key per counter, each on its own).

Sessions live in an encrypted, authenticated cookie (aiohttp-session's
EncryptedCookieStorage = Fernet: AES-CBC + HMAC-SHA256, keyed from `settings.secret`
through HKDF). A tampered cookie fails to decrypt and the request is anonymous. The
cookie carries the user id and the user's `session_version`; logging out everywhere,
deleting the account or changing MFA bumps the version and so ends every old session.

Roles: `customer`, `partner` (acts for one partner id: its own theatres only) and `admin`
(the platform). Partner and admin users must have MFA turned on before any role-guarded
endpoint answers them (403 `mfa_required`); they may log in to set it up.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Literal, TypeVar

import msgspec
import pyotp
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp_session import Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.exceptions import WatchError

from server.accounts import bearer_auth
from server.appkeys import services
from server.core.client_address import client_ip, trusted_networks
from server.core.errors import ApiError

T = TypeVar("T")

Role = Literal["customer", "partner", "admin"]
ROLES: tuple[str, ...] = ("customer", "partner", "admin")
MFA_REQUIRED_ROLES = frozenset({"partner", "admin"})

SESSION_COOKIE = "bmm_session"
SESSION_MAX_AGE_S = 14 * 24 * 3600
MFA_PENDING_S = 300              # a password-checked login waits this long for its code
LOGIN_MAX_FAILURES = 5           # per account and client address ...
# per client address, any accounts: a backstop against stuffing from one address, high
# enough for a campus or a carrier NAT (the per-IP write buckets throttle before it)
LOGIN_CLIENT_MAX_FAILURES = 1000
LOGIN_WINDOW_S = 15 * 60         # ... per 15 minutes, then 429
RECOVERY_CODES = 10
TOTP_ISSUER = "Book My Movie"

_hasher = PasswordHasher()  # argon2id, the library's (RFC 9106 based) defaults


# --- keys derived from settings.secret ----------------------------------------------

def derive_key(secret: str, purpose: str) -> bytes:
    """32 bytes for one purpose, from the platform secret (HKDF-SHA256): the cookie key,
    the TOTP-secret key and the recovery-code key are independent of each other and of
    the HMAC key the e-tickets use."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"book-my-movie",
                info=f"bmm:{purpose}".encode()).derive(secret.encode())


def session_storage(secret: str, *, secure: bool | None = None) -> EncryptedCookieStorage:
    return EncryptedCookieStorage(
        derive_key(secret, "session-cookie"), cookie_name=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE_S, httponly=True, samesite="Lax", secure=secure)


def middleware(secret: str, *, secure: bool = False):  # noqa: ANN201 (an aiohttp middleware)
    """The session middleware for app.py. Cheap for requests that never look at the
    session: the cookie is decrypted only when a handler asks for it."""
    return session_middleware(session_storage(secret, secure=secure or None))


def _fernet(secret: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(derive_key(secret, "totp-secret")))


def recovery_digest(secret: str, code: str) -> str:
    normal = code.strip().lower().replace("-", "").replace(" ", "")
    return hmac.new(derive_key(secret, "recovery-code"), normal.encode(),
                    hashlib.sha256).hexdigest()


# --- records --------------------------------------------------------------------------

class User(msgspec.Struct, kw_only=True):
    user_id: str
    email: str
    name: str
    role: Role = "customer"
    password_hash: str
    created_at: datetime
    partner_id: str | None = None        # partner users: the partner they act for
    mfa_enabled: bool = False
    mfa_secret: str | None = None        # Fernet token of the base32 TOTP secret
    mfa_pending: str | None = None       # set-up started, not yet verified
    recovery_codes: list[str] = []       # HMAC digests of the unused recovery codes
    session_version: int = 1
    # Personal data, AES-GCM sealed with the data key (server/core/pii.py); never plaintext here.
    phone: str | None = None
    id_number: str | None = None

    @property
    def needs_mfa_setup(self) -> bool:
        return self.role in MFA_REQUIRED_ROLES and not self.mfa_enabled


_user_decoder = msgspec.json.Decoder(User)


def user_key(user_id: str) -> str:
    return f"user:{{u:{user_id}}}"


def email_key(email: str) -> str:
    return f"useremail:{{e:{normalise_email(email)}}}"


def user_bookings_key(user_id: str) -> str:
    return f"user:{{u:{user_id}}}:bookings"


def fail_key(email: str, client: str = "") -> str:
    """Failed log-ins of this account from this client (L2: counted per client, so a
    stranger who knows the address cannot lock its owner out from elsewhere)."""
    base = f"loginfail:{hashlib.sha256(normalise_email(email).encode()).hexdigest()}"
    return base + (f":{hashlib.sha256(client.encode()).hexdigest()[:16]}" if client else "")


def client_fail_key(client: str) -> str:
    """Failed log-ins from this client, whatever the account (credential stuffing)."""
    return f"loginfail:client:{hashlib.sha256(client.encode()).hexdigest()[:16]}"


def login_client(request: web.Request) -> str:
    """Who is trying: the client address through the trusted proxies."""
    trusted = trusted_networks(services(request).settings.trusted_proxies)
    return client_ip(request.remote, request.headers.get("X-Forwarded-For"), trusted)


def totp_used_key(user_id: str, code: str) -> str:
    return f"totpused:{{u:{user_id}}}:{code}"


def normalise_email(email: str) -> str:
    return email.strip().lower()


def new_user_id() -> str:
    return f"u_{secrets.token_hex(8)}"


def now() -> datetime:
    return datetime.now(UTC)


# --- passwords --------------------------------------------------------------------------

# argon2 runs in a pool of its own (M1): in the default executor, a log-in flood queued
# ahead of the hold path's and /readyz's work. Bounded, and beyond its queue a request is
# shed at once (503 + Retry-After) instead of waiting behind the flood.
HASH_THREADS = 2
HASH_QUEUE = 32
_hash_pool = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="argon2")
_hash_waiting = 0


async def _in_hash_pool(fn: Callable[[], T]) -> T:
    global _hash_waiting
    if _hash_waiting >= HASH_THREADS + HASH_QUEUE:
        raise ApiError(503, "busy", "too many log-ins at once; try again in a moment",
                       retry_after_s=1)
    _hash_waiting += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_hash_pool, fn)
    finally:
        _hash_waiting -= 1


async def hash_password(password: str) -> str:
    return await _in_hash_pool(lambda: _hasher.hash(password))


async def new_user(email: str, name: str, role: Role, password: str) -> User:
    """A new user record (not yet stored): fresh id, normalised e-mail, trimmed name,
    argon2id password hash."""
    return User(user_id=new_user_id(), email=normalise_email(email), name=name.strip(),
                role=role, password_hash=await hash_password(password), created_at=now())


_DUMMY_HASH: str | None = None


async def verify_password(password_hash: str | None, password: str) -> bool:
    """argon2 verify in a worker thread (it is deliberately slow). With no hash (no such
    user) a dummy hash is verified so both answers take the same time."""
    global _DUMMY_HASH
    if password_hash is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = await hash_password(secrets.token_hex(16))
        password_hash = _DUMMY_HASH

    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await _in_hash_pool(check)


# --- users in Redis ---------------------------------------------------------------------

async def load_user(redis: aioredis.Redis, user_id: str) -> User | None:
    raw = await redis.get(user_key(user_id))
    return _user_decoder.decode(raw) if raw else None  # b"": a tombstone, no user


async def user_by_email(redis: aioredis.Redis, email: str) -> User | None:
    """The account of this address. An index entry whose record is missing (a sign-up that
    did not finish, a deleted account) or names another address is stale: no account."""
    user_id = await redis.get(email_key(email))
    user = await load_user(redis, user_id.decode()) if user_id else None
    return user if user is not None and user.email == normalise_email(email) else None


async def email_taken(redis: aioredis.Redis, email: str) -> bool:
    """Whether the address has an account (a stale index entry does not count)."""
    return await user_by_email(redis, email) is not None


# Compare-and-set on the e-mail index entry alone (one key, one slot).
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
  return 1
end
return 0
"""
TOMBSTONE_S = 24 * 3600  # outlives any sign-up that is still between its two steps


async def _claim_is_live(redis: aioredis.Redis, owner_id: str, email: str) -> bool:
    """Whether the index entry naming `owner_id` holds `email` for a real account. A
    missing record is fenced off first (a tombstone, SET NX): its sign-up, if it is still
    running, can then no longer write it and answers 409, so the entry is truly free."""
    while True:
        raw = await redis.get(user_key(owner_id))
        if raw is None:
            if await redis.set(user_key(owner_id), b"", nx=True, ex=TOMBSTONE_S):
                return False
            continue  # its sign-up wrote the record just now: read it
        return bool(raw) and _user_decoder.decode(raw).email == normalise_email(email)


async def create_user(redis: aioredis.Redis, user: User) -> User:
    """Store a new user; 409 if the e-mail address has an account already.

    The index entry and the user record live in two slots (the index is found by address,
    the record by id), so this is two ordered steps instead of one transaction: (1) claim
    the address in the index (SET NX, or compare-and-set over a stale entry), (2) write
    the record (SET NX). Until (2) the claim is no account (`user_by_email`); another
    sign-up for the address that finds it so tombstones the record's key before taking
    the entry over, so (2) then fails and only one of the two sign-ups gets the address."""
    index = email_key(user.email)
    while True:
        if await redis.set(index, user.user_id, nx=True):
            break
        owner = await redis.get(index)
        if owner is None:
            continue  # released meanwhile
        owner_id = owner.decode()
        if owner_id == user.user_id:
            break
        if await _claim_is_live(redis, owner_id, user.email):
            raise ApiError(409, "email_taken", "an account with this e-mail exists")
        if await redis.eval(_SWAP, 1, index, owner_id, user.user_id):
            break
    if not await redis.set(user_key(user.user_id), msgspec.json.encode(user), nx=True):
        # Tombstoned: a concurrent sign-up for this address took the claim over.
        raise ApiError(409, "email_taken", "an account with this e-mail exists")
    return user


async def release_email(redis: aioredis.Redis, email: str, user_id: str) -> bool:
    """Remove the address's index entry if it still names `user_id` (idempotent: the last
    step of deleting an account; a later sign-up may have taken the address over)."""
    return bool(await redis.eval(_SWAP, 1, email_key(email), user_id, ""))


async def update_user(redis: aioredis.Redis, user_id: str, change) -> User:  # noqa: ANN001
    """Read-modify-write one user under WATCH: `change(user)` mutates it (or raises
    ApiError, and nothing is written). 404 if the user is gone."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(user_key(user_id))
                raw = await pipe.get(user_key(user_id))
                if not raw:  # gone (or a tombstone)
                    raise ApiError(401, "unauthorized", "this account no longer exists")
                user = _user_decoder.decode(raw)
                change(user)
                pipe.multi()
                pipe.set(user_key(user_id), msgspec.json.encode(user))
                await pipe.execute()
                return user
            except WatchError:
                continue


_LINK = """
local user = redis.call('GET', KEYS[1])
if user and #user > 0 then
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


async def link_booking(redis: aioredis.Redis, user_id: str, booking_id: str,
                       created_ms: int | None = None) -> bool:
    """Add a booking to the customer's "my bookings" (only while the account exists)."""
    created_ms = created_ms if created_ms is not None else time.time_ns() // 1_000_000
    return bool(await redis.eval(_LINK, 2, user_key(user_id), user_bookings_key(user_id),
                                 str(created_ms), booking_id))


async def booking_ids(redis: aioredis.Redis, user_id: str) -> list[str]:
    return [b.decode() for b in await redis.zrevrange(user_bookings_key(user_id), 0, -1)]


# --- login throttling -------------------------------------------------------------------

async def check_throttle(redis: aioredis.Redis, email: str, client: str = "") -> None:
    """429 once this client has LOGIN_MAX_FAILURES failures on this account in the current
    window, or LOGIN_CLIENT_MAX_FAILURES on any accounts (checked before the password, so
    the right password does not get through from there either). Another client (the
    owner, elsewhere) is not affected."""
    keys = [fail_key(email, client)] + ([client_fail_key(client)] if client else [])
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.get(key)
            pipe.ttl(key)
        got = await pipe.execute()
    for (count, ttl), limit in zip(zip(got[::2], got[1::2]),
                                   (LOGIN_MAX_FAILURES, LOGIN_CLIENT_MAX_FAILURES)):
        if count is not None and int(count) >= limit:
            retry = max(int(ttl), 1)
            raise ApiError(429, "too_many_attempts",
                           f"too many failed log-ins from here; try again in {retry} s",
                           retry_after=retry, retry_after_s=retry)


# One counter: the window starts at its first failure (INCR and EXPIRE in one script, so a
# counter never lives without its expiry). The account's and the client's counters are in
# two slots: one script each.
_FAIL = """
local n = redis.call('INCR', KEYS[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


async def record_failure(redis: aioredis.Redis, email: str, client: str = "") -> None:
    keys = [fail_key(email, client)] + ([client_fail_key(client)] if client else [])
    await asyncio.gather(*(redis.eval(_FAIL, 1, key, LOGIN_WINDOW_S) for key in keys))


async def clear_failures(redis: aioredis.Redis, email: str, client: str = "") -> None:
    await redis.delete(fail_key(email, client))


# --- TOTP -------------------------------------------------------------------------------

def new_totp_secret() -> str:
    return pyotp.random_base32()


def seal(secret: str, value: str) -> str:
    return _fernet(secret).encrypt(value.encode()).decode()


def unseal(secret: str, token: str) -> str:
    try:
        return _fernet(secret).decrypt(token.encode()).decode()
    except InvalidToken:  # the platform secret changed: the MFA secret is unreadable
        raise ApiError(409, "mfa_unreadable", "set up MFA again") from None


def otpauth_uri(totp_secret: str, email: str) -> str:
    return pyotp.TOTP(totp_secret).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)


def totp_ok(totp_secret: str, code: str) -> bool:
    code = code.strip().replace(" ", "")
    return code.isdigit() and len(code) == 6 and pyotp.TOTP(totp_secret).verify(
        code, valid_window=1)


async def use_totp(redis: aioredis.Redis, secret: str, user: User, code: str,
                   *, pending: bool = False) -> bool:
    """A valid code that was not used before (a code works once: no replay)."""
    sealed = user.mfa_pending if pending else user.mfa_secret
    if not sealed or not totp_ok(unseal(secret, sealed), code):
        return False
    return bool(await redis.set(totp_used_key(user.user_id, code.strip()), b"1", nx=True,
                                ex=120))


def new_recovery_codes() -> list[str]:
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = secrets.token_hex(6)  # 48 bits
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
    return codes


async def use_recovery_code(redis: aioredis.Redis, secret: str, user_id: str,
                            code: str) -> bool:
    """Consume one recovery code (atomically: a code works exactly once)."""
    digest = recovery_digest(secret, code)
    used = False

    def consume(user: User) -> None:
        nonlocal used
        used = False
        for i, stored in enumerate(user.recovery_codes):
            if hmac.compare_digest(stored, digest):
                del user.recovery_codes[i]
                used = True
                return
        raise _NoChange

    try:
        await update_user(redis, user_id, consume)
    except _NoChange:
        return False
    return used


class _NoChange(Exception):
    pass


# --- sessions ---------------------------------------------------------------------------

_USER = web.RequestKey("bmm.user", object)


async def _session(request: web.Request) -> Session:
    return await get_session(request)


def same_origin(request: web.Request) -> None:
    """Cookie-authenticated writes must come from our own pages (L8), and not only
    because SameSite=Lax keeps the cookie off cross-site POSTs: a write must name its
    origin (browsers send Origin on every POST/PUT/PATCH/DELETE), and it must be ours; a
    JSON body (core/wire.read_json) cannot be sent cross-site without a preflight either.
    A client that is not a browser sends Origin like one (or uses an API credential)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    origin = request.headers.get("Origin")
    if origin is None:
        if request.headers.get("Sec-Fetch-Site") == "same-origin":
            return
        raise ApiError(403, "origin_required",
                       "a cookie-authenticated write needs its Origin header")
    host = origin.split("://", 1)[-1].rstrip("/")
    if origin == "null" or host.lower() != request.host.lower():
        raise ApiError(403, "cross_origin", "cross-site requests are not accepted")


def sessions_key(user_id: str) -> str:
    """The user's live sessions: a hash of session id -> when it began (L1: log-out,
    "log out everywhere" and a password change end sessions on the server, not only in
    the browser that holds the cookie)."""
    return f"user:{{u:{user_id}}}:sessions"


async def current_user(request: web.Request) -> User | None:
    """The logged-in user (password and, when enabled, MFA done), or None."""
    if _USER in request:
        return request[_USER]
    user = None
    session = await _session(request)
    user_id, sid = session.get("uid"), session.get("sid")
    if isinstance(user_id, str) and isinstance(sid, str):
        async with services(request).redis.pipeline(transaction=False) as pipe:
            pipe.get(user_key(user_id))
            pipe.hexists(sessions_key(user_id), sid)
            raw, live = await pipe.execute()
        found = _user_decoder.decode(raw) if raw else None
        if found is not None and live and session.get("sv") == found.session_version:
            user = found
    request[_USER] = user
    return user


async def require_user(request: web.Request) -> User:
    user = await current_user(request)
    if user is None:
        raise ApiError(401, "login_required", "log in first")
    same_origin(request)
    return user


async def require_role(request: web.Request, *roles: str) -> User:
    """The logged-in user if it has one of `roles`: 401 if not logged in, 403 if another
    role, 403 `mfa_required` for a partner or admin without MFA."""
    unknown = set(roles) - set(ROLES)
    assert roles and not unknown, f"unknown roles {unknown}"
    user = await require_user(request)
    if user.role not in roles:
        raise ApiError(403, "forbidden", f"this needs a {' or '.join(roles)} account")
    if user.needs_mfa_setup:
        raise ApiError(403, "mfa_required", "turn on two-factor authentication first")
    return user


async def require_admin(request: web.Request) -> str:
    """The admin key (`Authorization: Bearer`) or a logged-in admin user with MFA; returns
    who it was, for the record."""
    if request.headers.get("Authorization"):
        bearer_auth.require_admin(request, services(request).settings.admin_key)
        return "admin-key"
    return (await require_role(request, "admin")).user_id


async def start_session(request: web.Request, user: User) -> None:
    session = await new_session(request)
    sid = secrets.token_urlsafe(16)
    now_s = int(time.time())
    session["uid"] = user.user_id
    session["sid"] = sid
    session["sv"] = user.session_version
    session["iat"] = now_s
    async with services(request).redis.pipeline(transaction=True) as pipe:
        pipe.hset(sessions_key(user.user_id), sid, now_s)
        pipe.expire(sessions_key(user.user_id), SESSION_MAX_AGE_S)
        await pipe.execute()
    request[_USER] = user


async def end_all_sessions(redis: aioredis.Redis, user_id: str) -> None:
    """Every session of this user ends (their cookies stop working at once)."""
    await redis.delete(sessions_key(user_id))


async def start_mfa_challenge(request: web.Request, user: User) -> None:
    session = await new_session(request)
    session["mfa_uid"] = user.user_id
    session["mfa_sv"] = user.session_version
    session["mfa_exp"] = int(time.time()) + MFA_PENDING_S
    request[_USER] = None


async def mfa_challenge(request: web.Request) -> str | None:
    """The user id whose password was checked and whose code is awaited, if any."""
    session = await _session(request)
    user_id, exp = session.get("mfa_uid"), session.get("mfa_exp")
    if not isinstance(user_id, str) or not isinstance(exp, int) or exp < time.time():
        return None
    return user_id


async def mfa_challenge_version(request: web.Request) -> int | None:
    return (await _session(request)).get("mfa_sv")


async def end_session(request: web.Request) -> None:
    session = await _session(request)
    user_id, sid = session.get("uid"), session.get("sid")
    if isinstance(user_id, str) and isinstance(sid, str):
        await services(request).redis.hdel(sessions_key(user_id), sid)
    session.invalidate()
    request[_USER] = None
