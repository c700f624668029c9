"""Demand and sync lag: the buffer a channel needs so that what it shows does not run past zero.

A channel that hears about a change `lag` seconds late keeps selling from the old figure meanwhile; if
the SKU sells at `velocity` units per second, about `velocity x lag` units go in that time. The
dynamic buffer keeps that many back (times a safety `factor`, within `minimum` and `maximum`):

    buffer = clamp(ceil(velocity x lag x factor), minimum, maximum)

Velocity is an exponentially weighted rate: each sale adds its units to a decayed count that halves
every `half_life` seconds, and rate = count / tau with tau = half_life / ln 2 (a steady flow of r units
per second settles at exactly r). The count is stored with the time it was last brought forward, so
keeping it current is one update per sale, and reading it is one multiplication with the clock.

The buffer applied to the figure moves with hysteresis (`settle`): up at once when demand rises by a
band or more (that protects against overselling), down in whole bands when it falls, and not at all
for smaller wobbles, so the figure a marketplace sees does not flap with every sale.

Pure: no database, no clock of its own (callers pass `now`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

# Rule name in the channel's explanation (app.domain.channel_rules): stable, clients may switch on it.
DYNAMIC_BUFFER = "DYNAMIC_BUFFER"

# ceil(2.0000000000000004) must be 2: the product of three floats carries binary noise
_CEIL_SLACK = 1e-9


@dataclass(frozen=True, slots=True)
class DecayedCount:
    """Units sold, each weighted by 2^(-age / half_life), as of `at`."""

    units: float
    at: datetime


def _elapsed(since: datetime, now: datetime) -> float:
    # a clock that went back (another process's) never grows the count
    return max(0.0, (now - since).total_seconds())


def decayed(count: DecayedCount | None, now: datetime, half_life_seconds: float) -> float:
    """The count brought forward to `now` (0 for none)."""
    if count is None:
        return 0.0
    if half_life_seconds <= 0:
        raise ValueError(f"half_life_seconds must be above 0, got {half_life_seconds}")
    return count.units * math.pow(2.0, -_elapsed(count.at, now) / half_life_seconds)


def add_sale(count: DecayedCount | None, units: int, now: datetime, half_life_seconds: float) -> DecayedCount:
    """The count after `units` more were sold at `now` (what the database update does, in SQL)."""
    if units < 0:
        raise ValueError(f"units must be 0 or more, got {units}")
    at = now if count is None else max(count.at, now)
    return DecayedCount(decayed(count, at, half_life_seconds) + units, at)


def rate_per_second(count: DecayedCount | None, now: datetime, half_life_seconds: float) -> float:
    """The exponentially weighted sales rate at `now`, in units per second."""
    tau = half_life_seconds / math.log(2)
    return decayed(count, now, half_life_seconds) / tau


@dataclass(frozen=True, slots=True)
class DynamicBufferRule:
    """A channel's dynamic buffer: `factor` None means the channel has none."""

    factor: float | None = None
    minimum: int = 0
    maximum: int | None = None
    # the applied buffer moves only when the target is this many units away (at least 1)
    band: int = 1


def rule_errors(rule: DynamicBufferRule, sync_lag_seconds: float | None) -> list[tuple[str, str]]:
    """Bad values as (ChannelInput field, message); empty when the rule can be applied."""
    errors: list[tuple[str, str]] = []
    if rule.factor is not None and not (math.isfinite(rule.factor) and 0 <= rule.factor <= 1000):
        errors.append(("dynamicBufferFactor", f"must be a number from 0 to 1000, got {rule.factor}"))
    if rule.minimum < 0:
        errors.append(("dynamicBufferMin", f"must be 0 or more, got {rule.minimum}"))
    if rule.maximum is not None and rule.maximum < rule.minimum:
        errors.append(("dynamicBufferMax", f"must be at least dynamicBufferMin ({rule.minimum}), got {rule.maximum}"))
    if rule.band < 1:
        errors.append(("dynamicBufferBand", f"must be 1 or more, got {rule.band}"))
    if sync_lag_seconds is not None and not (math.isfinite(sync_lag_seconds) and 0 <= sync_lag_seconds <= 86400):
        errors.append(("syncLagSeconds", f"must be from 0 to 86400, got {sync_lag_seconds}"))
    return errors


def buffer_target(velocity_per_second: float, lag_seconds: float, rule: DynamicBufferRule) -> int:
    """`clamp(ceil(velocity x lag x factor), minimum, maximum)`; 0 when the channel has no dynamic buffer."""
    if rule.factor is None:
        return 0
    if velocity_per_second < 0 or lag_seconds < 0:
        raise ValueError(f"velocity and lag must be 0 or more, got {velocity_per_second} and {lag_seconds}")
    raw = math.ceil(velocity_per_second * lag_seconds * rule.factor - _CEIL_SLACK)
    raw = max(rule.minimum, raw)
    return raw if rule.maximum is None else min(rule.maximum, raw)


def settle(applied: int | None, target: int, band: int) -> int:
    """The buffer to apply now, given the one applied so far and the target, with hysteresis.

    - nothing applied yet: the target;
    - the target a band or more above: the target at once (demand rose: protect the stock now);
    - the target a band or more below: down by whole bands, never below the target;
    - otherwise: unchanged.
    Lowering in whole bands makes a slow decay move the figure in steps of at least `band` units,
    and reading it at any intermediate moments gives the same result as reading it once at the end.
    """
    if band < 1:
        raise ValueError(f"band must be 1 or more, got {band}")
    if applied is None or target >= applied + band:
        return target
    if target <= applied - band:
        return applied - band * ((applied - target) // band)
    return applied


def seconds_until_lower(
    count_units: float, applied: int, lag_seconds: float, rule: DynamicBufferRule, half_life_seconds: float
) -> float | None:
    """How long until decay alone lowers the target enough for `settle` to move `applied` down a band.

    `count_units` is the decayed count now. None when decay alone never will (the floor is too close).
    Used to schedule the next look at a buffer instead of scanning every buffer on every tick.
    """
    if rule.factor is None:
        return None
    floor = applied - rule.band  # the target must reach this
    if floor < rule.minimum:
        return None
    tau = half_life_seconds / math.log(2)
    # target(t) = ceil(count x 2^(-t/h) / tau x lag x factor) <= floor  <=>  raw(t) <= floor
    scale = count_units / tau * lag_seconds * rule.factor
    if scale <= floor:
        return 0.0
    if floor <= 0:
        # ceil() of a positive number is never 0: wait until the raw product is negligible
        return half_life_seconds * math.log2(scale / _CEIL_SLACK)
    return half_life_seconds * math.log2(scale / floor)


# --- sync lag -------------------------------------------------------------------------------------

# weight of a new push -> acknowledgement sample in the channel's measured lag
LAG_SAMPLE_WEIGHT = 0.2


def measured_lag(previous: float | None, sample_seconds: float) -> float:
    """The channel's measured lag after one more push -> acknowledgement sample (an EWMA)."""
    sample = max(0.0, sample_seconds)
    if previous is None:
        return sample
    return previous + LAG_SAMPLE_WEIGHT * (sample - previous)


def sync_lag(configured_seconds: float | None, measured_seconds: float | None) -> float:
    """The lag the buffer plans for: the longer of the configured one (channels that poll us) and the
    measured one (channels we push to), so a slow endpoint is never planned as fast."""
    return max(configured_seconds or 0.0, measured_seconds or 0.0)
