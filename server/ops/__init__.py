"""Running it: Prometheus metrics, request ids and structured logs (`observability.py`,
`metrics.py`, `logs.py`), GC pause tracking, and the security headers, CSP and WebSocket origin check
(`security.py`)."""
