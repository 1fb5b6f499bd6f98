"""The garbage collector and the event loop.

A full collection walks every tracked object and stops the event loop meanwhile. With
2,000 live sockets it paused the web process 70–196 ms, 14 times in one 5 s fan-out run
(measured with `gc.callbacks`), and every live frame due then reached watchers that much
later. `calm()` moves what start-up allocated (Ray, modules, the app) out of the
collector's sight (`gc.freeze`) and makes collections rarer; `watch()` keeps the pauses
visible as `bmm_gc_pause_seconds` (loadtest/RESULTS.md has the before/after).
"""
from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any

from server.ops import metrics

GEN0, GEN1, GEN2 = 50_000, 20, 1_000  # Python's defaults: 700, 10, 10

# Pauses seen since the last scrape. The callback runs wherever an allocation triggered the
# collection -- possibly inside a metrics lock -- so it only appends here; `flush()` moves
# them into the histogram at scrape time.
_pauses: deque[tuple[int, float]] = deque(maxlen=10_000)
_started = 0.0


def calm() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0, GEN1, GEN2)


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        _pauses.append((info["generation"], time.perf_counter() - _started))


def watch() -> None:
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def flush() -> None:
    """Into `bmm_gc_pause_seconds{generation}` (called by /metrics before it renders)."""
    while _pauses:
        generation, seconds = _pauses.popleft()
        metrics.GC_PAUSE.labels(str(generation)).observe(seconds)
