"""The booking ports (`ports.py`) on the real parts: the show actors on Ray (through the
coalescing clients), Redis records, the process's show cache and payment gateway. Built
once per process by the app factory (`booking_ports`)."""
from __future__ import annotations

import logging

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from actors import redis_conn

from server.accounts.users import current_user, link_booking
from server.appkeys import Services, services
from server.booking import intents, lifecycle
from server.booking import records as store
from server.booking.ports import Booking, Holder
from server.booking.intents import PaymentIntent
from server.booking.records import BookingRecord, BulkRecord, HoldRecord
from server.catalog.model import Show
from server.commerce import offers
from server.commerce.pricing import Offer, PricingConfig, PromoCode
from server.core.clock import SystemClock
from server.core.outbox import booking_data, publish
from server.core.refusals import Refused
from server.onsale import admission, identity

log = logging.getLogger(__name__)
CLOCK = SystemClock()
# A device cookie to give the browser with the answer (a device seen for the first time).
NEW_DEVICE = web.RequestKey("new_device", str)


class RedisPromos:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def pricing_inputs(self, theatre_id: str, partner_id: str
                             ) -> tuple[str, list[Offer]]:
        return await offers.pricing_inputs(self.redis, theatre_id, partner_id)

    async def get(self, code: str) -> PromoCode | None:
        return await offers.get_promo(self.redis, code)

    async def reserve(self, promo: PromoCode, hold_id: str, who: str, now_ms: int,
                      until_ms: int) -> str:
        return await offers.reserve(self.redis, promo, hold_id, who, now_ms, until_ms)

    async def extend(self, code: str, hold_id: str, until_ms: int) -> None:
        await offers.extend(self.redis, code, hold_id, until_ms)

    async def release(self, code: str, hold_id: str, now_ms: int) -> None:
        await offers.release(self.redis, code, hold_id, now_ms)

    async def consume(self, promo: PromoCode, hold_id: str, who: str, now_ms: int) -> str:
        return await offers.consume(self.redis, promo, hold_id, who, now_ms)

    async def unconsume(self, code: str, hold_id: str, who: str, until_ms: int | None
                        ) -> None:
        await offers.unconsume(self.redis, code, hold_id, who, until_ms)


class RedisCheckouts:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.redis = svc.redis

    async def claim(self, intent: PaymentIntent) -> PaymentIntent | None:
        return await intents.claim(self.redis, intent)

    async def load(self, key: str) -> PaymentIntent | None:
        return await intents.load(self.redis, key)

    async def save(self, intent: PaymentIntent) -> None:
        await intents.save(self.redis, intent)

    async def forget(self, intent: PaymentIntent) -> None:
        await intents.forget(self.redis, intent)

    async def take_lease(self, key: str, owner: str) -> bool:
        return await intents.take_lease(self.redis, key, owner)

    async def drop_lease(self, key: str) -> None:
        try:
            await intents.drop_lease(self.redis, key)
        except RedisError as exc:
            # It runs out by itself (intents.LEASE_MS); a store that cannot take the DEL
            # now (a failover) must not turn the checkout's answer into an error.
            log.info("checkout %s: lease left to run out (%s)", key, exc)

    async def load_booking(self, booking_id: str) -> BookingRecord | None:
        return await store.load_booking(self.redis, booking_id)

    async def replicated(self, key: str) -> bool:
        return await redis_conn.replicated(self.redis, key)

    async def booked(self, booking: BookingRecord) -> None:
        # The record (with the show's bookings index) in the show's slot, then the
        # customer's list in theirs: two steps, each idempotent. A crash between them leaves
        # the intent "captured", and whoever finishes it runs this again.
        await store.save_booking(self.redis, booking)
        if booking.customer_id is not None:
            await link_booking(self.redis, booking.customer_id, booking.booking_id)
        await publish(self.redis, "booking.confirmed", booking_data(booking),
                      event_id=f"booking.confirmed:{booking.booking_id}")  # e-mail + webhooks

    async def after_booking(self, booking: BookingRecord) -> None:
        await lifecycle.after_confirm(self.svc, booking, publish_confirmed=False)

    async def pending(self, intent: PaymentIntent) -> None:
        await lifecycle.start_pending(self.svc, intent)

    async def gateway_down(self, hold: HoldRecord, exc: Exception) -> Refused:
        return await lifecycle.gateway_down(self.svc, hold, exc)


class RedisBulks:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def save(self, bookings: list[BookingRecord], bulk: BulkRecord) -> None:
        await store.save_bulk(self.svc.redis, bookings, bulk)

    async def announce(self, show: Show, bulk: BulkRecord, bookings: list[BookingRecord]
                       ) -> None:
        await lifecycle.announce_bulk(self.svc, show, bulk, bookings)


def booking_ports(svc: Services) -> Booking:
    """The booking flows' ports over this process's services. Made per request (a few small
    objects, next to a ~1 ms actor call), so they always see the services as they are now
    (the tests swap the payment gateway of a running app)."""
    s = svc.settings
    return Booking(shows=svc.shows, catalog=svc.show_cache,
                   promos=RedisPromos(svc.redis), checkouts=RedisCheckouts(svc),
                   bulks=RedisBulks(svc),
                   payments=svc.payments, payment_guard=svc.payment_guard,
                   fees=PricingConfig(s.fee_fixed, s.fee_bp, s.tax_bp), settings=s,
                   clock=CLOCK)


class RequestCustomer:
    """The `ports.Customer` of one HTTP request: its session, admission token, account."""

    def __init__(self, request: web.Request) -> None:
        self.request = request

    async def holder(self, show_id: str) -> Holder:
        customer, cap = await admission.hold_gate(self.request, show_id)
        secret = services(self.request).settings.secret
        dev = identity.device(self.request, secret)
        if dev.new_cookie:  # the handler gives the browser its device cookie
            self.request[NEW_DEVICE] = dev.new_cookie
        return Holder(customer, cap, dev.key, identity.network(self.request, secret))

    async def user_id(self) -> str | None:
        user = await current_user(self.request)
        return user.user_id if user else None

    async def customer_id(self) -> str | None:
        user = await current_user(self.request)
        return user.user_id if user and user.role == "customer" else None
