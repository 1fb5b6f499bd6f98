"""Locust scenarios for Book My Movie.

    Browser    browses cities, movies, show times and opens seat maps
    RushBuyer  an on-sale: holds best-available or explicit seats on one hot show; some
               check out, some release, some let the hold expire
    Watcher    keeps a WebSocket on the hot show's live seat map and reports how long each
               change took to arrive ("WS" / "seat change" in the stats)
    Partner    publishes and re-prices shows through the partner feed

The target is set up by `loadtest.run_locust` (or, if BMM_RUSH is unset, by the first
user here) and passed in BMM_RUSH as JSON. Every success a RushBuyer sees is appended to
BMM_LEDGER (JSON lines) so the runner can check the end state afterwards.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from typing import Any

import gevent
from locust import HttpUser, between, events, task
from websockets.sync.client import connect

from loadtest.scenario import publish_rush

_rush: dict[str, Any] | None = json.loads(os.environ["BMM_RUSH"]) if "BMM_RUSH" in os.environ else None
_rush_lock = threading.Lock()
_ledger_path = os.environ.get("BMM_LEDGER")
_ledger = open(_ledger_path, "a", buffering=1) if _ledger_path else None  # noqa: SIM115

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}


def rush(host: str) -> dict[str, Any]:
    global _rush
    with _rush_lock:
        if _rush is None:
            _rush = publish_rush(host)
        return _rush


def record(kind: str, **fields: Any) -> None:
    if _ledger:
        _ledger.write(json.dumps({"kind": kind, **fields}) + "\n")


class Browser(HttpUser):
    weight = 3
    wait_time = between(0.5, 2)

    @task
    def browse(self) -> None:
        cities = self.client.get("/api/cities").json()["cities"]
        if not cities:
            return
        city = random.choice(cities)["name"]
        movies = self.client.get("/api/movies", params={"city": city},
                                 name="/api/movies?city=").json()["movies"]
        if not movies:
            return
        movie = random.choice(movies)["movie"]["movie_id"]
        shows = self.client.get(f"/api/movies/{movie}/shows", params={"city": city},
                                name="/api/movies/[id]/shows").json()
        show_ids = [s["show_id"] for t in shows.get("theatres", []) for s in t.get("shows", [])]
        if show_ids:
            self.client.get(f"/api/shows/{random.choice(show_ids)}/seatmap",
                            name="/api/shows/[id]/seatmap")


class RushBuyer(HttpUser):
    weight = 10
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.rush = rush(self.host)

    @task
    def buy(self) -> None:
        show = random.choice(self.rush["show_ids"])
        if random.random() < 0.7:
            body: dict[str, Any] = {"best": {"count": random.randint(1, 4)}}
        else:
            body = {"seats": random.sample(self.rush["seat_ids"], random.randint(1, 3))}
        with self.client.post(f"/api/shows/{show}/holds", json=body, name="hold",
                              catch_response=True) as resp:
            if resp.status_code == 409:
                resp.success()  # sold out / taken: a correct answer, not an error
                return
            if resp.status_code != 201:
                resp.failure(f"{resp.status_code} {resp.text[:200]}")
                return
            hold = resp.json()
        record("hold", show=show, hold_id=hold["hold_id"], seats=hold["seats"],
               expires_at=hold["expires_at"])
        headers = {"X-Holder-Token": hold["holder_token"]}
        roll = random.random()
        if roll < 0.5:
            self.checkout(show, hold, headers)
        elif roll < 0.8:
            resp = self.client.delete(f"/api/holds/{hold['hold_id']}", headers=headers,
                                      name="release")
            if resp.status_code == 200:
                record("released", show=show, hold_id=hold["hold_id"])
        # else: walk away and let the hold expire

    def checkout(self, show: str, hold: dict[str, Any], headers: dict[str, str]) -> None:
        headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
        body = {"card": CARD, "email": "rush@example.com", "name": "Rush Buyer"}
        resp = self.client.post(f"/api/holds/{hold['hold_id']}/checkout", json=body,
                                headers=headers, name="checkout")
        if resp.status_code == 201:
            booking = resp.json()
            record("booking", show=show, booking_id=booking["booking_id"], hold_id=hold["hold_id"],
                   token=booking["booking_token"], seats=booking["seats"])


class Watcher(HttpUser):
    weight = 2
    wait_time = between(1, 2)

    def on_start(self) -> None:
        self.rush = rush(self.host)
        self._stop = False
        self._greenlet = gevent.spawn(self.watch, random.choice(self.rush["show_ids"]))

    def on_stop(self) -> None:
        self._stop = True
        self._greenlet.kill(block=False)

    @task
    def idle(self) -> None:
        pass  # the work happens in the socket greenlet

    def watch(self, show: str) -> None:
        url = self.host.replace("http", "ws", 1) + f"/api/shows/{show}/live"
        last_seq = None
        while not self._stop:
            try:
                target = url if last_seq is None else f"{url}?since={last_seq}"
                with connect(target, open_timeout=10, max_size=None) as ws:
                    for raw in ws:
                        msg = json.loads(raw)
                        if msg.get("type") == "events":  # one frame, 1+ consecutive entries
                            now = time.time() * 1000
                            for ev in msg["events"]:
                                if last_seq is not None and ev["seq"] != last_seq + 1:
                                    self.fire("gap", 0, f"expected {last_seq + 1}, got {ev['seq']}")
                                last_seq = ev["seq"]
                                self.fire("seat change", now - ev["at"])
                        elif msg.get("type") == "snapshot":
                            last_seq = msg["seq"]
            except Exception as exc:  # reconnect with `since`, as the page does
                if self._stop:
                    return
                self.fire("reconnect", 0, repr(exc))
                gevent.sleep(0.5)

    def fire(self, name: str, ms: float, error: str | None = None) -> None:
        events.request.fire(request_type="WS", name=name, response_time=ms,
                            response_length=0, exception=Exception(error) if error else None,
                            context={})


class Partner(HttpUser):
    weight = 1
    wait_time = between(1, 3)

    def on_start(self) -> None:
        self.rush = rush(self.host)
        self.headers = {"Authorization": f"Bearer {self.rush['partner_key']}"}

    @task(3)
    def list_shows(self) -> None:
        self.client.get("/partner/v1/shows", params={"date": self.rush["date"]},
                        headers=self.headers, name="/partner/v1/shows")

    @task
    def republish(self) -> None:
        show = random.choice(self.rush["show_ids"])
        current = self.client.get(f"/partner/v1/shows/{show}", headers=self.headers,
                                  name="/partner/v1/shows/[id]").json()
        body = {k: current[k] for k in ("movie_id", "screen_id", "starts_at", "language",
                                        "format", "prices")}
        self.client.put(f"/partner/v1/shows/{show}", json=body, headers=self.headers,
                        name="/partner/v1/shows/[id] PUT")
