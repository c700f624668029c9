"""Which of the holds queued on one position fit, decided as if they ran one by one in arrival order.

A hot SKU's checkouts are combined into one transaction (app/services/reservations/combining.py):
the position is locked once and this decides, in arrival order, who gets units. Each request is
judged against what is left after every earlier accepted one, exactly as the conditional UPDATE
(`available >= quantity`) would have judged it had it run alone in that order; a refused request takes
nothing, so a later, smaller one may still fit (as it would one by one), and a refusal reports the
units that were available at its turn, which is what the one-by-one refusal says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    # units available when this request's turn came (never below zero: what a refusal reports)
    available: int


def decide(available: int, quantities: Sequence[int]) -> list[Verdict]:
    """One verdict per quantity, in the order given (arrival order). `available` is the position's
    figure under its row lock; quantities are positive (validated before)."""
    verdicts: list[Verdict] = []
    left = available
    for quantity in quantities:
        if quantity <= 0:
            raise ValueError(f"a hold of {quantity} units")
        fits = left >= quantity
        verdicts.append(Verdict(fits, max(0, left)))
        if fits:
            left -= quantity
    return verdicts


def accepted_units(verdicts: Sequence[Verdict], quantities: Sequence[int]) -> int:
    """The units the accepted requests take together (the one UPDATE of the batch)."""
    return sum(q for v, q in zip(verdicts, quantities, strict=True) if v.accepted)
