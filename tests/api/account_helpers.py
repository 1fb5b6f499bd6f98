"""Helpers for the account tests: a browser-like client (its own cookie jar), sign-up,
log-in with MFA, TOTP codes, and a hold + checkout."""
from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import pyotp
from aiohttp.test_utils import TestServer

from .builders import GOOD_CARD

PASSWORD = "correct horse battery"


def new_email(tag: str = "u") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.test"


class Client:
    """One person's browser: a session with a cookie jar that accepts the loopback host."""

    def __init__(self, server: TestServer) -> None:
        self.jar = aiohttp.CookieJar(unsafe=True)
        self.http = aiohttp.ClientSession(base_url=str(server.make_url("")),
                                          cookie_jar=self.jar)
        self.email = ""
        self.totp_secret = ""

    async def close(self) -> None:
        await self.http.close()

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        # As a browser does: every write names its origin (the site's own).
        headers = {"Origin": str(self.http._base_url).rstrip("/"), **(headers or {})}
        async with self.http.request(method, path, json=body, headers=headers) as resp:
            data = await resp.json() if resp.content_type == "application/json" else \
                await resp.text()
            return resp.status, data

    async def sign_up(self, email: str | None = None, password: str = PASSWORD,
                      name: str = "Asha Rao") -> dict:
        self.email = email or new_email()
        status, body = await self.call("POST", "/api/accounts",
                                       {"email": self.email, "password": password,
                                        "name": name})
        assert status == 201, body
        return body

    async def login(self, email: str | None = None, password: str = PASSWORD
                    ) -> tuple[int, Any]:
        return await self.call("POST", "/api/login",
                               {"email": email or self.email, "password": password})

    async def enable_mfa(self) -> list[str]:
        status, setup = await self.call("POST", "/api/me/mfa")
        assert status == 200, setup
        self.totp_secret = parse_qs(urlparse(setup["otpauth_uri"]).query)["secret"][0]
        status, body = await self.call("POST", "/api/me/mfa/verify", {"code": self.code(0)})
        assert status == 200, body
        return body["recovery_codes"]

    def code(self, step: int = 0) -> str:
        """The TOTP code for the current 30-second step (+ `step`). The server accepts one
        step either way and each code only once, so 0 and 1 are two usable codes."""
        return pyotp.TOTP(self.totp_secret).at(time.time() + 30 * step)

    def session_cookie(self) -> str | None:
        for cookie in self.jar:
            if cookie.key == "bmm_session":
                return cookie.value
        return None


async def hold_and_checkout(client: Client, show_id: str, seats: list[str]) -> dict:
    status, hold = await client.call("POST", f"/api/shows/{show_id}/holds", {"seats": seats})
    assert status == 201, hold
    status, booking = await client.call(
        "POST", f"/api/holds/{hold['hold_id']}/checkout",
        {"card": GOOD_CARD, "email": client.email or "guest@example.test", "name": "Asha Rao"},
        headers={"Idempotency-Key": uuid.uuid4().hex, "X-Holder-Token": hold["holder_token"]})
    assert status == 201, booking
    return booking
