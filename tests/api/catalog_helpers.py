"""Helpers for the partner-feed, browse and OpenAPI tests: a fresh partner per test and a
small published catalog (unique ids and a unique city, so tests never see each other)."""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from actors.layout import grid_layout

ADMIN = {"Authorization": "Bearer test-admin-key"}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def at(hours: float) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    return t.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def layout(rows: int = 4, per_row: int = 6) -> dict[str, Any]:
    """Front rows Silver, back rows Gold, an aisle after seat 3."""
    lay = grid_layout(rows, per_row, bands=[("Silver", rows // 2), ("Gold", rows - rows // 2)],
                      aisles=(3,))
    return msgspec.to_builtins(lay)


PRICES = {"Silver": {"amount": 20000, "currency": "INR"},
          "Gold": {"amount": 35000, "currency": "INR"}}


@dataclass
class Partner:
    api: aiohttp.ClientSession
    partner_id: str
    key: str
    city: str = field(default_factory=lambda: uid("City"))
    theatre: str = ""
    screen: str = ""
    movie: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def put(self, path: str, body: Any) -> aiohttp.ClientResponse:
        async with self.api.put(path, json=body, headers=self.headers) as resp:
            await resp.read()
            return resp

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.api.request(method, path, json=body, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def setup(self, languages: list[str] | None = None, genres: list[str] | None = None,
                    runtime: int = 120, title: str = "A Movie") -> Partner:
        self.theatre, self.screen, self.movie = uid("th"), uid("sc"), uid("mv")
        for path, body in [
            (f"/partner/v1/theatres/{self.theatre}",
             {"name": "Regal", "city": self.city, "address": "1 Main St",
              "timezone": "Asia/Kolkata"}),
            (f"/partner/v1/screens/{self.screen}",
             {"theatre_id": self.theatre, "name": "Screen 1", "layout": layout()}),
            (f"/partner/v1/movies/{self.movie}",
             {"title": title, "languages": languages or ["Hindi", "English"],
              "genres": genres or ["Drama"], "runtime_min": runtime, "certificate": "UA"}),
        ]:
            status, out = await self.call("PUT", path, body)
            assert status == 201, out
        return self

    def show(self, hours: float, **over: Any) -> dict[str, Any]:
        body = {"movie_id": self.movie, "screen_id": self.screen, "starts_at": at(hours),
                "language": "Hindi", "format": "2D", "prices": PRICES}
        body.update(over)
        return body


async def new_partner(api: aiohttp.ClientSession) -> Partner:
    async with api.post("/admin/v1/partners", json={"name": "Test Cinemas"},
                        headers=ADMIN) as resp:
        body = await resp.json()
        assert resp.status == 201, body
    return Partner(api, body["partner_id"], body["api_key"])
