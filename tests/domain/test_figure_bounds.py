"""Bounds that keep every figure an Int the API can return, and what a late count keeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.domain.events import on_hand_since
from app.domain.quantities import INT_MAX, Magnitude, Position, excess, grows_out_of_range


def test_a_position_fits_until_one_figure_passes_an_int() -> None:
    assert excess(Position(on_hand=INT_MAX)) == 0
    assert excess(Position(on_hand=INT_MAX + 1)) == 1
    # every stored field within range, but a computed one is not: oversold = committed - onHand
    assert excess(Position(on_hand=0, committed=INT_MAX)) == 0
    assert excess(Position(on_hand=-1, committed=INT_MAX)) == 1
    # available = onHand - claims
    assert excess(Position(on_hand=-(2**31) + 1, safety_stock=1)) == 0
    assert excess(Position(on_hand=-(2**31) + 1, safety_stock=2)) == 1


def test_the_sums_over_a_skus_positions_are_bounded_too() -> None:
    wh1, wh2 = Position(on_hand=2_000_000_000), Position(on_hand=100_000_000)
    size = Magnitude.of(wh1).replacing(Position(), Position())
    size = Magnitude(size.on_hand + Magnitude.of(wh2).on_hand, 0, 0)
    assert size.excess == 0
    more = size.replacing(wh2, Position(on_hand=200_000_000))
    assert more.excess == 2_200_000_000 - INT_MAX


def test_only_a_change_that_goes_further_out_is_refused() -> None:
    assert grows_out_of_range(0, 1)
    assert not grows_out_of_range(5, 4)  # coming back down
    assert not grows_out_of_range(5, 5)  # not moving that figure
    assert not grows_out_of_range(0, 0)


def test_a_count_keeps_what_occurred_strictly_after_it() -> None:
    t = datetime(2026, 1, 1, 10, 1, 40, tzinfo=UTC)
    applied = [(t + timedelta(minutes=2), -1), (t, -5), (t - timedelta(minutes=1), 3)]
    assert on_hand_since(applied, t) == -1
