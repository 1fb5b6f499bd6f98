"""The pure pieces of observability: request-id validation, the rid on commands, the show
client stamping it, the metric labels, and the asynchronous JSON/text logs."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time

import msgspec
import pytest
from prometheus_client import REGISTRY

from actors import commands as c
from actors.context import request_id
from actors.layout import Rules, ShowConfig, grid_layout
from actors.seatmap import SeatMap
from server.ops import logs
from server.ops import metrics
from server.ops.observability import new_request_id, valid_request_id

# --- request ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["a", "abc-123", "0af7651916cd43dd8448eb211c80319c",
                                 "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7",
                                 "req_1.2~x", "x" * 128])
def test_valid_request_ids(rid: str) -> None:
    assert valid_request_id(rid)


@pytest.mark.parametrize("rid", [None, "", "x" * 129, "has space", "new\nline", "<script>",
                                 "a/b", "é", "a,b", "quote\"d"])
def test_invalid_request_ids(rid: str | None) -> None:
    assert not valid_request_id(rid)


def test_new_request_ids_are_valid_and_distinct() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(valid_request_id(i) for i in ids)


# --- the rid on commands -------------------------------------------------------------------

def test_rid_is_left_out_of_the_encoding_when_empty_and_round_trips_when_set() -> None:
    plain = c.Hold("c1", "h1", "tok", ["A1"])  # positional construction unchanged
    assert plain.rid == "" and b"rid" not in c.command_encoder.encode(plain)
    traced = msgspec.structs.replace(plain, rid="req-7")
    raw = c.command_encoder.encode(traced)
    assert b"req-7" in raw and c.command_decoder.decode(raw) == traced
    # entries logged before the field existed still decode
    old = msgspec.msgpack.encode({"type": "hold", "cmd_id": "c1", "hold_id": "h1",
                                  "token": "tok", "seats": ["A1"]})
    assert c.command_decoder.decode(old) == plain


def test_the_seat_map_ignores_the_rid() -> None:
    config = ShowConfig("s", grid_layout(3, 3), Rules())
    a, b = SeatMap(config), SeatMap(config)
    cmd = c.HoldBest("c1", "h1", "tok", 2)
    ra = a.apply(cmd, 1_000)
    rb = b.apply(msgspec.structs.replace(cmd, rid="req-1"), 1_000)
    assert ra == rb and a.snapshot() == b.snapshot()


# --- ShowClient: stamping and the batch observer (a fake actor, no Ray) ----------------------

# --- metric labels -------------------------------------------------------------------------

def _count(route: str, method: str, status: str) -> float:
    return REGISTRY.get_sample_value("bmm_http_request_duration_seconds_count",
                                     {"route": route, "method": method, "status": status}) or 0


def test_request_labels_are_bounded() -> None:
    route = "/unit/{thing_id}"
    before = {k: _count(route, *k) for k in [("GET", "2xx"), ("OTHER", "4xx"), ("POST", "5xx")]}
    metrics.observe_request(route, "GET", 204, 0.001)
    metrics.observe_request(route, "BREW", 418, 0.001)  # unknown method -> OTHER
    metrics.observe_request(route, "POST", 599, 0.001)
    metrics.observe_request(route, "POST", 999, 0.001)  # nonsense status -> 5xx
    after = {k: _count(route, *k) for k in before}
    assert {k: after[k] - before[k] for k in before} == {
        ("GET", "2xx"): 1, ("OTHER", "4xx"): 1, ("POST", "5xx"): 2}
    assert REGISTRY.get_sample_value("bmm_http_request_duration_seconds_count",
                                     {"route": route, "method": "BREW", "status": "4xx"}) is None


def test_batch_observer_counts_holds_bookings_and_refusals_per_show() -> None:
    def get(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0

    show = "unit-show-1"
    before = (get("bmm_holds_total", show_id=show), get("bmm_bookings_total", show_id=show),
              get("bmm_seat_commands_rejected_total", code="hold_expired"),
              get("bmm_actor_batch_commands_count"), get("bmm_actor_batch_commands_sum"))
    results: list[c.Result] = [c.Held("h1", ["A1"], 1), c.Held("h2", ["A2"], 1),
                               c.Confirmed("b1", "h0", ["A3"]),
                               c.Rejected("hold_expired", "late"), c.Released("h3", ["A4"])]
    metrics.observe_batch(show, [c.Expire("x")] * 5, results, 0.002)
    after = (get("bmm_holds_total", show_id=show), get("bmm_bookings_total", show_id=show),
             get("bmm_seat_commands_rejected_total", code="hold_expired"),
             get("bmm_actor_batch_commands_count"), get("bmm_actor_batch_commands_sum"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1, 1, 5]


def test_waiting_room_style_queue_readers_are_reported_at_scrape_time() -> None:
    class _NoRedis:  # the outbox read fails: reported as a warning, others still counted
        def pipeline(self, transaction: bool = False):  # noqa: ANN201
            raise ConnectionError("no redis here")

    async def length() -> int:
        return 42

    metrics.register_queue("unit_queue", length)
    try:
        asyncio.run(metrics.QUEUES.refresh(_NoRedis()))
        families = {f.name: f for f in metrics.QUEUES.collect()}
        samples = {s.labels["queue"]: s.value for s in families["bmm_queue_length"].samples}
        assert samples == {"unit_queue": 42}
    finally:
        metrics.register_queue("unit_queue", None)


# --- logs ----------------------------------------------------------------------------------

@pytest.fixture
def restore_root_logger():  # noqa: ANN201
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_the_request_id_extras_and_tracebacks(restore_root_logger) -> None:
    out = io.StringIO()
    installed = logs.configure("json", "INFO", out)
    log = logging.getLogger("unit.json")

    async def in_a_request() -> None:
        request_id.set("req-42")
        log.info("held %d seats", 3, extra={"show_id": "s1"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")

    asyncio.run(in_a_request())
    log.info("outside any request")
    log.debug("below the level")
    installed.stop()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    mine = [r for r in lines if r["logger"] == "unit.json"]
    assert [r["message"] for r in mine] == ["held 3 seats", "failed", "outside any request"]
    assert mine[0]["request_id"] == "req-42" and mine[0]["show_id"] == "s1"
    assert mine[0]["level"] == "INFO" and mine[0]["time"].endswith("+00:00")
    assert mine[1]["level"] == "ERROR" and mine[1]["request_id"] == "req-42"
    assert "ValueError: boom" in mine[1]["exc_info"]
    assert "request_id" not in mine[2]


def test_text_format_shows_the_request_id_or_a_dash(restore_root_logger) -> None:
    out = io.StringIO()
    installed = logs.configure("text", "INFO", out)
    log = logging.getLogger("unit.text")
    token = request_id.set("req-7")
    log.info("with")
    request_id.reset(token)
    log.info("without")
    installed.stop()
    text = out.getvalue()
    assert "INFO unit.text [req-7]: with" in text
    assert "INFO unit.text [-]: without" in text


def test_logging_never_waits_for_a_slow_stream(restore_root_logger) -> None:
    class _Stuck(io.StringIO):
        """A terminal nobody reads: every write blocks until released."""

        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def write(self, s: str) -> int:
            self.release.wait(10)
            return super().write(s)

    out = _Stuck()
    installed = logs.configure("json", "INFO", out)
    log = logging.getLogger("unit.slow")
    started = time.perf_counter()
    for i in range(200):
        log.info("line %d", i)
    took = time.perf_counter() - started
    out.release.set()
    installed.stop()
    assert took < 1.0  # the writes would have blocked for 10 s each
    written = [json.loads(x)["message"] for x in out.getvalue().splitlines()
               if json.loads(x)["logger"] == "unit.slow"]
    assert written == [f"line {i}" for i in range(200)]  # nothing lost, in order


def test_bad_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json or text"):
        logs.configure("xml", "INFO", io.StringIO())


def test_gc_pauses_reach_the_histogram_at_scrape_time() -> None:
    """Every collection after watch() is one observation of bmm_gc_pause_seconds, moved
    there by flush() (the gc callback itself never touches a metrics lock)."""
    import gc

    from server.ops import gc_pauses
    from server.ops import metrics

    def count(generation: str) -> float:
        return sum(s.value for m in metrics.GC_PAUSE.collect() for s in m.samples
                   if s.name.endswith("_count") and s.labels.get("generation") == generation)

    gc_pauses.watch()
    gc_pauses.watch()  # idempotent: one callback
    gc_pauses.flush()
    before = count("2")
    gc.collect()
    gc.collect()
    assert count("2") == before  # not yet: only flush() observes
    gc_pauses.flush()
    assert count("2") == before + 2
