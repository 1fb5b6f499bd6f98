"""Money: the itemised quote (`pricing.py`, pure), offers and promo codes with atomic use
counting (`offers.py`, `api.py`), and the payment gateway adapter with its sandbox, timeout
and circuit breaker (`payments.py`)."""
