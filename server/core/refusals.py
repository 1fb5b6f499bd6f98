"""`Refused`: the one error the use cases raise, and the one table that says what each
refusal means over HTTP. No HTTP here: `core.errors.error_middleware` does the mapping."""
from __future__ import annotations

from typing import Any

# Every refusal code a use case (or the show actor, `actors.commands.Rejected.code`) gives,
# with its HTTP status. A code not listed is a conflict (409).
REFUSAL_STATUS: dict[str, int] = {
    # the show actor's rejections
    "invalid": 422,
    "unknown_seats": 422,
    "too_many_seats": 422,
    "customer_limit": 409,
    "device_limit": 409,
    "network_limit": 409,
    "seats_unavailable": 409,
    "not_enough_seats": 409,
    "not_found": 404,
    "not_owner": 403,
    "hold_expired": 410,
    "lifetime_exceeded": 409,
    "duplicate_id": 409,
    "unavailable": 503,
    # the booking flows' own
    "show_started": 410,
    "not_for_sale": 422,
    "show_cancelled": 409,
    "hold_checked_out": 409,
    "payment_pending": 409,
    "promo_unknown": 422,
    "promo_not_applicable": 422,
    "email_required": 422,
    "promo_exhausted": 409,
    "promo_limit_reached": 409,
    "promo_customer_mismatch": 409,
    "idempotency_key_reused": 422,
    "checkout_in_progress": 409,
    "admission_required": 403,
    "admission_invalid": 403,
}


class Refused(Exception):
    """A use case says no: `code` (stable, for clients), a message for people, and details
    that go into the error body (e.g. `seats=[...]`). `status` is set only where one code
    means two things (a best-available pick that lands on unpriced seats is a conflict,
    naming such seats is a validation error)."""

    def __init__(self, code: str, message: str, *, status: int | None = None,
                 **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.status = status if status is not None else REFUSAL_STATUS.get(code, 409)
