"""The partner portal in headless Chromium against the real server: a new partner onboards
(request -> admin approval -> log-in with two-factor), draws a screen in the seat layout
editor, publishes a movie and a week of shows (repeat), moves one by dragging, and watches
a customer's booking arrive live on the show view (then house seats, cancel with refund);
a keyboard-only path through the layout editor (server errors shown on the seats, the
screen moved); a layout of thousands of seats; offers, promo codes, webhooks with their
delivery log and resend, API keys with their usage."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pyotp
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from server.catalog.model import Screen, ScreenLayout, Show, catalog_key
from tests.api.account_helpers import PASSWORD, Client, new_email
from tests.api.catalog_helpers import ADMIN, at, layout, uid

# Runs before any page script: records Content-Security-Policy violations.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""
TZ = "Asia/Kolkata"


async def new_page(browser, **context_args):
    context = await browser.new_context(**context_args)
    await context.add_init_script(RECORD_VIOLATIONS)
    page = await context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("dialog", lambda d: d.accept())
    return context, page


async def message(page) -> str:
    return (await page.text_content("#message")) or ""


async def wait_ok(page, contains: str = "", timeout: int = 15_000) -> str:
    """Wait for the page's message to say `ok` (and contain `contains`); fail with what
    it said otherwise."""
    try:
        await page.wait_for_function(
            """([text]) => { const m = document.getElementById("message");
                  return !m.hidden && m.dataset.kind === "ok" && m.textContent.includes(text); }""",
            arg=[contains], timeout=timeout)
    except Exception:  # noqa: BLE001 (a timeout: say what the page said instead)
        raise AssertionError(f"no ok message {contains!r}; the page says {await message(page)!r}"
                             f" errors={page.errors}") from None
    return await message(page)


async def view(page, name: str) -> None:
    await page.wait_for_function("([n]) => window.bmmPortal && window.bmmPortal.ready === n",
                                 arg=[name], timeout=15_000)


async def csp_violations(page) -> list[str]:
    return await page.evaluate("window.__csp")


async def load(redis: aioredis.Redis, kind: type, item_id: str):
    name = {Screen: "screen", Show: "show"}[kind]
    raw = await redis.get(catalog_key(name, item_id))
    assert raw is not None, f"no {name} {item_id}"
    return msgspec.json.decode(raw, type=kind)


async def onboard_in_browser(page, server: TestServer, admin: Client) -> str:
    """Request on the partner page, approval by the admin, log-in and two-factor set-up on
    the account page; ends on the portal. Returns the e-mail."""
    email = new_email("portal")
    await page.goto(str(server.make_url("/static/partner.html")))
    await page.wait_for_selector("#request-form:visible")
    await page.fill("#request-form input[name=company]", "Lakeside Cinemas")
    await page.fill("#request-form input[name=contact_name]", "Kiran Rao")
    await page.fill("#request-form input[name=email]", email)
    await page.fill("#request-form input[name=password]", PASSWORD)
    await page.click("#request-form button[type=submit]")
    await wait_ok(page, "waiting for review")

    status, listing = await admin.call("GET", "/admin/v1/partner-requests?status=pending",
                                       headers=ADMIN)
    assert status == 200, listing
    req = next(r for r in listing["requests"] if r["email"] == email)
    status, done = await admin.call(
        "POST", f"/admin/v1/partner-requests/{req['request_id']}/approve", headers=ADMIN)
    assert status == 200, done

    await page.goto(str(server.make_url("/static/account.html")))
    await page.fill("#login-form input[name=email]", email)
    await page.fill("#login-form input[name=password]", PASSWORD)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#signed-in:visible")
    await page.click("#mfa-start")
    await page.wait_for_selector("#mfa-secret:visible")
    secret = (await page.text_content("#mfa-secret")).strip()
    await page.fill("#mfa-verify-form input[name=code]", pyotp.TOTP(secret).now())
    await page.click("#mfa-verify-form button[type=submit]")
    await page.wait_for_selector("#recovery:visible")
    await page.click("#portal-link")
    await page.wait_for_selector("#portal:visible")
    assert await page.text_content("#partner-name") == "Lakeside Cinemas"
    return email


async def drag(page, start: tuple[float, float], end: tuple[float, float], steps: int = 12) -> None:
    await page.mouse.move(*start)
    await page.mouse.down()
    await page.mouse.move(*end, steps=steps)
    await page.mouse.up()


async def place_xy(page, r: int, c: int) -> tuple[float, float]:
    """The page coordinates of place (row r, column c) of the layout editor (-1: the
    column numbers / row names)."""
    return tuple(await page.evaluate("""([r, c]) => {
        const g = window.bmmLayout.grid;
        const box = g.getBoundingClientRect();
        if (box.top < 0 || box.bottom > innerHeight) g.scrollIntoView({ block: "center" });
        const m = g.getScreenCTM();
        const p = new DOMPoint(c + 0.5, r < 0 ? -0.7 : r + 0.5).matrixTransform(m);
        const x = c < 0 ? new DOMPoint(-0.8, 0).matrixTransform(m).x : p.x;
        return [x, p.y];
    }""", [r, c]))


async def test_new_partner_draws_a_screen_schedules_a_week_and_sees_a_sale_live(
        browser, server: TestServer, clients, redis: aioredis.Redis, artifacts: Path) -> None:
    admin = clients()
    ctx, page = await new_page(browser, viewport={"width": 1280, "height": 900})
    cust_ctx = None
    try:
        await onboard_in_browser(page, server, admin)
        await view(page, "theatres")

        # A theatre (the form opens by itself for a partner without one).
        await page.wait_for_selector("#theatre-form:visible")
        await page.fill("#theatre-form input[name=name]", "Lakeside")
        await page.fill("#theatre-form input[name=city]", uid("Pune"))
        await page.fill("#theatre-form input[name=address]", "1 Lake Road")
        await page.fill("#theatre-form input[name=timezone]", TZ)
        await page.click("#theatre-form button[type=submit]")
        await wait_ok(page, "Lakeside")
        await page.wait_for_selector("[data-theatre]")
        theatre = page.locator("[data-theatre]")
        assert await theatre.count() == 1
        theatre_id = await theatre.get_attribute("data-theatre")

        # A screen: 12 rows of 18, two aisles (one dragged down a column, one by clicking
        # the column's number), a Gold band painted by row names, a wheelchair row.
        await page.click(f'[data-theatre="{theatre_id}"] >> text=Add a screen')
        await view(page, "screen")
        await page.fill("#screen-form input[name=name]", "Screen 1")
        await page.fill("#grid-form input[name=rows]", "12")
        await page.fill("#grid-form input[name=per_row]", "18")
        await page.click("#grid-start")
        assert await page.evaluate("window.bmmLayout.counts().seats") == 12 * 18
        await drag(page, await place_xy(page, 0, 4), await place_xy(page, 11, 4))
        await page.mouse.click(*await place_xy(page, -1, 13))
        assert await page.evaluate("window.bmmLayout.counts().seats") == 12 * 16
        await page.fill("input[aria-label='New category name']", "Gold")
        await page.click("button:has-text('Add category')")
        await page.check(".le-tool:has-text('Category') input")
        for r in range(7, 11):
            await page.mouse.click(*await place_xy(page, r, -1))
        await page.check(".le-tool:has-text('Wheelchair') input")
        await page.mouse.click(*await place_xy(page, 11, -1))
        counts = await page.evaluate(
            "(() => { const n = window.bmmLayout.counts(); return [n.seats, n.acc, n.by.get('Gold')] })()")
        assert counts == [192, 16, 64], counts
        # The preview is the customers' own seat map.
        await page.wait_for_function(
            "() => document.querySelectorAll('#layout-preview .seat').length === 192")
        assert await page.locator("#layout-preview .seat .glyph").count() == 16
        label = await page.get_attribute("#layout-preview [data-seat='L1']", "aria-label")
        assert label and "wheelchair space" in label, label
        await page.screenshot(path=str(artifacts / "portal-layout-editor.png"), full_page=True)
        await page.click("#screen-save")
        await wait_ok(page, "192 seats")
        screen_id = re.search(r"#/screen/([^/]+)$", page.url).group(1)
        screen = await load(redis, Screen, screen_id)
        seats = screen.layout.seats
        assert len(seats) == 192 and screen.theatre_id == theatre_id
        assert {s.x for s in seats} == set(range(18)) - {4, 13}          # the two aisles
        assert {s.id for s in seats if s.accessible} == {f"L{n}" for n in range(1, 17)}
        assert {s.row for s in seats if s.category == "Gold"} == {"H", "I", "J", "K"}
        assert next(s for s in seats if s.id == "A5").x == 5             # numbers skip aisles

        # A movie.
        await page.click("[data-nav=movies]")
        await view(page, "movies")
        await page.wait_for_selector("#movie-form:visible")
        await page.fill("#movie-form input[name=title]", "Monsoon Song")
        await page.fill("#movie-form input[name=languages]", "Hindi, English")
        await page.fill("#movie-form input[name=genres]", "Drama")
        await page.fill("#movie-form input[name=runtime_min]", "150")
        await page.fill("#movie-form input[name=certificate]", "UA")
        await page.click("#movie-form button[type=submit]")
        await wait_ok(page, "Monsoon Song")

        # A week of shows: every day from tomorrow at three times, for 7 days.
        await page.goto(str(server.make_url(f"/static/partner.html#/schedule/{screen_id}")))
        await view(page, "schedule")
        tomorrow = (dt.datetime.now(ZoneInfo(TZ)) + dt.timedelta(days=1)).date().isoformat()
        form = "#add-shows"
        await page.fill(f"{form} input[name=first_day]", tomorrow)
        await page.fill(f"{form} input[name=times]", "10:00, 14:30, 19:00")
        await page.fill(f"{form} input[name=days]", "7")
        await page.fill(f"{form} input[name='price:Standard']", "200")
        await page.fill(f"{form} input[name='price:Gold']", "350")
        assert "21 shows" in await page.text_content("#add-preview")
        await page.click(f"{form} button[type=submit]")
        await wait_ok(page, "21 shows added")
        # This week (from today) holds the first six days of them.
        await page.wait_for_function("() => document.querySelectorAll('.show-block').length === 18")
        # A clash is refused with the server's reason.
        await page.fill(f"{form} input[name=times]", "11:00")
        await page.fill(f"{form} input[name=days]", "1")
        await page.click(f"{form} button[type=submit]")
        await page.wait_for_selector("#add-results .failed")
        assert "already has show" in await page.text_content("#add-results")

        # Drag the 19:00 show of the third day to 21:00 (no bookings: the server lets it).
        blocks = page.locator(".week-day").nth(3).locator(".show-block")
        evening = blocks.nth(2)
        moved_id = await evening.get_attribute("data-show")
        await page.evaluate("([id]) => document.querySelector(`[data-show='${id}']`)"
                            ".scrollIntoView({ block: 'center' })", [moved_id])
        box = await evening.bounding_box()
        start = (box["x"] + box["width"] / 2, box["y"] + 10)
        await drag(page, start, (start[0], start[1] + 120 * 0.9))
        await wait_ok(page, "21:00")
        moved = await load(redis, Show, moved_id)
        assert moved.starts_at.astimezone(ZoneInfo(TZ)).strftime("%H:%M") == "21:00"
        await page.screenshot(path=str(artifacts / "portal-week.png"), full_page=True)

        # The partner opens the first show of tomorrow; a customer books on it meanwhile.
        first = page.locator(".week-day").nth(1).locator(".show-block").first
        show_id = await first.get_attribute("data-show")
        await first.click()
        await view(page, "show")
        await page.wait_for_selector('#show-live[data-state="live"]')
        assert await page.text_content("#show-sold") == "0 of 192"
        await page.evaluate("window.__sameDocument = true")

        cust_ctx, cust = await new_page(browser, viewport={"width": 390, "height": 844},
                                        is_mobile=True, has_touch=True)
        await cust.goto(str(server.make_url(f"/static/show.html?show={show_id}")))
        await cust.wait_for_selector('#live-state[data-state="live"]')
        await cust.click('[data-seat="H7"]')
        await cust.click('[data-seat="H8"]')
        await cust.click("#hold-btn")
        await cust.wait_for_selector("#hold-panel:not([hidden])")
        # The hold shows on the portal at once...
        await page.wait_for_selector('#show-map [data-seat="H7"][data-status="held"]', timeout=15_000)
        await page.wait_for_function(
            "() => document.getElementById('show-held').textContent === '2'", timeout=15_000)
        # Pressed from the keyboard: on a phone-sized page under load the click can land
        # on the label scrolling past it (Playwright: "<label> intercepts pointer events").
        await cust.focus("#pay-btn")
        await cust.keyboard.press("Enter")
        await cust.wait_for_selector("#done-panel:not([hidden])", timeout=20_000)
        # ...and the sale, without a reload.
        await page.wait_for_selector('#show-map [data-seat="H8"][data-status="booked"]', timeout=15_000)
        await page.wait_for_function(
            "() => document.getElementById('show-sold').textContent === '2 of 192'", timeout=15_000)
        assert await page.text_content("#show-gross") == "₹700.00"
        assert await page.text_content("#show-occupancy") == "1.0 %"
        assert await page.evaluate("window.__sameDocument === true")

        # House seats: two picked on the map, blocked, and counted.
        await page.click('#show-map [data-seat="A1"]')
        await page.click('#show-map [data-seat="A2"]')
        await page.click("#house-block")
        await wait_ok(page, "house seats")
        await page.wait_for_function(
            "() => document.getElementById('show-blocked').textContent === '2'")
        assert await page.text_content("#show-sold") == "2 of 190"
        await page.screenshot(path=str(artifacts / "portal-show-live.png"), full_page=True)

        # Cancelling says what is refunded, and what was.
        assert "₹700.00" in await page.text_content("#cancel-what")
        await page.click("#show-cancel")
        await page.wait_for_selector("#cancel-result:visible", timeout=20_000)
        assert "refunded" in await page.text_content("#cancel-result")
        assert (await load(redis, Show, show_id)).status == "cancelled"

        assert page.errors == [] and cust.errors == []
        assert await csp_violations(page) == [] and await csp_violations(cust) == []
    finally:
        await ctx.close()
        if cust_ctx is not None:
            await cust_ctx.close()


# --- keyboard only -------------------------------------------------------------------------

async def focused(page) -> str:
    return await page.evaluate("""() => { const a = document.activeElement;
        return a ? (a.id || a.getAttribute('aria-label') || a.name || a.textContent || a.tagName) : '' }""")


async def tab_to(page, matches: str, back: bool = False, limit: int = 80) -> None:
    """Press Tab (Shift+Tab) until the focused element matches the CSS selector."""
    for _ in range(limit):
        if await page.evaluate("([s]) => !!document.activeElement && document.activeElement.matches(s)",
                               [matches]):
            return
        await page.keyboard.press("Shift+Tab" if back else "Tab")
    raise AssertionError(f"Tab never reached {matches}; focus is on {await focused(page)!r}")


async def press(page, *keys: str) -> None:
    for k in keys:
        await page.keyboard.press(k)


async def portal_partner(clients) -> Client:
    """A partner onboarded through the API, logged in with two-factor (its session is what
    the browser gets)."""
    p, admin = clients(), clients()
    p.email = new_email("kbd")
    status, req = await p.call("POST", "/api/partner-requests", {
        "company": "Keyboard Cinemas", "contact_name": "Asha", "email": p.email,
        "password": PASSWORD})
    assert status == 201, req
    status, done = await admin.call(
        "POST", f"/admin/v1/partner-requests/{req['request_id']}/approve", headers=ADMIN)
    assert status == 200, done
    assert (await p.login())[0] == 200
    await p.enable_mfa()
    return p


async def test_keyboard_only_layout_editor(browser, server: TestServer, clients,
                                           redis: aioredis.Redis) -> None:
    partner = await portal_partner(clients)
    origin = str(server.make_url("")).rstrip("/")
    theatre_id = uid("th")
    status, body = await partner.call("PUT", f"/partner/v1/theatres/{theatre_id}", {
        "name": "Studio", "city": uid("Goa"), "address": "2 Beach Road", "timezone": TZ},
        headers={"Origin": origin})
    assert status == 201, body

    ctx, page = await new_page(browser, viewport={"width": 1100, "height": 900})
    try:
        await ctx.add_cookies([{"name": "bmm_session", "value": partner.session_cookie(),
                                "url": origin}])
        await page.goto(str(server.make_url(f"/static/partner.html#/screen/new/{theatre_id}")))
        await view(page, "screen")

        await tab_to(page, "#screen-form input[name=name]")
        await page.keyboard.type("Small hall")
        await tab_to(page, "#grid-form input[name=rows]")
        await press(page, "Control+A")
        await page.keyboard.type("4")
        await press(page, "Tab", "Control+A")
        await page.keyboard.type("6")
        await tab_to(page, "#grid-start")
        await press(page, "Enter")            # a 4 x 6 grid; the grid has the focus
        await page.wait_for_function("() => document.activeElement === window.bmmLayout.grid")
        assert await page.evaluate("window.bmmLayout.counts().seats") == 24

        # Column 3 becomes an aisle: up from the first row reaches the column numbers.
        await press(page, "ArrowRight", "ArrowRight", "ArrowUp", " ")
        assert "an aisle" in await page.text_content(".le-status")
        # Row D: a wheelchair space and its companion seat; one seat of row B is taken out.
        await press(page, "ArrowDown", "ArrowDown", "ArrowDown", "ArrowDown", "ArrowRight", "w",
                    "ArrowRight", "c")
        await press(page, "ArrowUp", "ArrowUp", "End", " ")
        # A second category, added from the toolbar (Shift+Tab back), painted on row A.
        await tab_to(page, "input[aria-label='New category name']", back=True)
        await page.keyboard.type("Gold")
        await press(page, "Enter")
        await tab_to(page, "svg.le-grid")
        await press(page, "PageUp", "Home", "ArrowLeft", "2")   # the row name: the whole row
        assert "Row A" in await page.text_content(".le-status")
        # Rename the first row P and the second also P: the server refuses, on the seats.
        await press(page, "ArrowRight", "r")
        await page.keyboard.type("P")
        await press(page, "Enter", "ArrowDown", "r")
        await page.keyboard.type("P")
        await press(page, "Enter")
        await tab_to(page, "#screen-save")
        await press(page, "Enter")
        await page.wait_for_selector(".le-errors:visible")
        assert "duplicate seat id" in await message(page)
        assert await page.locator(".le-places rect.le-invalid").count() == 2
        # Back to the grid; clear the second row's name (automatic again) and save.
        await tab_to(page, "svg.le-grid", back=True)
        await press(page, "ArrowDown", "r", "Control+A", "Backspace", "Enter", "ArrowRight", "f")
        await tab_to(page, "#screen-save")
        await press(page, "Enter")
        await wait_ok(page, "seats")

        screen_id = re.search(r"#/screen/([^/]+)$", page.url).group(1)
        screen = await load(redis, Screen, screen_id)
        seats = {s.id: s for s in screen.layout.seats}
        assert len(seats) == 24 - 4 - 1
        assert {s.x for s in seats.values()} == {0, 1, 3, 4, 5}
        assert [s.id for s in screen.layout.seats if s.row == "P"] == [f"P{n}" for n in range(1, 6)]
        assert all(seats[f"P{n}"].category == "Gold" for n in range(1, 6))
        assert [s.id for s in screen.layout.seats if s.row == "B"] == ["B1", "B2", "B3", "B4"]
        assert seats["D3"].accessible and seats["D4"].companion
        assert (screen.layout.focal_x, screen.layout.focal_y) == (1, 1)   # F on B2

        # The screen moves to the bottom of the drawing: the bottom line is now the front
        # row (A, y 0); rows are lettered from there, the renamed row keeps its name.
        await tab_to(page, "select[aria-label='Screen position']", back=True)
        await press(page, "ArrowDown")
        await tab_to(page, "#screen-save")
        await press(page, "Enter")
        await page.wait_for_function("() => document.getElementById('message').textContent"
                                     ".includes('saved') && !document.getElementById('screen-dirty')"
                                     ".checkVisibility()")
        flipped = await load(redis, Screen, screen_id)
        rows = {s.row: s.y for s in flipped.layout.seats}
        assert rows == {"A": 0, "B": 1, "C": 2, "P": 3}, rows
        assert [s.id for s in flipped.layout.seats if s.accessible] == ["A3"]
        assert (flipped.layout.focal_x, flipped.layout.focal_y) == (1, 2)  # still on that seat
        # Opened again, the editor draws it as it was left and gives the same layout back.
        await page.reload()
        await view(page, "screen")
        assert await page.evaluate("window.bmmLayout.screen") == "bottom"
        again = msgspec.convert(await page.evaluate("window.bmmLayout.toLayout().layout"),
                                type=ScreenLayout)
        assert again == flipped.layout, again
        assert page.errors == [] and await csp_violations(page) == []
    finally:
        await ctx.close()


# --- thousands of seats ---------------------------------------------------------------------

async def test_a_layout_of_thousands_of_seats_stays_quick(browser, server: TestServer, clients,
                                                          redis: aioredis.Redis) -> None:
    """60 x 80 places: one SVG with listeners on it alone; an edit (a key, a drag stroke)
    is handled in milliseconds, and the server takes the 4,800 seats."""
    partner = await portal_partner(clients)
    origin = str(server.make_url("")).rstrip("/")
    theatre_id = uid("th")
    status, body = await partner.call("PUT", f"/partner/v1/theatres/{theatre_id}", {
        "name": "Arena", "city": uid("Delhi"), "address": "3 Ring Road", "timezone": TZ},
        headers={"Origin": origin})
    assert status == 201, body
    ctx, page = await new_page(browser, viewport={"width": 1280, "height": 900})
    try:
        await ctx.add_cookies([{"name": "bmm_session", "value": partner.session_cookie(),
                                "url": origin}])
        await page.goto(str(server.make_url(f"/static/partner.html#/screen/new/{theatre_id}")))
        await view(page, "screen")
        await page.fill("#screen-form input[name=name]", "Arena 1")
        await page.fill("#grid-form input[name=rows]", "60")
        await page.fill("#grid-form input[name=per_row]", "80")
        await page.click("#grid-start")
        assert await page.locator("svg.le-grid").count() == 1
        assert await page.locator("svg.le-grid [tabindex]").count() == 0  # the SVG is the stop
        timings = await page.evaluate("""async () => {
            const ed = window.bmmLayout, g = ed.grid, m = g.getScreenCTM();
            const at = (r, c) => new DOMPoint(c + 0.5, r + 0.5).matrixTransform(m);
            const pointer = (type, p) => g.dispatchEvent(new PointerEvent(type,
                { clientX: p.x, clientY: p.y, button: 0, buttons: 1, pointerId: 1, bubbles: true }));
            g.focus();
            const keys = [];
            for (let i = 0; i < 10; i++) {
                const t = performance.now();
                g.dispatchEvent(new KeyboardEvent("keydown", { key: i % 2 ? "ArrowRight" : " ", bubbles: true }));
                keys.push(performance.now() - t);
            }
            let t = performance.now();
            pointer("pointerdown", at(30, 0));
            for (let c = 1; c < 80; c++) pointer("pointermove", at(30, c));
            pointer("pointerup", at(30, 79));
            const stroke = performance.now() - t;
            keys.sort((a, b) => a - b);
            return { key: keys[5], stroke, seats: ed.counts().seats };
        }""")
        assert timings["seats"] == 4800 - 5 - 80, timings   # five keyed gaps, a gap row
        assert timings["key"] < 50, timings
        assert timings["stroke"] < 400, timings
        # The preview waits for a click at this size; it is the customers' map.
        await page.click("#preview-refresh")
        await page.wait_for_function(
            "() => document.querySelectorAll('#layout-preview .seat').length === 4715",
            timeout=20_000)
        await page.click("#screen-save")
        await wait_ok(page, "4715 seats", timeout=30_000)
        screen_id = re.search(r"#/screen/([^/]+)$", page.url).group(1)
        screen = await load(redis, Screen, screen_id)
        assert len(screen.layout.seats) == 4715
        assert page.errors == [] and await csp_violations(page) == []
    finally:
        await ctx.close()


# --- offers, promo codes, webhooks, keys ------------------------------------------------------

async def test_offers_promo_codes_webhooks_and_keys(browser, server: TestServer, clients) -> None:
    partner = await portal_partner(clients)
    origin = str(server.make_url("")).rstrip("/")
    ctx, page = await new_page(browser, viewport={"width": 1100, "height": 900})
    try:
        await ctx.add_cookies([{"name": "bmm_session", "value": partner.session_cookie(),
                                "url": origin}])
        # An offer and a promo code; the offer is disabled again.
        await page.goto(str(server.make_url("/static/partner.html#/offers")))
        await view(page, "offers")
        await page.fill("#offer-form input[name=name]", "Third ticket half price")
        await page.fill("#offer-form input[name=n]", "3")
        await page.check("#offer-form input[value=sat]")
        await page.click("#offer-form button[type=submit]")
        await wait_ok(page, "Third ticket")
        offer = page.locator("#offers [data-offer]")
        assert "50 % off every 3rd ticket" in await offer.inner_text()
        assert "sat" in await offer.inner_text()
        await offer.locator("text=Disable").click()
        await wait_ok(page, "disabled")
        assert "disabled" in await page.locator("#offers [data-offer]").inner_text()
        code = uid("SAVE").replace("-", "")[:20]
        await page.fill("#promo-form input[name=code]", code)
        await page.fill("#promo-form input[name=name]", "Ten off")
        await page.fill("#promo-form input[name=value]", "10")
        await page.fill("#promo-form input[name=max_uses]", "100")
        await page.click("#promo-form button[type=submit]")
        await wait_ok(page, code.upper())
        assert "Used 0 of 100" in await page.locator(f'[data-promo="{code.upper()}"]').inner_text()

        # A webhook; a cancelled show sends it an event; the log shows it and resends it.
        await page.click("[data-nav=webhooks]")
        await view(page, "webhooks")
        await page.fill("#webhook-form input[name=url]", "https://example.invalid/bmm-events")
        await page.click("#webhook-form button[type=submit]")
        await wait_ok(page, "signing secret")
        assert (await page.text_content("#new-secret-value")).strip()
        headers = {"Origin": origin}
        th, sc, mv, sh = uid("th"), uid("sc"), uid("mv"), uid("sh")
        for path, body in [
            (f"/partner/v1/theatres/{th}", {"name": "Hooks", "city": uid("Agra"),
                                            "address": "1 Fort Road", "timezone": TZ}),
            (f"/partner/v1/screens/{sc}", {"theatre_id": th, "name": "S", "layout": layout()}),
            (f"/partner/v1/movies/{mv}", {"title": "Hooked", "languages": ["Hindi"],
                                         "genres": [], "runtime_min": 90, "certificate": "U"}),
            (f"/partner/v1/shows/{sh}", {"movie_id": mv, "screen_id": sc, "starts_at": at(30),
                                        "language": "Hindi", "format": "2D",
                                        "prices": {"Silver": {"amount": 100, "currency": "INR"},
                                                   "Gold": {"amount": 200, "currency": "INR"}}}),
        ]:
            status, out = await partner.call("PUT", path, body, headers=headers)
            assert status == 201, out
        status, out = await partner.call("DELETE", f"/partner/v1/shows/{sh}", headers=headers)
        assert status == 200, out
        hook = page.locator("#webhooks [data-webhook]")
        await hook.locator("summary").click()
        for _ in range(30):
            if await hook.locator("[data-delivery]").count():
                break
            await page.wait_for_timeout(300)
            await hook.locator("text=Refresh").click()
        row = hook.locator("[data-delivery]").first
        assert "show.cancelled" in await row.inner_text()
        await row.locator("text=Resend").click()
        await wait_ok(page, "sent again")
        await page.wait_for_function(
            "() => document.querySelectorAll('#webhooks [data-delivery]').length === 2")
        assert "a resend" in await hook.locator("[data-delivery]").first.inner_text()

        # A key, used once; its usage shows.
        await page.click("[data-nav=keys]")
        await view(page, "keys")
        await page.fill("#key-form input[name=name]", "Box office")
        await page.select_option("#key-form select[name=scope]", "read")
        await page.click("#key-form button[type=submit]")
        await page.wait_for_selector("#new-key:visible")
        key = (await page.text_content("#new-key-value")).strip()
        status, out = await partner.call("GET", f"/partner/v1/shows/{sh}",
                                         headers={"Authorization": f"Bearer {key}"})
        assert status == 200, out
        item = page.locator("#keys [data-key]")
        await item.locator("summary").click()
        await item.locator(".usage-table").wait_for()
        today = item.locator(".usage-table tbody tr").last
        assert await today.locator("td").nth(1).inner_text() == "1"   # requests today
        assert page.errors == [] and await csp_violations(page) == []
    finally:
        await ctx.close()
