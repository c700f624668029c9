"""What one channel may sell of one SKU: the contract's channel rules, applied in its fixed order.

A channel draws on the locations linked to it and narrows what they hold with its own rules: a safety
buffer, an allocation (a share or a cap of the pool), the out-of-stock threshold, and a backorder
allowance against incoming stock. Units ring-fenced for other channels are invisible to it.

Everything here is pure arithmetic on plain values so the API, `reserve` and the tests all agree on one
figure, and so every rule can say how many units it took (`ChannelFigure.steps`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

# Rule names as the API explains them; stable strings because clients may switch on them.
SAFETY_BUFFER_UNITS = "SAFETY_BUFFER_UNITS"
SAFETY_BUFFER_PERCENT = "SAFETY_BUFFER_PERCENT"
ALLOCATION_PERCENT = "ALLOCATION_PERCENT"
ALLOCATION_CAP = "ALLOCATION_CAP"
OWN_RESERVATIONS = "OWN_RESERVATIONS"
OUT_OF_STOCK_THRESHOLD = "OUT_OF_STOCK_THRESHOLD"
BACKORDER = "BACKORDER"
# issue 18: the buffer that follows demand (step 2, after the static buffers) and preorders
DYNAMIC_BUFFER = "DYNAMIC_BUFFER"
NOT_LAUNCHED = "NOT_LAUNCHED"
PREORDER = "PREORDER"


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """A channel's rules; `None` (or 0 for the unit counts) means the rule is not set."""

    safety_buffer_units: int = 0
    safety_buffer_percent: float | None = None
    allocation_percent: float | None = None
    allocation_cap: int | None = None
    out_of_stock_threshold: int = 0
    backorder_limit: int | None = None


def rule_errors(rules: ChannelRules) -> list[tuple[str, str]]:
    """Every bad value in `rules` as (field, message); empty when the rules can be applied.

    Fields are named as in the contract's `ChannelInput` (camelCase), because these messages go
    straight to clients as `userErrors`.
    """
    errors: list[tuple[str, str]] = []
    for field, count in (
        ("safetyBufferUnits", rules.safety_buffer_units),
        ("allocationCap", rules.allocation_cap),
        ("outOfStockThreshold", rules.out_of_stock_threshold),
        ("backorderLimit", rules.backorder_limit),
    ):
        if count is not None and count < 0:
            errors.append((field, f"must be 0 or more, got {count}"))
    for field, percent in (
        ("safetyBufferPercent", rules.safety_buffer_percent),
        ("allocationPercent", rules.allocation_percent),
    ):
        if percent is None:
            continue
        # NaN and infinities compare false both ways, so they need their own check.
        if not math.isfinite(percent):
            errors.append((field, f"must be a number from 0 to 100, got {percent}"))
        elif not 0 <= percent <= 100:
            errors.append((field, f"must be from 0 to 100, got {percent}"))
    return errors


@dataclass(frozen=True, slots=True)
class ChannelStock:
    """One of the channel's active linked locations, as the channel sees it for one SKU.

    The caller passes one row per active location linked to the channel (inactive ones are left out:
    nothing can be held or routed there).
    """

    # The location's `available` (onHand - committed - reserved - unavailable - safetyStock); may be
    # negative when the location is oversold.
    available: int
    # Units expected there (purchase orders, transfers in transit); never below 0.
    incoming: int = 0
    # Units there still ring-fenced for *other* channels and not yet held by them: the owner's own
    # reservations already left `available`, so counting them here too would take them twice. Units
    # ring-fenced for this channel are not passed here: they stay in its pool.
    ring_fenced_for_others: int = 0
    # Earliest expected arrival of this location's incoming units, if known (timezone-aware).
    expected_at: datetime | None = None
    # Of `incoming`, the units already promised as backorders (by any channel, in reservations of any
    # state) and not arrived yet: a unit expected once can be promised once.
    backordered: int = 0

    @property
    def incoming_free(self) -> int:
        return max(0, self.incoming - self.backordered)


@dataclass(frozen=True, slots=True)
class RuleStep:
    """One rule that applied, and what it did to the figure.

    `units_taken` is what the rule removed from the figure; it is negative for BACKORDER, which adds
    units. The figure before a step is always `figure_after + units_taken`.
    """

    rule: str
    units_taken: int
    figure_after: int


@dataclass(frozen=True, slots=True)
class Preorder:
    """A SKU not launched yet: it sells only as preorders, against incoming stock, up to `limit`
    (None: no preorders) less the units already `preordered` (by every channel)."""

    limit: int | None
    preordered: int = 0


@dataclass(frozen=True, slots=True)
class ChannelFigure:
    """What a channel may sell of one SKU, and how the rules got there."""

    available: int  # what may be sold now, never below 0: on_hand_part + backorderable
    on_hand_part: int  # the figure before the backorder allowance: what `reserve` holds from stock
    backorderable: int  # what the backorder allowance added
    expected_at: datetime | None  # earliest expected arrival of incoming units, when backorderable > 0
    pool: int  # Σ over locations of max(0, available - ring-fenced for others)
    base: int  # pool + mine
    mine: int  # units this channel holds in active reservations
    incoming: int  # Σ incoming at the channel's locations not yet promised as backorders
    steps: tuple[RuleStep, ...]
    dynamic_buffer: int = 0  # what the dynamic buffer kept back (step 2, issue 18)
    preorderable: int = 0  # of `backorderable`, what may be sold as preorders before launch


def channel_availability(
    rules: ChannelRules,
    locations: Sequence[ChannelStock],
    mine: int,
    backordered: int,
    dynamic_buffer: int = 0,
    preorder: Preorder | None = None,
) -> ChannelFigure:
    """Apply the contract's channel rules, in its order, for one SKU and one channel.

    `mine`: units this channel holds in active reservations of this SKU at these locations (they have
    already left `available`, so they are added back before the rules share the stock out).
    `backordered`: units this channel has backordered of this SKU that have not arrived yet, whatever
    the state of their reservation (a committed order still waits for them), so its limit is never
    used twice.
    `dynamic_buffer`: units the channel's dynamic buffer keeps back now (app.domain.demand.settle),
    taken in step 2 after the static buffers.
    `preorder`: set while the SKU is not launched: nothing sells from stock, and step 6 offers up to
    the SKU's preorder limit (instead of the channel's backorder limit) against incoming stock.

    Raises ValueError on rules that `rule_errors` rejects or on negative inputs that the quantities
    never take; both are a caller's bug, not a client's mistake.
    """
    problems = rule_errors(rules)
    if problems:
        raise ValueError("invalid channel rules: " + "; ".join(f"{f}: {m}" for f, m in problems))
    if mine < 0 or backordered < 0 or dynamic_buffer < 0:
        raise ValueError(
            f"mine, backordered and dynamic_buffer must be 0 or more: {mine}, {backordered}, {dynamic_buffer}"
        )
    for row in locations:
        if row.incoming < 0 or row.ring_fenced_for_others < 0 or row.backordered < 0:
            raise ValueError(f"incoming, ring_fenced_for_others and backordered must be 0 or more: {row}")

    # Ring-fencing is subtracted location by location and clipped there: pool = Σ max(0, available_i -
    # ring_fenced_for_others_i). The ring-fenced units are physically at that location, so
    #  - this channel can never be shown, or hold, a unit fenced for another channel at any location
    #    (reserve holds at a location, and there only available_i - ring-fenced_i is free for us);
    #  - a fence larger than what a location has (or a negative location) yields 0 there and cannot
    #    eat into other locations' stock, nor drive the pool below 0, as Σmax(0, a) - Σfence could.
    pool = sum(max(0, row.available - row.ring_fenced_for_others) for row in locations)
    # units already promised against incoming stock (by this channel or another) cannot be promised again
    incoming = sum(row.incoming_free for row in locations)

    # 1. The channel's own holds are part of what it shares out, so percentages and caps apply to them.
    base = pool + mine
    figure = base
    steps: list[RuleStep] = []

    def take(rule: str, new_figure: int) -> None:
        # Each step is clipped at 0 for the explanation: a rule cannot take units that are not there.
        # This never changes the result: steps 3-4 are min() with values >= 0 and step 5 clips at 0
        # anyway, so clipping earlier commutes with them (tests check against the literal formula).
        nonlocal figure
        new_figure = max(0, new_figure)
        steps.append(RuleStep(rule=rule, units_taken=figure - new_figure, figure_after=new_figure))
        figure = new_figure

    # 2. Safety buffer: a fixed number of units and/or a share of the base, rounded up (keep more back).
    if rules.safety_buffer_units > 0:
        take(SAFETY_BUFFER_UNITS, figure - rules.safety_buffer_units)
    if rules.safety_buffer_percent is not None:
        take(SAFETY_BUFFER_PERCENT, figure - math.ceil(_share(base, rules.safety_buffer_percent)))
    # 2b. The buffer that follows demand: units likely to sell elsewhere before the channel hears of it.
    if dynamic_buffer > 0:
        take(DYNAMIC_BUFFER, figure - dynamic_buffer)

    # 3-4. Allocation: a share of the base, rounded down (never promise a part unit), and/or a cap.
    if rules.allocation_percent is not None:
        take(ALLOCATION_PERCENT, min(figure, math.floor(_share(base, rules.allocation_percent))))
    if rules.allocation_cap is not None:
        take(ALLOCATION_CAP, min(figure, rules.allocation_cap))

    # 5. What the channel already holds counts against its allowance: it may sell only the rest.
    if mine > 0:
        take(OWN_RESERVATIONS, figure - mine)
    if rules.out_of_stock_threshold > 0:
        take(OUT_OF_STOCK_THRESHOLD, 0 if figure < rules.out_of_stock_threshold else figure)
    if preorder is not None:
        # not launched: stock on hand waits for the launch date, whatever the rules above allow
        take(NOT_LAUNCHED, 0)
    on_hand_part = figure

    # 6. Backorders against incoming: up to the limit less what the channel already backordered. A limit
    # lowered below what is already backordered allows no more; it never takes on-hand units away.
    # Before launch the SKU's preorder limit (shared by every channel) takes the channel's place.
    backorderable = 0
    preorderable = 0
    if preorder is not None:
        if preorder.limit is not None:
            preorderable = backorderable = max(0, min(preorder.limit - preorder.preordered, incoming))
            take(PREORDER, figure + backorderable)
    elif rules.backorder_limit is not None:
        backorderable = max(0, min(rules.backorder_limit - backordered, incoming))
        take(BACKORDER, figure + backorderable)

    expected_at = None
    if backorderable > 0:
        dates = [row.expected_at for row in locations if row.incoming_free > 0 and row.expected_at is not None]
        expected_at = min(dates, default=None)

    return ChannelFigure(
        available=figure,
        on_hand_part=on_hand_part,
        backorderable=backorderable,
        expected_at=expected_at,
        pool=pool,
        base=base,
        mine=mine,
        incoming=incoming,
        steps=tuple(steps),
        dynamic_buffer=dynamic_buffer,
        preorderable=preorderable,
    )


class ExceedsChannelFigure(Exception):
    """A hold asks for more than the channel's figure; the caller reports INSUFFICIENT_STOCK."""

    def __init__(self, requested: int, available: int) -> None:
        super().__init__(f"requested {requested}, the channel may sell {available}")
        self.requested = requested
        self.available = available


def split_hold(figure: ChannelFigure, quantity: int) -> tuple[int, int]:
    """Split a hold of `quantity` under a channel into (units from stock, units as backorder).

    Stock comes first: only units beyond the on-hand part are backordered, as the contract says.
    Raises ExceedsChannelFigure when `quantity` is more than the figure, ValueError when negative.
    """
    if quantity < 0:
        raise ValueError(f"quantity must be 0 or more, got {quantity}")
    if quantity > figure.available:
        raise ExceedsChannelFigure(quantity, figure.available)
    from_stock = min(quantity, figure.on_hand_part)
    return from_stock, quantity - from_stock


def _share(base: int, percent: float) -> Fraction:
    """`base x percent / 100`, exactly: the percent is read as the decimal it was written as."""
    # Decimal(str(x)) reads 33.3 as 33.3, not as the binary float just below it; Fraction keeps the
    # product and the division exact, so ceil/floor see the true value (10 x 33.3% = 3.33 exactly).
    return Fraction(base) * Fraction(Decimal(str(percent))) / 100


# --- alerts ---------------------------------------------------------------------------------------

# Alert kinds, stable strings (webhook bodies and the ChannelAlertKind enum use them).
OUT_OF_STOCK = "OUT_OF_STOCK"
BACK_IN_STOCK = "BACK_IN_STOCK"
LOW_STOCK = "LOW_STOCK"


def channel_alerts(previous: int | None, current: int, low_stock_threshold: int | None) -> tuple[str, ...]:
    """The alerts a move of a channel's figure from `previous` to `current` raises, in a fixed order.

    `previous` is what the receiver last knew (None: nothing yet, so the current state is news):
    - OUT_OF_STOCK when the figure reaches 0 from above 0 (or from nothing known);
    - BACK_IN_STOCK when it leaves 0;
    - LOW_STOCK when it enters 1..threshold-1 from 0, from at or above the threshold, or from nothing
      known (a figure that stays low, or goes lower while above 0, raises nothing new).
    Alerts are about crossings, so repeating the same value never raises one twice.
    """
    if current < 0 or (previous is not None and previous < 0):
        raise ValueError(f"figures are never negative, got {previous} -> {current}")
    if low_stock_threshold is not None and low_stock_threshold < 0:
        raise ValueError(f"low_stock_threshold must be 0 or more, got {low_stock_threshold}")
    if current == 0:
        return () if previous == 0 else (OUT_OF_STOCK,)
    alerts: list[str] = []
    if previous == 0:
        alerts.append(BACK_IN_STOCK)
    low = low_stock_threshold is not None and current < low_stock_threshold
    was_low = low_stock_threshold is not None and previous is not None and 0 < previous < low_stock_threshold
    if low and not was_low:
        alerts.append(LOW_STOCK)
    return tuple(alerts)
