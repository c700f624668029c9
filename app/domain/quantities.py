"""The quantities at one (sku, location) and the figures computed from them.

Modelled on Shopify's inventory states so integrators recognise them. `available` and `oversold`
are always computed here, never stored or copied from another system.
"""

from __future__ import annotations

from typing import NamedTuple

# Position, Delta and Magnitude are immutable values, made as NamedTuples rather than frozen dataclasses:
# an ingested batch makes several for each of its events while it holds its positions' row locks, and
# a frozen dataclass is made field by field through object.__setattr__ (a Delta of six fields: 1.5 us
# against a NamedTuple's 0.4 us on this machine, bench/README.md "Round h25"). A tuple's own equality
# follows: compare them with values of their own type (a Position equals a Delta of the same figures).


class Position(NamedTuple):
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
        # positional, not dataclasses.replace: an ingested batch calls this for every event, and
        # replace() re-inspects the fields each time
        return Position(
            self.on_hand + delta.on_hand,
            self.committed + delta.committed,
            self.reserved + delta.reserved,
            self.unavailable + delta.unavailable,
            self.safety_stock + delta.safety_stock,
            self.incoming + delta.incoming,
        )


class Delta(NamedTuple):
    """A change to a Position; every ledger row stores one, so a position is the sum of its ledger."""

    on_hand: int = 0
    committed: int = 0
    reserved: int = 0
    unavailable: int = 0
    safety_stock: int = 0
    incoming: int = 0

    @property
    def is_zero(self) -> bool:
        return not any(self)

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


# GraphQL's Int is 32-bit signed: a figure beyond it makes the server drop the whole answer (and with it
# every other SKU asked for), so no event may take a figure there.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


class Magnitude(NamedTuple):
    """What bounds every figure of a SKU that adds positions up (availability, oversold, a channel's
    base and incoming): on hand above 0, claims (committed + reserved + unavailable + safety stock),
    on hand below 0, and incoming, each summed over its positions. Additive, so a change is
    old - before + after."""

    on_hand: int = 0
    claims: int = 0
    incoming: int = 0
    below_zero: int = 0  # units of on hand below 0: an oversold position counts them on top of its claims

    @staticmethod
    def of(p: Position) -> Magnitude:
        return Magnitude(
            max(0, p.on_hand),
            p.committed + p.reserved + p.unavailable + p.safety_stock,
            p.incoming,
            max(0, -p.on_hand),
        )

    def replacing(self, before: Position, after: Position) -> Magnitude:
        old, new = Magnitude.of(before), Magnitude.of(after)
        return Magnitude(
            self.on_hand - old.on_hand + new.on_hand,
            self.claims - old.claims + new.claims,
            self.incoming - old.incoming + new.incoming,
            self.below_zero - old.below_zero + new.below_zero,
        )

    @property
    def excess(self) -> int:
        """How far the largest sum is beyond INT_MAX (0 when every sum fits). Σ max(0, available) <=
        Σ on hand above 0, Σ oversold <= Σ claims + Σ on hand below 0 (oversold is claims - on hand, and
        on hand may be negative: finding F3), and Σ incoming: these bound every sum."""
        return max(0, max(self.on_hand, self.claims + self.below_zero, self.incoming) - INT_MAX)


def excess(p: Position) -> int:
    """How far the position's furthest figure, stored or computed, is outside an Int (0: all fit)."""
    figures = (p.on_hand, p.committed, p.reserved, p.unavailable, p.safety_stock, p.incoming, p.available, p.oversold)
    # max(f - INT_MAX for f) is max(f) - INT_MAX, and max(INT_MIN - f for f) is INT_MIN - min(f): no
    # generators (an ingested batch asks this for every event)
    return max(0, max(figures) - INT_MAX, INT_MIN - min(figures))


def grows_out_of_range(before: int, after: int) -> bool:
    """A change is refused when it takes a figure outside an Int, or further out (a figure stored out
    of range before this rule may still come back)."""
    return after > 0 and after > before
