"""A circuit breaker: stop calling a dependency that keeps failing, try again later.

States:

- **closed**: calls go through; each failure counts, a success resets the count. After
  `failure_threshold` failures in a row the breaker **opens**. A failure the caller can be
  blamed for (`blame(exc)` names its source: for payments, a timeout of that client's
  network) counts towards opening only once such failures came from at least
  `min_sources` distinct sources, so one client that fails its own calls (the sandbox's
  timeout card, a card that makes the gateway hang) cannot open it for everyone; a failure
  nobody can be blamed for (connection refused, a 5xx) opens it as before.
- **open**: calls fail at once with `CircuitOpen` (carrying `retry_after_s`), without
  touching the dependency, until `cooldown_s` has passed since it opened.
- **half-open**: after the cool-down, exactly one trial call goes through (concurrent
  callers still get `CircuitOpen`); its success closes the breaker, its failure opens it
  again for another cool-down.

What counts as a failure is the caller's choice (`failures=`): for the payment gateway it is
"unreachable" or "timed out", never "card declined" (that is the gateway working).

The breaker is **per process** (one per web process, in `Services.payment_guard`): each
process learns on its own that the gateway is down, after `failure_threshold` failed calls.
That is deliberate: no shared state to fail with the gateway, and a process that can reach
the gateway is not held back by one that cannot. `clock` is injectable for tests.
"""
from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

T = TypeVar("T")

State = Literal["closed", "open", "half_open"]


class CircuitOpen(Exception):
    """The breaker is open: the call was not made. Retry after `retry_after_s`."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"{name} is unavailable (circuit open); retry in {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    def __init__(self, name: str = "dependency", *, failure_threshold: int = 5,
                 cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 min_sources: int = 1) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.min_sources = min_sources
        self._sources: set[str] = set()
        self._unblamed = False
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> State:
        if self._state == "open" and self.clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def retry_after_s(self) -> float:
        """Seconds until the next trial call is allowed (at least 1)."""
        left = self._opened_at + self.cooldown_s - self.clock()
        return float(max(1, math.ceil(left)))

    async def call(self, fn: Callable[[], Awaitable[T]],
                   failures: tuple[type[BaseException], ...] = (Exception,),
                   blame: Callable[[BaseException], str | None] = lambda exc: None) -> T:
        self._before()
        try:
            result = await fn()
        except failures as exc:
            self._failure(blame(exc))
            raise
        except Exception:
            # Not a failure of the dependency (e.g. a decline): it answered, so a
            # half-open trial counts as a success.
            self._success()
            raise
        except BaseException:
            # Our own cancellation: we learnt nothing; the next caller may try.
            self._trial_in_flight = False
            raise
        self._success()
        return result

    # --- transitions ---------------------------------------------------------------

    def _before(self) -> None:
        state = self.state
        if state == "closed":
            return
        if state == "open" or self._trial_in_flight:
            raise CircuitOpen(self.name, self.retry_after_s())
        # half-open: this caller is the one trial
        self._state = "half_open"
        self._trial_in_flight = True

    def _success(self) -> None:
        self._state = "closed"
        self._failures = 0
        self._sources.clear()
        self._unblamed = False
        self._trial_in_flight = False

    def _failure(self, source: str | None) -> None:
        self._trial_in_flight = False
        if self._state == "half_open":
            self._open()
            return
        self._failures += 1
        if source is None:
            self._unblamed = True
        elif len(self._sources) < self.min_sources:
            self._sources.add(source)
        spread = self._unblamed or len(self._sources) >= self.min_sources
        if self._failures >= self.failure_threshold and spread:
            self._open()

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self.clock()
        self._sources.clear()
        self._unblamed = False
