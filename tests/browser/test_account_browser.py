"""The account pages in headless Chromium against the real server: sign up, set up two-factor
authentication from the QR page, log out, log in again with a code, see my booking; the
partner page's onboarding request."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import pyotp
from aiohttp.test_utils import TestServer

from tests.api.account_helpers import PASSWORD, Client, hold_and_checkout


async def visible(page, selector: str) -> None:
    """Wait for `selector` to show; on a timeout, say what the page's message said."""
    try:
        await page.wait_for_selector(f"{selector}:visible", timeout=10_000)
    except Exception:
        message = await page.text_content("#message")
        raise AssertionError(f"{selector} did not show; the page says: {message!r}"
                             f" {getattr(page, 'seen', '')}") from None


async def test_sign_up_mfa_log_in_and_my_bookings(browser, server: TestServer, show,
                                                  artifacts: Path) -> None:
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda d: d.accept())
    seen: list[str] = []
    page.on("response", lambda r: seen.append(f"{r.request.method} {r.url} {r.status}"))
    page.seen = seen
    email = f"b-{uuid.uuid4().hex[:10]}@example.test"
    try:
        # The header of the browse page links to the account page.
        await page.goto(str(server.make_url("/")))
        await page.click("text=My account")
        await page.wait_for_selector("#signup-form:visible")

        await page.fill("#signup-form input[name=name]", "Meera Iyer")
        await page.fill("#signup-form input[name=email]", email)
        await page.fill("#signup-form input[name=password]", PASSWORD)
        await page.click("#signup-form button[type=submit]")
        await visible(page, "#signed-in")
        assert await page.text_content("#me-name") == "Meera Iyer"

        # A booking made with this browser's session shows up under "my bookings".
        api = Client(server)
        try:
            cookies = await context.cookies()
            session = next(c for c in cookies if c["name"] == "bmm_session")
            api.http.cookie_jar.update_cookies({"bmm_session": session["value"]})
            api.email = email
            booking = await hold_and_checkout(api, show.show_id, ["A3"])
        finally:
            await api.close()
        await page.reload()
        await page.wait_for_selector(f'[data-booking="{booking["booking_id"]}"]')
        assert "A3" in await page.text_content(f'[data-booking="{booking["booking_id"]}"]')

        # Two-factor set-up: the QR code is shown, a code turns it on, recovery codes appear.
        await page.click("#mfa-start")
        await page.wait_for_selector("#mfa-qr:visible")
        src = await page.get_attribute("#mfa-qr", "src")
        assert src and src.startswith("data:image/svg+xml;base64,")
        await page.wait_for_function(  # the SVG decodes as an image
            "(img => img.complete && img.naturalWidth > 0)(document.getElementById('mfa-qr'))")
        secret = (await page.text_content("#mfa-secret")).strip()
        totp = pyotp.TOTP(secret)
        await page.fill("#mfa-verify-form input[name=code]", totp.now())
        await page.click("#mfa-verify-form button[type=submit]")
        await visible(page, "#recovery")
        assert await page.locator("#recovery-codes li").count() == 10, \
            await page.inner_html("#recovery")
        await page.screenshot(path=str(artifacts / "account-mfa.png"), full_page=True)

        # Log out; logging in again asks for the code.
        await page.click("#logout")
        await page.wait_for_selector("#login-form:visible")
        await page.fill("#login-form input[name=email]", email)
        await page.fill("#login-form input[name=password]", PASSWORD)
        await page.click("#login-form button[type=submit]")
        await visible(page, "#mfa-login-form")
        await page.fill("#mfa-login-form input[name=code]", totp.at(time.time() + 30))
        await page.click("#mfa-login-form button[type=submit]")
        await visible(page, "#signed-in")
        await page.wait_for_selector(f'[data-booking="{booking["booking_id"]}"]')
        assert "On." in await page.text_content("#mfa-status")
        assert errors == []
    finally:
        await context.close()


async def test_partner_request_from_the_partner_page(browser, server: TestServer) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(str(server.make_url("/static/partner.html")))
        await page.wait_for_selector("#request-form:visible")
        await page.fill("#request-form input[name=company]", "Sunrise Cinemas")
        await page.fill("#request-form input[name=contact_name]", "Kiran")
        await page.fill("#request-form input[name=email]",
                        f"p-{uuid.uuid4().hex[:10]}@example.test")
        await page.fill("#request-form input[name=password]", PASSWORD)
        await page.click("#request-form button[type=submit]")
        await page.wait_for_selector('#message[data-kind="ok"]:visible')
        assert "waiting for review" in await page.text_content("#message")
    finally:
        await context.close()
