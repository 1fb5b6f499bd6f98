"""Security headers, Content-Security-Policy and the WebSocket origin check (issue 7).

Pages get a strict CSP (no inline script or style, nothing from elsewhere); API answers
get a CSP that allows nothing (they are data, never documents) and `no-store`. HSTS only
over TLS: sent over plain HTTP it would be ignored anyway, and would be wrong behind a
proxy that does not terminate TLS.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from aiohttp import web

from server.appkeys import services
from server.core.errors import ApiError, Handler

# A Host header we are willing to repeat in the CSP (it comes from the client).
_SAFE_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
HSTS = "max-age=31536000; includeSubDomains"

COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # booking tokens travel in page URLs
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def page_csp(host: str | None) -> str:
    """The pages' policy. WebSockets: our own host only (CSP3 'self' covers ws:/wss: of the
    same host in current browsers; the explicit source keeps older ones working)."""
    connect = "'self'"
    if host and _SAFE_HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"font-src 'self'; connect-src {connect}; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'self'; object-src 'none'")


def _is_page(request: web.Request, response: web.StreamResponse) -> bool:
    # A static file's content type is only set when it is sent: go by the path too.
    path = request.path
    return response.content_type == "text/html" or path == "/" or path.endswith(".html")


@web.middleware
async def security_headers_middleware(request: web.Request,
                                      handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if response.prepared:
        return response  # a WebSocket or stream: its headers are already on the wire
    headers = response.headers
    headers["Server"] = "BookMyMovie"  # not aiohttp's "Python/3.x aiohttp/3.y": no versions
    for name, value in COMMON_HEADERS.items():
        headers.setdefault(name, value)
    if _is_page(request, response):
        headers.setdefault("Content-Security-Policy", page_csp(request.host))
    elif request.path.startswith("/api/"):
        headers.setdefault("Content-Security-Policy", API_CSP)
        headers.setdefault("Cache-Control", "no-store")  # personal data, tokens
    if request.secure:
        headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def _origin_key(scheme: str, host: str, port: int | None) -> tuple[str, int]:
    return host.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme, -1)


def _parse_origin(origin: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port


def origin_allowed(origin: str, host: str, secure: bool, allowed: tuple[str, ...]) -> bool:
    """Is a browser's Origin our own host (as the client addressed us) or on the allow-list?"""
    parsed = _parse_origin(origin)
    if parsed is None:
        return False  # "null" (sandboxed frames, file:), garbage
    scheme, hostname, port = parsed
    for entry in allowed:
        other = _parse_origin(entry.rstrip("/"))
        if other and other[0] == scheme and (
                _origin_key(*other) == _origin_key(scheme, hostname, port)):
            return True
    own = _parse_origin(f"{'https' if secure else 'http'}://{host}") if host else None
    if own is None:
        return False
    # Compare host and port (the page may be http behind a TLS-terminating proxy).
    return _origin_key(scheme, hostname, port) == _origin_key(scheme, own[1], own[2])


def check_origin(request: web.Request) -> None:
    """Refuse a cross-site WebSocket (or other browser request) before upgrading.

    Browsers always send Origin on a WebSocket handshake and cookies ride along, so a
    foreign page could otherwise open one in the visitor's name (cross-site WebSocket
    hijacking). No Origin means a non-browser client: nothing to protect it from.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return
    allowed = services(request).settings.allowed_origins
    if not origin_allowed(origin, request.host, request.secure, allowed):
        raise ApiError(403, "forbidden_origin",
                       "this origin may not open a connection here", origin=origin[:200])
