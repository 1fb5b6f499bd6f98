"""The waiting room in a real browser: an on-sale show's page shows the visitor's place in
the queue (seat map hidden), moves on by itself when the visitor is admitted, and the
admission then lets a hold through."""
from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from tests.api.account_helpers import Client
from tests.api.builders import PublishedShow

ADMIN = {"Authorization": "Bearer test-admin-key"}


async def test_queue_position_then_admission_then_hold(
        browser, server: TestServer, api: aiohttp.ClientSession, show: PublishedShow,
        artifacts: Path) -> None:
    # 30 a minute, one at a time: one admission every 2 s
    async with api.put(f"/partner/v1/shows/{show.show_id}/waiting-room", headers=ADMIN,
                       json={"enabled": True, "admit_per_minute": 30, "burst": 1}) as resp:
        assert resp.status == 200, await resp.text()
    early = [Client(server), Client(server)]  # two visitors are in the queue first
    try:
        for c in early:
            assert (await c.call("POST", f"/api/shows/{show.show_id}/queue"))[0] == 201
        context = await browser.new_context()
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(str(server.make_url(f"/static/show.html?show={show.show_id}")))
        panel = page.locator("#queue-panel")
        await panel.wait_for(state="visible")
        await page.wait_for_selector("#queue-position[data-position]")
        first = int(await page.get_attribute("#queue-position", "data-position") or "0")
        assert first >= 1  # waiting, not in yet
        assert not await page.locator(".show-layout").is_visible()  # no seat map while queued
        await page.screenshot(path=str(artifacts / "waiting-room-queued.png"))
        seen = [first]  # every place shown, in order, until admission
        while await page.get_attribute("body", "data-admitted") != "true":
            await page.wait_for_function(
                "(p) => document.body.dataset.admitted === 'true' || "
                "document.getElementById('queue-position').dataset.position !== p",
                arg=str(seen[-1]), timeout=15_000)
            seen.append(int(await page.get_attribute("#queue-position", "data-position") or "0"))
        assert seen == sorted(seen, reverse=True) and seen[-1] == 0, seen
        assert await panel.is_hidden()
        # admitted: the seat map is there, and a hold goes through with the admission cookie
        await page.locator(".show-layout").wait_for(state="visible")
        await page.wait_for_selector('#live-state[data-state="live"]')
        await page.click('[data-seat="C3"]')
        await page.click("#hold-btn")
        await page.wait_for_selector("#hold-panel:not([hidden])", timeout=10_000)
        assert "C3" in await page.locator("#hold-seats").inner_text()
        await page.screenshot(path=str(artifacts / "waiting-room-admitted.png"))
        assert errors == []
        await context.close()
    finally:
        for c in early:
            await c.close()
