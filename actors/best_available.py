"""Choosing the best N free seats: pure functions over a layout and a free-seat predicate.

Preference, in order:
1. all N side by side in one row (a window inside a run of free adjacent seats);
2. a window that leaves no single free seat stranded beside it (an orphan nobody buys);
3. the window whose centre is closest to the focal point.
When no row has N adjacent free seats, the group is split into the fewest blocks that fit,
each chosen by the same preferences.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from .layout import Layout, Seat


class SeatPicker:
    """Rows of seats sorted left to right, built once per layout."""

    def __init__(self, layout: Layout) -> None:
        rows: dict[str, list[Seat]] = {}
        for seat in layout.seats:
            rows.setdefault(seat.row, []).append(seat)
        self._rows = [sorted(seats, key=lambda s: s.x) for seats in rows.values()]
        self._fx = layout.focal_x
        self._fy = layout.focal_y

    def pick(self, count: int, eligible: Callable[[Seat], bool]) -> list[str] | None:
        """Seat ids for `count` eligible seats, or None if there are not that many."""
        runs = list(self._runs(eligible))
        if sum(len(r) for r in runs) < count:
            return None
        chosen: list[str] = []
        remaining = count
        while remaining:
            size = min(remaining, max(len(r) for r in runs))
            window, run_index, start = self._best_window(runs, size)
            chosen.extend(s.id for s in window)
            run = runs.pop(run_index)
            # The seats left over on either side stay available for the next block.
            runs += [part for part in (run[:start], run[start + size:]) if part]
            remaining -= size
        return chosen

    def _runs(self, eligible: Callable[[Seat], bool]) -> Iterable[list[Seat]]:
        """Maximal runs of eligible seats that are physically side by side."""
        for row in self._rows:
            run: list[Seat] = []
            for seat in row:
                if eligible(seat) and (not run or seat.x - run[-1].x == 1):
                    run.append(seat)
                    continue
                if run:
                    yield run
                run = [seat] if eligible(seat) else []
            if run:
                yield run

    def _best_window(self, runs: list[list[Seat]], size: int) -> tuple[list[Seat], int, int]:
        best: tuple[tuple[int, float, int, int], int, int] | None = None
        for i, run in enumerate(runs):
            for start in range(len(run) - size + 1):
                window = run[start:start + size]
                left, right = start, len(run) - start - size
                orphans = (left == 1) + (right == 1)
                cx = (window[0].x + window[-1].x) / 2
                dist = (cx - self._fx) ** 2 + (window[0].y - self._fy) ** 2
                key = (orphans, dist, window[0].y, window[0].x)
                if best is None or key < best[0]:
                    best = (key, i, start)
        assert best is not None
        _, i, start = best
        return runs[i][start:start + size], i, start
