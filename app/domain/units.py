"""Sell units: a SKU counted in base units may be sold and reported in named packs.

A unit is a name and a size in base units (each = 1, inner = 6, case = 12). Stock is always kept
and held in base units; a unit only converts at the edge: a quantity in cases becomes base units
when it comes in (a case holds exactly `size` units, so nothing is rounded), and a figure in base
units becomes whole packs when it goes out (`floor`: a part case cannot be sold as a case).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

BASE_UNIT = "each"  # every SKU has it, size 1, without defining it
MAX_UNIT_SIZE = 1_000_000
MAX_NAME = 50


@dataclass(frozen=True, slots=True)
class SellUnit:
    name: str
    size: int  # base units in one of these


class UnknownUnit(ValueError):
    """The SKU is not sold in a unit of that name."""

    def __init__(self, sku_code: str, unit: str) -> None:
        super().__init__(f"{sku_code} has no unit {unit!r}")
        self.sku_code = sku_code
        self.unit = unit


class NotWholeBaseUnits(ValueError):
    """A quantity in a unit that does not come to a whole number of base units (0.1 case of 12)."""

    def __init__(self, quantity: Fraction | Decimal | int, unit: SellUnit) -> None:
        super().__init__(f"{quantity} {unit.name} of {unit.size} is not a whole number of base units")


def unit_errors(name: str, size: int) -> list[tuple[str, str]]:
    """What is wrong with a unit definition, as (field, message); empty when it may be stored."""
    errors: list[tuple[str, str]] = []
    if not name.strip() or len(name) > MAX_NAME or name != name.strip():
        errors.append(("name", f"must be 1-{MAX_NAME} characters without surrounding spaces"))
    if name == BASE_UNIT and size != 1:
        errors.append(("size", f"{BASE_UNIT!r} is the base unit: its size is 1"))
    if not 1 <= size <= MAX_UNIT_SIZE:
        errors.append(("size", f"must be from 1 to {MAX_UNIT_SIZE} base units, got {size}"))
    return errors


def find_unit(sku_code: str, units: dict[str, int], name: str | None) -> SellUnit:
    """The unit `name` of a SKU whose units are `units` (name -> size); None or "each" is the base unit.

    Raises UnknownUnit."""
    if name is None or name == BASE_UNIT:
        return SellUnit(BASE_UNIT, 1)
    size = units.get(name)
    if size is None:
        raise UnknownUnit(sku_code, name)
    return SellUnit(name, size)


def to_base(quantity: int | Decimal | Fraction, unit: SellUnit) -> int:
    """`quantity` of `unit` in base units, exactly. Raises NotWholeBaseUnits when it is not whole."""
    exact = Fraction(quantity) * unit.size
    if exact.denominator != 1:
        raise NotWholeBaseUnits(quantity, unit)
    return int(exact)


def in_unit(available: int, unit: SellUnit) -> int:
    """How many whole `unit`s a figure in base units can sell: floor(available / size), never below 0."""
    return max(0, available) // unit.size
