"""Holds, checkout and bookings: the customer's path from a held seat to an e-ticket.

- `holding.py`, `checkout.py`, `bulk.py`: the use cases (place/extend/release a hold,
  house seats; pay and book once per Idempotency-Key; a partner's all-or-nothing bulk
  booking), over plain inputs and the Protocols of `ports.py`, with no aiohttp.
- `adapters.py`: those ports on Redis, the show actors and the gateway; `booking_ports`
  builds them per request.
- `api.py`, `lifecycle_api.py`, `mine_api.py`: thin handlers (customer holds and
  checkout; partner cancellations, refunds, check-in, bulk; my bookings and export).
- `lifecycle.py`: the slow paths (pending payments, gateway outages, cancelling a show
  with refunds); `records.py`: the Redis records; `tickets.py`: e-ticket QR codes."""
