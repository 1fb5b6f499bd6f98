"""Request decoding and response encoding with msgspec Structs (the wire schema)."""
from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from aiohttp import web

from server.core.errors import ApiError

T = TypeVar("T")

MAX_BODY = 1 << 20

_encoder = msgspec.json.Encoder()


async def read_json(request: web.Request, type_: type[T]) -> T:
    """Decode and validate a JSON body into `type_`; bad input is a 400/415/422, never a
    500. The body must say it is JSON (L8): a browser sends a cross-site `text/plain` or
    form body without asking first, but never an `application/json` one."""
    body = await request.read()
    if not body:
        raise ApiError(400, "bad_json", "a JSON request body is required")
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "send the body as JSON (Content-Type: application/json)")
    try:
        return msgspec.json.decode(body, type=type_, strict=True)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {exc}") from None


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_encoder.encode(obj), content_type="application/json",
        headers=headers,
    )
