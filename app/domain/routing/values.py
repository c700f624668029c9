"""What routing takes and gives: strategies, candidates, the order, shipments and the decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple

# The IUGG mean Earth radius; the choice between mean radii moves distances by well under 1 %.
EARTH_RADIUS_KM = 6371.0088

# Contract default for a location that states no priority.
DEFAULT_PRIORITY = 100


class RoutingStrategy(StrEnum):
    PRIORITY = "PRIORITY"  # lower `priority` first
    CLOSEST = "CLOSEST"  # shortest great-circle distance to the destination
    FEWEST_SHIPMENTS = "FEWEST_SHIPMENTS"  # avoid splits; greedy cover when one location can't
    LOWEST_COST = "LOWEST_COST"  # lowest per-location shipping cost setting


DEFAULT_RANKING: tuple[RoutingStrategy, ...] = (
    RoutingStrategy.FEWEST_SHIPMENTS,
    RoutingStrategy.CLOSEST,
    RoutingStrategy.PRIORITY,
)


class Exclusion(StrEnum):
    """Why a location takes no part in routing; checked in this order, the first that applies is given."""

    INACTIVE = "inactive"
    NOT_LINKED = "not linked to the channel"
    AT_CAPACITY = "at daily order capacity"


@dataclass(frozen=True, slots=True)
class GeoPoint:
    latitude: float
    longitude: float

    def __post_init__(self) -> None:
        # A destination out of range would route silently to a meaningless "closest" location.
        if not -90.0 <= self.latitude <= 90.0:
            raise ValueError(f"latitude {self.latitude} is outside -90..90")
        if not -180.0 <= self.longitude <= 180.0:
            raise ValueError(f"longitude {self.longitude} is outside -180..180")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A location that might ship the order, with what it can sell now of each SKU."""

    location_code: str
    active: bool = True
    linked: bool = True  # to the order's channel; True when the order names no channel
    priority: int = DEFAULT_PRIORITY
    latitude: float | None = None
    longitude: float | None = None
    shipping_cost: Decimal | None = None
    daily_capacity: int | None = None  # orders per day; None means unlimited
    orders_today: int = 0
    available: Mapping[str, int] = field(default_factory=dict)  # sku_code -> units available now

    @property
    def exclusion(self) -> Exclusion | None:
        if not self.active:
            return Exclusion.INACTIVE
        if not self.linked:
            return Exclusion.NOT_LINKED
        if self.daily_capacity is not None and self.orders_today >= self.daily_capacity:
            return Exclusion.AT_CAPACITY
        return None


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku_code: str
    quantity: int

    def __post_init__(self) -> None:
        # The caller reports INVALID_QUANTITY before routing; reaching here with one is a bug.
        if self.quantity < 1:
            raise ValueError(f"quantity for {self.sku_code} must be at least 1, got {self.quantity}")


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    lines: tuple[OrderLine, ...]
    destination: GeoPoint | None = None  # the order's coordinates or its postal centroid
    ranking: tuple[RoutingStrategy, ...] | None = None  # None: DEFAULT_RANKING
    allow_split: bool = True


class ShipmentLine(NamedTuple):
    sku_code: str
    quantity: int


class Shortfall(NamedTuple):
    sku_code: str
    missing_quantity: int


@dataclass(frozen=True, slots=True)
class Shipment:
    location_code: str
    lines: tuple[ShipmentLine, ...]

    @property
    def units(self) -> int:
        return sum(line.quantity for line in self.lines)


class CandidateScore(NamedTuple):
    """How the router saw one location when the order arrived, so a merchant can see why it lost.

    A named tuple rather than a frozen dataclass: one is built per location per order (200 and more),
    and a frozen dataclass costs about four times as much to build."""

    location_code: str
    excluded_reason: Exclusion | None
    rank: int | None  # 1 = preferred first; None when excluded
    covers_lines: int  # lines it could ship in full
    covers_units: int  # units of the order it holds
    distance_km: float | None  # None without a destination or without the location's coordinates
    priority: int
    shipping_cost: Decimal | None


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    shipments: tuple[Shipment, ...]
    unserved: tuple[Shortfall, ...]
    candidates: tuple[CandidateScore, ...]
    reason: str

    @property
    def fully_served(self) -> bool:
        return not self.unserved
