"""The waiting room in a real browser: an on-sale show's page solves the join challenge
itself (SHA-256 in the page), says "you are in the pre-queue" with the opening time
before the sale opens, then shows the visitor's place in the queue (seat map hidden),
moves on by itself when the visitor is admitted, and the admission then lets a hold
through."""
from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from server.onsale import pow
from tests.api.account_helpers import Client
from tests.api.builders import PublishedShow

ADMIN = {"Authorization": "Bearer test-admin-key"}
COST = 50_000  # the browser solves ~25,000 hashes on average


async def set_room(api: aiohttp.ClientSession, show_id: str, opens_at: datetime) -> dict:
    # 30 a minute, one at a time: one admission every 2 s
    async with api.put(f"/partner/v1/shows/{show_id}/waiting-room", headers=ADMIN,
                       json={"enabled": True, "admit_per_minute": 30, "burst": 1,
                             "opens_at": opens_at.isoformat(),
                             "challenge_max_number": COST}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def join(client: Client, show_id: str) -> None:
    async with client.http.get(f"/api/shows/{show_id}/queue/challenge") as resp:
        payload = pow.solve(await resp.json())
    status, body = await client.call("POST", f"/api/shows/{show_id}/queue", {"altcha": payload})
    assert status == 201, body


async def test_pre_queue_then_place_then_admission_then_hold(
        browser, server: TestServer, api: aiohttp.ClientSession, show: PublishedShow,
        artifacts: Path) -> None:
    show_id = show.show_id
    await set_room(api, show_id, datetime.now(UTC) + timedelta(hours=1))
    early = [Client(server), Client(server)]  # two visitors are in the pre-queue too
    context = await browser.new_context()
    try:
        for c in early:
            await join(c, show_id)
        errors: list[str] = []
        url = str(server.make_url(f"/static/show.html?show={show_id}"))

        # 1. Before the sale opens: the page solves the challenge and joins the pre-queue.
        first = await context.new_page()
        first.on("pageerror", lambda exc: errors.append(str(exc)))
        started = time.monotonic()
        await first.goto(url)
        await first.locator("#queue-panel").wait_for(state="visible")
        await first.wait_for_selector('#queue-position[data-prequeue="true"]', timeout=30_000)
        solve_s = time.monotonic() - started
        assert "pre-queue" in await first.locator("#queue-heading").inner_text()
        assert "The sale opens at" in await first.locator("#queue-position").inner_text()
        assert not await first.locator(".show-layout").is_visible()  # no seat map
        await first.screenshot(path=str(artifacts / "waiting-room-prequeue.png"))
        async with api.get(f"/partner/v1/shows/{show_id}/waiting-room", headers=ADMIN) as resp:
            room = await resp.json()
        assert room["pre_queue"] == 3 and room["admitted"] == 0  # the page joined by itself

        # 2. The sale opens: the pre-queue is drawn (the page learns it over its socket)...
        await set_room(api, show_id, datetime.now(UTC))
        await first.wait_for_function(
            "() => document.getElementById('queue-position').dataset.prequeue === 'false'",
            timeout=15_000)
        # ... and a visitor who comes now is behind all three: a place, then admission
        page = await (await browser.new_context()).new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(url)
        await page.locator("#queue-panel").wait_for(state="visible")
        await page.wait_for_selector("#queue-position[data-position]", timeout=30_000)
        place = int(await page.get_attribute("#queue-position", "data-position") or "0")
        assert place >= 1  # waiting, not in yet
        assert "Your place in the queue" in await page.locator("#queue-position").inner_text() \
            or place == 1
        assert not await page.locator(".show-layout").is_visible()
        await page.screenshot(path=str(artifacts / "waiting-room-queued.png"))
        seen = [place]  # every place shown, in order, until admission
        while await page.get_attribute("body", "data-admitted") != "true":
            await page.wait_for_function(
                "(p) => document.body.dataset.admitted === 'true' || "
                "document.getElementById('queue-position').dataset.position !== p",
                arg=str(seen[-1]), timeout=15_000)
            seen.append(int(await page.get_attribute("#queue-position", "data-position") or "0"))
        assert seen == sorted(seen, reverse=True) and seen[-1] == 0, seen
        assert await page.locator("#queue-panel").is_hidden()
        # admitted: the seat map is there, and a hold goes through with the admission cookie
        await page.locator(".show-layout").wait_for(state="visible")
        await page.wait_for_selector('#live-state[data-state="live"]')
        await page.click('[data-seat="C3"]')
        await page.click("#hold-btn")
        await page.wait_for_selector("#hold-panel:not([hidden])", timeout=10_000)
        assert "C3" in await page.locator("#hold-seats").inner_text()
        await page.screenshot(path=str(artifacts / "waiting-room-admitted.png"))
        # the pre-queue's visitor was admitted before the late one
        assert await first.get_attribute("body", "data-admitted") == "true"
        assert errors == []
        print(f"browser solved the join challenge and joined in {solve_s:.2f} s "
              f"(max number {COST})")
        await page.context.close()
    finally:
        await context.close()
        for c in early:
            await c.close()
