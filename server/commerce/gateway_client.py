"""`HttpGateway`: the `PaymentGateway` of payments.py over HTTP, for a gateway that runs as
its own process (the sandbox, `python -m server.sandbox`, speaks this API; see
server/sandbox/app.py for the routes).

The platform only talks HTTP to the gateway: this module imports nothing of the sandbox.

Failures, as `GatewayGuard` and checkout expect them:
- cannot connect, reset, DNS, any `aiohttp.ClientError` or OSError, a 5xx, or an answer
  that is not the gateway's JSON -> `GatewayUnavailable` (counts for the circuit breaker);
- 402 -> `CardDeclined(code, message)`, 422 -> `CardInvalid`, any other 4xx (409 a payment
  in the wrong state, 404 an unknown one) -> `PaymentError(code, message)`.

There is no client timeout here beyond a generous safety net (`SAFETY_TIMEOUT_S`): the
caller's `GatewayGuard` applies the real one (and turns it into `GatewayTimeout`).

One `aiohttp.ClientSession`, created on first use (inside the running loop); `close()` it.

`GatewayPayment` (what `lookup` and `payment` return) is payments.py's, re-exported here.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from server.commerce.payments import (
    WEBHOOK_HEADER,
    Authorisation,
    CardDeclined,
    CardDetails,
    CardInvalid,
    GatewayPayment,
    GatewayTimeout,
    GatewayUnavailable,
    LedgerEntry,
    LedgerKind,
    PaymentError,
    WebhookEvent,
    verify_webhook,
)

__all__ = ["GatewayPayment", "HttpGateway", "SAFETY_TIMEOUT_S"]

SAFETY_TIMEOUT_S = 300.0
T = TypeVar("T")


class _ErrorDetail(msgspec.Struct, frozen=True):
    code: str = "gateway_error"
    message: str = ""


class _ErrorBody(msgspec.Struct, frozen=True):
    error: _ErrorDetail


class _Captured(msgspec.Struct, frozen=True):
    ref: str
    state: str


class _Refunded(msgspec.Struct, frozen=True):
    refunded: int


class _Ledger(msgspec.Struct, frozen=True):
    entries: list[LedgerEntry]


class _Settled(msgspec.Struct, frozen=True):
    body: str
    headers: dict[str, str]


class HttpGateway:
    def __init__(self, base_url: str, webhook_secret: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.webhook_secret = webhook_secret
        self._session: aiohttp.ClientSession | None = None

    # --- PaymentGateway ------------------------------------------------------------------

    async def authorise(self, *, amount: int, currency: str, card: CardDetails,
                        idempotency_key: str) -> Authorisation:
        body = {"amount": amount, "currency": currency, "idempotency_key": idempotency_key,
                "card": {"number": card.number, "exp_month": card.exp_month,
                         "exp_year": card.exp_year, "cvc": card.cvc}}
        status, raw = await self._call("POST", "/v1/authorisations", body)
        return self._decode(status, raw, Authorisation)

    async def capture(self, ref: str) -> None:
        status, raw = await self._call("POST", f"/v1/payments/{_seg(ref)}/capture")
        self._decode(status, raw, _Captured)

    async def refund(self, ref: str, amount: int | None = None,
                     idempotency_key: str | None = None) -> int:
        body: dict[str, Any] = {}
        if amount is not None:
            body["amount"] = amount
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        status, raw = await self._call("POST", f"/v1/payments/{_seg(ref)}/refund", body)
        return self._decode(status, raw, _Refunded).refunded

    def verify_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        return verify_webhook(self.webhook_secret, body, headers.get(WEBHOOK_HEADER))

    # --- reads ---------------------------------------------------------------------------

    async def lookup(self, idempotency_key: str) -> GatewayPayment | None:
        """The payment the gateway made for this authorise idempotency key (what a web
        process that crashed mid-checkout left at the gateway), or None."""
        status, raw = await self._call("GET", "/v1/payments",
                                       params={"idempotency_key": idempotency_key})
        return None if status == 404 else self._decode(status, raw, GatewayPayment)

    async def payment(self, ref: str) -> GatewayPayment | None:
        status, raw = await self._call("GET", f"/v1/payments/{_seg(ref)}")
        return None if status == 404 else self._decode(status, raw, GatewayPayment)

    # --- test mode -----------------------------------------------------------------------

    async def entries(self, ref: str | None = None,
                      kind: LedgerKind | None = None) -> list[LedgerEntry]:
        params = {k: v for k, v in (("ref", ref), ("kind", kind)) if v is not None}
        status, raw = await self._call("GET", "/v1/ledger", params=params)
        return self._decode(status, raw, _Ledger).entries

    async def state(self, ref: str) -> str | None:
        p = await self.payment(ref)
        return None if p is None else p.state

    async def settle(self, ref: str, outcome: Literal["succeeded", "failed"],
                     at: float | None = None) -> tuple[bytes, dict[str, str]]:
        """Settle a pending payment at the gateway; the signed webhook it would deliver,
        as (body, headers) ready to POST to /api/payments/webhook."""
        body: dict[str, Any] = {"outcome": outcome}
        if at is not None:
            body["at"] = at
        status, raw = await self._call("POST", f"/v1/test/payments/{_seg(ref)}/settle", body)
        settled = self._decode(status, raw, _Settled)
        return settled.body.encode(), dict(settled.headers)

    # --- plumbing ------------------------------------------------------------------------

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=SAFETY_TIMEOUT_S),
                headers={"Accept": "application/json"})
        return self._session

    async def _call(self, method: str, path: str, body: Any = None,
                    params: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body) of a 2xx or 4xx answer; GatewayUnavailable for everything else."""
        data = None if body is None else msgspec.json.encode(body)
        headers = None if body is None else {"Content-Type": "application/json"}
        try:
            async with self._client().request(method, self.base_url + path, data=data,
                                              headers=headers, params=params) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:  # only the safety net: the guard's timeout cancels us first
            raise GatewayTimeout(
                f"the payment gateway did not answer within {SAFETY_TIMEOUT_S:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise GatewayUnavailable(f"the payment gateway is unreachable: {exc!r}") from None
        if status >= 500:
            raise GatewayUnavailable(f"the payment gateway failed: HTTP {status} "
                                     f"{_error(raw, status).message}".rstrip())
        return status, raw

    @staticmethod
    def _decode(status: int, raw: bytes, type_: type[T]) -> T:
        if 200 <= status < 300:
            try:
                return msgspec.json.decode(raw, type=type_)
            except msgspec.DecodeError as exc:
                raise GatewayUnavailable(
                    f"the payment gateway answered {status} with a body that is not "
                    f"its API's: {exc}") from None
        detail = _error(raw, status)
        if status == 402:
            raise CardDeclined(detail.code, detail.message)
        if status == 422:
            raise CardInvalid(detail.code, detail.message)
        if 400 <= status < 500:
            raise PaymentError(detail.code, detail.message)
        raise GatewayUnavailable(f"the payment gateway answered HTTP {status}")


def _error(raw: bytes, status: int) -> _ErrorDetail:
    try:
        return msgspec.json.decode(raw, type=_ErrorBody).error
    except msgspec.DecodeError:
        return _ErrorDetail(f"http_{status}", raw[:200].decode(errors="replace"))


def _seg(ref: str) -> str:
    """A ref as one path segment (refs are sbx_<hex>; anything else must not escape)."""
    return quote(ref, safe="")
