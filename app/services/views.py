"""Read models returned by the services (and mapped 1:1 by the GraphQL layer)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.domain.quantities import Position
from app.domain.reservations import ReservationStatus


@dataclass(frozen=True, slots=True)
class SkuView:
    code: str
    name: str
    active: bool
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class LocationView:
    code: str
    name: str
    kind: str
    latitude: float | None
    longitude: float | None
    priority: int
    active: bool
    count_authority: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StockLevelView:
    sku_code: str
    location_code: str
    position: Position
    version: int
    updated_at: datetime
    location_active: bool = True

    @property
    def cursor_key(self) -> str:
        return f"{self.sku_code}\x1f{self.location_code}"


@dataclass(frozen=True, slots=True)
class AvailabilityView:
    sku_code: str
    channel_code: str | None
    available: int
    oversold: int
    version: int
    locations: tuple[StockLevelView, ...]


@dataclass(frozen=True, slots=True)
class ReservationLineView:
    sku_code: str
    location_code: str
    quantity: int  # the whole line: units held from stock + `backordered`
    backordered: int = 0  # units promised against incoming stock (under a channel's backorder limit)
    expected_at: datetime | None = None  # the expected arrival the backordered units were promised against
    preordered: int = 0  # of `backordered`, units sold as preorders before the SKU's launch (issue 18)


@dataclass(frozen=True, slots=True)
class ReservationView:
    id: str
    status: ReservationStatus
    expires_at: datetime
    created_at: datetime
    cart_ref: str | None
    order_ref: str | None
    channel_code: str | None
    lines: tuple[ReservationLineView, ...]


@dataclass(frozen=True, slots=True)
class LedgerEntryView:
    id: int
    source: str
    external_id: str | None
    kind: str
    status: str
    sku_code: str
    location_code: str
    quantity: int
    occurred_at: datetime
    received_at: datetime
    reason: str | None
    reference: str | None
    to_location_code: str | None
    expected_at: datetime | None
    reservation_id: str | None
    on_hand_change: int
    committed_change: int
    reserved_change: int
    unavailable_change: int
    safety_stock_change: int
    incoming_change: int
    drift: int
    version: int
    # the API key that recorded the row (None: Stockwire itself, or a row older than actors), and its
    # name and prefix as they are now
    actor_key_id: str | None = None
    actor_name: str | None = None
    actor_prefix: str | None = None
