"""Layouts: validation and the grid helper every other test builds on."""
from __future__ import annotations

import msgspec
import pytest

from actors.layout import (
    Layout,
    LayoutError,
    Rules,
    Seat,
    ShowConfig,
    _row_name,
    grid_layout,
    validate_layout,
)


def _seat(id: str, x: int, y: int = 0, row: str = "A") -> Seat:
    return Seat(id=id, row=row, number=x + 1, category="standard", x=x, y=y)


# --- validate_layout -------------------------------------------------------------------

def test_valid_layout_passes() -> None:
    validate_layout(Layout([_seat("A1", 0), _seat("A2", 1)], focal_x=0.5, focal_y=0))


def test_empty_layout_is_rejected() -> None:
    with pytest.raises(LayoutError, match="at least one seat"):
        validate_layout(Layout([], focal_x=0, focal_y=0))


def test_empty_seat_id_is_rejected() -> None:
    with pytest.raises(LayoutError, match="non-empty"):
        validate_layout(Layout([_seat("", 0)], focal_x=0, focal_y=0))


def test_duplicate_seat_id_is_rejected() -> None:
    # Two seats under one id would make "hold A1" ambiguous.
    with pytest.raises(LayoutError, match="duplicate seat id 'A1'"):
        validate_layout(Layout([_seat("A1", 0), _seat("A1", 1)], focal_x=0, focal_y=0))


def test_two_seats_in_one_place_are_rejected() -> None:
    # Adjacency is computed from positions, so positions must be unique too.
    with pytest.raises(LayoutError, match="x=0, y=0"):
        validate_layout(Layout([_seat("A1", 0), _seat("A2", 0)], focal_x=0, focal_y=0))


def test_layout_error_is_a_value_error() -> None:
    # The web tier maps ValueError to a 4xx; keep LayoutError inside that family.
    assert issubclass(LayoutError, ValueError)


# --- grid_layout -----------------------------------------------------------------------

def test_grid_has_rows_times_seats_with_readable_ids() -> None:
    layout = grid_layout(rows=3, per_row=4)
    assert [s.id for s in layout.seats] == [
        "A1", "A2", "A3", "A4", "B1", "B2", "B3", "B4", "C1", "C2", "C3", "C4",
    ]
    validate_layout(layout)


def test_grid_rows_are_counted_from_the_screen() -> None:
    layout = grid_layout(rows=3, per_row=2)
    assert {s.row: s.y for s in layout.seats} == {"A": 0, "B": 1, "C": 2}


def test_grid_seats_in_a_row_are_adjacent_without_aisles() -> None:
    layout = grid_layout(rows=1, per_row=5)
    assert [s.x for s in layout.seats] == [0, 1, 2, 3, 4]


def test_grid_aisle_leaves_a_one_seat_gap() -> None:
    # An aisle after seat 2 means seats 2 and 3 are not side by side (dx == 2).
    layout = grid_layout(rows=1, per_row=4, aisles=(2,))
    assert [s.x for s in layout.seats] == [0, 1, 3, 4]


def test_grid_bands_assign_categories_from_the_front() -> None:
    layout = grid_layout(rows=4, per_row=1, bands=[("front", 1), ("middle", 2)])
    # Rows past the bands take the last band.
    assert [s.category for s in layout.seats] == ["front", "middle", "middle", "middle"]


def test_grid_focal_point_is_the_horizontal_centre() -> None:
    assert grid_layout(rows=3, per_row=10).focal_x == 4.5
    assert grid_layout(rows=3, per_row=10, aisles=(5,)).focal_x == 5.0


def test_grid_focal_point_ignores_a_trailing_aisle() -> None:
    # An "aisle" after the last seat adds no seat, so it must not shift the centre.
    layout = grid_layout(rows=1, per_row=4, aisles=(4,))
    assert layout.focal_x == 1.5


def test_grid_focal_row_is_two_thirds_back() -> None:
    assert grid_layout(rows=9, per_row=2).focal_y == 6.0


@pytest.mark.parametrize(
    ("index", "name"), [(0, "A"), (25, "Z"), (26, "AA"), (27, "AB"), (51, "AZ"), (52, "BA")]
)
def test_row_names_continue_past_z(index: int, name: str) -> None:
    assert _row_name(index) == name


def test_many_rows_give_unique_ids() -> None:
    validate_layout(grid_layout(rows=30, per_row=3))


# --- wire form -------------------------------------------------------------------------

def test_show_config_round_trips_through_json() -> None:
    config = ShowConfig("s1", grid_layout(2, 3, aisles=(1,)), Rules(max_seats_per_hold=4))
    assert msgspec.json.decode(msgspec.json.encode(config), type=ShowConfig) == config


def test_default_rules_match_the_issue() -> None:
    rules = Rules()
    assert rules.max_seats_per_hold == 10
    assert rules.hold_max_lifetime_ms == 30 * 60 * 1000


def test_unknown_fields_are_refused() -> None:
    # A partner feed typo must be an error, not silently ignored.
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"max_seats_per_hold": 3, "max_seat": 1}', type=Rules)
