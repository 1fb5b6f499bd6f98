"""The browse page's recommendation strip in headless Chromium against the real server: a
logged-in customer sees "Because you watched" after another customer co-booked, and the
city's popular movies; picking one opens its card."""
from __future__ import annotations

from aiohttp.test_utils import TestServer

from server.discovery.recommend_store import GROUP
from tests.api.account_helpers import Client, hold_and_checkout
from tests.api.catalog_helpers import new_partner
from tests.api.outbox_helpers import acked, until
from tests.api.test_recommend import movie, show as put_show


async def test_strip_shows_because_you_watched_and_popular(browser, server: TestServer, api,
                                                           redis) -> None:
    partner = await (await new_partner(api)).setup()
    alpha = await movie(partner, "Alpha Quest", ["Hindi"])
    beta = await movie(partner, "Beta Dawn", ["Hindi"])
    show_a, show_b = await put_show(partner, alpha, 24), await put_show(partner, beta, 28)
    me, other = Client(server), Client(server)
    try:
        await me.sign_up()
        await other.sign_up()
        for client, show_id, seat in [(me, show_a, "A1"), (other, show_a, "A2"),
                                      (other, show_b, "A1")]:
            booking = await hold_and_checkout(client, show_id, [seat])
            event = f"booking.confirmed:{booking['booking_id']}"
            await until(lambda e=event: acked(redis, GROUP, e), what=event)
        context = await browser.new_context()
        await context.add_cookies([{"name": "bmm_session", "value": me.session_cookie(),
                                    "url": str(server.make_url("/"))}])
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            await page.goto(str(server.make_url(f"/?city={partner.city}")))
            because = '#recs [data-kind="because_you_watched"]'
            await page.wait_for_selector(because)
            assert await page.text_content("#recs-title") == "Recommended for you"
            assert "Because you watched Alpha Quest" in await page.text_content(because)
            assert await page.get_attribute(f"{because} a.chip", "data-movie") == beta
            popular = '#recs [data-kind="popular_in_city"]'
            assert "Beta Dawn" in await page.text_content(popular)
            await page.click(f"{because} a.chip")
            await page.wait_for_selector(f'button[aria-controls="times-{beta}"][aria-expanded="true"]')
            assert errors == []
        finally:
            await context.close()
    finally:
        await me.close()
        await other.close()
