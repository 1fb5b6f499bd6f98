"""Fair on-sales: per-client and per-customer rate limits (`ratelimit.py`), the waiting room
queue and its WebSocket (`waiting_room.py`), and the admission tokens the hold path checks
(`admission.py`)."""
