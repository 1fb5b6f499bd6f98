"""Security headers on everything the server answers: pages, static files, API answers
and errors (what the browser test checks in Chromium, here for every file)."""
from __future__ import annotations

from pathlib import Path

import aiohttp

WEB = Path(__file__).resolve().parents[2] / "web"
COMMON = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
          "Referrer-Policy": "no-referrer", "Cross-Origin-Opener-Policy": "same-origin"}


def _common(headers: object, what: str) -> None:
    for name, value in COMMON.items():
        assert headers.get(name) == value, (what, name)  # type: ignore[attr-defined]
    assert "camera=()" in headers.get("Permissions-Policy", ""), what  # type: ignore[attr-defined]


async def test_every_page_has_the_strict_csp(api: aiohttp.ClientSession) -> None:
    pages = ["/"] + [f"/static/{p.name}" for p in sorted(WEB.glob("*.html"))]
    assert len(pages) >= 6
    for path in pages:
        async with api.get(path) as resp:
            assert resp.status == 200, path
            csp = resp.headers["Content-Security-Policy"]
            for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                              "frame-ancestors 'none'", "object-src 'none'",
                              "base-uri 'none'"):
                assert directive in csp, (path, directive)
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            _common(resp.headers, path)
            html = await resp.text()
            # Nothing inline the policy would block (and so silently break the page).
            assert "<style" not in html and " style=" not in html, path
            assert "<script>" not in html and " onclick=" not in html, path


async def test_static_files_api_answers_and_errors(api: aiohttp.ClientSession) -> None:
    for path in [f"/static/js/{p.name}" for p in sorted((WEB / "js").glob("*.js"))] + [
            "/static/css/style.css"]:
        async with api.get(path) as resp:
            assert resp.status == 200, path
            _common(resp.headers, path)
    for path, status in (("/api/cities", 200), ("/api/no-such-thing", 404),
                         ("/api/me", 401), ("/static/nope.html", 404)):
        async with api.get(path) as resp:
            assert resp.status == status, path
            _common(resp.headers, path)
            if path.startswith("/api/"):
                assert resp.headers["Cache-Control"] == "no-store", path
                assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
