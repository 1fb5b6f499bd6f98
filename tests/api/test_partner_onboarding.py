"""Partner onboarding and the partner portal against the real server: request -> admin
approval -> portal log-in that needs MFA -> API keys with a name, a scope and an IP
allow-list, enforced on the partner feed; revocation; least privilege between roles."""
from __future__ import annotations

from contextlib import asynccontextmanager

import aiohttp
import msgspec
from aiohttp.test_utils import TestServer

from server.accounts import api_keys
from server.accounts import users as accounts
from server.app import create_app
from server.partner import portal_api as portal

from .account_helpers import PASSWORD, Client, new_email
from .catalog_helpers import ADMIN, new_partner, uid


async def apply(client: Client, company: str = "Regal Cinemas") -> dict:
    client.email = new_email("partner")
    status, body = await client.call("POST", "/api/partner-requests", {
        "company": company, "contact_name": "Ravi Menon", "email": client.email,
        "password": PASSWORD, "message": "Three screens in Pune"})
    assert status == 201, body
    assert body["status"] == "pending" and "password" not in str(body)
    return body


async def approved_partner(clients, admin: Client, company: str = "Regal Cinemas"
                           ) -> tuple[Client, dict]:
    """A partner through the whole flow, logged in to the portal with MFA on."""
    p = clients()
    req = await apply(p, company)
    status, done = await admin.call("POST", f"/admin/v1/partner-requests/{req['request_id']}/"
                                    "approve", headers=ADMIN)
    assert status == 200, done
    assert (await p.login())[0] == 200
    await p.enable_mfa()
    return p, done


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


THEATRE = {"name": "Regal", "city": "Pune", "address": "1 MG Road", "timezone": "Asia/Kolkata"}


async def test_request_approval_portal_with_mfa(clients) -> None:
    p, admin = clients(), clients()
    req = await apply(p)

    # One pending request per address; the address has no account yet.
    again = clients()
    status, body = await again.call("POST", "/api/partner-requests", {
        "company": "X", "contact_name": "Y", "email": p.email, "password": PASSWORD})
    assert status == 409 and body["error"]["code"] == "request_pending"
    assert (await p.login())[0] == 401

    status, listing = await admin.call("GET", "/admin/v1/partner-requests?status=pending",
                                       headers=ADMIN)
    assert status == 200
    assert req["request_id"] in [r["request_id"] for r in listing["requests"]]
    assert "password_hash" not in str(listing)
    bad = await admin.call("GET", "/admin/v1/partner-requests",
                           headers={"Authorization": "Bearer not-the-admin-key"})
    assert bad[0] == 401

    status, done = await admin.call(
        "POST", f"/admin/v1/partner-requests/{req['request_id']}/approve", headers=ADMIN)
    assert status == 200 and done["status"] == "approved" and done["decided_by"] == "admin-key"
    assert done["partner_id"] and done["user_id"]
    status, body = await admin.call(
        "POST", f"/admin/v1/partner-requests/{req['request_id']}/approve", headers=ADMIN)
    assert status == 409 and body["error"]["code"] == "already_decided"

    # The partner logs in with the request's password; nothing works until MFA is on.
    status, body = await p.login()
    assert status == 200 and body["user"]["role"] == "partner"
    assert body["user"]["mfa_setup_required"] is True
    status, body = await p.call("GET", "/api/partner/keys")
    assert status == 403 and body["error"]["code"] == "mfa_required"
    await p.enable_mfa()
    status, account = await p.call("GET", "/api/partner/account")
    assert status == 200 and account["partner_id"] == done["partner_id"]
    assert account["name"] == "Regal Cinemas"
    assert (await p.call("GET", "/api/partner/keys"))[1] == {"keys": []}

    # Partners cannot switch MFA off; later log-ins need the code.
    assert (await p.call("DELETE", "/api/me/mfa", {"code": p.code(1)}))[0] == 403
    await p.call("POST", "/api/logout")
    assert (await p.login())[1]["status"] == "mfa_required"
    assert (await p.call("GET", "/api/partner/keys"))[0] == 401


async def test_rejected_request_makes_no_account(clients) -> None:
    p, admin = clients(), clients()
    req = await apply(p)
    status, body = await admin.call(
        "POST", f"/admin/v1/partner-requests/{req['request_id']}/reject",
        {"reason": "not a cinema"}, headers=ADMIN)
    assert status == 200 and body["status"] == "rejected" and body["partner_id"] is None
    assert (await p.login())[0] == 401
    assert (await admin.call("POST", f"/admin/v1/partner-requests/{req['request_id']}/approve",
                             headers=ADMIN))[0] == 409
    status, _ = await admin.call("POST", "/admin/v1/partner-requests/pr_nope/approve",
                                 headers=ADMIN)
    assert status == 404


async def test_an_admin_user_with_mfa_can_approve(clients) -> None:
    admin_user, p = clients(), clients()
    admin_user.email = new_email("admin")
    status, me = await admin_user.call("POST", "/admin/v1/users", {
        "email": admin_user.email, "password": PASSWORD, "name": "Ops"}, headers=ADMIN)
    assert status == 201 and me["role"] == "admin"
    req = await apply(p)

    assert (await admin_user.login())[0] == 200
    status, body = await admin_user.call("GET", "/admin/v1/partner-requests")
    assert status == 403 and body["error"]["code"] == "mfa_required"
    await admin_user.enable_mfa()
    status, done = await admin_user.call(
        "POST", f"/admin/v1/partner-requests/{req['request_id']}/approve")
    assert status == 200 and done["decided_by"] == me["user_id"]

    # A partner is not an admin.
    assert (await p.login())[0] == 200
    await p.enable_mfa()
    status, body = await p.call("GET", "/admin/v1/partner-requests")
    assert status == 403 and body["error"]["code"] == "forbidden"


async def test_keys_scope_ip_allow_list_and_revocation(clients) -> None:
    admin = clients()
    p, done = await approved_partner(clients, admin)

    status, read = await p.call("POST", "/api/partner/keys", {"name": "reporting"})
    assert status == 201 and read["key"]["scope"] == "read"  # least privilege by default
    status, write = await p.call("POST", "/api/partner/keys", {
        "name": "box office", "scope": "write", "allowed_ips": ["127.0.0.1", "10.0.0.0/8"]})
    assert status == 201 and write["key"]["allowed_ips"] == ["127.0.0.1/32", "10.0.0.0/8"]
    status, elsewhere = await p.call("POST", "/api/partner/keys", {
        "name": "office only", "scope": "write", "allowed_ips": ["203.0.113.0/24"]})
    assert status == 201
    status, body = await p.call("POST", "/api/partner/keys", {
        "name": "bad", "allowed_ips": ["300.1.1.1"]})
    assert status == 422 and body["error"]["code"] == "invalid_ip"

    status, listed = await p.call("GET", "/api/partner/keys")
    assert [(k["name"], k["scope"]) for k in listed["keys"]] == [
        ("reporting", "read"), ("box office", "write"), ("office only", "write")]
    for key in (read, write, elsewhere):
        assert key["api_key"] not in str(listed)  # the key itself is shown once only

    theatre = uid("th")
    # read scope: GET yes, writes no.
    status, _ = await p.call("GET", "/partner/v1/shows?date=2030-01-01",
                             headers=bearer(read["api_key"]))
    assert status == 200
    status, body = await p.call("PUT", f"/partner/v1/theatres/{theatre}", THEATRE,
                                headers=bearer(read["api_key"]))
    assert status == 403 and body["error"]["code"] == "insufficient_scope"
    # write scope from an allowed address.
    status, body = await p.call("PUT", f"/partner/v1/theatres/{theatre}", THEATRE,
                                headers=bearer(write["api_key"]))
    assert status == 201 and body["partner_id"] == done["partner_id"]
    # the right key from the wrong address.
    status, body = await p.call("GET", "/partner/v1/shows?date=2030-01-01",
                                headers=bearer(elsewhere["api_key"]))
    assert status == 403 and body["error"]["code"] == "ip_not_allowed"

    # Revoked: stops working at once.
    status, body = await p.call("DELETE", f"/api/partner/keys/{write['key']['key_id']}")
    assert status == 200 and body["revoked"] is True
    status, _ = await p.call("PUT", f"/partner/v1/theatres/{theatre}", THEATRE,
                             headers=bearer(write["api_key"]))
    assert status == 401
    assert (await p.call("DELETE", f"/api/partner/keys/{write['key']['key_id']}"))[0] == 404
    assert [k["name"] for k in (await p.call("GET", "/api/partner/keys"))[1]["keys"]] == [
        "reporting", "office only"]


@asynccontextmanager
async def through(server: TestServer, peer: str):
    """A client session connecting from `peer` (a loopback address of its own)."""
    connector = aiohttp.TCPConnector(local_addr=(peer, 0))
    async with aiohttp.ClientSession(base_url=str(server.make_url("")),
                                     connector=connector) as session:
        yield session


async def _status(session: aiohttp.ClientSession, key: str, forwarded: str | None) -> tuple:
    headers = bearer(key) | ({"X-Forwarded-For": forwarded} if forwarded else {})
    async with session.get("/partner/v1/shows?date=2030-01-01", headers=headers) as resp:
        body = await resp.json()
        return resp.status, body.get("error", {}).get("code")


async def test_the_allow_list_sees_the_client_through_trusted_proxies(
        api, server, redis, redis_server, app_settings) -> None:
    # Security review M4: behind the edge proxy the allow-list must see the client the
    # proxy forwards (X-Forwarded-For, believed from trusted proxies only), as the rate
    # limiter does, not the proxy's own address.
    partner = await new_partner(api)
    key = await api_keys.issue_key(redis, partner.partner_id, "box office", "read",
                                   ["198.51.100.7"])
    proxied = TestServer(create_app(msgspec.structs.replace(
        app_settings, trusted_proxies="127.0.0.2/32"), redis_server.url), host="127.0.0.1")
    await proxied.start_server()
    try:
        async with through(proxied, "127.0.0.2") as proxy:  # the trusted proxy
            assert await _status(proxy, key, "198.51.100.7") == (200, None)
            assert await _status(proxy, key, "203.0.113.9") == (403, "ip_not_allowed")
            # what a client writes at the left is not believed: the client is the
            # rightmost address that is not a trusted proxy
            assert await _status(proxy, key, "198.51.100.7, 203.0.113.9") == \
                (403, "ip_not_allowed")
            assert await _status(proxy, key, "203.0.113.9, 198.51.100.7, 127.0.0.2") == \
                (200, None)
            # the same goes for an access token of the key
            form = {"grant_type": "client_credentials"}
            auth = aiohttp.encode_basic_auth(api_keys.key_id_of(api_keys.hash_key(key)), key)
            async with proxy.post("/oauth/token", data=form, headers={
                    "Authorization": auth, "X-Forwarded-For": "203.0.113.9"}) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"] == "unauthorized_client"
            async with proxy.post("/oauth/token", data=form, headers={
                    "Authorization": auth, "X-Forwarded-For": "198.51.100.7"}) as resp:
                assert resp.status == 200
                token = (await resp.json())["access_token"]
            assert await _status(proxy, token, "198.51.100.7") == (200, None)
            assert await _status(proxy, token, "203.0.113.9") == (403, "ip_not_allowed")
        async with through(proxied, "127.0.0.3") as direct:  # not a proxy we trust
            assert await _status(direct, key, "198.51.100.7") == (403, "ip_not_allowed")
    finally:
        await proxied.close()
    # Without trusted proxies the header is ignored: the peer is the client.
    async with through(server, "127.0.0.2") as proxy:
        assert await _status(proxy, key, "198.51.100.7") == (403, "ip_not_allowed")


async def test_a_partner_cannot_touch_another_partners_keys_or_theatres(clients) -> None:
    admin = clients()
    a, done_a = await approved_partner(clients, admin, "A Cinemas")
    b, _ = await approved_partner(clients, admin, "B Cinemas")
    _, key_a = await a.call("POST", "/api/partner/keys", {"name": "a", "scope": "write"})
    _, key_b = await b.call("POST", "/api/partner/keys", {"name": "b", "scope": "write"})

    # B cannot revoke A's key (it is not among B's keys) and does not see it.
    status, _ = await b.call("DELETE", f"/api/partner/keys/{key_a['key']['key_id']}")
    assert status == 404
    assert [k["name"] for k in (await b.call("GET", "/api/partner/keys"))[1]["keys"]] == ["b"]
    theatre = uid("th")
    assert (await a.call("PUT", f"/partner/v1/theatres/{theatre}", THEATRE,
                         headers=bearer(key_a["api_key"])))[0] == 201
    # B's key cannot replace A's theatre (the feed's ownership check stays).
    status, body = await b.call("PUT", f"/partner/v1/theatres/{theatre}", THEATRE,
                                headers=bearer(key_b["api_key"]))
    assert status == 403
    assert (await a.call("PUT", f"/partner/v1/theatres/{theatre}", THEATRE,
                         headers=bearer(key_a["api_key"])))[0] == 200


async def test_keys_made_by_the_admin_still_work_as_write_keys(api) -> None:
    partner = await new_partner(api)  # POST /admin/v1/partners: the original way
    status, body = await partner.call("PUT", f"/partner/v1/theatres/{uid('th')}", THEATRE)
    assert status == 201, body


async def test_an_approved_address_cannot_apply_or_sign_up_again(clients) -> None:
    admin = clients()
    p, _ = await approved_partner(clients, admin)
    status, body = await clients().call("POST", "/api/partner-requests", {
        "company": "X", "contact_name": "Y", "email": p.email, "password": PASSWORD})
    assert status == 409 and body["error"]["code"] == "email_taken"
    status, body = await clients().call("POST", "/api/accounts", {
        "email": p.email, "password": PASSWORD, "name": "Y"})
    assert status == 409
    assert accounts.normalise_email(p.email) == p.email


async def test_the_portal_session_uses_the_partner_feed_and_its_writes_need_an_origin(
        clients) -> None:
    # The portal in the browser calls the same /partner/v1 endpoints with its session
    # cookie (no API key); a write without the browser's Origin header is refused, a
    # cross-site Origin too.
    p, done = await approved_partner(clients, clients())
    theatre = uid("th")
    path = f"/partner/v1/theatres/{theatre}"
    async with p.http.put(path, json=THEATRE) as resp:  # no Origin header
        assert (resp.status, (await resp.json())["error"]["code"]) == (403, "origin_required")
    status, out = await p.call("PUT", path, THEATRE, headers={"Origin": "https://evil.example"})
    assert status == 403, out
    origin = str(p.http._base_url).rstrip("/")  # the site's own origin
    status, out = await p.call("PUT", path, THEATRE, headers={"Origin": origin})
    assert status == 201, out
    status, out = await p.call("GET", "/partner/v1/shows?date=2030-01-01")
    assert status == 200, out
    # the waiting-room switch takes the session too (it used to want a bearer first)
    status, out = await p.call("PUT", f"/partner/v1/shows/{uid('sh')}/waiting-room",
                               {"enabled": True, "admit_per_minute": 60})
    assert (status, out["error"]["code"]) == (404, "not_found"), out


def _application(tag: str = "quota") -> dict:
    return {"company": "Spam Cinemas", "contact_name": "Sam Pam", "email": new_email(tag),
            "password": PASSWORD}


async def test_partner_requests_have_a_quota_per_client_address(
        server, redis, app_settings, redis_server) -> None:
    # Security review L18: one argon2 hash per request and no quota let spam bury the
    # real applications. Behind the trusted proxy each client has its own quota.
    proxied = TestServer(create_app(msgspec.structs.replace(
        app_settings, trusted_proxies="127.0.0.2/32"), redis_server.url), host="127.0.0.1")
    await proxied.start_server()
    spammer, other = "192.0.2.41", "203.0.113.77"
    await redis.delete(f"partnerreq:quota:{spammer}", f"partnerreq:quota:{other}")
    origin = str(proxied.make_url("")).rstrip("/")

    async def post(session, client: str) -> tuple[int, dict, str | None]:
        async with session.post("/api/partner-requests", json=_application(), headers={
                "Origin": origin, "X-Forwarded-For": client}) as resp:
            return resp.status, await resp.json(), resp.headers.get("Retry-After")

    try:
        async with through(proxied, "127.0.0.2") as proxy:
            for _ in range(3):
                assert (await post(proxy, spammer))[0] == 201
            status, body, retry_after = await post(proxy, spammer)
            assert (status, body["error"]["code"]) == (429, "too_many_requests")
            assert retry_after is not None and 1 <= int(retry_after) <= 3600
            assert (await post(proxy, other))[0] == 201  # another client is not affected
    finally:
        await proxied.close()


async def test_the_admin_list_of_partner_requests_is_cursor_paginated(clients) -> None:
    # Security review L18: the list showed only the newest 500; now every request is
    # reachable page by page (and the old `requests` field is still there).
    admin = clients()
    made = []
    for n in range(3):
        p = clients()
        made.append((await apply(p, f"Paged Cinemas {n}"))["request_id"])
    seen: list[str] = []
    cursor = None
    for _ in range(50):
        query = "?status=pending&limit=1" + (f"&cursor={cursor}" if cursor else "")
        status, page = await admin.call("GET", f"/admin/v1/partner-requests{query}",
                                        headers=ADMIN)
        assert status == 200, page
        assert len(page["items"]) <= 1 and page["requests"] == page["items"]
        seen += [r["request_id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if set(made) <= set(seen) or cursor is None:
            break
    assert set(made) <= set(seen)
    assert len(seen) == len(set(seen))  # no request twice
    assert seen.index(made[2]) < seen.index(made[1]) < seen.index(made[0])  # newest first
    status, err = await admin.call("GET", "/admin/v1/partner-requests?cursor=forged",
                                   headers=ADMIN)
    assert (status, err["error"]["code"]) == (422, "invalid_cursor")


# --- approval in ordered steps (request, partner and user are in different slots) ---------

async def _request(redis, request_id: str) -> portal.PartnerRequestRecord:
    raw = await redis.get(portal.request_key(request_id))
    return msgspec.json.decode(raw, type=portal.PartnerRequestRecord)


async def test_an_approval_stopped_halfway_is_finished_by_approving_again(
        clients, redis) -> None:
    # An approval that stopped after making the partner and its user (a crash): the
    # request still reads as pending, cannot be rejected now, and approving it again
    # finishes it with the same partner and user.
    p, admin = clients(), clients()
    req = await apply(p, "Halfway Cinemas")
    record = await _request(redis, req["request_id"])
    record.partner_id, record.user_id = f"p_{uid('half')}", accounts.new_user_id()
    await redis.set(portal.request_key(record.request_id), msgspec.json.encode(record))
    await portal._make_partner(redis, record)
    await portal._make_user(redis, record)

    status, page = await admin.call("GET", "/admin/v1/partner-requests?status=pending",
                                    headers=ADMIN)
    [listed] = [r for r in page["items"] if r["request_id"] == record.request_id]
    assert listed["status"] == "pending" and listed["partner_id"] is None
    status, body = await admin.call(
        "POST", f"/admin/v1/partner-requests/{record.request_id}/reject", headers=ADMIN)
    assert (status, body["error"]["code"]) == (409, "approval_in_progress")

    status, done = await admin.call(
        "POST", f"/admin/v1/partner-requests/{record.request_id}/approve", headers=ADMIN)
    assert status == 200, done
    assert (done["partner_id"], done["user_id"]) == (record.partner_id, record.user_id)
    assert await redis.get(portal.pending_email_key(p.email)) is None
    assert (await p.login())[0] == 200
    await p.enable_mfa()
    status, account = await p.call("GET", "/api/partner/account")
    assert status == 200 and account["partner_id"] == record.partner_id
    assert account["name"] == "Halfway Cinemas"


async def test_an_address_taken_before_approval_undoes_the_approval(clients, redis) -> None:
    # Someone signed up with the applicant's address after the request: approving cannot
    # make the portal user, so nothing is left of the attempt and the request is pending.
    p, admin = clients(), clients()
    req = await apply(p, "Late Cinemas")
    await clients().sign_up(p.email)
    status, body = await admin.call(
        "POST", f"/admin/v1/partner-requests/{req['request_id']}/approve", headers=ADMIN)
    assert (status, body["error"]["code"]) == (409, "email_taken")
    record = await _request(redis, req["request_id"])
    assert record.status == "pending" and record.partner_id is None
    status, listed = await admin.call("GET", "/admin/v1/partner-requests?status=pending",
                                      headers=ADMIN)
    assert req["request_id"] in [r["request_id"] for r in listed["items"]]
    partners = [k async for k in redis.scan_iter(match="partner:{p:*}")  # the records
                if await redis.hget(k, "request_id") == req["request_id"].encode()]
    assert partners == []  # the partner it was to become is gone
    status, body = await admin.call(
        "POST", f"/admin/v1/partner-requests/{req['request_id']}/reject", headers=ADMIN)
    assert status == 200 and body["status"] == "rejected"
