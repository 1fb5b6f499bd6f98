"""Choosing the best N free seats: pure functions over a layout and a free-seat predicate.

Preference, in order:
1. all N side by side in one row (a window inside a run of free adjacent seats);
2. a window that leaves no single free seat stranded beside it (an orphan nobody buys);
3. the window whose centre is closest to the focal point.
When no row has N adjacent free seats, the group is split into the fewest blocks that fit,
each chosen by the same preferences.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

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
        # Rows narrowed to the seats a request could ever get (its category, wheelchair
        # spaces or not), built on first use: best-available is the domain's hot path,
        # and most requests only need a few rows.
        self._narrowed: dict[tuple[str | None, bool], list[list[Seat]]] = {}

    def pick(self, count: int, eligible: Callable[[Seat], bool]) -> list[str] | None:
        """Seat ids for `count` eligible seats, or None if there are not that many."""
        return self._choose(count, list(self._runs(self._rows, eligible)))

    def pick_free(
        self, count: int, status: Mapping[str, str], category: str | None, accessible: bool
    ) -> list[str] | None:
        """`pick` for the common case: free seats, optionally of one category, wheelchair
        and companion seats only if asked for. Same answer, a fraction of the work."""
        rows = self._narrowed.get((category, accessible))
        if rows is None:
            rows = self._narrowed[(category, accessible)] = [
                narrowed for row in self._rows
                if (narrowed := [s for s in row if _fits(s, category, accessible)])
            ]
        runs: list[list[Seat]] = []
        for row in rows:
            run: list[Seat] = []
            last_x = 0
            for seat in row:
                if status[seat.id] != "free":
                    if run:
                        runs.append(run)
                        run = []
                    continue
                if run and seat.x - last_x != 1:
                    runs.append(run)
                    run = []
                run.append(seat)
                last_x = seat.x
            if run:
                runs.append(run)
        return self._choose(count, runs)

    def _choose(self, count: int, runs: list[list[Seat]]) -> list[str] | None:
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

    @staticmethod
    def _runs(rows: list[list[Seat]], eligible: Callable[[Seat], bool]) -> Iterable[list[Seat]]:
        """Maximal runs of eligible seats that are physically side by side."""
        for row in rows:
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
        """The best `size` seats inside one run. Within a run the distance to the focal
        point is convex in the window's start and orphans arise only at starts 1 and
        len-size-1, so the best start is among a handful of candidates: those around
        the ideal (centred) start and the ones next to the orphan-making starts."""
        fx, fy = self._fx, self._fy
        best: tuple[tuple[int, float, int, int], int, int] | None = None
        # Nearest rows first: once an orphan-free window is found, a run whose row alone
        # is farther from the focal point cannot win, so it is skipped.
        for i in sorted(range(len(runs)), key=lambda i: abs(runs[i][0].y - fy)):
            run = runs[i]
            last = len(run) - size  # the last possible start
            if last < 0:
                continue
            if best is not None and best[0][0] == 0 and (run[0].y - fy) ** 2 > best[0][1]:
                break
            ideal = int(fx - (size - 1) / 2) - run[0].x
            candidates = {ideal - 1, ideal, ideal + 1, ideal + 2, 0, 1, 2, last - 2, last - 1, last}
            y = run[0].y
            for start in candidates:
                if not 0 <= start <= last:
                    continue
                orphans = (start == 1) + (last - start == 1)
                x0 = run[start].x
                cx = (x0 + run[start + size - 1].x) / 2
                key = (orphans, (cx - fx) ** 2 + (y - fy) ** 2, y, x0)
                if best is None or key < best[0]:
                    best = (key, i, start)
        assert best is not None
        _, i, start = best
        return runs[i][start:start + size], i, start


def _fits(seat: Seat, category: str | None, accessible: bool) -> bool:
    return (category is None or seat.category == category) and (
        accessible or not (seat.accessible or seat.companion)
    )
