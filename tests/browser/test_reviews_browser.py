"""The review form under "my bookings" in headless Chromium against the real server: a
customer with a confirmed booking rates the movie, and the public listing has it."""
from __future__ import annotations

from aiohttp.test_utils import TestServer

from tests.api.account_helpers import Client, hold_and_checkout


async def test_rate_a_booked_movie_from_my_bookings(browser, server: TestServer, show) -> None:
    customer = Client(server)
    try:
        await customer.sign_up(name="Ravi Kumar")
        booking = await hold_and_checkout(customer, show.show_id, ["B4"])
        context = await browser.new_context()
        await context.add_cookies([{"name": "bmm_session", "value": customer.session_cookie(),
                                    "url": str(server.make_url("/"))}])
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            await page.goto(str(server.make_url("/static/account.html")))
            item = f'[data-booking="{booking["booking_id"]}"]'
            await page.click(f"{item} details.review summary")
            form = f'{item} form[data-review="movie:{show.movie.movie_id}"]'
            await page.wait_for_selector(form)
            await page.select_option(f"{form} select[name=rating]", "3")
            await page.fill(f"{form} textarea[name=text]", "Good fun")
            await page.click(f"{form} button[type=submit]")
            await page.wait_for_selector("#message:has-text('Thanks')")
            assert "3.0" in await page.text_content("#message")
            assert await page.text_content(f"{form} button") == "Update review"
            assert errors == []
        finally:
            await context.close()
        status, listing = await customer.call("GET", f"/api/movies/{show.movie.movie_id}/reviews")
        assert status == 200 and listing["rating"] == {"average": 3.0, "count": 1}
        assert [(r["text"], r["author"]) for r in listing["reviews"]] == [("Good fun", "Ravi Kumar")]
    finally:
        await customer.close()
