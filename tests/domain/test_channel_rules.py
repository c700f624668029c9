"""The channel rules of the contract, one at a time and together, with small worked numbers."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.channel_rules import (
    ChannelFigure,
    ChannelRules,
    ChannelStock,
    ExceedsChannelFigure,
    RuleStep,
    channel_alerts,
    channel_availability,
    rule_errors,
    split_hold,
)

JUNE_3 = datetime(2025, 6, 3, 9, 0, tzinfo=UTC)
JUNE_10 = datetime(2025, 6, 10, 9, 0, tzinfo=UTC)


def at(available: int, incoming: int = 0, fenced: int = 0, expected: datetime | None = None) -> ChannelStock:
    return ChannelStock(available=available, incoming=incoming, ring_fenced_for_others=fenced, expected_at=expected)


def figure(rules: ChannelRules, *locations: ChannelStock, mine: int = 0, backordered: int = 0) -> ChannelFigure:
    return channel_availability(rules, list(locations), mine=mine, backordered=backordered)


def rules_taken(result: ChannelFigure) -> dict[str, int]:
    return {step.rule: step.units_taken for step in result.steps}


# --- the pool ---------------------------------------------------------------------------------------


def test_no_rules_pool_40_plus_60_shows_100_with_nothing_to_explain() -> None:
    result = figure(ChannelRules(), at(40), at(60))
    assert (result.available, result.pool, result.base, result.on_hand_part) == (100, 100, 100, 100)
    assert result.backorderable == 0
    assert result.steps == ()


def test_no_locations_shows_0() -> None:
    result = figure(ChannelRules(), mine=0)
    assert (result.available, result.pool) == (0, 0)


def test_negative_location_minus_20_does_not_pull_50_elsewhere_below_50() -> None:
    assert figure(ChannelRules(), at(50), at(-20)).available == 50


def test_ring_fenced_4_of_10_for_others_are_invisible_so_6() -> None:
    result = figure(ChannelRules(), at(10, fenced=4))
    assert (result.pool, result.available) == (6, 6)


def test_fence_of_5_on_a_location_with_3_cannot_eat_the_10_elsewhere() -> None:
    # Σmax(0, a) - Σfence would give 13 - 5 = 8: two units at the second location would vanish.
    assert figure(ChannelRules(), at(3, fenced=5), at(10)).available == 10


def test_fence_on_an_oversold_location_minus_2_fenced_3_gives_0_there_not_minus_5() -> None:
    assert figure(ChannelRules(), at(-2, fenced=3), at(4)).pool == 4


def test_fence_is_per_location_not_pooled_across_locations() -> None:
    # 10 at A with 8 fenced, 10 at B with 0 fenced: only 2 at A are free, so 12, never 20 - 8 moved.
    assert figure(ChannelRules(), at(10, fenced=8), at(10)).available == 12


# --- step 2: safety buffer --------------------------------------------------------------------------


def test_pool_100_buffer_5_units_gives_95() -> None:
    result = figure(ChannelRules(safety_buffer_units=5), at(100))
    assert result.available == 95
    assert result.steps == (RuleStep("SAFETY_BUFFER_UNITS", 5, 95),)


def test_pool_100_buffer_10_percent_gives_90() -> None:
    result = figure(ChannelRules(safety_buffer_percent=10), at(100))
    assert result.available == 90
    assert result.steps == (RuleStep("SAFETY_BUFFER_PERCENT", 10, 90),)


def test_pool_100_buffer_5_units_and_10_percent_gives_85_percent_of_base_not_of_95() -> None:
    result = figure(ChannelRules(safety_buffer_units=5, safety_buffer_percent=10), at(100))
    assert result.available == 85  # 10% of 100 = 10, not 10% of 95 = 9.5 -> 10 by luck: see next test
    assert rules_taken(result) == {"SAFETY_BUFFER_UNITS": 5, "SAFETY_BUFFER_PERCENT": 10}


def test_pool_20_buffer_10_units_and_50_percent_gives_0_percent_taken_of_base_20() -> None:
    # 20 - 10 - ceil(20 x 50%) = 0; taking 50% of what the units left (10 -> 5) would wrongly give 5.
    assert figure(ChannelRules(safety_buffer_units=10, safety_buffer_percent=50), at(20)).available == 0


def test_pool_10_buffer_33_3_percent_is_3_33_rounded_up_to_4_so_6() -> None:
    assert figure(ChannelRules(safety_buffer_percent=33.3), at(10)).available == 6


def test_pool_3_buffer_5_units_takes_only_the_3_there_are() -> None:
    result = figure(ChannelRules(safety_buffer_units=5, safety_buffer_percent=10), at(3))
    assert result.available == 0
    assert result.steps == (RuleStep("SAFETY_BUFFER_UNITS", 3, 0), RuleStep("SAFETY_BUFFER_PERCENT", 0, 0))


def test_buffer_100_percent_leaves_nothing() -> None:
    assert figure(ChannelRules(safety_buffer_percent=100), at(37)).available == 0


# --- steps 3 and 4: allocation ----------------------------------------------------------------------


def test_pool_100_allocation_30_percent_gives_30() -> None:
    result = figure(ChannelRules(allocation_percent=30), at(100))
    assert result.available == 30
    assert result.steps == (RuleStep("ALLOCATION_PERCENT", 70, 30),)


def test_pool_10_allocation_33_3_percent_is_3_33_rounded_down_to_3() -> None:
    assert figure(ChannelRules(allocation_percent=33.3), at(10)).available == 3


def test_pool_100_allocation_cap_25_gives_25() -> None:
    result = figure(ChannelRules(allocation_cap=25), at(100))
    assert result.available == 25
    assert result.steps == (RuleStep("ALLOCATION_CAP", 75, 25),)


def test_pool_10_cap_25_is_not_binding_and_takes_0() -> None:
    result = figure(ChannelRules(allocation_cap=25), at(10))
    assert result.available == 10
    assert result.steps == (RuleStep("ALLOCATION_CAP", 0, 10),)


def test_pool_100_allocation_30_percent_and_cap_20_gives_20_the_smaller() -> None:
    result = figure(ChannelRules(allocation_percent=30, allocation_cap=20), at(100))
    assert result.available == 20
    assert rules_taken(result) == {"ALLOCATION_PERCENT": 70, "ALLOCATION_CAP": 10}


def test_pool_100_allocation_30_percent_and_cap_50_gives_30_the_smaller() -> None:
    result = figure(ChannelRules(allocation_percent=30, allocation_cap=50), at(100))
    assert result.available == 30
    assert rules_taken(result) == {"ALLOCATION_PERCENT": 70, "ALLOCATION_CAP": 0}


def test_pool_100_buffer_10_percent_then_allocation_50_percent_of_base_gives_50() -> None:
    # The allocation is a share of the base (100 -> 50), not of what the buffer left (90 -> 45).
    result = figure(ChannelRules(safety_buffer_percent=10, allocation_percent=50), at(100))
    assert result.available == 50
    assert rules_taken(result) == {"SAFETY_BUFFER_PERCENT": 10, "ALLOCATION_PERCENT": 40}


def test_pool_100_buffer_10_percent_and_allocation_95_percent_keeps_the_buffer_so_90() -> None:
    assert figure(ChannelRules(safety_buffer_percent=10, allocation_percent=95), at(100)).available == 90


# --- exact percentages (Decimal(str(x)), never binary floats) -----------------------------------------


@pytest.mark.parametrize(
    ("base", "percent", "expected_kept_back"),
    [
        (100, 7, 7),  # 100 x 0.07 is 7.000000000000001 in floats: ceil would keep 8
        (1000, 16.1, 161),  # 1000 x 16.1 / 100 is 161.00000000000003 in floats: ceil would keep 162
        (1000, 0.7, 7),  # 0.1 + 0.2 style: 0.7 is not 0.7 in binary
        (10, 33.3, 4),  # 3.33 really is above 3
    ],
)
def test_buffer_percent_is_exact_decimal(base: int, percent: float, expected_kept_back: int) -> None:
    result = figure(ChannelRules(safety_buffer_percent=percent), at(base))
    assert result.available == base - expected_kept_back


@pytest.mark.parametrize(
    ("base", "percent", "expected_share"),
    [
        (100, 29, 29),  # 100 x 0.29 is 28.999999999999996 in floats: floor would give 28
        (1000, 32.3, 323),  # 1000 x 32.3 / 100 is 322.99999999999994 in floats: floor would give 322
        (1000, 10.1, 101),  # 1000 x 0.101 is 100.99999999999999 in floats
        (10, 33.3, 3),
    ],
)
def test_allocation_percent_is_exact_decimal(base: int, percent: float, expected_share: int) -> None:
    assert figure(ChannelRules(allocation_percent=percent), at(base)).available == expected_share


# --- step 5: the channel's own reservations and the out-of-stock threshold --------------------------


def test_holding_3_of_its_cap_of_10_the_channel_sees_7_more_not_7_minus_3() -> None:
    # 20 free + 3 held by this channel: base 23, cap 10, less the 3 it holds -> 7.
    result = figure(ChannelRules(allocation_cap=10), at(20), mine=3)
    assert (result.base, result.available) == (23, 7)
    assert result.steps == (RuleStep("ALLOCATION_CAP", 13, 10), RuleStep("OWN_RESERVATIONS", 3, 7))


def test_holding_3_with_7_left_and_no_rules_sees_the_7_left() -> None:
    # Added back then subtracted: 7 + 3 = 10, then 10 - 3 = 7 (not 7 - 3 = 4).
    assert figure(ChannelRules(), at(7), mine=3).available == 7


def test_holding_3_pool_97_allocation_10_percent_of_100_sees_7() -> None:
    assert figure(ChannelRules(allocation_percent=10), at(97), mine=3).available == 7


def test_holding_12_beyond_its_cap_of_10_sees_0_not_minus_2() -> None:
    result = figure(ChannelRules(allocation_cap=10), at(50), mine=12)
    assert result.available == 0
    assert rules_taken(result)["OWN_RESERVATIONS"] == 10


def test_threshold_5_with_exactly_5_shows_5() -> None:
    result = figure(ChannelRules(out_of_stock_threshold=5), at(5))
    assert result.available == 5
    assert result.steps == (RuleStep("OUT_OF_STOCK_THRESHOLD", 0, 5),)


def test_threshold_5_with_4_shows_0() -> None:
    result = figure(ChannelRules(out_of_stock_threshold=5), at(4))
    assert result.available == 0
    assert result.steps == (RuleStep("OUT_OF_STOCK_THRESHOLD", 4, 0),)


def test_threshold_compares_the_figure_after_own_reservations_8_minus_buffer_2_minus_mine_2_is_4() -> None:
    # pool 6 + mine 2 = 8, buffer 2 -> 6, less the 2 held -> 4 < 5 -> 0.
    rules = ChannelRules(safety_buffer_units=2, out_of_stock_threshold=5)
    assert figure(rules, at(6), mine=2).available == 0
    assert figure(rules, at(7), mine=2).available == 5


# --- step 6: backorders against incoming ------------------------------------------------------------


def test_backorder_limit_10_with_3_incoming_adds_3() -> None:
    result = figure(ChannelRules(backorder_limit=10), at(0, incoming=3, expected=JUNE_3))
    assert (result.available, result.on_hand_part, result.backorderable) == (3, 0, 3)
    assert result.expected_at == JUNE_3
    assert result.steps == (RuleStep("BACKORDER", -3, 3),)


def test_backorder_limit_10_with_4_already_backordered_and_50_incoming_adds_6() -> None:
    result = figure(ChannelRules(backorder_limit=10), at(2, incoming=50), backordered=4)
    assert (result.available, result.on_hand_part, result.backorderable) == (8, 2, 6)


def test_backorder_limit_lowered_to_5_below_7_backordered_adds_nothing_and_keeps_stock() -> None:
    result = figure(ChannelRules(backorder_limit=5), at(4, incoming=50), backordered=7)
    assert (result.available, result.backorderable) == (4, 0)
    assert result.expected_at is None


def test_backorder_not_set_adds_nothing_even_with_incoming() -> None:
    result = figure(ChannelRules(), at(4, incoming=50, expected=JUNE_3))
    assert (result.available, result.backorderable, result.expected_at) == (4, 0, None)


def test_backorder_limit_0_explains_a_step_of_0() -> None:
    result = figure(ChannelRules(backorder_limit=0), at(4, incoming=50))
    assert result.steps == (RuleStep("BACKORDER", 0, 4),)


def test_backorder_comes_after_the_threshold_4_below_5_shows_0_plus_3_backorderable() -> None:
    rules = ChannelRules(out_of_stock_threshold=5, backorder_limit=3)
    result = figure(rules, at(4, incoming=10))
    assert (result.on_hand_part, result.backorderable, result.available) == (0, 3, 3)


def test_backorder_sums_incoming_across_locations_and_shows_the_earliest_date() -> None:
    result = figure(
        ChannelRules(backorder_limit=100),
        at(0, incoming=5, expected=JUNE_10),
        at(0, incoming=2, expected=JUNE_3),
        at(0, incoming=0, expected=datetime(2025, 5, 1, tzinfo=UTC)),  # nothing coming: its date is stale
        at(0, incoming=4),
    )
    assert (result.incoming, result.backorderable) == (11, 11)
    assert result.expected_at == JUNE_3


def test_backorder_is_not_limited_by_the_allocation_or_the_buffer() -> None:
    rules = ChannelRules(safety_buffer_units=5, allocation_cap=2, backorder_limit=10)
    result = figure(rules, at(100, incoming=3))
    assert (result.on_hand_part, result.backorderable, result.available) == (2, 3, 5)


# --- everything together ----------------------------------------------------------------------------


def test_all_rules_worked_example_pool_100_plus_mine_4_gives_41_plus_6_backorderable() -> None:
    # pool: 60 + (50 - 10 fenced) + max(0, -7) = 100; base 104.
    # buffer 5 -> 99; 10% of 104 = 10.4 -> 11 -> 88; allocation 50% of 104 = 52 -> 52; cap 45 -> 45;
    # less the 4 held -> 41; 41 >= threshold 10; backorder min(20 - 14, 30) = 6 -> 47.
    rules = ChannelRules(
        safety_buffer_units=5,
        safety_buffer_percent=10,
        allocation_percent=50,
        allocation_cap=45,
        out_of_stock_threshold=10,
        backorder_limit=20,
    )
    result = figure(
        rules,
        at(60, incoming=30, expected=JUNE_10),
        at(50, fenced=10),
        at(-7),
        mine=4,
        backordered=14,
    )
    assert (result.pool, result.base) == (100, 104)
    assert result.steps == (
        RuleStep("SAFETY_BUFFER_UNITS", 5, 99),
        RuleStep("SAFETY_BUFFER_PERCENT", 11, 88),
        RuleStep("ALLOCATION_PERCENT", 36, 52),
        RuleStep("ALLOCATION_CAP", 7, 45),
        RuleStep("OWN_RESERVATIONS", 4, 41),
        RuleStep("OUT_OF_STOCK_THRESHOLD", 0, 41),
        RuleStep("BACKORDER", -6, 47),
    )
    assert (result.on_hand_part, result.backorderable, result.available) == (41, 6, 47)
    assert result.expected_at == JUNE_10


def literal_contract(rules: ChannelRules, locations: list[ChannelStock], mine: int, backordered: int) -> int:
    """The contract's six steps written out as literally as possible, without clipping in between."""
    pool = sum(max(0, row.available - row.ring_fenced_for_others) for row in locations)
    base = pool + mine
    figure = base - rules.safety_buffer_units
    if rules.safety_buffer_percent is not None:
        figure -= math.ceil(base * Decimal(str(rules.safety_buffer_percent)) / 100)
    if rules.allocation_percent is not None:
        figure = min(figure, math.floor(base * Decimal(str(rules.allocation_percent)) / 100))
    if rules.allocation_cap is not None:
        figure = min(figure, rules.allocation_cap)
    figure = max(0, figure - mine)
    if figure < rules.out_of_stock_threshold:
        figure = 0
    if rules.backorder_limit is not None:
        figure += min(rules.backorder_limit - backordered, sum(row.incoming for row in locations))
    return figure


percents = st.none() | st.integers(0, 10_000).map(lambda n: n / 100)
small = st.integers(0, 60)


@settings(database=None, max_examples=300)
@given(
    rules=st.builds(
        ChannelRules,
        safety_buffer_units=small,
        safety_buffer_percent=percents,
        allocation_percent=percents,
        allocation_cap=st.none() | small,
        out_of_stock_threshold=small,
        backorder_limit=st.none() | small,
    ),
    locations=st.lists(
        st.builds(ChannelStock, available=st.integers(-30, 200), incoming=small, ring_fenced_for_others=small),
        max_size=4,
    ),
    mine=small,
    data=st.data(),
)
def test_matches_the_literal_contract_and_the_steps_add_up(
    rules: ChannelRules, locations: list[ChannelStock], mine: int, data: st.DataObject
) -> None:
    # Within the limit, so the literal step 6 never subtracts (the lowered-limit case is tested above).
    backordered = data.draw(st.integers(0, rules.backorder_limit or 0))
    result = channel_availability(rules, locations, mine=mine, backordered=backordered)

    assert result.available == literal_contract(rules, locations, mine, backordered)
    assert result.available >= 0
    assert result.available == result.on_hand_part + result.backorderable
    before = result.base
    for step in result.steps:
        assert step.figure_after >= 0
        assert before - step.units_taken == step.figure_after
        before = step.figure_after
    assert before == result.available


# --- validation -------------------------------------------------------------------------------------


def test_valid_rules_including_the_bounds_0_and_100_have_no_errors() -> None:
    assert rule_errors(ChannelRules()) == []
    assert rule_errors(ChannelRules(safety_buffer_percent=0, allocation_percent=100, allocation_cap=0)) == []
    assert rule_errors(ChannelRules(safety_buffer_percent=100, allocation_percent=0, backorder_limit=0)) == []


def test_negative_unit_counts_are_errors_on_their_fields() -> None:
    rules = ChannelRules(safety_buffer_units=-1, allocation_cap=-2, out_of_stock_threshold=-3, backorder_limit=-4)
    assert [field for field, _ in rule_errors(rules)] == [
        "safetyBufferUnits",
        "allocationCap",
        "outOfStockThreshold",
        "backorderLimit",
    ]


@pytest.mark.parametrize("bad", [-0.01, 100.5, math.nan, math.inf, -math.inf])
def test_percentages_outside_0_to_100_are_errors(bad: float) -> None:
    errors = rule_errors(ChannelRules(safety_buffer_percent=bad, allocation_percent=bad))
    assert [field for field, _ in errors] == ["safetyBufferPercent", "allocationPercent"]
    assert all("100" in message for _, message in errors)


def test_invalid_rules_are_refused_by_the_computation() -> None:
    with pytest.raises(ValueError, match="allocationPercent"):
        figure(ChannelRules(allocation_percent=150), at(10))


@pytest.mark.parametrize(
    ("locations", "mine", "backordered"),
    [([at(10)], -1, 0), ([at(10)], 0, -1), ([at(10, incoming=-1)], 0, 0), ([at(10, fenced=-1)], 0, 0)],
)
def test_negative_inputs_are_a_callers_bug(locations: list[ChannelStock], mine: int, backordered: int) -> None:
    with pytest.raises(ValueError):
        channel_availability(ChannelRules(), locations, mine=mine, backordered=backordered)


# --- splitting a hold between stock and backorder ---------------------------------------------------


def test_split_hold_takes_stock_first_4_in_stock_plus_6_backorderable_hold_7_is_4_and_3() -> None:
    result = figure(ChannelRules(backorder_limit=6), at(4, incoming=20))
    assert split_hold(result, 7) == (4, 3)
    assert split_hold(result, 4) == (4, 0)
    assert split_hold(result, 10) == (4, 6)
    assert split_hold(result, 0) == (0, 0)


def test_split_hold_beyond_the_figure_is_refused_with_both_numbers() -> None:
    result = figure(ChannelRules(backorder_limit=6), at(4, incoming=20))
    with pytest.raises(ExceedsChannelFigure) as refused:
        split_hold(result, 11)
    assert (refused.value.requested, refused.value.available) == (11, 10)


def test_split_hold_of_a_negative_quantity_is_a_callers_bug() -> None:
    with pytest.raises(ValueError):
        split_hold(figure(ChannelRules(), at(4)), -1)


def test_split_hold_under_threshold_is_all_backorder_though_units_sit_on_the_shelf() -> None:
    # The channel shows 0 from stock below its threshold, so what it may sell comes from incoming.
    result = figure(ChannelRules(out_of_stock_threshold=5, backorder_limit=3), at(4, incoming=10))
    assert split_hold(result, 3) == (0, 3)


# --- alerts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "current", "threshold", "alerts"),
    [
        (5, 0, None, ("OUT_OF_STOCK",)),
        (None, 0, None, ("OUT_OF_STOCK",)),  # nothing known yet: being out of stock is news
        (0, 0, 5, ()),  # still out: no second alert
        (0, 3, None, ("BACK_IN_STOCK",)),
        (0, 3, 5, ("BACK_IN_STOCK", "LOW_STOCK")),  # back, but below the threshold
        (0, 8, 5, ("BACK_IN_STOCK",)),
        (10, 4, 5, ("LOW_STOCK",)),  # crosses 5 downwards
        (5, 4, 5, ("LOW_STOCK",)),  # 5 is not below 5; 4 is
        (4, 2, 5, ()),  # already low: going lower raises nothing new
        (2, 9, 5, ()),  # recovering is not an alert (only leaving 0 is)
        (None, 3, 5, ("LOW_STOCK",)),
        (None, 9, 5, ()),
        (9, 9, 5, ()),
        (9, 3, 0, ()),  # a threshold of 0 never fires: nothing is below 0 but 0 itself
        (3, 0, 5, ("OUT_OF_STOCK",)),  # out of stock wins: no LOW_STOCK for 0
    ],
)
def test_alerts_fire_on_crossings_only(
    previous: int | None, current: int, threshold: int | None, alerts: tuple[str, ...]
) -> None:
    assert channel_alerts(previous, current, threshold) == alerts


def test_alerts_refuse_negative_figures_and_thresholds() -> None:
    with pytest.raises(ValueError):
        channel_alerts(-1, 0, None)
    with pytest.raises(ValueError):
        channel_alerts(1, -1, None)
    with pytest.raises(ValueError):
        channel_alerts(1, 0, -1)


# --- the README's worked example (README.md, "Channels"): keep the two in step -------------------


def test_the_readme_worked_example() -> None:
    web = ChannelRules(
        safety_buffer_units=2,
        safety_buffer_percent=10,
        allocation_percent=60,
        allocation_cap=25,
        out_of_stock_threshold=3,
        backorder_limit=5,
    )
    wh2 = at(20, incoming=8, expected=JUNE_10)
    result = figure(web, at(30), wh2)
    assert [(s.rule, s.units_taken, s.figure_after) for s in result.steps] == [
        ("SAFETY_BUFFER_UNITS", 2, 48),
        ("SAFETY_BUFFER_PERCENT", 5, 43),
        ("ALLOCATION_PERCENT", 13, 30),
        ("ALLOCATION_CAP", 5, 25),
        ("OUT_OF_STOCK_THRESHOLD", 0, 25),
        ("BACKORDER", -5, 30),
    ]
    assert (result.pool, result.available, result.expected_at) == (50, 30, JUNE_10)
    fenced = figure(web, at(30, fenced=10), wh2)  # POS keeps 10 at WH-1
    assert (fenced.pool, [s.figure_after for s in fenced.steps]) == (40, [38, 34, 24, 24, 24, 29])
    holding = figure(web, at(5), wh2, mine=25, backordered=2)  # WEB holds 25 and 2 backorders
    assert (holding.pool, holding.base, holding.on_hand_part, holding.available) == (25, 50, 0, 3)
    threshold_only = figure(ChannelRules(out_of_stock_threshold=5, backorder_limit=3), at(4, incoming=10))
    assert (threshold_only.available, split_hold(threshold_only, 3)) == (3, (0, 3))
    assert figure(ChannelRules(safety_buffer_percent=33.3), at(10)).available == 6


def test_incoming_already_promised_is_not_promised_again() -> None:
    rules = ChannelRules(backorder_limit=5)
    # 8 expected at the first location, 6 of them promised (by any channel); 2 expected at the other
    rows = [
        ChannelStock(available=0, incoming=8, backordered=6, expected_at=JUNE_10),
        ChannelStock(available=0, incoming=2, expected_at=JUNE_3),
    ]
    figure = channel_availability(rules, rows, mine=0, backordered=1)
    assert (figure.available, figure.backorderable, figure.incoming, figure.expected_at) == (4, 4, 4, JUNE_3)
    # every expected unit promised: nothing to backorder, whatever the limit leaves
    full = [ChannelStock(available=0, incoming=8, backordered=8, expected_at=JUNE_10)]
    figure = channel_availability(rules, full, mine=0, backordered=0)
    assert (figure.available, figure.backorderable, figure.expected_at) == (0, 0, None)
    with pytest.raises(ValueError):
        channel_availability(rules, [ChannelStock(available=0, incoming=1, backordered=-1)], 0, 0)
