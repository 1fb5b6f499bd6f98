"""Every operation the OpenAPI document marks as needing credentials refuses a caller
without them (401/403), before looking at ids or bodies: derived from the document, so an
endpoint added later is covered without editing this test."""
from __future__ import annotations

import re

import aiohttp

from server.core.openapi import build_document

# Customer-side operations that take a per-object token rather than a login (booking
# token, holder token) are documented without `security`; test_owasp_api covers those.


def _secured() -> list[tuple[str, str]]:
    doc = build_document()
    out = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if op.get("security"):
                out.append((method.upper(), re.sub(r"\{[^}]+\}", "x-1", path)))
    return out


async def test_every_secured_operation_refuses_anonymous_callers(
        api: aiohttp.ClientSession) -> None:
    secured = _secured()
    assert len(secured) > 40  # the document really lists them
    wrong = []
    for method, path in secured:
        for headers in ({}, {"Authorization": "Bearer bmm_not-a-real-key"}):
            body = b"{}" if method in ("POST", "PUT", "PATCH", "DELETE") else None
            async with api.request(method, path, data=body, headers={
                    **headers, "Content-Type": "application/json"}) as resp:
                if resp.status not in (401, 403):
                    wrong.append((method, path, bool(headers), resp.status, await resp.text()))
    assert wrong == [], wrong
