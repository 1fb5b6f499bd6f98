"""The circuit breaker on its own (a fake clock, no sleeps) and the refund policy tiers."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from server.core.circuit_breaker import CircuitBreaker, CircuitOpen
from server.booking.lifecycle import DEFAULT_POLICY, refund_percent


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Down(Exception):
    pass


async def ok() -> str:
    return "ok"


async def down() -> str:
    raise Down


async def declined() -> str:
    raise ValueError("declined")


async def test_opens_after_the_threshold_and_fails_fast():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        with pytest.raises(Down):
            await b.call(down, failures=(Down,))
    assert b.state == "closed"
    assert await b.call(ok) == "ok"  # a success resets the count
    for _ in range(3):
        with pytest.raises(Down):
            await b.call(down, failures=(Down,))
    assert b.state == "open"
    called = False

    async def spy() -> str:
        nonlocal called
        called = True
        return "x"

    clock.now += 4
    with pytest.raises(CircuitOpen) as info:
        await b.call(spy, failures=(Down,))
    assert not called and info.value.retry_after_s == 6


async def test_half_open_allows_one_trial_then_closes_or_reopens():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, cooldown_s=5, clock=clock)
    with pytest.raises(Down):
        await b.call(down, failures=(Down,))
    clock.now += 5
    assert b.state == "half_open"
    with pytest.raises(Down):
        await b.call(down, failures=(Down,))
    assert b.state == "open"  # the trial failed: another full cool-down
    clock.now += 4.9
    with pytest.raises(CircuitOpen):
        await b.call(ok)
    clock.now += 0.1

    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "ok"

    trial = asyncio.create_task(b.call(slow, failures=(Down,)))
    await asyncio.sleep(0)  # the trial is in flight: everyone else still fails fast
    with pytest.raises(CircuitOpen):
        await b.call(ok)
    gate.set()
    assert await trial == "ok"
    assert b.state == "closed" and b.failures == 0


async def test_non_failures_do_not_count():
    b = CircuitBreaker(failure_threshold=1, cooldown_s=5, clock=Clock())
    for _ in range(3):
        with pytest.raises(ValueError):
            await b.call(declined, failures=(Down,))
    assert b.state == "closed"


@pytest.mark.parametrize(("hours", "percent"), [
    (100, 100), (24, 100), (23.9, 50), (2, 50), (1.99, 0), (0, 0), (-1, 0)])
def test_default_refund_policy(hours, percent):
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert refund_percent(DEFAULT_POLICY, now + timedelta(hours=hours), now) == percent


async def test_failures_blamed_on_one_source_do_not_open_it_for_everyone() -> None:
    # M9: one client's own timeouts (the sandbox's timeout card) opened the breaker and
    # failed every checkout for 30 s. Blamed failures need `min_sources` distinct sources.
    breaker = CircuitBreaker("gw", failure_threshold=3, min_sources=3)

    async def fails() -> None:
        raise TimeoutError

    for _ in range(10):
        with pytest.raises(TimeoutError):
            await breaker.call(fails, failures=(TimeoutError,), blame=lambda exc: "net-a")
    assert breaker.state == "closed"
    for source in ("net-b", "net-c"):
        with pytest.raises(TimeoutError):
            await breaker.call(fails, failures=(TimeoutError,), blame=lambda exc, s=source: s)
    assert breaker.state == "open"  # three networks time out: the gateway is the problem


async def test_an_unblamed_failure_counts_as_before() -> None:
    breaker = CircuitBreaker("gw", failure_threshold=3, min_sources=3)

    async def refused() -> None:
        raise ConnectionRefusedError

    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            await breaker.call(refused, failures=(ConnectionRefusedError,))
    assert breaker.state == "open"
