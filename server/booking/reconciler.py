"""The payment reconciler: drives every payment intent that stopped short of a final state
(a web process killed mid-checkout, Redis or the gateway down) to one, the same way the
checkout itself would (`checkout.drive`): capture what was confirmed, void what was
authorised but lost its seats, refund what was captured without seats, finish the
booking's projections. Nothing is guessed: the gateway is asked by the intent's key, the
show by the command id.

Any web process may run it; a lease in Redis (`reconciler:lease`) lets one at a time work
(the others stand by and take over within a lease when it dies). Each intent also has its
own lease (booking/intents.py), so the reconciler never drives an intent a live request is
driving, and it only looks at intents untouched for `reconcile_after_s`.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING

from aiohttp import web

from server.appkeys import SERVICES
from server.booking import checkout, intents, lifecycle
from server.booking.adapters import booking_ports
from server.commerce.payments import GATEWAY_FAILURES, WebhookEvent
from server.core.refusals import Refused

if TYPE_CHECKING:
    from server.appkeys import Services

log = logging.getLogger(__name__)

LEASE_KEY = "reconciler:lease"
LEASE_MS = 10_000
INTERVAL_S = 1.0
STEP_TIMEOUT_S = 45.0  # past the actor client's 30 s retries and the gateway's 10 s timeout


async def reconcile_once(svc: Services, now_ms: int | None = None,
                         after_s: float | None = None) -> dict[str, int]:
    """One pass over the due intents: how many ended in each state (or stayed open)."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    wait_s = svc.settings.reconcile_after_s if after_s is None else after_s
    outcome: dict[str, int] = {}
    for key in await intents.due(svc.redis, now - int(wait_s * 1000)):
        intent = await intents.load(svc.redis, key)
        if intent is None:
            await intents.unindex(svc.redis, key)
            continue
        if not intent.open:  # final, but its index entry outlived a crash
            await intents.save(svc.redis, intent)
            continue
        if not await intents.take_lease(svc.redis, key, "reconciler"):
            continue  # a request is driving it
        try:
            # Bounded: one intent stuck on a step (an actor call retried, a gateway that
            # hangs) must not stop the pass; it is asked again later.
            await asyncio.wait_for(_drive(svc, intent), STEP_TIMEOUT_S)
        except TimeoutError:
            log.warning("reconciler: %s stuck at %s for %.0f s; later", key, intent.state,
                        STEP_TIMEOUT_S)
            intent.updated_ms = now
            await intents.save(svc.redis, intent)
        except Refused as exc:  # an outage, or a customer who may still come back
            log.info("reconciler: %s stays %s (%s)", key, intent.state, exc.message)
            intent.updated_ms = now  # asked again after another `reconcile_after_s`
            await intents.save(svc.redis, intent)
        except Exception:
            log.exception("reconciler: %s failed at %s", key, intent.state)
            intent.updated_ms = now
            await intents.save(svc.redis, intent)
        finally:
            await intents.drop_lease(svc.redis, key)
        outcome[intent.state] = outcome.get(intent.state, 0) + 1
    return outcome


async def _drive(svc: Services, intent: intents.PaymentIntent) -> None:
    if intent.state != "pending":
        await checkout.drive(booking_ports(svc), intent, None, None)
        return
    # An asynchronous payment: settled by its webhook, or, if that was lost, by asking.
    assert intent.payment is not None
    try:
        found = await svc.payment_guard.call(lambda: svc.payments.payment(intent.payment.ref))
    except GATEWAY_FAILURES as exc:
        raise checkout.retry_later(f"the payment gateway cannot be reached ({exc})") from None
    if found is None or found.state == "pending":
        raise checkout.retry_later("the payment is still pending at the gateway")
    kind = "payment.failed" if found.state in ("failed", "declined", "voided") \
        else "payment.succeeded"
    event = WebhookEvent(f"reconcile:{intent.key}", kind, found.ref, int(time.time()))
    await lifecycle.settle_payment(svc, event)


class Reconciler:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.me = secrets.token_hex(8)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="payment-reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: a shutdown never waits on an intent's step (it is re-run later).
            done, _ = await asyncio.wait({self._task}, timeout=5)
            if not done:
                log.warning("reconciler: did not stop within 5 s")

    async def _run(self) -> None:
        redis = self.svc.redis
        while True:
            try:
                mine = await redis.set(LEASE_KEY, self.me, nx=True, px=LEASE_MS) or \
                    (await redis.get(LEASE_KEY) or b"").decode() == self.me
                if mine:
                    await redis.pexpire(LEASE_KEY, LEASE_MS)
                    await reconcile_once(self.svc)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis down: try again next round
                log.warning("reconciler: pass failed", exc_info=True)
            await asyncio.sleep(INTERVAL_S)


RECONCILER = web.AppKey("reconciler", Reconciler)


def setup(app: web.Application) -> None:
    """Run a reconciler in this process while the app runs (it works while it holds the
    lease)."""
    async def run(app: web.Application):  # type: ignore[no-untyped-def]
        app[RECONCILER] = worker = Reconciler(app[SERVICES])
        worker.start()
        yield
        await worker.stop()

    app.cleanup_ctx.append(run)
