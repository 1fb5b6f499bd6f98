"""Best available: which N seats the picker chooses, directly and through HoldBest."""
from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from actors import commands as c
from actors.best_available import SeatPicker
from actors.layout import Layout, Rules, Seat, ShowConfig, grid_layout
from actors.seatmap import SeatMap


def row(name: str, y: int, xs: list[int], category: str = "std",
        accessible: tuple[int, ...] = (), companion: tuple[int, ...] = ()) -> list[Seat]:
    """Seats named <row><n> at the given x positions (gaps in xs are aisles)."""
    return [
        Seat(f"{name}{n}", name, n, category, x, y,
             accessible=n in accessible, companion=n in companion)
        for n, x in enumerate(xs, start=1)
    ]


def free_except(*taken: str) -> Callable[[Seat], bool]:
    return lambda seat: seat.id not in taken


def pick(layout: Layout, count: int, *taken: str) -> list[str] | None:
    return SeatPicker(layout).pick(count, free_except(*taken))


# --- one row, side by side -------------------------------------------------------------

def test_picks_adjacent_seats_in_one_row() -> None:
    layout = Layout(row("A", 0, list(range(10))), focal_x=4.5, focal_y=0)
    assert pick(layout, 4) == ["A4", "A5", "A6", "A7"]  # centred on the focal point


def test_prefers_a_whole_row_block_over_closer_scattered_seats() -> None:
    # Row A (at the focal point) has only single seats free; row B, further back, has a pair.
    layout = Layout(row("A", 0, [0, 1, 2, 3, 4]) + row("B", 5, [0, 1, 2, 3, 4]),
                    focal_x=2, focal_y=0)
    chosen = pick(layout, 2, "A2", "A4") or []
    assert chosen in (["B1", "B2"], ["B4", "B5"])  # side by side, stranding nobody


def test_prefers_the_row_nearest_the_focal_point() -> None:
    layout = grid_layout(rows=6, per_row=6)  # focal row y = 4 (row E)
    assert {s[0] for s in pick(layout, 3) or []} == {"E"}


def test_closest_window_to_the_focal_point_wins() -> None:
    layout = Layout(row("A", 0, list(range(10))), focal_x=8, focal_y=0)
    assert pick(layout, 3) == ["A8", "A9", "A10"]


def test_result_is_left_to_right_within_a_block() -> None:
    layout = Layout(row("A", 0, list(range(6))), focal_x=2.5, focal_y=0)
    assert pick(layout, 6) == ["A1", "A2", "A3", "A4", "A5", "A6"]


# --- orphans ---------------------------------------------------------------------------

def test_does_not_strand_a_single_seat_when_avoidable() -> None:
    # Five free seats, three wanted: the centred window would leave one seat each side.
    layout = Layout(row("A", 0, [0, 1, 2, 3, 4]), focal_x=2, focal_y=0)
    chosen = pick(layout, 3)
    assert chosen in (["A1", "A2", "A3"], ["A3", "A4", "A5"])


def test_no_orphans_beats_distance_across_rows() -> None:
    # Row A is at the focal point but any pair there strands a seat; row B does not.
    layout = Layout(row("A", 0, [0, 1, 2]) + row("B", 3, [0, 1]), focal_x=1, focal_y=0)
    assert pick(layout, 2) == ["B1", "B2"]


def test_a_taken_seat_is_not_an_orphan() -> None:
    # A1 is taken, so holding A2-A3 leaves A4-A5 together: no orphan, and it is centred.
    layout = Layout(row("A", 0, [0, 1, 2, 3, 4]), focal_x=1.5, focal_y=0)
    assert pick(layout, 2, "A1") == ["A2", "A3"]


def test_strands_a_seat_when_nothing_else_fits() -> None:
    layout = Layout(row("A", 0, [0, 1, 2]), focal_x=1, focal_y=0)
    assert len(pick(layout, 2) or []) == 2


# --- aisles ----------------------------------------------------------------------------

def test_an_aisle_breaks_adjacency() -> None:
    # Row A has 4 free seats but an aisle in the middle; row B has 3 side by side.
    layout = Layout(row("A", 0, [0, 1, 3, 4]) + row("B", 4, [0, 1, 2]), focal_x=2, focal_y=0)
    assert pick(layout, 3) == ["B1", "B2", "B3"]


def test_grid_aisles_are_respected() -> None:
    layout = grid_layout(rows=1, per_row=6, aisles=(3,))
    chosen = pick(layout, 3) or []
    assert chosen in (["A1", "A2", "A3"], ["A4", "A5", "A6"])


# --- splitting -------------------------------------------------------------------------

def test_splits_into_the_fewest_blocks_when_no_row_fits() -> None:
    layout = grid_layout(rows=3, per_row=4)
    chosen = pick(layout, 6) or []
    assert len(chosen) == 6
    by_row: dict[str, list[int]] = {}
    for seat in chosen:
        by_row.setdefault(seat[0], []).append(int(seat[1:]))
    assert sorted(len(v) for v in by_row.values()) == [2, 4]
    for numbers in by_row.values():  # each block is side by side
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def test_split_uses_the_big_runs_first() -> None:
    # Runs of 1, 1, 3 and 2: five seats fit in two blocks (3 + 2), not with the singles.
    layout = Layout(row("A", 0, [0, 2, 4, 5, 6]) + row("B", 1, [0, 1]), focal_x=0, focal_y=0)
    assert sorted(pick(layout, 5) or []) == ["A3", "A4", "A5", "B1", "B2"]


def test_split_can_end_in_single_seats() -> None:
    layout = Layout(row("A", 0, [0, 2, 4]), focal_x=2, focal_y=0)
    assert sorted(pick(layout, 3) or []) == ["A1", "A2", "A3"]


def test_none_when_not_enough_eligible_seats() -> None:
    layout = grid_layout(rows=1, per_row=4)
    assert pick(layout, 3, "A1", "A3") is None
    assert pick(layout, 2, "A1", "A3") is not None


# --- through the seat map: category and accessibility --------------------------------

def seatmap(layout: Layout) -> SeatMap:
    return SeatMap(ShowConfig("s", layout, Rules()))


def hold_best(m: SeatMap, count: int, category: str | None = None,
              accessible: bool = False) -> c.Result:
    return m.apply(c.HoldBest(f"cmd-{count}-{category}-{accessible}", "h", "t", count,
                              category, accessible), 0).result


def test_category_filter_keeps_to_the_category() -> None:
    m = seatmap(grid_layout(rows=6, per_row=5, bands=[("recliner", 2), ("standard", 4)]))
    result = hold_best(m, 4, category="recliner")
    assert isinstance(result, c.Held)
    assert {m.seats[s].category for s in result.seats} == {"recliner"}


def test_no_category_means_any_category() -> None:
    m = seatmap(grid_layout(rows=2, per_row=2, bands=[("a", 1), ("b", 1)]))
    result = hold_best(m, 4)
    assert isinstance(result, c.Held) and len(result.seats) == 4


def test_accessible_and_companion_seats_are_left_out_unless_asked() -> None:
    layout = Layout(row("A", 0, [0, 1, 2, 3], accessible=(2,), companion=(3,)),
                    focal_x=1.5, focal_y=0)
    # A2-A3 are the centred pair, but they are wheelchair/companion spaces: split instead.
    result = hold_best(seatmap(layout), 2)
    assert isinstance(result, c.Held) and sorted(result.seats) == ["A1", "A4"]
    # Asked for, they are ordinary candidates: a pair that strands nobody.
    result = hold_best(seatmap(layout), 2, accessible=True)
    assert isinstance(result, c.Held) and result.seats == ["A1", "A2"]


def test_accessible_seats_only_count_when_asked() -> None:
    layout = Layout(row("A", 0, [0, 1], accessible=(1, 2)), focal_x=0.5, focal_y=0)
    assert isinstance(hold_best(seatmap(layout), 1), c.Rejected)
    result = hold_best(seatmap(layout), 2, accessible=True)
    assert isinstance(result, c.Held) and sorted(result.seats) == ["A1", "A2"]


def test_out_of_service_seats_are_never_picked() -> None:
    seats = row("A", 0, [0, 1, 2])
    seats[1] = Seat("A2", "A", 2, "std", 1, 0, blocked=True)
    result = hold_best(seatmap(Layout(seats, focal_x=1, focal_y=0)), 2)
    assert isinstance(result, c.Held) and sorted(result.seats) == ["A1", "A3"]


# --- properties ------------------------------------------------------------------------

@st.composite
def layouts_and_taken(draw: st.DrawFn) -> tuple[Layout, set[str]]:
    """A few rows of varied width with random aisles, and a random set of taken seats."""
    seats: list[Seat] = []
    for r in range(draw(st.integers(1, 4))):
        width = draw(st.integers(1, 9))
        gaps = draw(st.lists(st.booleans(), min_size=width, max_size=width))
        x, xs = 0, []
        for gap in gaps:
            xs.append(x)
            x += 2 if gap else 1
        seats += row(chr(65 + r), r, xs)
    taken = draw(st.sets(st.sampled_from([s.id for s in seats])))
    focal_x = draw(st.floats(0, 16, allow_nan=False))
    focal_y = draw(st.floats(0, 4, allow_nan=False))
    return Layout(seats, focal_x=focal_x, focal_y=focal_y), taken


def runs(layout: Layout, taken: set[str]) -> list[list[Seat]]:
    """Maximal side-by-side runs of free seats, computed independently of the picker."""
    out: list[list[Seat]] = []
    by_row: dict[str, list[Seat]] = {}
    for seat in layout.seats:
        by_row.setdefault(seat.row, []).append(seat)
    for row_seats in by_row.values():
        current: list[Seat] = []
        for seat in sorted(row_seats, key=lambda s: s.x):
            adjacent = bool(current) and seat.x == current[-1].x + 1
            if seat.id in taken:
                if current:
                    out.append(current)
                current = []
            elif adjacent or not current:
                current.append(seat)
            else:
                out.append(current)
                current = [seat]
        if current:
            out.append(current)
    return out


def blocks(layout: Layout, chosen: list[str]) -> int:
    """How many side-by-side groups the chosen seats form."""
    return len(runs(layout, {s.id for s in layout.seats} - set(chosen)))


@settings(max_examples=300, deadline=None)
@given(layouts_and_taken(), st.integers(1, 12))
def test_best_available_properties(case: tuple[Layout, set[str]], count: int) -> None:
    layout, taken = case
    free = [s.id for s in layout.seats if s.id not in taken]
    chosen = SeatPicker(layout).pick(count, free_except(*taken))
    if len(free) < count:
        assert chosen is None
        return
    assert chosen is not None
    # Exactly `count` distinct seats, none of them unavailable.
    assert len(chosen) == count and len(set(chosen)) == count
    assert not set(chosen) & taken
    # One contiguous run whenever some run can hold them all.
    free_runs = sorted((len(r) for r in runs(layout, taken)), reverse=True)
    if free_runs[0] >= count:
        assert blocks(layout, chosen) == 1
    # Otherwise the fewest blocks: as many as the biggest runs need.
    fewest = next(k for k in range(1, len(free_runs) + 1) if sum(free_runs[:k]) >= count)
    assert blocks(layout, chosen) == fewest


def stranded(layout: Layout, taken: set[str], chosen: list[str]) -> int:
    """Single free seats the choice leaves boxed in that were not boxed in before."""
    before = sum(len(r) == 1 for r in runs(layout, taken))
    after = sum(len(r) == 1 for r in runs(layout, taken | set(chosen)))
    return after - before


@settings(max_examples=300, deadline=None)
@given(layouts_and_taken(), st.integers(1, 6))
def test_best_available_avoids_orphans_when_it_can(
    case: tuple[Layout, set[str]], count: int
) -> None:
    layout, taken = case
    chosen = SeatPicker(layout).pick(count, free_except(*taken))
    fitting = [r for r in runs(layout, taken) if len(r) >= count]
    if chosen is None or not fitting:
        return
    # Brute force: could some window of `count` side-by-side seats strand nobody?
    windows = [[s.id for s in r[i:i + count]] for r in fitting for i in range(len(r) - count + 1)]
    if any(stranded(layout, taken, w) <= 0 for w in windows):
        assert stranded(layout, taken, chosen) <= 0


def test_picker_is_deterministic() -> None:
    layout = grid_layout(rows=5, per_row=9, aisles=(3, 6))
    taken = {"C4", "C5", "D2", "E7"}
    assert len({tuple(pick(layout, n, *taken) or []) for n in [5] * 20}) == 1
