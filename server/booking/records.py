"""Records the customer API keeps in Redis next to the show actor's own state.

- `HoldRecord`: a hold as the use cases see it. Not stored: the show's actor has it (its
  command, with the holder token's SHA-256 and the quote, is in the show's log) and
  answers it to its holder (`c.Peek`).
- `BookingRecord` (`booking:{<show>}:<booking_id>`): written at checkout. It keeps the
  gateway's card token and the last four digits, never the card number.
- The show's bookings index (`bookings:{<show>}`): a hash, booking id -> status, written in
  the same MULTI as every write of a booking record (`queue_booking`), so reports and a
  show's cancellation find a show's bookings without a SCAN.
- Checkout idempotency (`idem:{<show>}:<hold_id>:<sha256(key)>`): the checkout's payment
  intent (booking/intents.py), written before paying, final answer included.

Keys carry the show's hash tag, like the actor's keys, so a show's data stays on one shard.
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline

from server.catalog.model import Money
from server.commerce import pricing

IDEMPOTENCY_TTL_S = 24 * 3600


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def show_of(record_id: str) -> str | None:
    """Hold and booking ids are `<show_id>.<random>`; the show id routes them."""
    show_id, dot, rest = record_id.partition(".")
    return show_id if dot and show_id and rest else None


# --- quotes ----------------------------------------------------------------------------

# The quote is server/commerce/pricing.py's itemised quote (per seat: base, discount, fee, tax,
# total), made when the seats are held and charged at checkout unchanged.
Quote = pricing.Quote
QuoteLine = pricing.QuoteLine


# --- holds -----------------------------------------------------------------------------

# "pending": an asynchronous payment is under way (confirmed or failed by the gateway's
# webhook, server/booking/lifecycle.py); the hold can be neither paid again nor released meanwhile.
HoldState = Literal["active", "released", "booked", "pending"]


class HoldRecord(msgspec.Struct):
    hold_id: str
    show_id: str
    token_hash: str
    seats: list[str]
    quote: Quote
    created_ms: int
    expires_ms: int
    max_expires_ms: int
    state: HoldState = "active"
    booking_id: str | None = None


# --- bookings --------------------------------------------------------------------------

class PaymentInfo(msgspec.Struct, frozen=True):
    ref: str
    card_token: str
    last4: str
    brand: str


class BookingRecord(msgspec.Struct):
    booking_id: str
    show_id: str
    hold_id: str
    seats: list[str]
    quote: Quote
    payment: PaymentInfo
    email: str
    name: str
    created_at: datetime
    # "pending": paid asynchronously, waiting for the gateway's webhook; "failed": that
    # payment failed (the seats were never booked). See server/booking/lifecycle.py.
    status: Literal["confirmed", "cancelled", "pending", "failed"] = "confirmed"
    customer_id: str | None = None  # the logged-in customer's user id (None: guest checkout)
    # SHA-256 of the holder token the show actor knows the booking by (actors Cancel needs
    # it); "" for records written before it was kept (the hold record has it then).
    holder_hash: str = ""
    # The contact phone, AES-GCM sealed with the data key (server/core/pii.py), bound to the
    # booking id; None when none was given.
    phone: str | None = None
    id_number: str | None = None  # an identity document number, sealed the same way


def booking_key(show_id: str, booking_id: str) -> str:
    return f"booking:{{{show_id}}}:{booking_id}"


def show_bookings_key(show_id: str) -> str:
    """The show's bookings index: booking id -> its record's status."""
    return f"bookings:{{{show_id}}}"


_booking_decoder = msgspec.json.Decoder(BookingRecord)
MGET_CHUNK = 500


def queue_booking(pipe: Pipeline | ClusterPipeline, booking: BookingRecord) -> None:
    """The record and its index entry, queued on a transaction of the show's slot."""
    pipe.set(booking_key(booking.show_id, booking.booking_id), msgspec.json.encode(booking))
    pipe.hset(show_bookings_key(booking.show_id), booking.booking_id, booking.status)


async def save_booking(redis: aioredis.Redis, booking: BookingRecord) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        queue_booking(pipe, booking)
        await pipe.execute()


async def show_booking_ids(redis: aioredis.Redis, show_id: str) -> dict[str, str]:
    """booking id -> status, from the show's index."""
    raw = await redis.hgetall(show_bookings_key(show_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def load_show_bookings(redis: aioredis.Redis, show_id: str,
                             ids: list[str] | None = None) -> list[BookingRecord]:
    """The show's booking records (all, or `ids`), read through its index: one slot, so
    MGET is fine on a cluster too."""
    if ids is None:
        ids = sorted(await show_booking_ids(redis, show_id))
    out: list[BookingRecord] = []
    for i in range(0, len(ids), MGET_CHUNK):
        keys = [booking_key(show_id, b) for b in ids[i:i + MGET_CHUNK]]
        out.extend(_booking_decoder.decode(r) for r in await redis.mget(keys) if r)
    return out


async def load_booking(redis: aioredis.Redis, booking_id: str) -> BookingRecord | None:
    show_id = show_of(booking_id)
    if show_id is None:
        return None
    raw = await redis.get(booking_key(show_id, booking_id))
    return _booking_decoder.decode(raw) if raw else None


# --- checkout idempotency --------------------------------------------------------------

def idempotency_key(show_id: str, hold_id: str, key: str) -> str:
    """Where a checkout's payment intent lives (booking/intents.py)."""
    return f"idem:{{{show_id}}}:{hold_id}:{hashlib.sha256(key.encode()).hexdigest()}"


# --- bulk bookings (a partner's, invoiced) ---------------------------------------------------

class BulkRecord(msgspec.Struct):
    bulk_id: str
    show_id: str
    partner_id: str
    booking_ids: list[str]
    seats: list[str]
    amount: Money
    email: str
    name: str
    reference: str | None
    created_at: datetime
    status: Literal["confirmed", "cancelled"] = "confirmed"


def bulk_key(show_id: str, bulk_id: str) -> str:
    return f"bulk:{{{show_id}}}:{bulk_id}"


async def load_bulk(redis: aioredis.Redis, show_id: str, bulk_id: str) -> BulkRecord | None:
    raw = await redis.get(bulk_key(show_id, bulk_id))
    return msgspec.json.decode(raw, type=BulkRecord) if raw else None


async def save_bulk(redis: aioredis.Redis, bookings: list[BookingRecord], bulk: BulkRecord
                    ) -> None:
    """The bookings and their bulk record in one transaction: all or none (one show: one
    slot)."""
    async with redis.pipeline(transaction=True) as pipe:
        for b in bookings:
            queue_booking(pipe, b)
        pipe.set(bulk_key(bulk.show_id, bulk.bulk_id), msgspec.json.encode(bulk))
        await pipe.execute()
