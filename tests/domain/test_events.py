"""Inventory events: each type's effect, what may be recorded, and the late-event rules (contract, "Event types")."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.errors import ErrorCode, UserError
from app.domain.events import (
    MAX_CLOCK_SKEW,
    MAX_QUANTITY,
    Decision,
    Effect,
    EventStatus,
    EventType,
    InventoryEvent,
    decide,
    effect,
    validate,
)
from app.domain.quantities import Delta, Position

T = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # when the count was taken
NOW = T + timedelta(hours=2)
MINUTE = timedelta(minutes=1)


def event(
    type: EventType = EventType.RECEIVED,
    quantity: int = 5,
    occurred_at: datetime = T,
    **fields: Any,
) -> InventoryEvent:
    values: dict[str, Any] = {
        "source": "wms-east",
        "external_id": "evt-1",
        "sku_code": "TSHIRT-M",
        "location_code": "EAST",
    }
    values.update(fields)
    return InventoryEvent(type=type, quantity=quantity, occurred_at=occurred_at, **values)


def codes(errors: list[UserError]) -> list[tuple[ErrorCode, tuple[str, ...] | None]]:
    return [(e.code, e.field) for e in errors]


# --- effect(): every type, with worked numbers -------------------------------------------------------------

EFFECTS: list[tuple[str, EventType, Position, int, Delta, int]] = [
    # name, type, position before, q, delta, drift
    ("received", EventType.RECEIVED, Position(on_hand=2, incoming=10), 4, Delta(on_hand=4, incoming=-4), 0),
    ("received_nothing_expected", EventType.RECEIVED, Position(on_hand=2), 4, Delta(on_hand=4), 0),
    ("incoming", EventType.INCOMING, Position(incoming=3), 20, Delta(incoming=20), 0),
    ("adjusted_up", EventType.ADJUSTED, Position(on_hand=10), 3, Delta(on_hand=3), 0),
    ("adjusted_down", EventType.ADJUSTED, Position(on_hand=10), -4, Delta(on_hand=-4), 0),
    ("counted_up", EventType.COUNTED, Position(on_hand=12), 20, Delta(on_hand=8), 0),
    ("counted_down", EventType.COUNTED, Position(on_hand=12), 9, Delta(on_hand=-3), 0),
    ("counted_zero", EventType.COUNTED, Position(on_hand=12, committed=4), 0, Delta(on_hand=-12), 0),
    ("sold", EventType.SOLD, Position(on_hand=10, committed=2), 3, Delta(on_hand=-3), 0),
    ("order_placed", EventType.ORDER_PLACED, Position(on_hand=10, committed=2), 3, Delta(committed=3), 0),
    ("order_cancelled", EventType.ORDER_CANCELLED, Position(committed=5), 2, Delta(committed=-2), 0),
    ("shipped", EventType.SHIPPED, Position(on_hand=10, committed=5), 5, Delta(on_hand=-5, committed=-5), 0),
    ("returned", EventType.RETURNED, Position(on_hand=10), 2, Delta(on_hand=2), 0),
    ("damaged", EventType.DAMAGED, Position(on_hand=10, unavailable=1), 3, Delta(unavailable=3), 0),
    ("repaired", EventType.REPAIRED, Position(on_hand=10, unavailable=3), 2, Delta(unavailable=-2), 0),
    (
        "written_off",
        EventType.WRITTEN_OFF,
        Position(on_hand=10, unavailable=3),
        3,
        Delta(on_hand=-3, unavailable=-3),
        0,
    ),
    ("transfer_out", EventType.TRANSFER_OUT, Position(on_hand=10, incoming=4), 6, Delta(on_hand=-6), 0),
    ("transfer_in", EventType.TRANSFER_IN, Position(on_hand=1, incoming=6), 6, Delta(on_hand=6, incoming=-6), 0),
    ("safety_stock_raised", EventType.SAFETY_STOCK_SET, Position(safety_stock=4), 10, Delta(safety_stock=6), 0),
    ("safety_stock_cleared", EventType.SAFETY_STOCK_SET, Position(safety_stock=4), 0, Delta(safety_stock=-4), 0),
]


@pytest.mark.parametrize(("kind", "at", "q", "delta", "drift"), [e[1:] for e in EFFECTS], ids=[e[0] for e in EFFECTS])
def test_each_event_type_changes_the_position_as_the_contract_table_says(
    kind: EventType, at: Position, q: int, delta: Delta, drift: int
) -> None:
    assert effect(kind, q, at) == Effect(delta, drift)


def test_the_worked_examples_cover_every_event_type() -> None:
    assert {e[1] for e in EFFECTS} == set(EventType)


def test_received_more_than_incoming_clears_incoming_at_zero_without_drift_since_the_contract_takes_the_min() -> None:
    assert effect(EventType.RECEIVED, 10, Position(on_hand=2, incoming=3)) == Effect(
        Delta(on_hand=10, incoming=-3), drift=0
    )


def test_transfer_in_more_than_incoming_clears_incoming_at_zero_without_drift() -> None:
    assert effect(EventType.TRANSFER_IN, 8, Position(incoming=5)) == Effect(Delta(on_hand=8, incoming=-5), drift=0)


def test_transfer_in_with_nothing_incoming_adds_on_hand_only() -> None:
    assert effect(EventType.TRANSFER_IN, 8, Position()) == Effect(Delta(on_hand=8), drift=0)


def test_order_cancelled_beyond_committed_clips_committed_at_zero_and_reports_drift() -> None:
    assert effect(EventType.ORDER_CANCELLED, 7, Position(committed=3)) == Effect(Delta(committed=-3), drift=4)


def test_order_cancelled_with_nothing_committed_changes_nothing_and_reports_it_all_as_drift() -> None:
    result = effect(EventType.ORDER_CANCELLED, 5, Position(on_hand=10))
    assert result == Effect(Delta(), drift=5)
    assert result.delta.is_zero


def test_shipped_more_than_committed_clips_committed_at_zero_and_reports_drift() -> None:
    # the contract's own example: a SHIPPED of 5 against 3 committed lowers onHand by 5
    assert effect(EventType.SHIPPED, 5, Position(on_hand=10, committed=3)) == Effect(
        Delta(on_hand=-5, committed=-3), drift=2
    )


def test_shipped_with_nothing_committed_still_lowers_on_hand_in_full() -> None:
    assert effect(EventType.SHIPPED, 4, Position(on_hand=10)) == Effect(Delta(on_hand=-4), drift=4)


def test_shipped_more_than_on_hand_takes_on_hand_negative() -> None:
    at = Position(on_hand=2, committed=6)
    result = effect(EventType.SHIPPED, 6, at)
    assert result == Effect(Delta(on_hand=-6, committed=-6), drift=0)
    assert at.plus(result.delta) == Position(on_hand=-4, committed=0)


def test_repaired_beyond_unavailable_clips_unavailable_at_zero_and_reports_drift() -> None:
    assert effect(EventType.REPAIRED, 5, Position(on_hand=10, unavailable=2)) == Effect(Delta(unavailable=-2), drift=3)


def test_written_off_beyond_unavailable_clips_unavailable_at_zero_and_still_removes_on_hand_in_full() -> None:
    assert effect(EventType.WRITTEN_OFF, 5, Position(on_hand=10, unavailable=1)) == Effect(
        Delta(on_hand=-5, unavailable=-1), drift=4
    )


def test_sold_and_transfer_out_beyond_on_hand_go_negative_without_drift() -> None:
    assert effect(EventType.SOLD, 5, Position(on_hand=2)) == Effect(Delta(on_hand=-5), drift=0)
    assert effect(EventType.TRANSFER_OUT, 5, Position(on_hand=2)) == Effect(Delta(on_hand=-5), drift=0)


def test_adjusted_down_beyond_on_hand_goes_negative_without_drift() -> None:
    assert effect(EventType.ADJUSTED, -5, Position(on_hand=2)) == Effect(Delta(on_hand=-5), drift=0)


def test_counted_from_negative_on_hand_sets_the_counted_figure() -> None:
    at = Position(on_hand=-3)
    assert at.plus(effect(EventType.COUNTED, 5, at).delta).on_hand == 5


def test_counted_leaves_every_other_field_alone() -> None:
    at = Position(on_hand=10, committed=3, reserved=2, unavailable=1, safety_stock=4, incoming=9)
    after = at.plus(effect(EventType.COUNTED, 7, at).delta)
    assert after == at._replace(on_hand=7)


@settings(database=None)
@given(
    kind=st.sampled_from(list(EventType)),
    q=st.integers(min_value=1, max_value=1000),
    committed=st.integers(min_value=0, max_value=1000),
    unavailable=st.integers(min_value=0, max_value=1000),
    incoming=st.integers(min_value=0, max_value=1000),
)
def test_no_event_takes_committed_unavailable_or_incoming_below_zero_and_drift_is_what_was_clipped(
    kind: EventType, q: int, committed: int, unavailable: int, incoming: int
) -> None:
    at = Position(on_hand=50, committed=committed, unavailable=unavailable, incoming=incoming)
    result = effect(kind, q, at)
    after = at.plus(result.delta)
    assert after.committed >= 0
    assert after.unavailable >= 0
    assert after.incoming >= 0
    assert result.drift >= 0
    clipped_field = {
        EventType.ORDER_CANCELLED: result.delta.committed,
        EventType.SHIPPED: result.delta.committed,
        EventType.REPAIRED: result.delta.unavailable,
        EventType.WRITTEN_OFF: result.delta.unavailable,
    }.get(kind)
    if clipped_field is None:
        assert result.drift == 0
    else:
        assert -clipped_field + result.drift == q


# --- validate(): what may be recorded -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in EventType if k is not EventType.TRANSFER_OUT])
def test_a_plain_event_of_every_type_with_quantity_5_is_valid(kind: EventType) -> None:
    assert validate(event(kind, 5), NOW) == []


def test_a_transfer_out_naming_another_location_is_valid() -> None:
    assert validate(event(EventType.TRANSFER_OUT, 5, to_location_code="WEST"), NOW) == []


def test_a_transfer_out_without_a_destination_is_valid() -> None:
    assert validate(event(EventType.TRANSFER_OUT, 5), NOW) == []


def test_an_incoming_with_expected_at_is_valid() -> None:
    assert validate(event(EventType.INCOMING, 5, expected_at=T + timedelta(days=3)), NOW) == []


def test_a_full_event_with_reason_and_reference_is_valid() -> None:
    e = event(EventType.DAMAGED, 2, reason="forklift", reference="https://example.com/qc/17")
    assert validate(e, NOW) == []


def test_adjusted_by_zero_is_refused_as_invalid_quantity() -> None:
    assert codes(validate(event(EventType.ADJUSTED, 0), NOW)) == [(ErrorCode.INVALID_QUANTITY, ("quantity",))]


def test_adjusted_by_a_negative_quantity_is_valid() -> None:
    assert validate(event(EventType.ADJUSTED, -5), NOW) == []


@pytest.mark.parametrize("kind", [EventType.COUNTED, EventType.SAFETY_STOCK_SET])
def test_counted_and_safety_stock_set_accept_zero(kind: EventType) -> None:
    assert validate(event(kind, 0), NOW) == []


@pytest.mark.parametrize("kind", [EventType.COUNTED, EventType.SAFETY_STOCK_SET])
def test_counted_and_safety_stock_set_refuse_a_negative_quantity(kind: EventType) -> None:
    assert codes(validate(event(kind, -1), NOW)) == [(ErrorCode.INVALID_QUANTITY, ("quantity",))]


POSITIVE_ONLY = [k for k in EventType if k not in (EventType.ADJUSTED, EventType.COUNTED, EventType.SAFETY_STOCK_SET)]


@pytest.mark.parametrize("q", [0, -1])
@pytest.mark.parametrize("kind", POSITIVE_ONLY)
def test_every_other_type_refuses_zero_and_negative_quantities(kind: EventType, q: int) -> None:
    assert codes(validate(event(kind, q), NOW)) == [(ErrorCode.INVALID_QUANTITY, ("quantity",))]


def test_every_other_type_accepts_quantity_1() -> None:
    assert all(validate(event(kind, 1), NOW) == [] for kind in POSITIVE_ONLY)


@pytest.mark.parametrize("kind", [EventType.RECEIVED, EventType.ADJUSTED, EventType.COUNTED])
def test_the_largest_quantity_is_accepted(kind: EventType) -> None:
    assert validate(event(kind, MAX_QUANTITY), NOW) == []


@pytest.mark.parametrize(
    ("kind", "q"),
    [
        (EventType.RECEIVED, MAX_QUANTITY + 1),
        (EventType.COUNTED, MAX_QUANTITY + 1),
        (EventType.ADJUSTED, MAX_QUANTITY + 1),
        (EventType.ADJUSTED, -MAX_QUANTITY - 1),
        (EventType.SHIPPED, 10**30),
    ],
)
def test_a_huge_quantity_is_refused_once_as_invalid_quantity(kind: EventType, q: int) -> None:
    assert codes(validate(event(kind, q), NOW)) == [(ErrorCode.INVALID_QUANTITY, ("quantity",))]


def test_a_huge_negative_adjustment_is_accepted_down_to_the_limit() -> None:
    assert validate(event(EventType.ADJUSTED, -MAX_QUANTITY), NOW) == []


@pytest.mark.parametrize("kind", [k for k in EventType if k is not EventType.TRANSFER_OUT])
def test_to_location_code_on_any_type_but_transfer_out_is_refused(kind: EventType) -> None:
    errors = validate(event(kind, 5, to_location_code="WEST"), NOW)
    assert codes(errors) == [(ErrorCode.INVALID_INPUT, ("toLocationCode",))]


def test_a_transfer_out_to_its_own_location_is_refused() -> None:
    errors = validate(event(EventType.TRANSFER_OUT, 5, location_code="EAST", to_location_code="EAST"), NOW)
    assert codes(errors) == [(ErrorCode.INVALID_INPUT, ("toLocationCode",))]


@pytest.mark.parametrize("kind", [k for k in EventType if k is not EventType.INCOMING])
def test_expected_at_on_any_type_but_incoming_is_refused(kind: EventType) -> None:
    extra: dict[str, Any] = {"to_location_code": "WEST"} if kind is EventType.TRANSFER_OUT else {}
    errors = validate(event(kind, 5, expected_at=T + timedelta(days=1), **extra), NOW)
    assert codes(errors) == [(ErrorCode.INVALID_INPUT, ("expectedAt",))]


def test_a_naive_occurred_at_is_refused() -> None:
    errors = validate(event(occurred_at=datetime(2026, 3, 2, 9, 0)), NOW)
    assert codes(errors) == [(ErrorCode.INVALID_INPUT, ("occurredAt",))]


def test_a_naive_expected_at_is_refused() -> None:
    errors = validate(event(EventType.INCOMING, 5, expected_at=datetime(2026, 3, 9, 9, 0)), NOW)
    assert [e.code for e in errors] == [ErrorCode.INVALID_INPUT]


def test_an_occurred_at_with_a_non_utc_offset_is_valid() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert validate(event(occurred_at=datetime(2026, 3, 2, 11, 0, tzinfo=plus_two)), NOW) == []


def test_an_occurred_at_just_within_the_clock_skew_is_accepted() -> None:
    assert validate(event(occurred_at=NOW + MAX_CLOCK_SKEW), NOW) == []


def test_an_occurred_at_beyond_the_clock_skew_is_refused() -> None:
    errors = validate(event(occurred_at=NOW + MAX_CLOCK_SKEW + timedelta(microseconds=1)), NOW)
    assert codes(errors) == [(ErrorCode.INVALID_INPUT, ("occurredAt",))]


def test_a_count_from_a_day_in_the_future_is_refused() -> None:
    errors = validate(event(EventType.COUNTED, 10, occurred_at=NOW + timedelta(days=1)), NOW)
    assert codes(errors) == [(ErrorCode.INVALID_INPUT, ("occurredAt",))]


def test_an_event_from_long_ago_is_accepted() -> None:
    assert validate(event(occurred_at=NOW - timedelta(days=400)), NOW) == []


@pytest.mark.parametrize("source", ["", "   ", "x" * 101])
def test_an_empty_blank_or_overlong_source_is_refused(source: str) -> None:
    assert codes(validate(event(source=source), NOW)) == [(ErrorCode.INVALID_INPUT, ("source",))]


def test_a_source_of_100_characters_is_accepted() -> None:
    assert validate(event(source="x" * 100), NOW) == []


@pytest.mark.parametrize("external_id", ["", " \t", "x" * 201])
def test_an_empty_blank_or_overlong_external_id_is_refused(external_id: str) -> None:
    assert codes(validate(event(external_id=external_id), NOW)) == [(ErrorCode.INVALID_INPUT, ("externalId",))]


def test_an_external_id_of_200_characters_is_accepted() -> None:
    assert validate(event(external_id="x" * 200), NOW) == []


@pytest.mark.parametrize("name", ["reason", "reference"])
def test_a_reason_or_reference_of_2000_characters_is_accepted_and_of_2001_refused(name: str) -> None:
    longest: dict[str, Any] = {name: "x" * 2000}
    too_long: dict[str, Any] = {name: "x" * 2001}
    assert validate(event(**longest), NOW) == []
    assert codes(validate(event(**too_long), NOW)) == [(ErrorCode.INVALID_INPUT, (name,))]


def test_every_problem_with_one_event_is_reported_together() -> None:
    e = event(EventType.SOLD, 0, source="", external_id="", to_location_code="WEST", expected_at=T)
    assert codes(validate(e, NOW)) == [
        (ErrorCode.INVALID_INPUT, ("source",)),
        (ErrorCode.INVALID_INPUT, ("externalId",)),
        (ErrorCode.INVALID_QUANTITY, ("quantity",)),
        (ErrorCode.INVALID_INPUT, ("toLocationCode",)),
        (ErrorCode.INVALID_INPUT, ("expectedAt",)),
    ]


# --- fingerprint(): DUPLICATE or EVENT_CONFLICT ------------------------------------------------------------

FULL = event(
    EventType.INCOMING,
    12,
    reason="PO arrives Tuesday",
    reference="https://erp.example.com/po/88",
    expected_at=T + timedelta(days=4),
)


def test_the_same_content_twice_has_the_same_fingerprint() -> None:
    again = event(
        EventType.INCOMING,
        12,
        reason="PO arrives Tuesday",
        reference="https://erp.example.com/po/88",
        expected_at=T + timedelta(days=4),
    )
    assert again is not FULL
    assert again.fingerprint() == FULL.fingerprint()
    assert len(FULL.fingerprint()) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"type": EventType.RECEIVED},
        {"sku_code": "TSHIRT-L"},
        {"location_code": "WEST"},
        {"quantity": 13},
        {"occurred_at": T + timedelta(seconds=1)},
        {"reason": "PO arrives Wednesday"},
        {"reason": None},
        {"reference": "https://erp.example.com/po/89"},
        {"reference": None},
        {"to_location_code": "WEST"},
        {"expected_at": T + timedelta(days=5)},
        {"expected_at": None},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_change_to_any_content_field_changes_the_fingerprint(change: dict[str, Any]) -> None:
    assert replace(FULL, **change).fingerprint() != FULL.fingerprint()


def test_the_same_instant_written_with_another_utc_offset_has_the_same_fingerprint() -> None:
    # a retry that spells 09:00Z as 11:00+02:00 reports the same event: a DUPLICATE, not an EVENT_CONFLICT
    plus_two = timezone(timedelta(hours=2))
    respelt = replace(
        FULL, occurred_at=T.astimezone(plus_two), expected_at=(T + timedelta(days=4)).astimezone(plus_two)
    )
    assert respelt.fingerprint() == FULL.fingerprint()


def test_the_fingerprint_of_a_utc_event_is_stable_so_events_already_recorded_still_match_their_retries() -> None:
    assert FULL.fingerprint() == "dd37006133087ee845b7815a4eea663f343e51337d6ca1ae1c22da945b8a4473"


def test_the_source_and_external_id_identify_the_event_and_are_not_part_of_its_content() -> None:
    assert replace(FULL, source="netsuite", external_id="other").fingerprint() == FULL.fingerprint()


# --- decide(): late and foreign counts ----------------------------------------------------------------------


def count(q: int, at: datetime = T, source: str = "wms-east") -> InventoryEvent:
    return event(EventType.COUNTED, q, at, source=source)


def test_a_first_count_sets_on_hand_and_becomes_the_count_to_judge_against() -> None:
    decision = decide(count(20), Position(on_hand=12), None, None, 0)
    assert decision == Decision(EventStatus.APPLIED, Effect(Delta(on_hand=8)), counted_at=T)


def test_a_count_sets_on_hand_to_its_quantity_plus_what_happened_after_it() -> None:
    # on hand 7 includes a +3 received after T; the count of 10 at T means on hand is now 13
    decision = decide(count(10), Position(on_hand=7), None, None, on_hand_since=3)
    assert decision == Decision(EventStatus.APPLIED, Effect(Delta(on_hand=6)), counted_at=T)


def test_a_count_keeps_negative_on_hand_effects_that_happened_after_it() -> None:
    decision = decide(count(10), Position(on_hand=7), None, None, on_hand_since=-4)
    assert Position(on_hand=7).plus(decision.effect.delta).on_hand == 6


def test_a_count_from_the_locations_authority_is_applied() -> None:
    decision = decide(count(20, source="netsuite"), Position(on_hand=12), None, "netsuite", 0)
    assert decision.status is EventStatus.APPLIED
    assert decision.effect.delta == Delta(on_hand=8)


def test_a_count_from_a_source_that_is_not_the_authority_is_flagged_with_zero_effect() -> None:
    decision = decide(count(20, source="pos-store-12"), Position(on_hand=12), None, "netsuite", 0)
    assert decision == Decision(EventStatus.FLAGGED, Effect(Delta()), counted_at=None)


def test_a_foreign_count_is_flagged_even_when_it_is_newer_than_the_last_count() -> None:
    decision = decide(count(20, T + MINUTE, source="pos-store-12"), Position(on_hand=12), T, "netsuite", 0)
    assert decision.status is EventStatus.FLAGGED
    assert decision.effect.delta.is_zero


def test_a_location_naming_no_authority_accepts_counts_from_every_source() -> None:
    for source in ("netsuite", "pos-store-12", "wms-east"):
        assert decide(count(20, source=source), Position(on_hand=12), None, None, 0).status is EventStatus.APPLIED


def test_a_count_older_than_the_last_applied_count_is_superseded_with_zero_effect() -> None:
    decision = decide(count(99, T - MINUTE), Position(on_hand=12), T, None, 0)
    assert decision == Decision(EventStatus.SUPERSEDED, Effect(Delta()), counted_at=None)


def test_a_count_at_exactly_the_last_count_time_arriving_after_it_replaces_it() -> None:
    decision = decide(count(15), Position(on_hand=12), T, None, 0)
    assert decision == Decision(EventStatus.APPLIED, Effect(Delta(on_hand=3)), counted_at=T)


def test_a_count_newer_than_the_last_count_is_applied_and_moves_the_count_time() -> None:
    decision = decide(count(15, T + MINUTE), Position(on_hand=12), T, None, 0)
    assert decision == Decision(EventStatus.APPLIED, Effect(Delta(on_hand=3)), counted_at=T + MINUTE)


def test_a_delta_with_no_count_yet_is_applied_in_full() -> None:
    decision = decide(event(EventType.SOLD, 3, T - MINUTE), Position(on_hand=10), None, None, 0)
    assert decision == Decision(EventStatus.APPLIED, Effect(Delta(on_hand=-3)), counted_at=None)


def test_a_delta_older_than_the_last_count_is_superseded_and_its_on_hand_effect_dropped() -> None:
    decision = decide(event(EventType.SOLD, 3, T - MINUTE), Position(on_hand=10), T, None, 0)
    assert decision == Decision(EventStatus.SUPERSEDED, Effect(Delta()), counted_at=None)


def test_a_late_adjustment_before_the_count_changes_nothing() -> None:
    decision = decide(event(EventType.ADJUSTED, -4, T - MINUTE), Position(on_hand=10), T, None, 0)
    assert decision.status is EventStatus.SUPERSEDED
    assert decision.effect.delta.is_zero


def test_a_late_shipment_before_the_count_still_lowers_committed_but_not_on_hand() -> None:
    decision = decide(event(EventType.SHIPPED, 4, T - MINUTE), Position(on_hand=10, committed=6), T, None, 0)
    assert decision == Decision(EventStatus.SUPERSEDED, Effect(Delta(committed=-4)))


def test_a_late_shipment_beyond_committed_keeps_its_clipped_committed_effect_and_drift() -> None:
    decision = decide(event(EventType.SHIPPED, 5, T - MINUTE), Position(on_hand=10, committed=3), T, None, 0)
    assert decision == Decision(EventStatus.SUPERSEDED, Effect(Delta(committed=-3), drift=2))


def test_a_late_receipt_before_the_count_still_lowers_incoming_but_not_on_hand() -> None:
    decision = decide(event(EventType.RECEIVED, 8, T - MINUTE), Position(on_hand=10, incoming=20), T, None, 0)
    assert decision == Decision(EventStatus.SUPERSEDED, Effect(Delta(incoming=-8)))


def test_a_late_write_off_before_the_count_still_lowers_unavailable_but_not_on_hand() -> None:
    decision = decide(event(EventType.WRITTEN_OFF, 2, T - MINUTE), Position(on_hand=10, unavailable=5), T, None, 0)
    assert decision == Decision(EventStatus.SUPERSEDED, Effect(Delta(unavailable=-2)))


def test_a_delta_at_exactly_the_count_time_arriving_after_the_count_is_applied_in_full() -> None:
    decision = decide(event(EventType.SHIPPED, 4, T), Position(on_hand=10, committed=6), T, None, 0)
    assert decision == Decision(EventStatus.APPLIED, Effect(Delta(on_hand=-4, committed=-4)))


def test_a_delta_after_the_count_is_applied_in_full() -> None:
    decision = decide(event(EventType.RECEIVED, 8, T + MINUTE), Position(on_hand=10), T, None, 0)
    assert decision == Decision(EventStatus.APPLIED, Effect(Delta(on_hand=8)))


def test_an_order_placed_older_than_the_count_has_no_on_hand_effect_and_stays_applied() -> None:
    decision = decide(event(EventType.ORDER_PLACED, 4, T - MINUTE), Position(on_hand=10), T, None, 0)
    assert decision == Decision(EventStatus.APPLIED, Effect(Delta(committed=4)))


@pytest.mark.parametrize(
    ("kind", "delta"),
    [
        (EventType.INCOMING, Delta(incoming=4)),
        (EventType.DAMAGED, Delta(unavailable=4)),
        (EventType.SAFETY_STOCK_SET, Delta(safety_stock=4)),
    ],
)
def test_other_deltas_without_on_hand_effect_older_than_the_count_stay_applied(kind: EventType, delta: Delta) -> None:
    assert decide(event(kind, 4, T - MINUTE), Position(on_hand=10), T, None, 0) == Decision(
        EventStatus.APPLIED, Effect(delta)
    )


# --- convergence: any arrival order gives the same on hand -----------------------------------------------------


@dataclass
class Site:
    """One (sku, location) as the service keeps it: a position, the last count time and a ledger."""

    authority: str | None = None
    position: Position = field(default_factory=Position)
    counted_at: datetime | None = None
    ledger: list[tuple[datetime, int]] = field(default_factory=list)  # (occurred_at, d_on_hand) per row

    def record(self, e: InventoryEvent) -> Decision:
        since = 0
        if e.type is EventType.COUNTED:
            since = sum(d for occurred_at, d in self.ledger if occurred_at > e.occurred_at)
        decision = decide(e, self.position, self.counted_at, self.authority, since)
        self.position = self.position.plus(decision.effect.delta)
        if decision.counted_at is not None:
            self.counted_at = decision.counted_at
        self.ledger.append((e.occurred_at, decision.effect.delta.on_hand))
        return decision


def test_a_delta_at_exactly_the_count_time_arriving_before_the_count_is_replaced_by_it() -> None:
    site = Site(position=Position(on_hand=10))
    assert site.record(event(EventType.SOLD, 3, T)).status is EventStatus.APPLIED
    assert site.record(count(20)).status is EventStatus.APPLIED
    assert site.position.on_hand == 20


def test_a_delta_at_exactly_the_count_time_arriving_after_the_count_is_added_to_it() -> None:
    site = Site(position=Position(on_hand=10))
    site.record(count(20))
    assert site.record(event(EventType.SOLD, 3, T)).status is EventStatus.APPLIED
    assert site.position.on_hand == 17


def test_a_late_sale_before_the_count_and_a_sale_after_it_in_either_order_leave_the_same_on_hand() -> None:
    before, after = event(EventType.SOLD, 4, T - MINUTE), event(EventType.SOLD, 2, T + MINUTE)
    outcomes = []
    for order in ([before, after, count(20)], [count(20), before, after], [after, count(20), before]):
        site = Site(position=Position(on_hand=10))
        for e in order:
            site.record(e)
        outcomes.append(site.position.on_hand)
    assert outcomes == [18, 18, 18]


# The on-hand column of the contract's event table, written out independently of effect().
ON_HAND_SIGN = {
    EventType.RECEIVED: 1,
    EventType.ADJUSTED: 1,
    EventType.SOLD: -1,
    EventType.SHIPPED: -1,
    EventType.RETURNED: 1,
    EventType.WRITTEN_OFF: -1,
    EventType.TRANSFER_OUT: -1,
    EventType.TRANSFER_IN: 1,
}
DELTA_TYPES = [k for k in EventType if k is not EventType.COUNTED]


@st.composite
def deltas(draw: st.DrawFn, avoid_minutes: set[int]) -> InventoryEvent:
    kind = draw(st.sampled_from(DELTA_TYPES))
    if kind is EventType.ADJUSTED:
        q = draw(st.integers(min_value=-50, max_value=50).filter(lambda n: n != 0))
    else:
        q = draw(st.integers(min_value=1, max_value=50))
    minute = draw(st.integers(min_value=-60, max_value=60).filter(lambda m: m not in avoid_minutes))
    return event(kind, q, T + minute * MINUTE)


def on_hand_effect(e: InventoryEvent) -> int:
    return ON_HAND_SIGN.get(e.type, 0) * e.quantity


@settings(database=None, max_examples=300)
@given(data=st.data(), start=st.integers(min_value=-20, max_value=100), counted=st.integers(min_value=0, max_value=200))
def test_deltas_around_one_count_converge_to_the_same_on_hand_in_any_arrival_order(
    data: st.DataObject, start: int, counted: int
) -> None:
    # events at exactly the count time are ordered by arrival (contract), so they are kept off T here
    events = data.draw(st.lists(deltas(avoid_minutes={0}), max_size=12), label="deltas")
    arrivals = data.draw(st.permutations([*events, count(counted)]), label="arrival order")
    site = Site(position=Position(on_hand=start))
    for e in arrivals:
        site.record(e)
    expected = counted + sum(on_hand_effect(e) for e in events if e.occurred_at > T)
    assert site.position.on_hand == expected
    assert site.counted_at == T


@settings(database=None, max_examples=300)
@given(
    data=st.data(),
    start=st.integers(min_value=-20, max_value=100),
    count_minutes=st.lists(st.integers(min_value=-30, max_value=30), min_size=1, max_size=3, unique=True),
)
def test_several_counts_and_foreign_counts_converge_on_the_latest_authority_count(
    data: st.DataObject, start: int, count_minutes: list[int]
) -> None:
    counts = [
        count(data.draw(st.integers(min_value=0, max_value=200)), T + m * MINUTE, source="netsuite")
        for m in count_minutes
    ]
    foreign = [
        count(data.draw(st.integers(min_value=0, max_value=200)), T + m * MINUTE, source="pos-store-12")
        for m in data.draw(st.lists(st.integers(min_value=-60, max_value=60), max_size=2), label="foreign")
    ]
    events = data.draw(st.lists(deltas(avoid_minutes=set(count_minutes)), max_size=12), label="deltas")
    arrivals = data.draw(st.permutations([*events, *counts, *foreign]), label="arrival order")
    site = Site(authority="netsuite", position=Position(on_hand=start))
    for e in arrivals:
        site.record(e)
    latest = max(counts, key=lambda c: c.occurred_at)
    expected = latest.quantity + sum(on_hand_effect(e) for e in events if e.occurred_at > latest.occurred_at)
    assert site.position.on_hand == expected
    assert site.counted_at == latest.occurred_at
