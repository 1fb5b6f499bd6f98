"""A partner's sync job, written against a client generated from our OpenAPI document
(openapi-python-client), run against the real server: if the document cannot be turned
into a working client, or describes the feed wrongly, this fails.

The job pushes a catalog (theatre, screens, movies, a show), reads it back through the
paginated lists (more items than one page), updates with If-Match (and is refused 412
with a stale ETag), retires what it no longer needs, and reads the change feed."""
from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from .catalog_helpers import PRICES, at, layout, new_partner, uid

PACKAGE = "bmm_feed_client"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Path]:
    """Where the client goes; its modules are forgotten afterwards."""
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


async def _generate(spec: bytes, where: Path) -> None:
    assert GENERATOR.exists(), "pip install -e '.[test]' (openapi-python-client)"
    (where / "spec.json").write_bytes(spec)
    # The generator formats its output with ruff (installed with it, next to python).
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        str(GENERATOR), "generate", "--path", str(where / "spec.json"),
        "--output-path", str(where / PACKAGE), "--meta", "none", "--overwrite",
        cwd=where, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert (where / PACKAGE / "api" / "partner").is_dir(), text
    # Every operation of the feed made it into the client (the generator skips, with a
    # warning, what it cannot digest).
    for name in ("put_theatre", "put_screen", "put_movie", "put_show", "list_theatres",
                 "list_screens", "list_partner_movies", "list_shows", "get_theatre",
                 "get_screen", "get_partner_movie", "get_show", "retire_theatre",
                 "retire_screen", "retire_movie", "delete_show", "list_changes"):
        assert (where / PACKAGE / "api" / "partner" / f"{name}.py").exists(), (name, text)


async def _all_pages(call: Callable[..., Awaitable[Any]], **kw: Any) -> tuple[list[Any], int]:
    """Every item of a list, following next_cursor; and how many pages that took."""
    items: list[Any] = []
    cursor: Any = None
    pages = 0
    while True:
        args = dict(kw) if cursor is None else {**kw, "cursor": cursor}
        resp = await call(**args)
        assert resp.status_code == HTTPStatus.OK, resp.content
        pages += 1
        items += resp.parsed.items
        cursor = resp.parsed.next_cursor
        if not cursor:  # null (None) or UNSET: the last page
            return items, pages
        assert pages < 50


async def test_a_generated_client_runs_a_sync_job(api: aiohttp.ClientSession,
                                                  server: TestServer,
                                                  generated: Path) -> None:
    async with api.get("/api/openapi.json") as resp:
        assert resp.status == 200
        spec = await resp.read()
    await _generate(spec, generated)

    client_mod = importlib.import_module(PACKAGE)
    partner_api = importlib.import_module(f"{PACKAGE}.api.partner")
    models = importlib.import_module(f"{PACKAGE}.models")
    ops = {name: importlib.import_module(f"{partner_api.__name__}.{name}") for name in (
        "put_theatre", "put_screen", "put_movie", "put_show", "list_theatres", "list_screens",
        "list_partner_movies", "list_shows", "get_partner_movie", "get_show", "retire_screen",
        "retire_movie", "delete_show", "list_changes")}

    partner = await new_partner(api)
    async with client_mod.AuthenticatedClient(base_url=str(server.make_url("")),
                                              token=partner.key) as client:
        # --- push the catalog ---------------------------------------------------------
        theatre_id = uid("th")
        r = await ops["put_theatre"].asyncio_detailed(
            theatre_id, client=client, body=models.TheatreIn(
                name="Sync Cinema", city=partner.city, address="1 Client Rd",
                timezone="Asia/Kolkata"),
            if_none_match="*")
        assert r.status_code == HTTPStatus.CREATED, r.content
        assert r.parsed.theatre_id == theatre_id and r.headers["ETag"]

        screens = sorted(uid("sc") for _ in range(3))
        for screen_id in screens:
            r = await ops["put_screen"].asyncio_detailed(
                screen_id, client=client, body=models.ScreenIn.from_dict(
                    {"theatre_id": theatre_id, "name": screen_id, "layout": layout()}))
            assert r.status_code == HTTPStatus.CREATED, r.content
        movies = sorted(uid("mv") for _ in range(5))
        etags = {}
        for movie_id in movies:
            r = await ops["put_movie"].asyncio_detailed(
                movie_id, client=client, body=models.MovieIn(
                    title=f"Movie {movie_id}", languages=["English"], genres=["Drama"],
                    runtime_min=100, certificate="U"))
            assert r.status_code == HTTPStatus.CREATED, r.content
            etags[movie_id] = r.headers["ETag"]
        show_ids = sorted(uid("sh") for _ in range(3))
        for n, show_id in enumerate(show_ids):
            r = await ops["put_show"].asyncio_detailed(
                show_id, client=client, body=models.ShowIn.from_dict({
                    "movie_id": movies[0], "screen_id": screens[0],
                    "starts_at": at(30 + 4 * n), "language": "English", "format": "2D",
                    "prices": PRICES}))
            assert r.status_code == HTTPStatus.CREATED, r.content
            assert r.parsed.status.value == "scheduled"

        # --- read it back, page by page ------------------------------------------------
        got, pages = await _all_pages(ops["list_partner_movies"].asyncio_detailed,
                                      client=client, limit=2)
        assert [m.movie_id for m in got] == movies and pages == 3
        got, pages = await _all_pages(ops["list_screens"].asyncio_detailed, client=client,
                                      limit=2)
        assert [s.screen_id for s in got] == screens and pages == 2
        assert len(got[0].layout.seats) == 24
        got, _ = await _all_pages(ops["list_theatres"].asyncio_detailed, client=client)
        assert [t.theatre_id for t in got] == [theatre_id]
        got, pages = await _all_pages(ops["list_shows"].asyncio_detailed, client=client,
                                      limit=2)
        assert [s.show.show_id for s in got] == show_ids and pages == 2
        assert all(s.availability.free == 24 for s in got)

        # --- update with If-Match ----------------------------------------------------------
        movie_id = movies[1]
        r = await ops["get_partner_movie"].asyncio_detailed(movie_id, client=client)
        assert r.status_code == HTTPStatus.OK and r.headers["ETag"] == etags[movie_id]
        body = models.MovieIn(title="Renamed", languages=["English", "Hindi"],
                              genres=["Drama"], runtime_min=100, certificate="U")
        r = await ops["put_movie"].asyncio_detailed(movie_id, client=client, body=body,
                                                    if_match=etags[movie_id])
        assert r.status_code == HTTPStatus.OK, r.content
        assert r.parsed.title == "Renamed" and r.headers["ETag"] != etags[movie_id]
        fresh = r.headers["ETag"]
        stale = await ops["put_movie"].asyncio_detailed(
            movie_id, client=client, body=models.MovieIn(
                title="Lost update", languages=["English"], genres=[], runtime_min=90,
                certificate="U"), if_match=etags[movie_id])
        assert stale.status_code == HTTPStatus.PRECONDITION_FAILED, stale.content
        assert stale.parsed.error.code == "precondition_failed"
        r = await ops["get_partner_movie"].asyncio_detailed(movie_id, client=client)
        assert r.parsed.title == "Renamed" and r.headers["ETag"] == fresh

        # --- retire -------------------------------------------------------------------------
        r = await ops["retire_screen"].asyncio_detailed(screens[0], client=client)
        assert r.status_code == HTTPStatus.CONFLICT
        assert r.parsed.error.code == "in_use"
        assert sorted(r.parsed.error["show_ids"]) == show_ids
        r = await ops["retire_movie"].asyncio_detailed(movies[4], client=client, if_match=fresh)
        assert r.status_code == HTTPStatus.PRECONDITION_FAILED  # that tag is movies[1]'s
        r = await ops["retire_movie"].asyncio_detailed(movies[4], client=client,
                                                       if_match=etags[movies[4]])
        assert r.status_code == HTTPStatus.OK, r.content
        assert r.parsed.status.value == "retired"
        r = await ops["delete_show"].asyncio_detailed(show_ids[0], client=client)
        assert r.status_code == HTTPStatus.OK and r.parsed.status.value == "cancelled"

        # --- the change feed ----------------------------------------------------------------
        changes: list[Any] = []
        since: Any = None
        for _ in range(20):
            kw = {"client": client, "limit": 5, **({"since": since} if since else {})}
            r = await ops["list_changes"].asyncio_detailed(**kw)
            assert r.status_code == HTTPStatus.OK, r.content
            assert r.parsed.next_cursor  # always there, to poll from
            since = r.parsed.next_cursor
            if not r.parsed.items:
                break
            changes += r.parsed.items
        kinds = [c.type_ for c in changes]
        assert kinds == (["theatre.upserted"] + ["screen.upserted"] * 3
                         + ["movie.upserted"] * 5 + ["show.created"] * 3
                         + ["movie.upserted", "movie.retired", "show.cancelled"]), kinds
        assert changes[-3].data["title"] == "Renamed"
        assert changes[-2].data["movie_id"] == movies[4]
        assert changes[-1].data["show_id"] == show_ids[0]
        # Nothing new: an empty page, and the same place to poll from.
        r = await ops["list_changes"].asyncio_detailed(client=client, since=since)
        assert r.parsed.items == [] and r.parsed.next_cursor
