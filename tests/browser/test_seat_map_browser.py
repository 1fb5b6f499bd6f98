"""The show page in a real browser: two people on one show, live updates without reload,
keyboard selection, hold with countdown, checkout with the sandbox card, the e-ticket."""
from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from aiohttp.test_utils import TestServer

from tests.api.builders import PublishedShow
from tests.api.catalog_helpers import new_partner, uid

SEAT = '[data-seat="{}"]'


async def open_show(browser, server: TestServer, show: PublishedShow, **context_args):
    context = await browser.new_context(**context_args)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await page.goto(str(server.make_url(f"/static/show.html?show={show.show_id}")))
    await page.wait_for_selector('#live-state[data-state="live"]')
    page.errors, page.sockets = errors, sockets  # type: ignore[attr-defined]
    return context, page


async def status(page, seat: str) -> str | None:
    return await page.get_attribute(SEAT.format(seat), "data-status")


async def test_two_people_one_show_live_hold_and_checkout(
    browser, server: TestServer, show: PublishedShow, artifacts: Path
) -> None:
    ctx_a, a = await open_show(browser, server, show, viewport={"width": 1280, "height": 860})
    ctx_b, b = await open_show(browser, server, show, viewport={"width": 390, "height": 844},
                               device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        # The map is drawn to scale with labelled, focusable seats.
        assert await a.locator(".seat").count() == 50
        label = await a.get_attribute(SEAT.format("A4"), "aria-label")
        assert label == "Row A seat 4, gold, free"
        assert await a.locator("#legend").inner_text() != ""
        assert "₹450.00" in await a.locator("#legend").inner_text()

        # A picks two seats with the mouse and holds them.
        await a.click(SEAT.format("A4"))
        await a.click(SEAT.format("A5"))
        assert await a.get_attribute(SEAT.format("A4"), "aria-checked") == "true"
        await a.click("#hold-btn")
        await a.wait_for_selector("#hold-panel:not([hidden])")
        held_at = time.monotonic()
        # ...and B, without reloading, sees them turn unavailable within a second.
        await b.wait_for_selector(f'{SEAT.format("A4")}[data-status="held"]', timeout=1000)
        await b.wait_for_selector(f'{SEAT.format("A5")}[data-status="held"]', timeout=1000)
        assert time.monotonic() - held_at < 1.0
        assert "held by someone else" in await b.get_attribute(SEAT.format("A4"), "aria-label")
        assert await b.get_attribute(SEAT.format("A4"), "aria-disabled") == "true"
        assert await status(a, "A4") == "mine"
        countdown = await a.inner_text("#countdown")
        assert re.fullmatch(r"(9:5\d|10:00)", countdown), countdown

        # B cannot take a held seat; with the keyboard B picks two free ones.
        await b.click(SEAT.format("A4"), force=True)  # aria-disabled: a real click anyway
        assert await b.get_attribute(SEAT.format("A4"), "aria-checked") == "false"
        await b.focus(SEAT.format("C2"))
        await b.keyboard.press("Enter")
        await b.keyboard.press("ArrowRight")
        await b.keyboard.press(" ")
        assert await b.evaluate("document.activeElement.dataset.seat") == "C3"
        assert await status(b, "C2") == await status(b, "C3") == "selected"
        assert "C2, C3" in await b.inner_text("#selection")

        # A extends the hold, then pays with the prefilled sandbox card.
        await a.click("#extend-btn")
        await a.wait_for_selector('#message[data-kind="ok"]')
        assert await a.input_value("#pay-card") == "4242 4242 4242 4242"
        # A declined card first: the hold stays, a message says why.
        await a.fill("#pay-card", "4000 0000 0000 0002")
        await a.click("#pay-btn")
        await a.wait_for_selector('#message[data-kind="error"]:not([hidden])')
        assert "declined" in await a.inner_text("#message")
        assert await a.is_visible("#hold-panel")
        await a.fill("#pay-card", "4242 4242 4242 4242")
        await a.click("#pay-btn")
        await a.wait_for_selector("#done-panel:not([hidden])")
        assert await a.inner_text("#ticket-seats") == "A4, A5"
        assert (await a.inner_text("#booking-id")).startswith(show.show_id + ".")
        qr = a.locator("#ticket img.qr")
        await qr.wait_for()
        # The element appears before its SVG has loaded: wait for the image, then check it.
        await a.wait_for_function(
            "() => { const i = document.querySelector('#ticket img.qr');"
            " return i && i.complete && i.naturalWidth > 0 }", timeout=10_000)
        assert await qr.evaluate("img => img.complete && img.naturalWidth > 0")
        # B sees them sold.
        await b.wait_for_selector(f'{SEAT.format("A4")}[data-status="booked"]', timeout=2000)

        # B's connection drops; B reconnects with since=<last seq> and catches up.
        seq = await b.evaluate("bmm.live.seq")
        await b.evaluate("bmm.live.ws.close()")
        await b.click("#hold-btn")  # hold C2, C3 meanwhile (its own REST call)
        await b.wait_for_selector("#hold-panel:not([hidden])")
        await a.wait_for_selector(f'{SEAT.format("C2")}[data-status="held"]', timeout=2000)
        await b.wait_for_selector('#live-state[data-state="live"]')
        assert b.sockets[-1].endswith(f"?since={seq}") and len(b.sockets) == 2
        await b.wait_for_function(f"bmm.live.seq >= {seq + 1}")
        assert await status(b, "C2") == "mine"

        await b.screenshot(path=str(artifacts / "show-phone-holding.png"), full_page=True)
        await a.screenshot(path=str(artifacts / "show-desktop-booked.png"), full_page=True)
        # B releases: A sees the seats free again.
        await b.click("#release-btn")
        await a.wait_for_selector(f'{SEAT.format("C2")}[data-status="free"]', timeout=2000)
        assert a.errors == [] and b.errors == []
    finally:
        await ctx_a.close()
        await ctx_b.close()


async def test_browse_filters_movies_and_links_to_the_show(
    browser, server: TestServer, api, artifacts: Path
) -> None:
    """Published through the partner feed (what fills the browse indexes)."""
    partner = await (await new_partner(api)).setup(
        languages=["Hindi", "Tamil"], genres=["Thriller"], title=uid("Night Train"))
    show_id = uid("sh")
    status, out = await partner.call("PUT", f"/partner/v1/shows/{show_id}", partner.show(5))
    assert status == 201, out
    await partner.setup(languages=["English"], genres=["Comedy"], title=uid("Laugh Riot"))
    status, out = await partner.call("PUT", f"/partner/v1/shows/{uid('sh')}",
                                       partner.show(6, language="English"))
    assert status == 201, out
    ctx = await browser.new_context(viewport={"width": 1100, "height": 800})
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(str(server.make_url(f"/?city={partner.city}")))
        card = page.locator(".movie", has_text="Night Train")
        await card.wait_for()
        assert await page.locator(".movie").count() == 2
        # The genre filter lists what is on in this city; picking one filters the list.
        genres = await page.locator("#f-genre option").all_inner_texts()
        assert genres == ["Any", "Comedy", "Thriller"]
        await page.select_option("#f-genre", "Comedy")
        await page.wait_for_url(re.compile(r"genre=Comedy"))
        await page.locator(".movie", has_text="Night Train").wait_for(state="detached")
        assert await page.locator(".movie").count() == 1
        await page.select_option("#f-genre", "")
        await card.wait_for()
        await card.locator("button").click()
        chip = card.locator(f'a.chip[href*="{show_id}"]')
        await chip.wait_for()
        await page.screenshot(path=str(artifacts / "browse.png"))
        await chip.click()
        await page.wait_for_selector(".seat")
        assert "Night Train" in await page.inner_text("#title")
        assert await page.locator(".seat").count() == 24
        await page.go_back()
        await page.wait_for_selector(".movie")
        await page.select_option("#f-language", "English")
        await page.wait_for_url(re.compile(r"language=English"))
        await card.wait_for(state="detached")
        assert await page.locator(".movie", has_text="Laugh Riot").count() == 1
        assert errors == []
    finally:
        await ctx.close()


async def test_times_are_theatre_local_and_language_filters_on_the_server(
    browser, server: TestServer, api, artifacts: Path
) -> None:
    """A reader in New York sees an Indian theatre's show at its local 19:30, labelled; a
    reader in India sees the same 19:30 unlabelled. The language filter is the server's."""
    ist = ZoneInfo("Asia/Kolkata")
    day = datetime.now(ist).date() + timedelta(days=2)
    local = datetime(day.year, day.month, day.day, 19, 30, tzinfo=ist)
    at = local.astimezone(UTC).isoformat().replace("+00:00", "Z")
    later = (local + timedelta(hours=3)).astimezone(UTC).isoformat().replace("+00:00", "Z")
    partner = await (await new_partner(api)).setup(languages=["Hindi", "English"],
                                                   title=uid("Monsoon"))
    hindi, english = uid("sh"), uid("sh")
    for sid, body in [(hindi, partner.show(0, starts_at=at, language="Hindi")),
                      (english, partner.show(0, starts_at=later, language="English"))]:
        status, out = await partner.call("PUT", f"/partner/v1/shows/{sid}", body)
        assert status == 201, out
    new_york = local.astimezone(ZoneInfo("America/New_York")).strftime("%H:%M")
    assert new_york != "19:30"

    ctx = await browser.new_context(viewport={"width": 1100, "height": 800}, locale="en-GB",
                                    timezone_id="America/New_York")
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        await page.goto(str(server.make_url(f"/?city={partner.city}&language=Hindi")))
        card = page.locator(".movie", has_text="Monsoon")
        await card.wait_for()
        assert "19:30" in await card.inner_text()  # "next Sat 12 Aug, 19:30 GMT+5:30"
        await card.locator("button").click()
        chip = card.locator(f'a.chip[href*="{hindi}"]')
        await chip.wait_for()
        assert (await chip.locator("strong").inner_text()).strip() == "19:30"
        assert new_york not in await chip.inner_text()
        note = await card.locator(".tz-note").inner_text()
        assert "theatre time" in note and ("IST" in note or "GMT+5:30" in note), note
        # Only the Hindi show, and filtered by the server, not in the page.
        assert await card.locator(f'a.chip[href*="{english}"]').count() == 0
        shows_urls = [u for u in requests if f"/api/movies/{partner.movie}/shows" in u]
        assert shows_urls and all("language=Hindi" in u for u in shows_urls), shows_urls
        await page.screenshot(path=str(artifacts / "browse-theatre-time.png"))
        await chip.click()
        await page.wait_for_selector(".seat")
        subtitle = await page.inner_text("#subtitle")
        assert "19:30" in subtitle and ("IST" in subtitle or "GMT+5:30" in subtitle), subtitle
        await page.screenshot(path=str(artifacts / "show-theatre-time.png"))
        assert errors == []
    finally:
        await ctx.close()

    ctx = await browser.new_context(locale="en-GB", timezone_id="Asia/Kolkata")
    page = await ctx.new_page()
    try:
        await page.goto(str(server.make_url(f"/static/show.html?show={hindi}")))
        await page.wait_for_selector(".seat")
        subtitle = await page.inner_text("#subtitle")
        assert "19:30" in subtitle and "GMT" not in subtitle and "IST" not in subtitle, subtitle
    finally:
        await ctx.close()
