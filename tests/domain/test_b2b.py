"""Sell units and the account step (step 7), pure."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pytest

from app.domain.accounts import (
    ACCOUNT_CAP,
    ACCOUNT_PERCENT,
    ACCOUNT_RING_FENCES,
    AccountRules,
    account_availability,
    account_rule_errors,
    open_fence,
    partial_quantities,
)
from app.domain.channel_rules import ChannelRules, ChannelStock, channel_availability, split_hold
from app.domain.units import NotWholeBaseUnits, SellUnit, UnknownUnit, find_unit, in_unit, to_base, unit_errors

CASE = SellUnit("case", 12)
JAN_10 = datetime(2026, 1, 10, tzinfo=UTC)


def test_a_case_is_twelve_base_units_and_back_as_whole_cases() -> None:
    assert to_base(3, CASE) == 36
    assert to_base(-2, CASE) == -24  # an ADJUSTED of minus two cases
    assert in_unit(100, CASE) == 8  # floor(100 / 12): a part case is not sold as a case
    assert in_unit(96, CASE) == 8 and in_unit(95, CASE) == 7
    assert in_unit(-5, CASE) == 0


def test_a_quantity_that_is_not_whole_base_units_is_refused() -> None:
    assert to_base(Decimal("2.5"), CASE) == 30
    assert to_base(Fraction(1, 3), CASE) == 4
    with pytest.raises(NotWholeBaseUnits):
        to_base(Decimal("0.1"), CASE)


def test_units_are_found_by_name_and_each_is_the_base() -> None:
    units = {"inner": 6, "case": 12}
    assert find_unit("SKU-1", units, None) == SellUnit("each", 1)
    assert find_unit("SKU-1", units, "each") == SellUnit("each", 1)
    assert find_unit("SKU-1", units, "inner") == SellUnit("inner", 6)
    with pytest.raises(UnknownUnit):
        find_unit("SKU-1", units, "pallet")


def test_bad_unit_definitions() -> None:
    assert unit_errors("case", 12) == []
    assert [f for f, _ in unit_errors("case", 0)] == ["size"]
    assert [f for f, _ in unit_errors(" case", 12)] == ["name"]
    assert [f for f, _ in unit_errors("each", 6)] == ["size"]


def _channel(available: int, incoming: int = 0, limit: int | None = None, mine: int = 0):  # type: ignore[no-untyped-def]
    rules = ChannelRules(backorder_limit=limit)
    return channel_availability(
        rules, [ChannelStock(available=available, incoming=incoming, expected_at=JAN_10)], mine, 0
    )


def test_other_accounts_ring_fences_come_off_the_figure_then_share_and_cap() -> None:
    channel = _channel(100)
    got = account_availability(
        channel, AccountRules(allocation_percent=25, allocation_cap=20), held=0, fenced_for_others=24
    )
    assert [(s.rule, s.units_taken, s.figure_after) for s in got.steps] == [
        (ACCOUNT_RING_FENCES, 24, 76),
        (ACCOUNT_PERCENT, 51, 25),  # floor(25 % of 100)
        (ACCOUNT_CAP, 5, 20),
    ]
    assert got.available == 20 and got.on_hand_part == 20 and got.backorderable == 0


def test_the_accounts_own_holds_count_against_its_share_and_cap() -> None:
    # the account holds 8 already (they left the channel's figure: 92 remain)
    channel = _channel(92)
    got = account_availability(
        channel, AccountRules(allocation_percent=25, allocation_cap=20), held=8, fenced_for_others=0
    )
    # share floor(25 % of (92 + 8)) = 25, less 8 held = 17; cap 20 - 8 = 12
    assert got.available == 12


def test_an_accounts_own_fence_adds_nothing_and_a_buyer_without_account_loses_every_open_fence() -> None:
    channel = _channel(30)
    assert (
        account_availability(channel, AccountRules(ring_fenced_units=24), held=0, fenced_for_others=0).available == 30
    )
    assert account_availability(channel, None, held=0, fenced_for_others=open_fence(24, 10)).available == 16
    assert open_fence(24, 30) == 0


def test_backorders_stay_behind_stock_after_the_account_step() -> None:
    channel = _channel(8, incoming=48, limit=24)  # 8 on hand + 24 backorderable
    got = account_availability(channel, AccountRules(allocation_cap=20), held=0, fenced_for_others=0)
    assert (got.available, got.on_hand_part, got.backorderable) == (20, 8, 12)


def test_account_rule_errors() -> None:
    assert account_rule_errors(AccountRules(ring_fenced_units=-1, allocation_cap=-1, allocation_percent=101)) == [
        ("ringFencedUnits", "must be 0 or more, got -1"),
        ("allocationCap", "must be 0 or more, got -1"),
        ("allocationPercent", "must be a number from 0 to 100, got 101"),
    ]


def test_a_partial_hold_fills_lines_first_come_first_served() -> None:
    assert partial_quantities([36, 24], 40) == [36, 4]
    assert partial_quantities([36, 24], 100) == [36, 24]
    assert partial_quantities([5], 0) == [0]


def test_the_readme_b2b_example_in_the_domain() -> None:
    """README, B2B worked example: WHOLESALE has 100 on hand at WH-1 and 48 incoming (10 January), a
    backorder limit of 24. ACME ring-fences 24 units, BOLT may take 25 % with a cap of 60 units."""
    channel = _channel(100, incoming=48, limit=24)
    assert channel.available == 124
    acme = account_availability(channel, AccountRules(ring_fenced_units=24), held=0, fenced_for_others=0)
    bolt = account_availability(
        channel, AccountRules(allocation_percent=25, allocation_cap=60), held=0, fenced_for_others=24
    )
    assert acme.available == 124 and in_unit(acme.on_hand_part, CASE) == 8
    assert bolt.available == 31 and in_unit(bolt.available, CASE) == 2  # 124 - 24 = 100 -> floor(25 % of 124) = 31
    # ACME asks 12 cases (144) with allowPartial: it holds 100 now and backorders 24, expected 10 January
    (take,) = partial_quantities([to_base(12, CASE)], acme.available)
    assert take == 124
    from dataclasses import replace

    assert split_hold(replace(channel, available=acme.available, on_hand_part=acme.on_hand_part), take) == (100, 24)
