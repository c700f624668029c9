"""The quantities at one (sku, location) and the figures computed from them.

Modelled on Shopify's inventory states so integrators recognise them. `available` and `oversold`
are always computed here, never stored or copied from another system.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Position:
    """What one location holds of one SKU."""

    on_hand: int = 0
    committed: int = 0
    reserved: int = 0
    unavailable: int = 0
    safety_stock: int = 0
    incoming: int = 0

    @property
    def available(self) -> int:
        # May be negative: an oversold location must show how far it is under, not 0.
        return self.on_hand - self.committed - self.reserved - self.unavailable - self.safety_stock

    @property
    def oversold(self) -> int:
        # Claims beyond physical stock; safety stock is a choice, not a claim, so it is left out.
        return max(0, self.committed + self.reserved + self.unavailable - self.on_hand)

    def plus(self, delta: Delta) -> Position:
        return replace(
            self,
            on_hand=self.on_hand + delta.on_hand,
            committed=self.committed + delta.committed,
            reserved=self.reserved + delta.reserved,
            unavailable=self.unavailable + delta.unavailable,
            safety_stock=self.safety_stock + delta.safety_stock,
            incoming=self.incoming + delta.incoming,
        )


@dataclass(frozen=True, slots=True)
class Delta:
    """A change to a Position; every ledger row stores one, so a position is the sum of its ledger."""

    on_hand: int = 0
    committed: int = 0
    reserved: int = 0
    unavailable: int = 0
    safety_stock: int = 0
    incoming: int = 0

    @property
    def is_zero(self) -> bool:
        return self == ZERO

    def plus(self, other: Delta) -> Delta:
        return Delta(
            self.on_hand + other.on_hand,
            self.committed + other.committed,
            self.reserved + other.reserved,
            self.unavailable + other.unavailable,
            self.safety_stock + other.safety_stock,
            self.incoming + other.incoming,
        )


ZERO = Delta()


def sellable_across(positions: list[Position]) -> int:
    """What `reserve` can hold across locations: a location under water does not eat another's stock."""
    return sum(max(0, p.available) for p in positions)
