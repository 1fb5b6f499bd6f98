"""The sandbox gateway's HTTP API (aiohttp), over the durable `Ledger`.

    POST /v1/authorisations              {amount, currency, card: {number, exp_month,
                                          exp_year, cvc}, idempotency_key}
                                         200 Authorisation | 402 card_declined |
                                         422 card_invalid / card_expired
    POST /v1/payments/{ref}/capture      200 {ref, state} | 409 / 404 capture_failed
    POST /v1/payments/{ref}/refund       {amount?, idempotency_key?}
                                         200 {refunded} | 409 / 404 refund_failed
    GET  /v1/payments/{ref}              200 payment | 404 not_found
    GET  /v1/payments?idempotency_key=K  200 payment | 404 not_found
    GET  /v1/ledger?ref=&kind=           200 {entries: [LedgerEntry, ...]} in commit order
    POST /v1/test/payments/{ref}/settle  {outcome: succeeded | failed, at?: unix seconds}
                                         200 {body, headers}: the signed webhook
    GET  /healthz                        200 {ok, pid}

Errors are `{"error": {"code", "message"}}`; a body that is not JSON or has bad fields is a
400 `bad_request`. A payment is `{ref, idempotency_key, state, amount, currency, last4,
brand, card_token, refunded}` (a declined key has state "declined" and no card token).

Every ledger call runs on one worker thread (sqlite3 is blocking; one thread also
serialises the mutations), and each mutation is committed before the answer is sent. The
TIMES_OUT card hangs `hang_s` before the authorisation is made, outside that thread, only
when its key is new: the loop keeps serving everyone else meanwhile.

Settling a pending payment (the test-mode endpoint) does what `SandboxGateway.webhook` does
and returns the webhook signed with this process's secret; with a `webhook_url` the
gateway also POSTs it there, in the background (best effort, one attempt, logged).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import msgspec
from aiohttp import web

from server.commerce.payments import (
    TIMES_OUT,
    WEBHOOK_HEADER,
    Authorisation,
    CardDeclined,
    CardDetails,
    CardInvalid,
    GatewayPayment,
    LedgerEntry,
    PaymentError,
    WebhookEvent,
    sign_webhook,
)
from server.sandbox.ledger import DB_NAME, LEDGER_KINDS, Ledger, PaymentRecord, UnknownPayment

log = logging.getLogger("sandbox.gateway")
T = TypeVar("T")


# --- bodies --------------------------------------------------------------------------------

class Card(msgspec.Struct, frozen=True):
    number: str
    exp_month: int
    exp_year: int
    cvc: str


class AuthoriseRequest(msgspec.Struct, frozen=True):
    amount: int
    currency: str
    card: Card
    idempotency_key: str


class RefundRequest(msgspec.Struct, frozen=True):
    amount: int | None = None
    idempotency_key: str | None = None


class SettleRequest(msgspec.Struct, frozen=True):
    outcome: Literal["succeeded", "failed"]
    at: float | None = None  # the webhook's timestamp (tests: a stale delivery); default now


class CaptureResponse(msgspec.Struct, frozen=True):
    ref: str
    state: str


class RefundResponse(msgspec.Struct, frozen=True):
    refunded: int


class LedgerPage(msgspec.Struct, frozen=True):
    entries: list[LedgerEntry]


class SettleResponse(msgspec.Struct, frozen=True):
    body: str                  # the webhook's JSON body, exactly as signed
    headers: dict[str, str]


class ErrorDetail(msgspec.Struct, frozen=True):
    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


# --- helpers -------------------------------------------------------------------------------

class BadRequest(Exception):
    pass


def answer(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(obj), status=status,
                        content_type="application/json")


def error(status: int, code: str, message: str) -> web.Response:
    return answer(ErrorBody(ErrorDetail(code, message)), status)


def view(p: PaymentRecord) -> GatewayPayment:
    return GatewayPayment(p.ref, p.idempotency_key, p.state, p.amount, p.currency, p.last4,
                       p.brand, p.card_token, p.refunded)


async def decode(request: web.Request, type_: type[T], empty_ok: bool = False) -> T:
    raw = await request.read()
    if not raw.strip() and empty_ok:
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise BadRequest(f"the request body is not valid: {exc}") from None


def _status(exc: PaymentError) -> int:
    if isinstance(exc, CardDeclined):
        return 402
    if isinstance(exc, CardInvalid):
        return 422
    if isinstance(exc, UnknownPayment):
        return 404
    return 409  # a payment in the wrong state (capture_failed, refund_failed)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


@web.middleware
async def errors_as_json(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return error(400, "bad_request", str(exc))
    except PaymentError as exc:
        return error(_status(exc), exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, _HTTP_CODES.get(exc.status, f"http_{exc.status}"), exc.reason)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "internal_error", "the sandbox gateway failed")


# --- the gateway ---------------------------------------------------------------------------

class Sandbox:
    def __init__(self, ledger: Ledger, *, webhook_secret: str, hang_s: float = 120.0,
                 webhook_url: str | None = None) -> None:
        self.ledger = ledger
        self.webhook_secret = webhook_secret
        self.hang_s = hang_s
        self.webhook_url = webhook_url
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-ledger")
        self._session: aiohttp.ClientSession | None = None
        self._deliveries: set[asyncio.Task[None]] = set()

    async def db(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a ledger call on the ledger's one thread (in the order calls arrive)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._db, functools.partial(fn, *args, **kw))

    # handlers

    async def healthz(self, request: web.Request) -> web.Response:
        return answer({"ok": True, "pid": os.getpid()})

    async def authorise(self, request: web.Request) -> web.Response:
        req = await decode(request, AuthoriseRequest)
        card = CardDetails(req.card.number, req.card.exp_month, req.card.exp_year, req.card.cvc)
        if card.number == TIMES_OUT and not await self.db(self.ledger.knows_key,
                                                          req.idempotency_key):
            await asyncio.sleep(self.hang_s)  # no lock held: hangs only this call
        auth: Authorisation = await self.db(
            self.ledger.authorise, amount=req.amount, currency=req.currency, card=card,
            idempotency_key=req.idempotency_key)
        return answer(auth)

    async def capture(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        state = await self.db(self.ledger.capture, ref)
        return answer(CaptureResponse(ref, state))

    async def refund(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        req = await decode(request, RefundRequest, empty_ok=True)
        done = await self.db(self.ledger.refund, ref, req.amount, req.idempotency_key)
        return answer(RefundResponse(done))

    async def payment(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        p = await self.db(self.ledger.payment, ref)
        if p is None:
            return error(404, "not_found", f"no payment {ref}")
        return answer(view(p))

    async def lookup(self, request: web.Request) -> web.Response:
        key = request.query.get("idempotency_key")
        if not key:
            raise BadRequest("the idempotency_key query parameter is required")
        p = await self.db(self.ledger.by_key, key)
        if p is None:
            return error(404, "not_found", "no payment has this idempotency key")
        return answer(view(p))

    async def entries(self, request: web.Request) -> web.Response:
        ref = request.query.get("ref") or None
        kind = request.query.get("kind") or None
        if kind is not None and kind not in LEDGER_KINDS:
            raise BadRequest(f"kind must be one of {', '.join(LEDGER_KINDS)}")
        return answer(LedgerPage(await self.db(self.ledger.entries, ref, kind)))

    async def settle(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        req = await decode(request, SettleRequest)
        state = await self.db(self.ledger.settle, ref, req.outcome)
        ts = int(req.at if req.at is not None else time.time())
        body = msgspec.json.encode(WebhookEvent(f"wh_{secrets.token_hex(8)}",
                                                f"payment.{req.outcome}", ref, ts))
        headers = {WEBHOOK_HEADER: sign_webhook(self.webhook_secret, body, ts),
                   "Content-Type": "application/json"}
        log.info("settled %s: %s (state %s)", ref, req.outcome, state)
        if self.webhook_url:
            task = asyncio.create_task(self._deliver(body, headers))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        return answer(SettleResponse(body.decode(), headers))

    async def _deliver(self, body: bytes, headers: dict[str, str]) -> None:
        assert self.webhook_url is not None
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        try:
            async with self._session.post(self.webhook_url, data=body, headers=headers) as resp:
                await resp.read()
                log.info("webhook delivered to %s: %d", self.webhook_url, resp.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("webhook delivery to %s failed: %r", self.webhook_url, exc)

    # lifecycle

    async def close(self, app: web.Application | None = None) -> None:
        for task in list(self._deliveries):
            task.cancel()
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self._db.shutdown(wait=True)  # a call already running finishes (and commits)
        self.ledger.close()


SANDBOX = web.AppKey("sandbox", Sandbox)


def create_app(data_dir: Path | str, *, webhook_secret: str, hang_s: float = 120.0,
               webhook_url: str | None = None) -> web.Application:
    if not webhook_secret:
        raise ValueError("the sandbox gateway needs a webhook secret")
    sandbox = Sandbox(Ledger(Path(data_dir) / DB_NAME), webhook_secret=webhook_secret,
                      hang_s=hang_s, webhook_url=webhook_url)
    app = web.Application(middlewares=[errors_as_json], client_max_size=64 * 1024)
    app[SANDBOX] = sandbox
    app.router.add_get("/healthz", sandbox.healthz)
    app.router.add_post("/v1/authorisations", sandbox.authorise)
    app.router.add_post("/v1/payments/{ref}/capture", sandbox.capture)
    app.router.add_post("/v1/payments/{ref}/refund", sandbox.refund)
    app.router.add_get("/v1/payments/{ref}", sandbox.payment)
    app.router.add_get("/v1/payments", sandbox.lookup)
    app.router.add_get("/v1/ledger", sandbox.entries)
    app.router.add_post("/v1/test/payments/{ref}/settle", sandbox.settle)
    app.on_cleanup.append(sandbox.close)
    return app
