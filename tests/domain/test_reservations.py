"""Checkout reservations: the state table, expiry, what may be asked for, idempotency and the split."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.domain.errors import ErrorCode, UserError
from app.domain.reservations import (
    Action,
    Outcome,
    RequestedLine,
    ReservationStatus,
    effective_status,
    key_and_cart_errors,
    lines_fingerprint,
    plan_split,
    repeat_commit,
    transition,
    validate_lines,
    validate_ttl,
)

ACTIVE = ReservationStatus.ACTIVE
COMMITTED = ReservationStatus.COMMITTED
RELEASED = ReservationStatus.RELEASED
EXPIRED = ReservationStatus.EXPIRED

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def line(sku: str = "TSHIRT-M", quantity: int = 1, location: str | None = None) -> RequestedLine:
    return RequestedLine(sku_code=sku, quantity=quantity, location_code=location)


def codes(errors: list[UserError]) -> list[tuple[ErrorCode, tuple[str, ...] | None]]:
    return [(e.code, e.field) for e in errors]


# --- the transition table (contract, "Idempotency and reservation states") ------------------------------------

TABLE: list[tuple[Action, ReservationStatus, Outcome | ErrorCode]] = [
    (Action.COMMIT, ACTIVE, Outcome.APPLY),
    (Action.COMMIT, COMMITTED, Outcome.NO_OP),
    (Action.COMMIT, RELEASED, ErrorCode.RESERVATION_NOT_ACTIVE),
    (Action.COMMIT, EXPIRED, ErrorCode.RESERVATION_EXPIRED),
    (Action.RELEASE, ACTIVE, Outcome.APPLY),
    (Action.RELEASE, COMMITTED, ErrorCode.RESERVATION_NOT_ACTIVE),
    (Action.RELEASE, RELEASED, Outcome.NO_OP),
    (Action.RELEASE, EXPIRED, Outcome.NO_OP),
    (Action.EXTEND, ACTIVE, Outcome.APPLY),
    (Action.EXTEND, COMMITTED, ErrorCode.RESERVATION_NOT_ACTIVE),
    (Action.EXTEND, RELEASED, ErrorCode.RESERVATION_NOT_ACTIVE),
    (Action.EXTEND, EXPIRED, ErrorCode.RESERVATION_EXPIRED),
]


@pytest.mark.parametrize(("action", "status", "outcome"), TABLE, ids=[f"{a}-{s}" for a, s, _ in TABLE])
def test_each_call_on_each_status_does_what_the_contract_table_says(
    action: Action, status: ReservationStatus, outcome: Outcome | ErrorCode
) -> None:
    assert transition(action, status) == outcome


def test_the_table_has_all_twelve_cells() -> None:
    assert {(a, s) for a, s, _ in TABLE} == {(a, s) for a in Action for s in ReservationStatus}
    assert len(TABLE) == 12


def test_committing_an_active_reservation_applies_and_committing_again_is_a_no_op() -> None:
    assert transition(Action.COMMIT, ACTIVE) is Outcome.APPLY
    assert transition(Action.COMMIT, COMMITTED) is Outcome.NO_OP


def test_committing_a_released_reservation_is_refused_as_not_active() -> None:
    assert transition(Action.COMMIT, RELEASED) is ErrorCode.RESERVATION_NOT_ACTIVE


def test_committing_or_extending_an_expired_reservation_is_refused_as_expired() -> None:
    assert transition(Action.COMMIT, EXPIRED) is ErrorCode.RESERVATION_EXPIRED
    assert transition(Action.EXTEND, EXPIRED) is ErrorCode.RESERVATION_EXPIRED


def test_releasing_a_released_or_expired_reservation_is_a_no_op() -> None:
    assert transition(Action.RELEASE, RELEASED) is Outcome.NO_OP
    assert transition(Action.RELEASE, EXPIRED) is Outcome.NO_OP


def test_releasing_or_extending_a_committed_reservation_is_refused_as_not_active() -> None:
    assert transition(Action.RELEASE, COMMITTED) is ErrorCode.RESERVATION_NOT_ACTIVE
    assert transition(Action.EXTEND, COMMITTED) is ErrorCode.RESERVATION_NOT_ACTIVE


def test_extending_a_released_reservation_is_refused_as_not_active() -> None:
    assert transition(Action.EXTEND, RELEASED) is ErrorCode.RESERVATION_NOT_ACTIVE


def test_an_active_reservation_past_its_expiry_is_judged_as_expired_before_any_sweeper_runs() -> None:
    status = effective_status(ACTIVE, NOW - SECOND, NOW)
    assert status is EXPIRED
    assert transition(Action.COMMIT, status) is ErrorCode.RESERVATION_EXPIRED
    assert transition(Action.RELEASE, status) is Outcome.NO_OP


# --- effective_status ---------------------------------------------------------------------------------------


def test_an_active_reservation_before_its_expiry_is_active() -> None:
    assert effective_status(ACTIVE, NOW + SECOND, NOW) is ACTIVE


def test_an_active_reservation_expires_at_exactly_expires_at() -> None:
    assert effective_status(ACTIVE, NOW, NOW) is EXPIRED


def test_an_active_reservation_one_microsecond_before_expiry_is_still_active() -> None:
    assert effective_status(ACTIVE, NOW + timedelta(microseconds=1), NOW) is ACTIVE


def test_an_active_reservation_long_past_expiry_is_expired() -> None:
    assert effective_status(ACTIVE, NOW - timedelta(days=30), NOW) is EXPIRED


@pytest.mark.parametrize("stored", [COMMITTED, RELEASED, EXPIRED])
def test_a_reservation_that_is_no_longer_active_keeps_its_stored_status_past_expiry(
    stored: ReservationStatus,
) -> None:
    assert effective_status(stored, NOW - SECOND, NOW) is stored
    assert effective_status(stored, NOW + SECOND, NOW) is stored


# --- validate_lines -----------------------------------------------------------------------------------------


def test_one_line_of_one_unit_is_valid() -> None:
    assert validate_lines([line()], max_units=100) == []


def test_a_reservation_without_lines_is_refused() -> None:
    assert codes(validate_lines([], max_units=100)) == [(ErrorCode.INVALID_INPUT, ("lines",))]


@pytest.mark.parametrize("quantity", [0, -1, -50])
def test_a_line_of_zero_or_negative_quantity_is_refused_naming_its_line(quantity: int) -> None:
    errors = validate_lines([line("A", 2), line("B", quantity)], max_units=100)
    assert codes(errors) == [(ErrorCode.INVALID_QUANTITY, ("lines", "1", "quantity"))]


def test_the_same_sku_at_the_same_location_twice_is_a_duplicate_line() -> None:
    errors = validate_lines([line("A", 1, "EAST"), line("B", 1), line("A", 2, "EAST")], max_units=100)
    assert codes(errors) == [(ErrorCode.DUPLICATE_LINE, ("lines", "2"))]


def test_the_same_sku_twice_without_a_location_is_a_duplicate_line() -> None:
    errors = validate_lines([line("A", 1), line("A", 2)], max_units=100)
    assert codes(errors) == [(ErrorCode.DUPLICATE_LINE, ("lines", "1"))]


def test_the_same_sku_with_and_without_a_location_is_allowed() -> None:
    assert validate_lines([line("A", 1, "EAST"), line("A", 2)], max_units=100) == []


def test_the_same_sku_at_two_locations_is_allowed() -> None:
    assert validate_lines([line("A", 1, "EAST"), line("A", 2, "WEST")], max_units=100) == []


def test_the_same_location_for_two_skus_is_allowed() -> None:
    assert validate_lines([line("A", 1, "EAST"), line("B", 2, "EAST")], max_units=100) == []


def test_exactly_the_maximum_units_in_total_is_allowed() -> None:
    assert validate_lines([line("A", 60), line("B", 40)], max_units=100) == []


def test_one_unit_over_the_maximum_in_total_is_refused() -> None:
    errors = validate_lines([line("A", 60), line("B", 41)], max_units=100)
    assert codes(errors) == [(ErrorCode.INVALID_QUANTITY, ("lines",))]


def test_a_negative_line_does_not_make_room_under_the_maximum() -> None:
    errors = validate_lines([line("A", 101), line("B", -5)], max_units=100)
    assert codes(errors) == [
        (ErrorCode.INVALID_QUANTITY, ("lines", "1", "quantity")),
        (ErrorCode.INVALID_QUANTITY, ("lines",)),
    ]


def test_every_bad_line_is_reported_together() -> None:
    errors = validate_lines([line("A", 0), line("A", 3)], max_units=100)
    assert codes(errors) == [
        (ErrorCode.INVALID_QUANTITY, ("lines", "0", "quantity")),
        (ErrorCode.DUPLICATE_LINE, ("lines", "1")),
    ]


# --- validate_ttl -------------------------------------------------------------------------------------------


def test_no_ttl_takes_the_default() -> None:
    assert validate_ttl(None, default=900, maximum=3600) == 900


def test_a_ttl_of_one_second_is_the_smallest_allowed() -> None:
    assert validate_ttl(1, default=900, maximum=3600) == 1


def test_a_ttl_of_exactly_the_maximum_is_allowed() -> None:
    assert validate_ttl(3600, default=900, maximum=3600) == 3600


@pytest.mark.parametrize("ttl", [0, -1, 3601])
def test_a_ttl_of_zero_negative_or_over_the_maximum_is_refused_as_invalid_ttl(ttl: int) -> None:
    result = validate_ttl(ttl, default=900, maximum=3600)
    assert isinstance(result, UserError)
    assert (result.code, result.field) == (ErrorCode.INVALID_TTL, ("ttlSeconds",))


def test_the_maximum_is_configurable() -> None:
    assert validate_ttl(7200, default=900, maximum=7200) == 7200
    assert isinstance(validate_ttl(7201, default=900, maximum=7200), UserError)


# --- lines_fingerprint (idempotency) ------------------------------------------------------------------------

LINES = [line("A", 2, "EAST"), line("B", 1), line("C", 5, "WEST")]
BASE = lines_fingerprint(LINES, "web", "cart-1")


def test_the_same_lines_in_another_order_have_the_same_fingerprint() -> None:
    assert lines_fingerprint(list(reversed(LINES)), "web", "cart-1") == BASE
    assert lines_fingerprint([LINES[1], LINES[2], LINES[0]], "web", "cart-1") == BASE


def test_the_same_request_twice_has_the_same_fingerprint() -> None:
    again = [line("A", 2, "EAST"), line("B", 1), line("C", 5, "WEST")]
    assert lines_fingerprint(again, "web", "cart-1") == BASE


@pytest.mark.parametrize(
    ("lines", "channel", "cart"),
    [
        ([line("A", 3, "EAST"), line("B", 1), line("C", 5, "WEST")], "web", "cart-1"),  # quantity
        ([line("A", 2, "WEST"), line("B", 1), line("C", 5, "WEST")], "web", "cart-1"),  # location
        ([line("A", 2), line("B", 1), line("C", 5, "WEST")], "web", "cart-1"),  # location dropped
        ([line("A", 2, "EAST"), line("D", 1), line("C", 5, "WEST")], "web", "cart-1"),  # sku
        ([line("A", 2, "EAST"), line("C", 5, "WEST")], "web", "cart-1"),  # a line fewer
        ([*LINES, line("D", 1)], "web", "cart-1"),  # a line more
        (LINES, "pos", "cart-1"),  # channel
        (LINES, None, "cart-1"),  # no channel
        (LINES, "web", "cart-2"),  # cart
        (LINES, "web", None),  # no cart
    ],
    ids=[
        "quantity",
        "location",
        "location-dropped",
        "sku",
        "line-fewer",
        "line-more",
        "channel",
        "no-channel",
        "cart",
        "no-cart",
    ],
)
def test_a_different_request_has_a_different_fingerprint(
    lines: list[RequestedLine], channel: str | None, cart: str | None
) -> None:
    assert lines_fingerprint(lines, channel, cart) != BASE


def test_swapping_the_channel_and_the_cart_changes_the_fingerprint() -> None:
    assert lines_fingerprint(LINES, "x", "y") != lines_fingerprint(LINES, "y", "x")


# --- plan_split ---------------------------------------------------------------------------------------------


def test_a_location_with_enough_takes_everything_in_priority_order() -> None:
    assert plan_split(5, [(1, 10), (2, 10)]) == [(1, 5)]


def test_the_first_location_in_priority_order_is_used_even_when_a_later_one_has_more() -> None:
    assert plan_split(5, [(2, 5), (1, 100)]) == [(2, 5)]


def test_a_hold_is_split_across_locations_in_priority_order_when_the_first_is_short() -> None:
    assert plan_split(10, [(1, 4), (2, 3), (3, 20)]) == [(1, 4), (2, 3), (3, 3)]


def test_short_stock_takes_everything_there_is_and_falls_short() -> None:
    plan = plan_split(10, [(1, 4), (2, 3)])
    assert plan == [(1, 4), (2, 3)]
    assert sum(units for _, units in plan) == 7


def test_locations_with_zero_or_negative_available_are_skipped() -> None:
    assert plan_split(6, [(1, 0), (2, -5), (3, 4), (4, -1), (5, 10)]) == [(3, 4), (5, 2)]


def test_no_stock_anywhere_gives_an_empty_plan() -> None:
    assert plan_split(3, [(1, 0), (2, -2)]) == []


def test_no_candidates_gives_an_empty_plan() -> None:
    assert plan_split(3, []) == []


def test_wanting_nothing_takes_nothing() -> None:
    assert plan_split(0, [(1, 10)]) == []


def test_locations_after_the_hold_is_filled_are_not_touched() -> None:
    assert plan_split(4, [(1, 4), (2, 0), (3, 10)]) == [(1, 4)]


def test_committing_again_is_a_repeat_only_for_the_same_order() -> None:
    assert repeat_commit("ORD-77", "ORD-77") is Outcome.NO_OP
    assert repeat_commit("ORD-77", "DIFFERENT") is ErrorCode.RESERVATION_NOT_ACTIVE
    assert repeat_commit(None, "ORD-77") is ErrorCode.RESERVATION_NOT_ACTIVE


# --- key_and_cart_errors (shared by reserve and routeAndReserve) ----------------------------------------------


def test_a_key_of_1_to_200_characters_and_a_cart_ref_up_to_200_pass() -> None:
    assert key_and_cart_errors("k", None) == []
    assert key_and_cart_errors("k" * 200, "c" * 200) == []


def test_a_blank_or_too_long_key_and_a_too_long_cart_ref_are_refused_each_on_its_field() -> None:
    assert [e.field for e in key_and_cart_errors("  ", "c" * 201)] == [("idempotencyKey",), ("cartRef",)]
    assert [e.code for e in key_and_cart_errors("k" * 201, None)] == [ErrorCode.INVALID_INPUT]
