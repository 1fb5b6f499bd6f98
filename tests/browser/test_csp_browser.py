"""Every page under the strict Content-Security-Policy in a real Chromium: the policy is
sent, nothing on the page violates it, and the pages still work (scripts run, the seat
map draws, styles set from scripts apply)."""
from __future__ import annotations

import uuid

from aiohttp.test_utils import TestServer

from tests.api.builders import PublishedShow

# Runs before any page script (CDP-injected, so not itself subject to the CSP).
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


async def _open(browser, server: TestServer, path: str, ready: str):
    context = await browser.new_context()
    await context.add_init_script(RECORD_VIOLATIONS)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}")
            if msg.type == "error" and "Content Security Policy" in msg.text else None)
    response = await page.goto(str(server.make_url(path)))
    assert response is not None and response.ok
    csp = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, csp
    assert response.headers.get("x-content-type-options") == "nosniff"
    try:
        await page.wait_for_selector(ready, state="attached", timeout=15_000)
    except Exception:
        raise AssertionError(f"{path} never got ready: {problems} {await _violations(page)}")
    return context, page, problems


async def _violations(page) -> list[str]:
    return await page.evaluate("window.__csp")


async def test_every_page_runs_under_the_csp(browser, server: TestServer,
                                             show: PublishedShow) -> None:
    pages = [
        ("/", "#f-city option, #status:not(:empty)"),  # cities, or "no theatres yet"
        (f"/static/show.html?show={show.show_id}", '#live-state[data-state="live"]'),
        ("/static/account.html", "#signed-out:not([hidden]) #login-form"),
        ("/static/partner.html", "#apply:not([hidden])"),
        ("/static/reports.html", "#report-form"),
    ]
    for path, ready in pages:
        context, page, problems = await _open(browser, server, path, ready)
        try:
            if path.startswith("/static/show.html"):
                # The seat map drew, and its per-category colour (a CSS variable set from
                # the script through the CSSOM) applied.
                assert await page.locator(".seat").count() == 50
                colour = await page.evaluate(
                    "getComputedStyle(document.querySelector('.seat'))"
                    ".getPropertyValue('--cat').trim()")
                assert colour.startswith("#"), colour
                swatch = await page.evaluate(
                    "getComputedStyle(document.querySelector('.swatch'))"
                    ".getPropertyValue('--cat').trim()")
                assert swatch.startswith("#"), swatch
            await page.wait_for_load_state("networkidle")
            assert await _violations(page) == [], path
            assert problems == [], (path, problems)
        finally:
            await context.close()


async def test_inline_script_is_blocked(browser, server: TestServer) -> None:
    """The policy really is enforced (and the violation listener above really hears)."""
    context, page, _ = await _open(browser, server, "/static/account.html", "#login-form")
    try:
        await page.evaluate("""() => {
            const s = document.createElement("script");
            s.textContent = "window.__ran = true";
            document.body.append(s);
            const d = document.createElement("div");
            d.setAttribute("style", "color: red");
            document.body.append(d);
        }""")
        await page.wait_for_function("() => window.__csp.length >= 2")
        assert await page.evaluate("window.__ran === undefined")
        directives = " ".join(await _violations(page))
        assert "script-src" in directives and "style-src" in directives
    finally:
        await context.close()


async def test_contact_details_on_the_account_page(browser, server: TestServer) -> None:
    """The account page's contact form (phone, ID number: stored encrypted) works under the
    CSP: sign up, save, reload, the owner sees them again."""
    context, page, problems = await _open(browser, server, "/static/account.html",
                                          "#signup-form")
    try:
        await page.fill("#signup-form input[name=name]", "Meera Iyer")
        await page.fill("#signup-form input[name=email]",
                        f"csp-{uuid.uuid4().hex[:8]}@example.test")
        await page.fill("#signup-form input[name=password]", "correct horse battery")
        await page.click("#signup-form button[type=submit]")
        await page.wait_for_selector("#profile-form", state="visible")
        await page.fill("#profile-form input[name=phone]", "+91 98765 43210")
        await page.fill("#profile-form input[name=id_number]", "abcpe1234f")
        await page.click("#profile-form button[type=submit]")
        await page.wait_for_selector('#message[data-kind="ok"]')
        await page.reload()
        # A function, not a string: Playwright evals string predicates, which the CSP blocks.
        await page.wait_for_function(
            "() => document.querySelector('#profile-form [name=phone]').value !== ''")
        assert await page.input_value("#profile-form input[name=phone]") == "+919876543210"
        assert await page.input_value("#profile-form input[name=id_number]") == "ABCPE1234F"
        assert await _violations(page) == [] and problems == []
    finally:
        await context.close()
