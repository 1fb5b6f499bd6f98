"""Customer accounts against the real server (real Redis, real Ray): sign-up and log-in,
wrong passwords and the log-in throttle, TOTP MFA with recovery codes, the encrypted
session cookie, my bookings, export, deletion (bookings kept, anonymised), and who may
read what."""
from __future__ import annotations

import base64
import uuid

import aiohttp
import msgspec
from aiohttp.test_utils import TestServer

from server.accounts import users as accounts
from server.app import create_app
from server.core.embedded import RedisServer
from server.core.settings import Settings
from server.booking.records import load_booking

from .account_helpers import PASSWORD, hold_and_checkout, new_email


async def test_sign_up_log_in_log_out(clients) -> None:
    a = clients()
    me = await a.sign_up(name="Asha Rao")
    assert me["role"] == "customer" and me["email"] == a.email and not me["mfa_enabled"]
    assert "password" not in str(me)
    assert (await a.call("GET", "/api/me"))[1]["user_id"] == me["user_id"]  # signed up = in

    assert (await a.call("POST", "/api/logout"))[0] == 200
    status, body = await a.call("GET", "/api/me")
    assert status == 401 and body["error"]["code"] == "login_required"

    status, body = await a.login(a.email.upper())  # addresses are case-insensitive
    assert status == 200 and body["status"] == "ok" and body["user"]["user_id"] == me["user_id"]
    assert (await a.call("GET", "/api/me"))[0] == 200


async def test_sign_up_rules(clients) -> None:
    a, b = clients(), clients()
    await a.sign_up()
    status, body = await b.call("POST", "/api/accounts",
                                {"email": a.email, "password": PASSWORD, "name": "B"})
    assert status == 409 and body["error"]["code"] == "email_taken"
    status, body = await b.call("POST", "/api/accounts",
                                {"email": new_email(), "password": "short", "name": "B"})
    assert status == 422
    status, body = await b.call("POST", "/api/accounts",
                                {"email": "not-an-address", "password": PASSWORD, "name": "B"})
    assert status == 422
    assert (await b.call("GET", "/api/me"))[0] == 401  # nothing half-done: not logged in


async def test_password_is_stored_as_an_argon2_hash(clients, redis) -> None:
    a = clients()
    me = await a.sign_up()
    raw = await redis.get(accounts.user_key(me["user_id"]))
    assert PASSWORD.encode() not in raw
    assert b"$argon2id$" in raw


async def test_wrong_password_and_unknown_address_get_the_same_401(clients) -> None:
    a = clients()
    await a.sign_up()
    await a.call("POST", "/api/logout")
    wrong = await a.login(password="not the password")
    unknown = await a.login(email=new_email())
    for status, body in (wrong, unknown):
        assert status == 401 and body["error"]["code"] == "invalid_credentials"
    assert (await a.call("GET", "/api/me"))[0] == 401


async def test_five_failures_lock_the_address_for_a_while(clients, redis) -> None:
    a, other = clients(), clients()
    await a.sign_up()
    await a.call("POST", "/api/logout")
    await other.sign_up()
    await other.call("POST", "/api/logout")
    for _ in range(accounts.LOGIN_MAX_FAILURES):
        assert (await a.login(password="guess-guess"))[0] == 401
    status, body = await a.login()  # even the right password: no more tries for now
    assert status == 429 and body["error"]["code"] == "too_many_attempts"
    assert 0 < body["error"]["retry_after"] <= accounts.LOGIN_WINDOW_S
    assert (await other.login())[0] == 200  # another address is not affected
    await redis.delete(accounts.fail_key(a.email, "127.0.0.1"))  # the window passes
    assert (await a.login())[0] == 200


async def test_a_stranger_who_knows_the_address_cannot_lock_its_owner_out(
        clients, server) -> None:
    # L2: five failed log-ins locked any account for 15 minutes, for anyone who knew the
    # e-mail address. Now the lock is the stranger's (their address, that account).
    owner = clients()
    await owner.sign_up()
    await owner.call("POST", "/api/logout")
    stranger = clients()
    for _ in range(accounts.LOGIN_MAX_FAILURES + 3):
        status, _ = await stranger.login(owner.email, "guess-guess")
    assert status == 429
    elsewhere = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))  # the owner's own network
    async with aiohttp.ClientSession(base_url=str(server.make_url("")), connector=elsewhere,
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post("/api/login", json={"email": owner.email, "password": PASSWORD},
                             headers={"Origin": str(server.make_url("")).rstrip("/")}) as resp:
            assert resp.status == 200, await resp.text()


async def test_mfa_setup_then_login_needs_a_fresh_code(clients) -> None:
    a = clients()
    await a.sign_up()
    status, setup = await a.call("POST", "/api/me/mfa")
    assert status == 200
    assert setup["otpauth_uri"].startswith("otpauth://totp/Book%20My%20Movie:")
    assert setup["qr_svg"].lstrip().startswith("<svg") and "</svg>" in setup["qr_svg"]
    a.totp_secret = setup["secret"]

    status, body = await a.call("POST", "/api/me/mfa/verify", {"code": "000000"})
    assert status == 401 and body["error"]["code"] == "invalid_code"
    assert (await a.call("GET", "/api/me"))[1]["mfa_enabled"] is False

    used = a.code(0)  # kept: a.code(0) later may fall in the next 30-second step
    status, body = await a.call("POST", "/api/me/mfa/verify", {"code": used})
    assert status == 200 and len(set(body["recovery_codes"])) == 10
    assert body["user"]["mfa_enabled"] is True
    assert (await a.call("GET", "/api/me"))[0] == 200  # this session carries on

    await a.call("POST", "/api/logout")
    status, body = await a.login()
    assert status == 200 and body == {"status": "mfa_required", "user": None}
    assert (await a.call("GET", "/api/me"))[0] == 401  # the password alone is not enough

    status, body = await a.call("POST", "/api/login/mfa", {"code": used})
    assert status == 401 and body["error"]["code"] == "invalid_code"  # used already
    status, body = await a.call("POST", "/api/login/mfa", {"code": a.code(1)})
    assert status == 200 and body["status"] == "ok"
    assert (await a.call("GET", "/api/me"))[1]["email"] == a.email


async def test_mfa_code_without_a_password_first_is_refused(clients) -> None:
    a, b = clients(), clients()
    await a.sign_up()
    await a.enable_mfa()
    status, body = await b.call("POST", "/api/login/mfa", {"code": a.code(1)})
    assert status == 401 and body["error"]["code"] == "login_required"


async def test_recovery_code_works_once(clients) -> None:
    a = clients()
    await a.sign_up()
    codes = await a.enable_mfa()
    await a.call("POST", "/api/logout")

    assert (await a.login())[1]["status"] == "mfa_required"
    status, body = await a.call("POST", "/api/login/mfa", {"recovery_code": codes[3].upper()})
    assert status == 200 and body["user"]["recovery_codes_left"] == 9
    await a.call("POST", "/api/logout")

    assert (await a.login())[1]["status"] == "mfa_required"
    status, body = await a.call("POST", "/api/login/mfa", {"recovery_code": codes[3]})
    assert status == 401 and body["error"]["code"] == "invalid_code"
    status, body = await a.call("POST", "/api/login/mfa", {"recovery_code": codes[4]})
    assert status == 200


async def test_recovery_codes_are_stored_as_digests_only(clients, redis) -> None:
    a = clients()
    me = await a.sign_up()
    codes = await a.enable_mfa()
    raw = await redis.get(accounts.user_key(me["user_id"]))
    assert not any(c.encode() in raw or c.replace("-", "").encode() in raw for c in codes)
    assert a.totp_secret.encode() not in raw  # the TOTP secret is encrypted at rest


async def test_wrong_mfa_codes_count_towards_the_throttle(clients) -> None:
    a = clients()
    await a.sign_up()
    await a.enable_mfa()
    await a.call("POST", "/api/logout")
    await a.login()
    for _ in range(accounts.LOGIN_MAX_FAILURES):
        assert (await a.call("POST", "/api/login/mfa", {"code": "123456"}))[0] == 401
    status, body = await a.call("POST", "/api/login/mfa", {"code": a.code(1)})
    assert status == 429


async def test_a_tampered_session_cookie_is_an_anonymous_request(clients, server) -> None:
    a = clients()
    await a.sign_up()
    cookie = a.session_cookie()
    assert cookie and a.email not in cookie  # encrypted, not just signed
    raw = bytearray(base64.urlsafe_b64decode(cookie))
    raw[len(raw) // 2] ^= 0x01  # one bit of the ciphertext
    flipped = base64.urlsafe_b64encode(bytes(raw)).decode()
    intruder = clients()
    for value in (flipped, cookie[:-8], "h" + cookie[1:], "not-a-cookie"):
        status, body = await intruder.call("GET", "/api/me",
                                           headers={"Cookie": f"bmm_session={value}"})
        assert status == 401, value
    status, _ = await intruder.call("GET", "/api/me", headers={"Cookie": f"bmm_session={cookie}"})
    assert status == 200  # the genuine cookie is the credential (hence HttpOnly, SameSite)


async def test_session_cookie_is_httponly_and_samesite(clients) -> None:
    a = clients()
    async with a.http.post("/api/accounts", json={"email": new_email(), "password": PASSWORD,
                                                  "name": "A"},
                           headers={"Origin": str(a.http._base_url).rstrip("/")}) as resp:
        header = resp.headers["Set-Cookie"]
    assert "bmm_session=" in header and "HttpOnly" in header and "SameSite=Lax" in header


async def test_cross_site_post_with_the_cookie_is_refused(clients) -> None:
    a = clients()
    await a.sign_up()
    status, body = await a.call("POST", "/api/me/mfa", headers={"Origin": "https://evil.test"})
    assert status == 403 and body["error"]["code"] == "cross_origin"


async def test_a_cookie_write_needs_its_origin_and_a_json_body(clients) -> None:
    # L8: writes passed without an Origin header, and text/plain bodies (which a foreign
    # form or fetch sends without a preflight) were read as JSON.
    a = clients()
    await a.sign_up()
    async with a.http.post("/api/me/mfa") as resp:  # the cookie, no Origin
        assert (resp.status, (await resp.json())["error"]["code"]) == (403, "origin_required")
    origin = {"Origin": str(a.http._base_url).rstrip("/")}
    async with a.http.post("/api/logout/everywhere", headers=origin) as resp:
        assert resp.status == 200
    assert (await a.login())[0] == 200
    async with a.http.post("/api/me/password", data='{"current_password": "x", '
                           '"new_password": "yyyyyyyyy"}',
                           headers={**origin, "Content-Type": "text/plain"}) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (
            415, "unsupported_media_type")


async def test_my_bookings_export_and_who_sees_what(clients, show) -> None:
    a, b, guest = clients(), clients(), clients()
    await a.sign_up()
    await b.sign_up()
    mine = await hold_and_checkout(a, show.show_id, ["A1", "A2"])
    theirs = await hold_and_checkout(b, show.show_id, ["B1"])
    guest_booking = await hold_and_checkout(guest, show.show_id, ["C1"])  # still possible

    status, body = await a.call("GET", "/api/me/bookings")
    assert status == 200
    assert [x["booking_id"] for x in body["bookings"]] == [mine["booking_id"]]
    assert body["bookings"][0]["seats"] == ["A1", "A2"]
    assert body["bookings"][0]["ticket"]["code"] == mine["ticket"]["code"]
    assert [x["booking_id"] for x in (await b.call("GET", "/api/me/bookings"))[1]["bookings"]] \
        == [theirs["booking_id"]]

    # Someone else's booking: not through "my bookings", not without its token.
    status, _ = await b.call("GET", f"/api/me/bookings/{mine['booking_id']}")
    assert status == 404
    assert (await b.call("GET", f"/api/me/bookings/{theirs['booking_id']}"))[0] == 200
    status, _ = await b.call("GET", f"/api/bookings/{mine['booking_id']}")
    assert status == 401
    status, _ = await b.call("GET", f"/api/bookings/{mine['booking_id']}",
                             headers={"X-Booking-Token": theirs["booking_token"]})
    assert status == 403

    # Export: my account and my bookings, nothing secret, nobody else's.
    async with a.http.get("/api/me/export") as resp:
        assert resp.status == 200
        assert "attachment" in resp.headers["Content-Disposition"]
        export = await resp.json()
    assert export["account"]["email"] == a.email
    assert [x["booking_id"] for x in export["bookings"]] == [mine["booking_id"]]
    text = str(export)
    assert "argon2" not in text and theirs["booking_id"] not in text
    assert guest_booking["booking_id"] not in text

    # Anonymous: nothing.
    assert (await guest.call("GET", "/api/me/bookings"))[0] == 401
    assert (await guest.call("GET", "/api/me/export"))[0] == 401


async def test_delete_account_keeps_bookings_anonymised(clients, show, redis) -> None:
    a = clients()
    me = await a.sign_up(name="Asha Rao")
    booking = await hold_and_checkout(a, show.show_id, ["D1"])

    status, body = await a.call("DELETE", "/api/me", {"password": "wrong password"})
    assert status == 401
    assert (await a.call("GET", "/api/me"))[0] == 200  # nothing deleted

    status, body = await a.call("DELETE", "/api/me", {"password": PASSWORD})
    assert status == 200 and body == {"deleted": True, "bookings_anonymised": 1}
    assert (await a.call("GET", "/api/me"))[0] == 401  # the session ended
    assert await redis.get(accounts.user_key(me["user_id"])) is None
    assert (await a.login())[0] == 401

    record = await load_booking(redis, booking["booking_id"])
    assert record is not None and record.status == "confirmed"  # the seats stay sold
    assert record.customer_id is None and record.email == "" and record.payment.last4 == ""
    assert "Asha" not in msgspec.json.encode(record).decode()
    status, view = await a.call("GET", f"/api/bookings/{booking['booking_id']}",
                                headers={"X-Booking-Token": booking["booking_token"]})
    assert status == 200 and view["seats"] == ["D1"] and view["email"] == ""

    b = clients()
    await b.sign_up(email=a.email)  # the address is free again; the old bookings are not its
    assert (await b.call("GET", "/api/me/bookings"))[1]["bookings"] == []


async def test_a_stolen_old_session_dies_with_the_account(clients) -> None:
    a = clients()
    await a.sign_up()
    old = a.session_cookie()
    assert (await a.call("DELETE", "/api/me", {"password": PASSWORD}))[0] == 200
    await clients().sign_up(email=a.email)  # a new account with the same address
    thief = clients()
    status, body = await thief.call("GET", "/api/me", headers={"Cookie": f"bmm_session={old}"})
    assert status == 401  # the old cookie names the deleted user id, not the new account


async def test_customers_cannot_reach_partner_or_admin_endpoints(clients) -> None:
    a = clients()
    await a.sign_up()
    for method, path in [("GET", "/api/partner/keys"), ("POST", "/api/partner/keys"),
                         ("GET", "/api/partner/account"),
                         ("GET", "/admin/v1/partner-requests"),
                         ("POST", f"/admin/v1/partner-requests/pr_{uuid.uuid4().hex[:8]}/approve"),
                         ("POST", "/admin/v1/users")]:
        body = {"name": "k", "scope": "write"} if path == "/api/partner/keys" else None
        status, out = await a.call(method, path, body)
        assert status == 403 and out["error"]["code"] == "forbidden", (path, out)
    anonymous = clients()
    assert (await anonymous.call("GET", "/api/partner/keys"))[0] == 401
    assert (await anonymous.call("GET", "/admin/v1/partner-requests"))[0] == 401
    # The partner feed takes API keys or a partner's portal session, never a customer's.
    status, out = await a.call("GET", "/partner/v1/shows?date=2030-01-01")
    assert (status, out["error"]["code"]) == (403, "forbidden")


async def test_disable_mfa_needs_a_code(clients) -> None:
    a = clients()
    await a.sign_up()
    await a.enable_mfa()
    assert (await a.call("DELETE", "/api/me/mfa", {"code": "000000"}))[0] == 401
    status, body = await a.call("DELETE", "/api/me/mfa", {"code": a.code(1)})
    assert status == 200 and body == {"mfa_enabled": False}
    await a.call("POST", "/api/logout")
    assert (await a.login())[1]["status"] == "ok"


async def test_session_cookie_is_secure_only_when_configured(
    redis_server: RedisServer, ray_cluster: None, app_settings: Settings
) -> None:
    """Behind TLS the session cookie must never travel over plain HTTP."""
    for secure in (False, True):
        settings = msgspec.structs.replace(app_settings, cookie_secure=secure)
        srv = TestServer(create_app(settings, redis_server.url), host="127.0.0.1")
        await srv.start_server()
        try:
            async with aiohttp.ClientSession(base_url=str(srv.make_url(""))) as http:
                async with http.post("/api/accounts", json={
                        "email": new_email("secure"), "password": PASSWORD,
                        "name": "Asha Rao"}, headers={"Origin": str(srv.make_url("")).rstrip("/")}
                        ) as resp:
                    assert resp.status == 201
                    cookie = resp.cookies["bmm_session"]
            assert bool(cookie["secure"]) is secure
            assert cookie["httponly"]
        finally:
            await srv.close()


def _copy_cookies(src, dst) -> None:  # type: ignore[no-untyped-def]
    """What someone who copied the browser's cookie has."""
    for cookie in src.jar:
        dst.jar.update_cookies({cookie.key: cookie.value})


async def test_log_out_ends_the_session_on_the_server_not_only_in_the_browser(clients):
    # L1: log-out only cleared the cookie; a copied cookie worked for 14 days.
    a = clients()
    await a.sign_up()
    thief = clients()
    _copy_cookies(a, thief)
    assert (await thief.call("GET", "/api/me"))[0] == 200
    assert (await a.call("POST", "/api/logout"))[0] == 200
    assert (await thief.call("GET", "/api/me"))[0] == 401


async def test_log_out_everywhere_and_a_password_change_end_the_other_sessions(clients):
    a = clients()
    await a.sign_up()
    laptop = clients()
    assert (await laptop.login(a.email))[0] == 200
    phone = clients()
    assert (await phone.login(a.email))[0] == 200
    # a password change: this session goes on, the others end, the old password is gone
    status, _ = await laptop.call("POST", "/api/me/password",
                                  {"current_password": "wrong one", "new_password": "x" * 12})
    assert status == 401
    status, me = await laptop.call("POST", "/api/me/password",
                                   {"current_password": PASSWORD,
                                    "new_password": "a much newer secret"})
    assert status == 200, me
    assert (await laptop.call("GET", "/api/me"))[0] == 200
    assert (await phone.call("GET", "/api/me"))[0] == 401
    assert (await a.call("GET", "/api/me"))[0] == 401
    assert (await phone.login(a.email))[0] == 401
    assert (await phone.login(a.email, "a much newer secret"))[0] == 200
    # log out everywhere: every session ends, this one too
    assert (await phone.call("POST", "/api/logout/everywhere"))[0] == 200
    assert (await phone.call("GET", "/api/me"))[0] == 401
    assert (await laptop.call("GET", "/api/me"))[0] == 401


async def test_a_log_in_flood_is_shed_and_does_not_stall_holds_or_readiness(api, clients,
                                                                           redis):
    # M1: argon2 ran in the default executor, shared with the hold path and /readyz.
    import asyncio

    from .builders import publish_show_via_feed

    show_id, _ = await publish_show_via_feed(api)
    async with api.post(f"/api/shows/{show_id}/holds", json={"seats": ["A2"]}) as resp:
        assert resp.status == 201  # the show hosts are up: readiness is all theirs now
    flood = [clients() for _ in range(80)]
    logins = [asyncio.create_task(c.call("POST", "/api/login", {
        "email": new_email("flood"), "password": "not the password"})) for c in flood]
    async with api.get("/readyz") as resp:
        ready = resp.status, await resp.text()
    async with api.post(f"/api/shows/{show_id}/holds", json={"seats": ["A1"]}) as resp:
        held = resp.status
    answers = await asyncio.gather(*logins)
    await redis.delete(accounts.client_fail_key("127.0.0.1"))  # the flood's own failures
    assert ready[0] == 200 and held == 201, ready
    codes = sorted({(s, b["error"]["code"]) for s, b in answers})
    assert codes == [(401, "invalid_credentials"), (503, "busy")], codes


# --- one account per e-mail address, on one Redis or a Cluster --------------------------
# The e-mail index entry and the user record are in two slots, so sign-up is two ordered
# steps (users.create_user); these check the invariant holds anyway.

async def test_concurrent_sign_ups_for_one_address_make_one_account(clients, redis) -> None:
    import asyncio

    email = new_email("race")
    racers = [clients() for _ in range(8)]
    answers = await asyncio.gather(*(
        c.call("POST", "/api/accounts", {"email": email.upper() if i % 2 else email,
                                         "password": f"{PASSWORD} {i}", "name": f"R{i}"})
        for i, c in enumerate(racers)))
    won = [i for i, (status, _) in enumerate(answers) if status == 201]
    assert len(won) == 1, answers
    assert {(s, b["error"]["code"]) for s, b in answers if s != 201} == {(409, "email_taken")}
    winner = answers[won[0]][1]
    assert (await accounts.user_by_email(redis, email)).user_id == winner["user_id"]
    # Only the winner's password logs in, and into the winner's account.
    status, body = await clients().login(email, f"{PASSWORD} {won[0]}")
    assert status == 200 and body["user"]["user_id"] == winner["user_id"]
    loser = (won[0] + 1) % len(racers)
    assert (await clients().login(email, f"{PASSWORD} {loser}"))[0] == 401
    assert (await racers[loser].call("GET", "/api/me"))[0] == 401  # no session for a loser


async def test_create_user_races_leave_exactly_one_record(redis) -> None:
    # Straight at the storage, without argon2 in between: a tighter race.
    import asyncio

    email = new_email("tight")
    # One command first: this fresh client then has its cluster slot map before the race
    # (the race under test is the sign-ups', not the client's start).
    assert await accounts.user_by_email(redis, email) is None
    users = [accounts.User(user_id=accounts.new_user_id(), email=email, name=f"T{i}",
                           password_hash="x", created_at=accounts.now()) for i in range(20)]
    results = await asyncio.gather(*(accounts.create_user(redis, u) for u in users),
                                   return_exceptions=True)
    ok = [u for u, r in zip(users, results) if r is u]
    assert len(ok) == 1, results
    assert all(getattr(r, "code", None) == "email_taken" for r in results if r is not ok[0])
    stored = [await accounts.load_user(redis, u.user_id) for u in users]
    assert [s.user_id for s in stored if s is not None] == [ok[0].user_id]
    assert (await accounts.user_by_email(redis, email)).user_id == ok[0].user_id


async def test_a_stale_email_claim_is_no_account_and_a_sign_up_takes_it_over(
        clients, redis) -> None:
    # A sign-up that stopped after claiming the address (no record), and an entry naming an
    # account of another address: neither is an account, and a sign-up takes either over.
    for owner in ("missing", "other"):
        email = new_email(f"stale-{owner}")
        a = clients()
        if owner == "missing":
            ghost = accounts.new_user_id()
        else:
            ghost = (await clients().sign_up())["user_id"]
        await redis.set(accounts.email_key(email), ghost)
        assert await accounts.user_by_email(redis, email) is None
        assert not await accounts.email_taken(redis, email)
        assert (await a.login(email))[0] == 401
        me = await a.sign_up(email=email)
        assert (await redis.get(accounts.email_key(email))).decode() == me["user_id"]
        assert (await a.login(email))[0] == 200
        if owner == "missing":  # fenced: the stalled sign-up can no longer write its record
            late = accounts.User(user_id=ghost, email=email, name="late", password_hash="x",
                                 created_at=accounts.now())
            try:
                await accounts.create_user(redis, late)
                raise AssertionError("the stalled sign-up got the address")
            except accounts.ApiError as exc:
                assert exc.code == "email_taken"
            assert await accounts.load_user(redis, ghost) is None
        else:  # the other account is untouched
            assert await accounts.load_user(redis, ghost) is not None


async def test_deleting_an_account_frees_its_address_and_its_keys(clients, redis) -> None:
    a = clients()
    me = await a.sign_up()
    uid = me["user_id"]
    assert await redis.hlen(accounts.sessions_key(uid)) == 1
    assert (await a.call("DELETE", "/api/me", {"password": PASSWORD}))[0] == 200
    assert await redis.get(accounts.email_key(a.email)) is None
    assert await redis.exists(accounts.user_key(uid), accounts.sessions_key(uid),
                              accounts.user_bookings_key(uid)) == 0
    # A deletion that stopped before its last step (the index entry still names the
    # deleted account) leaves the address free all the same.
    await redis.set(accounts.email_key(a.email), uid)
    assert not await accounts.email_taken(redis, a.email)
    assert (await clients().sign_up(email=a.email))["user_id"] != uid
