"""The request id of the work in progress, for logs and the show's log (issue 7).

Set by the web tier per request (server/ops/observability.py); `ShowClient.submit` stamps it
on commands that carry none, so it travels web -> actor -> Redis. A contextvar, so every
asyncio task sees its own request's id; "" outside a request.
"""
from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("bmm_request_id", default="")
