from __future__ import annotations

from datetime import datetime

import strawberry

from app.graphql.types import InventoryEventType, LocationKind


@strawberry.input
class SkuInput:
    code: str
    name: str
    active: bool | None = None


@strawberry.input
class LocationInput:
    code: str
    name: str
    kind: LocationKind
    latitude: float | None = None
    longitude: float | None = None
    priority: int | None = None
    active: bool | None = None
    count_authority: str | None = strawberry.field(
        default=None, description="Source whose COUNTED events this location trusts (others are FLAGGED)"
    )


@strawberry.input
class InventoryEventInput:
    source: str
    external_id: str
    type: InventoryEventType
    sku_code: str
    location_code: str
    quantity: int
    occurred_at: datetime
    reason: str | None = None
    reference: str | None = None
    to_location_code: str | None = None
    expected_at: datetime | None = None


@strawberry.input
class ReserveLineInput:
    sku_code: str
    quantity: int
    location_code: str | None = None


@strawberry.input
class ReserveInput:
    lines: list[ReserveLineInput]
    idempotency_key: str
    ttl_seconds: int | None = None
    channel_code: str | None = None
    cart_ref: str | None = None
