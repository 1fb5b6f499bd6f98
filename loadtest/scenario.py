"""Setting up a load-test target through the partner feed: a partner, a theatre, a big
screen and a few "hot" shows tomorrow. Plain HTTP (urllib) so both the Locust processes
and the asyncio benchmarks can use it against any address."""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import urllib.request
import uuid
from typing import Any

from actors.layout import grid_layout

# No admin key in code: use BMM_ADMIN_KEY, or make one up and put it in our environment
# so the server the bench / Locust runner starts (a child process) gets the same one.
ADMIN_KEY = os.environ.setdefault("BMM_ADMIN_KEY", secrets.token_urlsafe(24))
PRICES = {"silver": 15000, "gold": 25000, "recliner": 45000}


def call(host: str, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(host.rstrip("/") + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def publish_rush(host: str, shows: int = 1, rows: int = 20, per_row: int = 20) -> dict[str, Any]:
    """A fresh partner with `shows` shows on one rows×per_row screen (400 seats by default),
    each on its own day so they never overlap. Returns the ids and the partner key."""
    tag = uuid.uuid4().hex[:8]
    partner = call(host, "POST", "/admin/v1/partners", {"name": f"Load {tag}"}, ADMIN_KEY)
    key = partner["api_key"]
    theatre, screen, movie = f"lt-{tag}", f"lt-{tag}-1", f"lt-{tag}-m"
    call(host, "PUT", f"/partner/v1/theatres/{theatre}",
         {"name": "Load Test Multiplex", "city": "Loadville", "address": "1 Loopback Rd"}, key)
    layout = grid_layout(rows, per_row, [("silver", rows // 2), ("gold", rows // 2 - 2),
                                         ("recliner", 2)], aisles=(per_row // 4, 3 * per_row // 4))
    call(host, "PUT", f"/partner/v1/screens/{screen}", {
        "theatre_id": theatre, "name": "Screen 1",
        "layout": {"seats": [_seat(s) for s in layout.seats],
                   "focal_x": layout.focal_x, "focal_y": layout.focal_y},
    }, key)
    call(host, "PUT", f"/partner/v1/movies/{movie}", {
        "title": "Opening Night", "languages": ["English"], "genres": ["Action"],
        "runtime_min": 120, "certificate": "UA"}, key)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)
    show_ids = []
    for i in range(shows):
        show_id = f"lt-{tag}-s{i}"
        call(host, "PUT", f"/partner/v1/shows/{show_id}", {
            "movie_id": movie, "screen_id": screen,
            "starts_at": (start + dt.timedelta(hours=3 * i)).isoformat().replace("+00:00", "Z"),
            "language": "English", "format": "2D",
            "prices": {c: {"amount": a, "currency": "INR"} for c, a in PRICES.items()},
        }, key)
        show_ids.append(show_id)
    return {"partner_key": key, "show_ids": show_ids, "date": start.date().isoformat(), "screen_id": screen, "movie_id": movie,
            "seat_ids": [s.id for s in layout.seats]}


def _seat(seat: Any) -> dict[str, Any]:
    return {"id": seat.id, "row": seat.row, "number": seat.number, "category": seat.category,
            "x": seat.x, "y": seat.y}
