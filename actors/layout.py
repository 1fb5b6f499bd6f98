"""Screen layouts and per-show rules: plain data, shared by the domain and the wire."""
from __future__ import annotations

import msgspec


class Seat(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One seat. x/y are grid units: seats in a row with |dx| == 1 are side by side;
    a bigger gap is an aisle."""

    id: str
    row: str
    number: int
    category: str
    x: int
    y: int
    accessible: bool = False
    companion: bool = False
    blocked: bool = False  # out of service in the layout itself (broken seat, camera spot)


class Layout(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seats: list[Seat]
    # The point the audience looks at, in the same grid units (usually screen centre,
    # a few rows from the front); best-available prefers seats close to it.
    focal_x: float
    focal_y: float


class Rules(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_seats_per_hold: int = 10
    hold_ttl_ms: int = 10 * 60 * 1000
    hold_max_lifetime_ms: int = 30 * 60 * 1000


class ShowConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a show actor needs to build its seat map; written by the partner feed."""

    show_id: str
    layout: Layout
    rules: Rules = Rules()


class LayoutError(ValueError):
    pass


def validate_layout(layout: Layout) -> None:
    """Reject layouts that would make seat identity ambiguous."""
    if not layout.seats:
        raise LayoutError("a layout needs at least one seat")
    ids: set[str] = set()
    places: set[tuple[int, int]] = set()
    for seat in layout.seats:
        if not seat.id:
            raise LayoutError("seat ids must be non-empty")
        if seat.id in ids:
            raise LayoutError(f"duplicate seat id {seat.id!r}")
        if (seat.x, seat.y) in places:
            raise LayoutError(f"two seats at x={seat.x}, y={seat.y}")
        ids.add(seat.id)
        places.add((seat.x, seat.y))


def grid_layout(
    rows: int,
    per_row: int,
    bands: list[tuple[str, int]] | None = None,
    aisles: tuple[int, ...] = (),
) -> Layout:
    """A rectangular screen with rows A, B, ... counted from the screen. `bands` gives
    (category, number of rows) from the front; rows past the bands take the last one.
    `aisles` are seat numbers after which a one-seat gap is left."""
    bands = bands or [("standard", rows)]
    row_cats = [name for name, count in bands for _ in range(count)]
    row_cats += [bands[-1][0]] * (rows - len(row_cats))
    seats: list[Seat] = []
    for r in range(rows):
        row = _row_name(r)
        x = 0
        for n in range(1, per_row + 1):
            seats.append(Seat(id=f"{row}{n}", row=row, number=n, category=row_cats[r], x=x, y=r))
            x += 2 if n in aisles else 1
    # The centre spans the seats themselves: an "aisle" after the last seat adds no width.
    width = max((s.x for s in seats), default=0)
    return Layout(seats=seats, focal_x=width / 2, focal_y=rows * 2 / 3)


def _row_name(index: int) -> str:
    name = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        name = chr(65 + rem) + name
    return name
