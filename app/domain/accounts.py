"""Step 7 of the channel rules: a B2B account's own allocation, applied after the channel's six.

An account is a buyer company under a channel. What it may buy is the channel's figure narrowed by:
- the units other accounts of the channel have ring-fenced and not yet taken (kept for them);
- its own share of the channel's figure (`allocation_percent`), rounded down;
- its own cap on what it holds at once (`allocation_cap`).
Its own ring-fence keeps units from the others; for itself it adds nothing beyond the channel's figure
(a fence is a promise of what others cannot take, not of stock that is not there).

A buyer of the channel without an account sees the channel's figure less every account's open fence.
The account's own holds count against its share and cap the way the channel's own holds count in step 5:
they are added back before the share is taken, and taken off after. Pure arithmetic, as channel_rules.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from app.domain.channel_rules import ChannelFigure, RuleStep
from app.domain.errors import ErrorCode, UserError

ACCOUNT_RING_FENCES = "ACCOUNT_RING_FENCES"  # units other accounts keep
ACCOUNT_PERCENT = "ACCOUNT_PERCENT"
ACCOUNT_CAP = "ACCOUNT_CAP"


@dataclass(frozen=True, slots=True)
class AccountRules:
    ring_fenced_units: int = 0
    allocation_cap: int | None = None
    allocation_percent: float | None = None


def account_rule_errors(rules: AccountRules) -> list[tuple[str, str]]:
    """Every bad value as (field, message), fields named as in `AccountInput`."""
    errors: list[tuple[str, str]] = []
    if rules.ring_fenced_units < 0:
        errors.append(("ringFencedUnits", f"must be 0 or more, got {rules.ring_fenced_units}"))
    if rules.allocation_cap is not None and rules.allocation_cap < 0:
        errors.append(("allocationCap", f"must be 0 or more, got {rules.allocation_cap}"))
    p = rules.allocation_percent
    if p is not None and (not math.isfinite(p) or not 0 <= p <= 100):
        errors.append(("allocationPercent", f"must be a number from 0 to 100, got {p}"))
    return errors


def open_fence(fenced: int, held: int) -> int:
    """What is still kept for an account: its fence less what it already holds (never below 0)."""
    return max(0, fenced - held)


@dataclass(frozen=True, slots=True)
class AccountFigure:
    """The account's figure (`available`) and the steps after the channel's that made it."""

    available: int
    on_hand_part: int  # what a reserve for the account holds from stock; the rest is backordered
    backorderable: int
    steps: tuple[RuleStep, ...]


def account_availability(
    channel: ChannelFigure, rules: AccountRules | None, held: int, fenced_for_others: int
) -> AccountFigure:
    """Step 7: the channel's figure (after its six rules) for one account, or (rules None) for a buyer
    of the channel with no account.

    `held`: units the account holds in active reservations of this SKU (they already left the channel's
    figure). `fenced_for_others`: the open fences of the channel's other accounts (all of them for a
    buyer without an account). Units kept for others come off stock first, then off the backorder part.
    """
    if held < 0 or fenced_for_others < 0:
        raise ValueError(f"held and fenced_for_others must be 0 or more, got {held}, {fenced_for_others}")
    figure = channel.available
    steps: list[RuleStep] = []

    def take(rule: str, new_figure: int) -> None:
        nonlocal figure
        new_figure = max(0, new_figure)
        steps.append(RuleStep(rule=rule, units_taken=figure - new_figure, figure_after=new_figure))
        figure = new_figure

    if fenced_for_others > 0:
        take(ACCOUNT_RING_FENCES, figure - fenced_for_others)
    if rules is not None and rules.allocation_percent is not None:
        # a share of what the channel would show the account if it held nothing yet
        share = math.floor(Fraction(channel.available + held) * Fraction(Decimal(str(rules.allocation_percent))) / 100)
        take(ACCOUNT_PERCENT, min(figure, share - held))
    if rules is not None and rules.allocation_cap is not None:
        take(ACCOUNT_CAP, min(figure, rules.allocation_cap - held))
    on_hand_part = min(figure, channel.on_hand_part)
    return AccountFigure(
        available=figure,
        on_hand_part=on_hand_part,
        backorderable=figure - on_hand_part,
        steps=tuple(steps),
    )


def partial_quantities(wanted: list[int], available: int) -> list[int]:
    """A partial hold: each line's share of what is there, lines in the order given (first come first).

    The sum is min(Σ wanted, available); a line never gets more than it asked for."""
    if available < 0 or any(q < 0 for q in wanted):
        raise ValueError("quantities are 0 or more")
    out: list[int] = []
    left = available
    for q in wanted:
        take = min(q, left)
        out.append(take)
        left -= take
    return out


def b2b_request_errors(channel_code: str | None, account_code: str | None, allow_partial: bool) -> list[UserError]:
    """An account buys through its channel, and a partial hold is within a channel's rules: both need one."""
    errors: list[UserError] = []
    if account_code is not None and channel_code is None:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "accountCode needs its channelCode", ("channelCode",)))
    if allow_partial and channel_code is None:
        errors.append(UserError(ErrorCode.INVALID_INPUT, "allowPartial needs a channelCode", ("allowPartial",)))
    return errors


def b2b_fingerprint(fingerprint: str, account_code: str | None, allow_partial: bool) -> str:
    """A reserve's fingerprint with its account and partial flag (unchanged when neither is given, so
    retries of reservations made before accounts existed still match)."""
    if account_code is None and not allow_partial:
        return fingerprint
    extra = f"{fingerprint}\x1faccount\x1f{account_code or ''}\x1fpartial\x1f{int(allow_partial)}"
    return hashlib.sha256(extra.encode()).hexdigest()
