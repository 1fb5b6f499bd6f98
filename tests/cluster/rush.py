"""Clients for the cluster and fault tests: an on-sale rush over HTTP, live seat-map
watchers over WebSockets, and the end-state checks. Everything goes through the web
processes (HTTP, WebSocket) or straight to Redis; nothing here talks to Ray.

The rush writes what the clients were told into a ledger in `loadtest.run_locust`'s format,
and `check_ledger` runs that module's end-state check on it (no seat sold twice, every
booking a client was given exists with its seats booked).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.client import connect as ws_connect

from actors import commands as c
from actors.layout import Rules, ShowConfig
from actors.seatmap import SeatMap
from actors.store import ShowStore, config_key, event_decoder, log_key, seq_key, snap_key
from loadtest.run_locust import check_end_state
from loadtest.scenario import publish_rush
from server.catalog.show_cache import SHOWS_CHANNEL

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}


async def publish(host: str, redis_url: str, shows: int = 1, rows: int = 10, per_row: int = 12,
                  hold_ttl_ms: int = 6_000, hold_max_lifetime_ms: int = 20_000) -> dict[str, Any]:
    """An on-sale through the partner feed (loadtest.scenario), then the shows' rules made
    short-lived: holds run out in `hold_ttl_ms`, so a test can wait for every abandoned
    hold to expire. Written before any activity (the actor reads its config only then)."""
    rush = await asyncio.to_thread(publish_rush, host, shows, rows, per_row)
    client = aioredis.Redis.from_url(redis_url)
    try:
        for show_id in rush["show_ids"]:
            config = msgspec.json.decode(await client.get(config_key(show_id)), type=ShowConfig)
            rules = Rules(config.rules.max_seats_per_hold, hold_ttl_ms, hold_max_lifetime_ms)
            await client.set(config_key(show_id),
                             msgspec.json.encode(msgspec.structs.replace(config, rules=rules)))
            await client.publish(SHOWS_CHANNEL, show_id)  # web processes drop cached copies
    finally:
        await client.aclose()
    return rush


# --- the rush ------------------------------------------------------------------------------

@dataclass
class RushStats:
    holds: int = 0
    bookings: int = 0
    releases: int = 0
    abandoned: int = 0
    conflicts: int = 0      # 409: taken / not enough seats (a correct answer)
    # 410 for a release or checkout answered after the hold's expiry: a correct answer (a
    # loaded machine can take a hold's whole TTL to answer); one answered before is an error.
    expired: int = 0
    limited: int = 0        # 429: rate limited / shed (a correct answer under load)
    failovers: int = 0      # connection refused/reset: the client moved to another process
    errors: Counter[str] = field(default_factory=Counter)  # other answers: "<what> <status>"
    # Other answers to a request resent after a failover (its first copy may have landed:
    # e.g. a release done by the dead process answers 404 when resent).
    after_failover: Counter[str] = field(default_factory=Counter)
    completed: int = 0      # customer journeys finished
    by_url: Counter[str] = field(default_factory=Counter)  # 2xx answers per web process

    def ok(self) -> int:
        return self.holds + self.bookings + self.releases


class Rush:
    """`clients` customers, each in a loop until `stop` is set: hold 1-3 seats (best
    available or picked), then check out (half), release (a quarter) or walk away. A
    customer whose web process does not answer goes to the next one (what a load balancer
    does), and retries a checkout with the same Idempotency-Key, as the page does.

    No show sells out: once `book_share` of a show's seats are booked, a customer who would
    check out releases instead. A sold-out rush answers nothing but 409, and a test waiting
    for progress (`reached`) would then wait on how fast the machine sold the seats."""

    def __init__(self, urls: list[str], rush: dict[str, Any], ledger: Path,
                 clients: int = 24, think_s: tuple[float, float] = (0.01, 0.1),
                 book_share: float = 0.5) -> None:
        self.urls = urls
        self.rush = rush
        self.ledger_path = ledger
        self.ledger = open(ledger, "a", buffering=1)  # noqa: SIM115
        self.clients = clients
        self.think_s = think_s
        self.stats = RushStats()
        self.stop = asyncio.Event()
        self._progress: list[tuple[int, asyncio.Event]] = []
        self.booked: list[dict[str, Any]] = []
        self.book_limit = int(book_share * len(rush["seat_ids"]))  # seats per show
        self._booked_seats: Counter[str] = Counter()  # per show, booked or being paid for
        self._resent = [False] * clients  # per customer: this journey had a failover
        self.on_error: Any = None  # called with the status of each error answer

    def record(self, kind: str, **fields: Any) -> None:
        self.ledger.write(json.dumps({"kind": kind, **fields}) + "\n")

    def reached(self, successes: int) -> asyncio.Event:
        """Set once the clients have had `successes` more 2xx answers from now."""
        event = asyncio.Event()
        self._progress.append((self.stats.ok() + successes, event))
        self._check()
        return event

    def _check(self) -> None:
        for target, event in self._progress:
            if self.stats.ok() >= target:
                event.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30, sock_connect=3)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._customer(session, i) for i in range(self.clients)))
        self.ledger.close()

    async def _request(self, session: aiohttp.ClientSession, i: int, method: str, path: str,
                       **kw: Any) -> tuple[int, Any]:
        """One request, sent to this customer's web process, or the next one if it is down.
        Returns (status, json body); status 0 if no process answered."""
        for attempt in range(len(self.urls) * 3):
            url = self.urls[(i + attempt) % len(self.urls)]
            try:
                async with session.request(method, url + path, **kw) as resp:
                    body = await resp.json(content_type=None) if resp.content_length != 0 else None
                    if resp.status < 300:
                        self.stats.by_url[url] += 1
                    return resp.status, body
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
                self.stats.failovers += 1
                self._resent[i] = True
                await asyncio.sleep(0.05 * (attempt + 1))
        return 0, None

    async def _customer(self, session: aiohttp.ClientSession, i: int) -> None:
        rnd = random.Random(i)
        show_ids, seat_ids = self.rush["show_ids"], self.rush["seat_ids"]
        while not self.stop.is_set():
            self._resent[i] = False
            show = rnd.choice(show_ids)
            if rnd.random() < 0.6:
                body: dict[str, Any] = {"best": {"count": rnd.randint(1, 3)}}
            else:
                body = {"seats": rnd.sample(seat_ids, rnd.randint(1, 2))}
            status, hold = await self._request(session, i, "POST", f"/api/shows/{show}/holds",
                                               json=body)
            if status != 201:
                await self._answer_other(i, "hold", status)
                continue
            self.stats.holds += 1
            self._check()
            self.record("hold", show=show, hold_id=hold["hold_id"], seats=hold["seats"],
                        expires_at=hold["expires_at"])
            headers = {"X-Holder-Token": hold["holder_token"]}
            await asyncio.sleep(rnd.uniform(*self.think_s))
            roll = rnd.random()
            if roll < 0.5 and self._booked_seats[show] + len(hold["seats"]) > self.book_limit:
                roll = 0.5  # this show has sold its share: release instead
            if roll < 0.5:
                self._booked_seats[show] += len(hold["seats"])  # counted before paying
                await self._checkout(session, i, show, hold, headers)
            elif roll < 0.75:
                status, _ = await self._request(session, i, "DELETE",
                                                f"/api/holds/{hold['hold_id']}", headers=headers)
                if status == 200:
                    self.stats.releases += 1
                    self._check()
                    self.record("released", show=show, hold_id=hold["hold_id"])
                else:
                    await self._answer_other(i, "release", status, hold)
            else:
                self.stats.abandoned += 1
            self.stats.completed += 1

    async def _checkout(self, session: aiohttp.ClientSession, i: int, show: str,
                        hold: dict[str, Any], headers: dict[str, str]) -> None:
        headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
        body = {"card": CARD, "email": "rush@example.com", "name": "Rush Buyer"}
        deadline = time.monotonic() + 20
        while True:
            status, booking = await self._request(
                session, i, "POST", f"/api/holds/{hold['hold_id']}/checkout", json=body,
                headers=headers)
            if status == 201:
                self.stats.bookings += 1
                self._check()
                self.record("booking", show=show, booking_id=booking["booking_id"],
                            hold_id=hold["hold_id"], token=booking["booking_token"],
                            seats=booking["seats"])
                self.booked.append({"show": show, "booking_id": booking["booking_id"],
                                    "seats": booking["seats"]})
                return
            # No answer, a 5xx or "in progress": the outcome is unknown, so ask again with
            # the same key (replayed if it went through) until the deadline.
            retry = status in (0, 409, 500, 502, 503, 504) and (
                status != 409 or (booking or {}).get("error", {}).get("code")
                == "checkout_in_progress")
            if not retry or time.monotonic() > deadline:
                code = (booking or {}).get("error", {}).get("code") if status == 409 else None
                await self._answer_other(i, f"checkout:{code}" if code else "checkout", status,
                                         hold)
                return
            await asyncio.sleep(0.2)

    async def _answer_other(self, i: int, what: str, status: int,
                            hold: dict[str, Any] | None = None) -> None:
        if status == 410 and hold is not None and \
                time.time() >= datetime.fromisoformat(hold["expires_at"]).timestamp():
            self.stats.expired += 1
            self.record("expired", hold_id=hold["hold_id"], what=what)
            return
        if self.on_error is not None:
            self.on_error(status)
        if status == 409 and what == "hold":
            self.stats.conflicts += 1
        elif status == 429:
            self.stats.limited += 1
        elif self._resent[i]:
            self.stats.after_failover[f"{what} {status}"] += 1
        else:
            self.stats.errors[f"{what} {status}"] += 1
        if status in (0, 429, 500, 503):
            await asyncio.sleep(0.1)  # back off a little: the platform is recovering


# --- watchers ------------------------------------------------------------------------------

class Watcher:
    """A live seat map client (the `websockets` package): applies the snapshot and the
    events, checks that sequences are contiguous, and when the socket drops reconnects with
    `since=<last seq>` to the next web process, as the page does."""

    def __init__(self, ws_urls: list[str], show_id: str, first: int = 0) -> None:
        self.ws_urls = ws_urls
        self.show_id = show_id
        self.index = first
        self.seats: dict[str, str] = {}
        self.seq: int | None = None
        self.connects = 0
        self.snapshots = 0
        self.events = 0
        self.gaps: list[str] = []
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Watcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            url = self.ws_urls[self.index % len(self.ws_urls)]
            target = f"{url}/api/shows/{self.show_id}/live"
            if self.seq is not None:
                target += f"?since={self.seq}"
            try:
                async with ws_connect(target, open_timeout=10, max_size=None,
                                      ping_interval=5, ping_timeout=10) as ws:
                    self.connects += 1
                    self.connected.set()
                    async for raw in ws:
                        self._apply(json.loads(raw))
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError):
                pass
            self.connected.clear()
            self.index += 1  # the next web process (the dead one may be back later)
            await asyncio.sleep(0.2)

    def _apply(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "snapshot":
            self.seats = dict(msg["seats"])
            self.seq = msg["seq"]
            self.snapshots += 1
        elif kind == "events":
            for ev in msg["events"]:
                if self.seq is not None and ev["seq"] != self.seq + 1:
                    self.gaps.append(f"expected {self.seq + 1}, got {ev['seq']}")
                for seat, status in ev["changes"]:
                    self.seats[seat] = status
                self.seq = ev["seq"]
                self.events += 1


# --- end state -----------------------------------------------------------------------------

async def rest_seatmap(session: aiohttp.ClientSession, url: str, show_id: str
                       ) -> tuple[int, dict[str, str]]:
    async with session.get(f"{url}/api/shows/{show_id}/seatmap") as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return body["seq"], {s["id"]: s["status"] for s in body["seats"]}


async def poll(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll a condition with a deadline: for states no event announces (an expiry in
    another process, a socket catching up); returns the predicate's truthy value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await predicate()
        except (aiohttp.ClientError, OSError, AssertionError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} "
                                 f"(last: {last!r})")
        await asyncio.sleep(interval)


async def wait_no_holds(redis_url: str, url: str, show_ids: list[str], timeout: float) -> None:
    """Every hold completed or expired: no seat is `held` on the REST seat map and the
    show's log, replayed from Redis, has no live hold."""
    async with aiohttp.ClientSession() as session:
        async def settled() -> bool:
            for show_id in show_ids:
                _, seats = await rest_seatmap(session, url, show_id)
                if "held" in seats.values():
                    return False
            return True

        await poll(settled, timeout, "every hold to complete or expire")
    client = aioredis.Redis.from_url(redis_url)
    try:
        for show_id in show_ids:
            seatmap = await ShowStore(client, show_id).load()
            assert seatmap.holds == {}, f"show {show_id}: holds left in the log: {seatmap.holds}"
    finally:
        await client.aclose()


async def check_store(redis_url: str, rush: Rush, show_ids: list[str]) -> None:
    """From Redis alone: each seat has at most one owner in the replayed log, every booking
    record that says `confirmed` is the log's, no seat is in two confirmed booking records,
    and every booking a client got a 201 for is there."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        for show_id in show_ids:
            seatmap = await ShowStore(client, show_id).load()
            owners: dict[str, str] = {}
            for bid, rec in seatmap.bookings.items():
                for seat in rec.seats:
                    assert seat not in owners, f"seat {seat} sold to {owners[seat]} and {bid}"
                    owners[seat] = bid
                    assert seatmap.status[seat] == "booked", (seat, seatmap.status[seat])
            records: dict[str, list[str]] = {}
            async for key in client.scan_iter(match=f"booking:{{{show_id}}}:*", count=500):
                rec = json.loads(await client.get(key))
                if rec["status"] == "confirmed":
                    records[rec["booking_id"]] = rec["seats"]
            sold: Counter[str] = Counter(s for seats in records.values() for s in seats)
            assert [s for s, n in sold.items() if n > 1] == [], "a seat in two bookings"
            for bid, seats in records.items():
                assert bid in seatmap.bookings, f"booking record {bid} not in the show's log"
                assert sorted(seatmap.bookings[bid].seats) == sorted(seats)
            for b in (b for b in rush.booked if b["show"] == show_id):
                assert b["booking_id"] in records, f"acknowledged booking {b} lost"
                assert sorted(records[b["booking_id"]]) == sorted(b["seats"])
    finally:
        await client.aclose()


async def check_history(redis_url: str, show_ids: list[str]) -> dict[str, dict[str, list[str]]]:
    """Replay each show's whole log from its config, entry by entry: each entry must
    replay to the event that was logged with it, and the logged events alone must never
    give a seat two holders (a seat becomes held only from free, booked only from held).
    Returns, per show, the seats each logged hold got ({hold id: sorted seats})."""
    allowed = {"held": {"free"}, "booked": {"held"}, "free": {"held", "booked"}}
    client = aioredis.Redis.from_url(redis_url)
    out: dict[str, dict[str, list[str]]] = {}
    try:
        for show_id in show_ids:
            assert not await client.exists(snap_key(show_id)), \
                f"{show_id}: snapshotted, the check needs the whole log"
            config = msgspec.json.decode(await client.get(config_key(show_id)), type=ShowConfig)
            seatmap = SeatMap(config)
            seen = dict(seatmap.status)  # as the logged events tell it
            held: dict[str, list[str]] = out.setdefault(show_id, {})
            rows = await client.xrange(log_key(show_id), "-", "+")
            assert len(rows) == int(await client.get(seq_key(show_id)) or 0), show_id
            for n, (entry_id, fields) in enumerate(rows, start=1):
                assert entry_id == f"{n}-0".encode(), f"{show_id}: entry {entry_id!r} at {n}"
                cmd = c.command_decoder.decode(fields[b"c"])
                event = event_decoder.decode(fields[b"e"])
                outcome = seatmap.apply(cmd, int(fields[b"t"]))
                assert outcome.changed and event.seq == n == seatmap.version, (show_id, n, cmd)
                assert outcome.changes == event.changes, f"{show_id}: entry {n} replays otherwise"
                for change in event.changes:
                    before = seen[change.seat]
                    assert before in allowed.get(change.status, {before}), (
                        f"{show_id}: seat {change.seat} went {before} -> {change.status} at {n}")
                    seen[change.seat] = change.status
                if isinstance(cmd, c.Hold | c.HoldBest) and isinstance(outcome.result, c.Held):
                    assert cmd.hold_id not in held, f"{show_id}: hold {cmd.hold_id} logged twice"
                    held[cmd.hold_id] = sorted(outcome.result.seats)
            assert seen == seatmap.status, show_id
    finally:
        await client.aclose()
    return out


def acknowledged_holds(rush: Rush) -> dict[str, dict[str, list[str]]]:
    """The holds the rush's clients got a 201 for, from its ledger: {show: {hold id: seats}}."""
    out: dict[str, dict[str, list[str]]] = {}
    for line in rush.ledger_path.read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "hold":
            out.setdefault(rec["show"], {})[rec["hold_id"]] = sorted(rec["seats"])
    return out


def check_ledger(url: str, rush: Rush) -> list[str]:
    """loadtest.run_locust's end-state check over what these clients were told."""
    return check_end_state(url, rush.ledger_path, rush.rush)


async def watchers_converge(watchers: list[Watcher], urls: list[str], show_id: str,
                            timeout: float = 60.0) -> None:
    """Each watcher ends at the REST seat map's seq with an identical seat map (the REST
    seat map read from every web process, which must agree too)."""
    async with aiohttp.ClientSession() as session:
        async def same() -> bool:
            maps = [await rest_seatmap(session, url, show_id) for url in urls]
            if any(m != maps[0] for m in maps[1:]):
                return False
            seq, seats = maps[0]
            return all(w.seq == seq and w.seats == seats for w in watchers)

        try:
            await poll(same, timeout, f"watchers of {show_id} to match the REST seat map")
        except AssertionError:
            seq, seats = await rest_seatmap(session, urls[0], show_id)
            for w in watchers:
                diff = {k: (w.seats.get(k), v) for k, v in seats.items() if w.seats.get(k) != v}
                print(f"watcher seq {w.seq} vs {seq}, {len(diff)} seats differ: "
                      f"{list(diff.items())[:5]}, connects {w.connects}")
            raise
    for w in watchers:
        assert w.gaps == [], f"a watcher saw a gap in the sequence: {w.gaps[:3]}"
