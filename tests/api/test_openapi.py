"""The OpenAPI document: well-formed, every $ref resolves, and it tells the truth: bodies it
describes are accepted, bodies it rules out are refused, responses match their schemas."""
from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import jsonschema
import pytest

from .catalog_helpers import layout, new_partner, uid

METHODS = {"get", "put", "post", "patch", "delete"}


@pytest.fixture
async def doc(api: aiohttp.ClientSession) -> dict[str, Any]:
    async with api.get("/api/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        return await resp.json()


def schema_of(doc: dict, path: str, method: str, status: int | None = None) -> dict:
    op = doc["paths"][path][method]
    if status is None:
        node = op["requestBody"]["content"]["application/json"]["schema"]
    else:
        node = op["responses"][str(status)]["content"]["application/json"]["schema"]
    return {**node, "components": doc["components"]}


def check(doc: dict, schema: dict, value: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return [e.message for e in validator.iter_errors(value)]


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


async def test_document_is_well_formed(doc: dict) -> None:
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    expected = {
        ("/admin/v1/partners", "post"),
        ("/partner/v1/theatres/{theatre_id}", "put"),
        ("/partner/v1/screens/{screen_id}", "put"),
        ("/partner/v1/movies/{movie_id}", "put"),
        ("/partner/v1/shows/{show_id}", "put"),
        ("/partner/v1/shows/{show_id}", "delete"),
        ("/partner/v1/shows:bulk", "post"),
        ("/partner/v1/shows", "get"),
        ("/partner/v1/shows/{show_id}/blocks", "post"),
        ("/partner/v1/shows/{show_id}/blocks", "delete"),
        ("/api/cities", "get"),
        ("/api/movies", "get"),
        ("/api/movies/{movie_id}", "get"),
        ("/api/movies/{movie_id}/shows", "get"),
        # the customer endpoints, declared in server/booking/api.py
        ("/api/shows/{show_id}/seatmap", "get"),
        ("/api/shows/{show_id}/holds", "post"),
        ("/api/holds/{hold_id}", "patch"),
        ("/api/holds/{hold_id}", "delete"),
        ("/api/holds/{hold_id}/checkout", "post"),
        ("/api/bookings/{booking_id}", "get"),
    }
    present = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert expected <= present, expected - present

    components = doc["components"]["schemas"]
    for ref in refs(doc):
        match = re.fullmatch(r"#/components/schemas/(.+)", ref)
        assert match and match.group(1) in components, ref
    for name, schema in components.items():
        jsonschema.Draft202012Validator.check_schema(schema)  # raises if malformed, names it

    op_ids = []
    for path, ops in doc["paths"].items():
        declared = set(re.findall(r"\{([^}]+)\}", path))
        for method, op in ops.items():
            assert method in METHODS
            op_ids.append(op["operationId"])
            in_path = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert in_path == declared, (path, method)
            assert op["responses"] and all(re.fullmatch(r"[1-5]\d\d", s) for s in op["responses"])
            for status, resp in op["responses"].items():
                if int(status) >= 400:
                    assert resp["content"]["application/json"]["schema"]["$ref"].endswith(
                        "/ErrorBody")
            if "requestBody" in op:
                assert {"400", "422"} <= set(op["responses"])
            if op.get("security"):
                (scheme,) = op["security"][0]
                assert scheme in doc["components"]["securitySchemes"]
                assert "401" in op["responses"]
    assert len(op_ids) == len(set(op_ids))


async def test_bodies_the_doc_describes_are_accepted(doc: dict, api: aiohttp.ClientSession
                                                     ) -> None:
    """Bodies validated against the documented request schema; the server takes them, and
    its answers validate against the documented response schemas."""
    p = await new_partner(api)
    theatre, screen, movie, show = uid("th"), uid("sc"), uid("mv"), uid("sh")

    puts = [
        ("/partner/v1/theatres/{theatre_id}", f"/partner/v1/theatres/{theatre}",
         {"name": "Doc Cinema", "city": p.city, "address": "1 Spec Rd",
          "timezone": "Asia/Kolkata"}),
        ("/partner/v1/screens/{screen_id}", f"/partner/v1/screens/{screen}",
         {"theatre_id": theatre, "name": "One", "layout": layout()}),
        ("/partner/v1/movies/{movie_id}", f"/partner/v1/movies/{movie}",
         {"title": "Spec", "languages": ["English"], "genres": ["Documentary"],
          "runtime_min": 90, "certificate": "U"}),
    ]
    p.movie, p.screen = movie, screen
    puts.append(("/partner/v1/shows/{show_id}", f"/partner/v1/shows/{show}",
                 p.show(30, language="English")))
    for template, url, body in puts:
        assert check(doc, schema_of(doc, template, "put"), body) == [], template
        status, out = await p.call("PUT", url, body)
        assert status == 201, out
        assert check(doc, schema_of(doc, template, "put", 200), out) == [], template
    starts_at = dt.datetime.fromisoformat(out["starts_at"])

    bulk = {"shows": [{**p.show(40, language="English"), "show_id": uid("sh")}]}
    assert check(doc, schema_of(doc, "/partner/v1/shows:bulk", "post"), bulk) == []
    status, out = await p.call("POST", "/partner/v1/shows:bulk", bulk)
    assert status == 200 and out["created"] == 1
    assert check(doc, schema_of(doc, "/partner/v1/shows:bulk", "post", 200), out) == []

    seats = {"seats": ["A1"]}
    path = "/partner/v1/shows/{show_id}/blocks"
    assert check(doc, schema_of(doc, path, "post"), seats) == []
    status, out = await p.call("POST", f"/partner/v1/shows/{show}/blocks", seats)
    assert status == 200 and check(doc, schema_of(doc, path, "post", 200), out) == []

    date = starts_at.astimezone(ZoneInfo("Asia/Kolkata")).date()
    status, out = await p.call("GET", f"/partner/v1/shows?date={date}")
    assert status == 200 and out["shows"][0]["availability"]["blocked"] == 1
    assert check(doc, schema_of(doc, "/partner/v1/shows", "get", 200), out) == []

    for template, url in [("/api/cities", "/api/cities"),
                          ("/api/movies", f"/api/movies?city={p.city}"),
                          ("/api/movies/{movie_id}", f"/api/movies/{movie}"),
                          ("/api/movies/{movie_id}/shows", f"/api/movies/{movie}/shows"),
                          ("/api/shows/{show_id}/seatmap", f"/api/shows/{show}/seatmap")]:
        async with api.get(url) as resp:
            assert resp.status == 200, (url, await resp.text())
            out = await resp.json()
        assert check(doc, schema_of(doc, template, "get", 200), out) == [], template


async def test_bodies_the_doc_rules_out_are_refused(doc: dict, api: aiohttp.ClientSession
                                                    ) -> None:
    p = await (await new_partner(api)).setup()
    schema = schema_of(doc, "/partner/v1/shows/{show_id}", "put")
    for bad in [{k: v for k, v in p.show(30).items() if k != "screen_id"},   # missing field
                {**p.show(30), "prices": {"Gold": {"amount": -1, "currency": "INR"}}},
                {**p.show(30), "surprise": True}]:
        assert check(doc, schema, bad) != []
        status, err = await p.call("PUT", f"/partner/v1/shows/{uid('sh')}", bad)
        assert (status, err["error"]["code"]) == (422, "invalid"), err
        assert check(doc, schema_of(doc, "/partner/v1/shows/{show_id}", "put", 422), err) == []


async def test_status_texts_and_browse_filters_are_documented(doc: dict) -> None:
    live = doc["paths"]["/api/shows/{show_id}/live"]["get"]["responses"]
    assert live["101"]["description"] == "Switching Protocols"
    shows = doc["paths"]["/api/movies/{movie_id}/shows"]["get"]
    params = {p["name"] for p in shows["parameters"] if p["in"] == "query"}
    assert {"city", "date", "language", "format"} <= params
    schemas = doc["components"]["schemas"]
    assert "timezone" in schemas["TheatreShows"]["properties"]
    assert "timezone" in schemas["ShowInfo"]["properties"]
