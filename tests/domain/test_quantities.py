"""The quantities at one (sku, location) and the figures computed from them (contract, "Quantities")."""

from __future__ import annotations

from app.domain.quantities import ZERO, Delta, Position, sellable_across

# --- available ---------------------------------------------------------------------------------------


def test_available_is_on_hand_less_committed_reserved_unavailable_and_safety_stock() -> None:
    p = Position(on_hand=100, committed=10, reserved=5, unavailable=3, safety_stock=2, incoming=50)
    assert p.available == 100 - 10 - 5 - 3 - 2 == 80


def test_incoming_units_are_not_available() -> None:
    assert Position(on_hand=0, incoming=500).available == 0


def test_an_empty_position_has_nothing_available_and_nothing_oversold() -> None:
    assert (Position().available, Position().oversold) == (0, 0)


def test_available_goes_negative_when_claims_exceed_stock_instead_of_stopping_at_zero() -> None:
    p = Position(on_hand=5, committed=4, reserved=3, unavailable=1, safety_stock=2)
    assert p.available == -5


def test_negative_on_hand_shows_through_in_available() -> None:
    assert Position(on_hand=-3).available == -3


# --- oversold ----------------------------------------------------------------------------------------


def test_oversold_is_claims_beyond_physical_stock() -> None:
    p = Position(on_hand=10, committed=6, reserved=4, unavailable=3)
    assert p.oversold == 6 + 4 + 3 - 10 == 3


def test_claims_exactly_equal_to_on_hand_are_not_oversold() -> None:
    assert Position(on_hand=10, committed=6, reserved=4).oversold == 0


def test_claims_below_on_hand_are_not_oversold_even_though_the_difference_is_negative() -> None:
    assert Position(on_hand=10, committed=1).oversold == 0


def test_safety_stock_is_not_a_claim_so_it_makes_available_negative_without_overselling() -> None:
    p = Position(on_hand=10, committed=8, safety_stock=5)
    assert p.available == -3
    assert p.oversold == 0


def test_negative_on_hand_counts_every_claim_plus_the_shortfall_as_oversold() -> None:
    assert Position(on_hand=-2, committed=3).oversold == 5


def test_incoming_does_not_cover_an_oversold_position() -> None:
    assert Position(on_hand=1, reserved=4, incoming=100).oversold == 3


# --- Position.plus(Delta) ----------------------------------------------------------------------------


def test_plus_adds_every_field_of_the_delta() -> None:
    p = Position(on_hand=10, committed=2, reserved=3, unavailable=1, safety_stock=4, incoming=7)
    d = Delta(on_hand=-5, committed=1, reserved=-3, unavailable=2, safety_stock=-4, incoming=10)
    assert p.plus(d) == Position(on_hand=5, committed=3, reserved=0, unavailable=3, safety_stock=0, incoming=17)


def test_plus_leaves_the_original_position_unchanged() -> None:
    p = Position(on_hand=10)
    p.plus(Delta(on_hand=5))
    assert p == Position(on_hand=10)


def test_plus_zero_gives_an_equal_position() -> None:
    p = Position(on_hand=10, committed=2, reserved=3, unavailable=1, safety_stock=4, incoming=7)
    assert p.plus(ZERO) == p


def test_plus_may_take_on_hand_below_zero() -> None:
    assert Position(on_hand=2).plus(Delta(on_hand=-5)).on_hand == -3


def test_a_position_is_the_sum_of_its_ledger() -> None:
    ledger = [Delta(on_hand=10), Delta(committed=4), Delta(on_hand=-4, committed=-4), Delta(reserved=2)]
    position = Position()
    total = ZERO
    for d in ledger:
        position = position.plus(d)
        total = total.plus(d)
    assert position == Position().plus(total) == Position(on_hand=6, committed=0, reserved=2)


def test_delta_is_zero_only_when_every_field_is_zero() -> None:
    assert Delta().is_zero
    assert ZERO.is_zero
    for field in ("on_hand", "committed", "reserved", "unavailable", "safety_stock", "incoming"):
        assert not Delta(**{field: 1}).is_zero, field


def test_delta_plus_delta_adds_field_by_field() -> None:
    a = Delta(1, 2, 3, 4, 5, 6)
    b = Delta(10, -2, 30, -4, 50, -6)
    assert a.plus(b) == Delta(11, 0, 33, 0, 55, 0)


# --- across locations --------------------------------------------------------------------------------


def test_sellable_across_sums_what_each_location_has_available() -> None:
    assert sellable_across([Position(on_hand=40), Position(on_hand=60, committed=10)]) == 90


def test_a_location_under_water_does_not_eat_another_locations_stock() -> None:
    under = Position(on_hand=2, committed=10)  # available -8
    fine = Position(on_hand=30, safety_stock=5)  # available 25
    assert (under.available, fine.available) == (-8, 25)
    assert sellable_across([under, fine]) == 25


def test_negative_on_hand_at_one_location_does_not_lower_the_total() -> None:
    assert sellable_across([Position(on_hand=-7), Position(on_hand=3)]) == 3


def test_sellable_across_no_locations_is_zero() -> None:
    assert sellable_across([]) == 0


def test_sellable_across_only_locations_under_water_is_zero_not_negative() -> None:
    assert sellable_across([Position(on_hand=-1), Position(reserved=4)]) == 0


def test_incoming_at_another_location_is_not_sellable() -> None:
    assert sellable_across([Position(incoming=100), Position(on_hand=1)]) == 1
