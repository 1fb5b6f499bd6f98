"""Pure parts of on-sale protection: which limits a request meets, the client address
behind trusted proxies, admission tokens, queue positions."""
from __future__ import annotations

import pytest

from server.onsale import admission
from server.onsale.ratelimit import Limit, classify, client_ip, parse_networks
from server.onsale.waiting_room import QueueState

PROXIES = parse_networks("127.0.0.1, 10.0.0.0/8")


@pytest.mark.parametrize(("method", "path", "kind"), [
    ("GET", "/static/js/show.js", None),
    ("GET", "/healthz", None),
    ("GET", "/", None),
    ("GET", "/api/shows/s1/seatmap", "read"),
    ("POST", "/api/shows/s1/holds", "hold"),
    ("POST", "/api/holds/s1.x/checkout", "write"),
    ("PATCH", "/api/holds/s1.x", "write"),
    ("PUT", "/partner/v1/shows/s1", "write"),
    ("GET", "/partner/v1/theatres", "read"),
    ("POST", "/api/shows/s1/queue", "write"),
])
def test_classify(method: str, path: str, kind: str | None) -> None:
    assert classify(method, path) == kind


def test_forwarded_for_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    assert client_ip("203.0.113.9", "1.2.3.4", PROXIES) == "203.0.113.9"
    assert client_ip("127.0.0.1", "1.2.3.4", ()) == "127.0.0.1"  # nothing trusted


def test_forwarded_for_read_from_the_right_past_trusted_hops() -> None:
    # client-made-up, real client, our inner proxy; peer is our outer proxy
    assert client_ip("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.2.3", PROXIES) == \
        "198.51.100.7"
    assert client_ip("127.0.0.1", "10.1.2.3", PROXIES) == "10.1.2.3"  # all hops ours
    assert client_ip("127.0.0.1", "garbage", PROXIES) == "127.0.0.1"
    assert client_ip(None, None, PROXIES) == "unknown"


def test_bad_proxy_setting_fails_loudly() -> None:
    with pytest.raises(ValueError):
        parse_networks("10.0.0.0/8, not-an-ip")


def test_limit_args_and_tag() -> None:
    assert Limit(50, 200).args() == ("20.000000", "200")
    assert Limit(0.5, 0).args()[1] == "1"
    assert Limit(50, 200).tag != Limit(50, 100).tag


def test_admission_token_round_trip_and_refusals() -> None:
    token = admission.sign("s3cret", "show-1", "vis-a", 10_000)
    assert admission.verify("s3cret", token, "show-1", "vis-a", now_ms=9_999) is None
    assert admission.verify("s3cret", token, "show-1", "vis-a", now_ms=10_000) == "expired"
    assert admission.verify("s3cret", token, "show-2", "vis-a", now_ms=0) == "other_show"
    assert admission.verify("s3cret", token, "show-1", "vis-b", now_ms=0) == "other_visitor"
    assert admission.verify("s3cret", token, "show-1", None, now_ms=0) == "other_visitor"
    assert admission.verify("other", token, "show-1", "vis-a", now_ms=0) == "bad_signature"
    assert admission.verify("s3cret", "a.b.c", "show-1", "vis-a") == "malformed"
    assert admission.verify("s3cret", "é.x", "show-1", "vis-a") == "malformed"
    # a payload re-signed by nobody: the MAC no longer matches
    payload, mac = token.split(".")
    forged = admission.sign("s3cret", "show-1", "vis-a", 99_999).split(".")[0] + "." + mac
    assert admission.verify("s3cret", forged, "show-1", "vis-a", now_ms=0) == "bad_signature"


def test_queue_position_and_eta() -> None:
    st = QueueState(True, head=10, tail=25, rate=120, burst=2)
    assert st.position(8) == 0 and st.position(10) == 0
    assert st.position(11) == 1 and st.eta_s(11) == 1
    assert st.position(25) == 15 and st.eta_s(25) == 8
    assert QueueState(True, 0, 5, 0, 1).eta_s(3) == 0


def test_adaptive_cap_shrinks_when_slow_and_grows_back() -> None:
    from server.onsale.ratelimit import AdaptiveCap

    cap = AdaptiveCap(ceiling=64, target_ms=100)
    assert cap.admits(63) and not cap.admits(64)
    t = 1.0
    for _ in range(8):  # a window of holds at 400 ms: 4x the target
        cap.done(400, t)
    assert cap.limit == 32  # scaled down, at most halved per window
    for _ in range(4):
        t += 0.2
        for _ in range(8):
            cap.done(400, t)
    assert cap.limit == 4 and not cap.admits(4)  # never below the floor
    for _ in range(200):  # fast again: back up to the ceiling, never past it
        t += 0.2
        for _ in range(8):
            cap.done(20, t)
    assert cap.limit == 64


def test_adaptive_cap_waits_for_a_full_window_and_can_be_off() -> None:
    from server.onsale.ratelimit import AdaptiveCap

    cap = AdaptiveCap(ceiling=64, target_ms=100)
    for _ in range(7):  # too few samples to judge
        cap.done(1000, 1.0)
    assert cap.limit == 64
    fixed = AdaptiveCap(ceiling=64, target_ms=0)
    for _ in range(50):
        fixed.done(1000, 1.0)
    assert fixed.limit == 64
    assert AdaptiveCap(ceiling=0, target_ms=100).admits(10_000)  # no cap at all
