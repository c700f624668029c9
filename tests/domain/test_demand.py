"""Sales rate, the dynamic buffer and its hysteresis, and sync lag: pure functions on a fake clock."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from app.domain import demand
from app.domain.channel_rules import (
    BACKORDER,
    DYNAMIC_BUFFER,
    NOT_LAUNCHED,
    PREORDER,
    SAFETY_BUFFER_PERCENT,
    ChannelRules,
    ChannelStock,
    Preorder,
    channel_availability,
)
from app.domain.demand import DecayedCount, DynamicBufferRule

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = 3600.0


def clock(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_steady_seller_settles_at_its_rate() -> None:
    count = None
    for i in range(2000):  # one unit every 36 s = 100 per hour, for 20 hours (20 half-lives)
        count = demand.add_sale(count, 1, clock(36 * i), HOUR)
    rate = demand.rate_per_second(count, clock(36 * 1999), HOUR) * 3600
    assert rate == pytest.approx(100, rel=0.01)


def test_a_sale_weighs_half_as_much_after_one_half_life() -> None:
    count = demand.add_sale(None, 10, T0, HOUR)
    assert demand.decayed(count, clock(HOUR), HOUR) == pytest.approx(5)
    assert demand.decayed(count, clock(2 * HOUR), HOUR) == pytest.approx(2.5)
    # the rate is the count over tau = half-life / ln 2
    assert demand.rate_per_second(count, T0, HOUR) == pytest.approx(10 * math.log(2) / HOUR)


def test_a_clock_that_goes_back_never_grows_the_count() -> None:
    count = demand.add_sale(None, 4, clock(100), HOUR)
    assert demand.decayed(count, clock(50), HOUR) == 4
    later = demand.add_sale(count, 1, clock(50), HOUR)  # another process's slower clock
    assert later == DecayedCount(5, clock(100))


def test_reading_does_not_change_the_count() -> None:
    count = demand.add_sale(None, 3, T0, HOUR)
    demand.rate_per_second(count, clock(HOUR), HOUR)
    assert count == DecayedCount(3, T0)


def test_the_buffer_is_velocity_times_lag_times_factor_rounded_up_and_clamped() -> None:
    rule = DynamicBufferRule(factor=1.5, minimum=1, maximum=20)
    per_second = 120 / 3600  # 120 units an hour
    assert demand.buffer_target(per_second, 60, rule) == 3  # 2 units in a minute x 1.5
    assert demand.buffer_target(per_second, 61, rule) == 4  # 3.05 rounds up
    assert demand.buffer_target(0, 60, rule) == 1  # the minimum
    assert demand.buffer_target(per_second, 3600, rule) == 20  # the maximum
    assert demand.buffer_target(per_second, 60, DynamicBufferRule()) == 0  # no rule, no buffer
    # 0.1 x 10 x 3 is 3.0000000000000004 in binary floats: still 3, not 4
    assert demand.buffer_target(0.1, 10, DynamicBufferRule(factor=3)) == 3


def test_hysteresis_raises_at_once_lowers_by_whole_bands_and_ignores_wobbles() -> None:
    assert demand.settle(None, 7, band=3) == 7
    assert demand.settle(5, 8, band=3) == 8  # a band up: at once
    assert demand.settle(5, 7, band=3) == 5  # less than a band: unchanged
    assert demand.settle(5, 3, band=3) == 5
    assert demand.settle(9, 6, band=3) == 6
    assert demand.settle(9, 4, band=3) == 6  # down by whole bands only, never below the target
    assert demand.settle(9, 0, band=3) == 0


def test_a_target_wobbling_inside_the_band_does_not_flap() -> None:
    applied = 10
    moves = 0
    for target in [10, 11, 9, 11, 10, 9, 11, 10] * 5:
        new = demand.settle(applied, target, band=2)
        moves += new != applied
        applied = new
    assert (applied, moves) == (10, 0)


def test_a_decaying_target_lowers_the_same_however_often_it_is_read() -> None:
    rule = DynamicBufferRule(factor=1.0, band=2)
    count = demand.add_sale(None, 200, T0, HOUR)
    lag = 600.0

    def target(t: float) -> int:
        return demand.buffer_target(demand.rate_per_second(count, clock(t), HOUR), lag, rule)

    start = target(0)
    often = start
    moves: list[int] = []
    for t in range(0, 4 * 3600, 60):
        new = demand.settle(often, target(t), rule.band)
        if new != often:
            moves.append(often - new)
        often = new
    once = demand.settle(start, target(4 * 3600 - 60), rule.band)
    assert often == once
    assert moves and all(step >= rule.band for step in moves)


def test_the_review_time_is_when_decay_lowers_the_buffer_a_band() -> None:
    rule = DynamicBufferRule(factor=2.0, minimum=0, band=2)
    lag = 300.0
    count = demand.add_sale(None, 100, T0, HOUR)
    applied = demand.buffer_target(demand.rate_per_second(count, T0, HOUR), lag, rule)
    assert applied == 12
    wait = demand.seconds_until_lower(count.units, applied, lag, rule, HOUR)
    assert wait is not None

    def settled(t: float) -> int:
        rate = demand.rate_per_second(count, clock(t), HOUR)
        return demand.settle(applied, demand.buffer_target(rate, lag, rule), rule.band)

    assert settled(wait - 1) == applied
    assert settled(wait + 1) == applied - rule.band
    # the floor is at the minimum: decay alone never lowers it
    assert (
        demand.seconds_until_lower(count.units, 3, lag, DynamicBufferRule(factor=2.0, minimum=2, band=2), HOUR) is None
    )


def test_measured_lag_is_an_ewma_and_the_longer_lag_wins() -> None:
    lag = demand.measured_lag(None, 10)
    assert lag == 10
    lag = demand.measured_lag(lag, 60)
    assert lag == pytest.approx(10 + demand.LAG_SAMPLE_WEIGHT * 50)
    assert demand.measured_lag(None, -3) == 0  # clocks apart never give a negative lag
    assert demand.sync_lag(300, 2.5) == 300  # a channel that polls every 5 minutes
    assert demand.sync_lag(None, 2.5) == 2.5
    assert demand.sync_lag(None, None) == 0


def test_rule_errors_name_the_fields() -> None:
    bad = DynamicBufferRule(factor=math.nan, minimum=-1, maximum=-2, band=0)
    assert [f for f, _ in demand.rule_errors(bad, -5)] == [
        "dynamicBufferFactor",
        "dynamicBufferMin",
        "dynamicBufferMax",
        "dynamicBufferBand",
        "syncLagSeconds",
    ]
    assert demand.rule_errors(DynamicBufferRule(factor=1.0, minimum=2, maximum=5, band=2), 60) == []


def test_the_dynamic_buffer_is_taken_after_the_static_buffers_in_step_2() -> None:
    rules = ChannelRules(safety_buffer_percent=10, backorder_limit=2)
    result = channel_availability(rules, [ChannelStock(available=50, incoming=5)], 0, 0, dynamic_buffer=6)
    assert [(s.rule, s.units_taken, s.figure_after) for s in result.steps] == [
        (SAFETY_BUFFER_PERCENT, 5, 45),
        (DYNAMIC_BUFFER, 6, 39),
        (BACKORDER, -2, 41),
    ]
    assert (result.available, result.on_hand_part, result.dynamic_buffer) == (41, 39, 6)
    # a buffer larger than the stock leaves 0, never a negative figure
    assert channel_availability(ChannelRules(), [ChannelStock(available=3)], 0, 0, dynamic_buffer=9).available == 0


def test_before_launch_a_sku_sells_only_preorders_against_incoming() -> None:
    june = datetime(2026, 6, 1, tzinfo=UTC)
    stock = [ChannelStock(available=20, incoming=30, expected_at=june, backordered=4)]
    rules = ChannelRules(backorder_limit=100)
    result = channel_availability(rules, stock, 0, 0, preorder=Preorder(limit=10, preordered=3))
    assert [(s.rule, s.units_taken, s.figure_after) for s in result.steps] == [
        (NOT_LAUNCHED, 20, 0),
        (PREORDER, -7, 7),
    ]
    assert (result.available, result.on_hand_part, result.backorderable, result.preorderable) == (7, 0, 7, 7)
    assert result.expected_at == june
    # no preorder limit: nothing sells before launch; the incoming left (26) bounds a large limit
    assert channel_availability(rules, stock, 0, 0, preorder=Preorder(limit=None)).available == 0
    assert channel_availability(rules, stock, 0, 0, preorder=Preorder(limit=1000)).available == 26
