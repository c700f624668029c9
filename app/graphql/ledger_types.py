"""GraphQL types of the ledger: its rows, who recorded them, and the pages they come in."""

from __future__ import annotations

from datetime import datetime

import strawberry

from app.domain.events import EventStatus as DomainEventStatus
from app.domain.events import LedgerKind
from app.graphql.types import EventStatus, LedgerEntryKind
from app.services.views import LedgerEntryView


@strawberry.type(description="Who recorded a ledger row: an API key (never its secret), or Stockwire itself")
class LedgerActor:
    key_id: str | None = strawberry.field(
        description="The API key's id; null: Stockwire itself (holds expired by the clock) or a row recorded "
        "before actors were"
    )
    name: str = strawberry.field(description="The key's name, or `system`")
    prefix: str | None = strawberry.field(description="The key's public prefix (sw_<prefix>_...)")


@strawberry.type(description="One ledger row: a reported event or a movement Stockwire made, and what it changed")
class InventoryEvent:
    id: strawberry.ID
    source: str
    external_id: str | None
    type: LedgerEntryKind
    status: EventStatus
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
    drift: int = strawberry.field(description="Units the event asked to remove that were not there (clipped at 0)")
    version: int = strawberry.field(description="The position's version after this row")
    actor_key_id: str | None = strawberry.field(
        description="The API key that recorded this row (reported the event or made the reservation move); "
        "null: Stockwire itself"
    )
    actor: LedgerActor

    @classmethod
    def of(cls, v: LedgerEntryView) -> InventoryEvent:
        return cls(
            id=strawberry.ID(str(v.id)),
            source=v.source,
            external_id=v.external_id,
            type=LedgerKind(v.kind),
            status=DomainEventStatus(v.status),
            sku_code=v.sku_code,
            location_code=v.location_code,
            quantity=v.quantity,
            occurred_at=v.occurred_at,
            received_at=v.received_at,
            reason=v.reason,
            reference=v.reference,
            to_location_code=v.to_location_code,
            expected_at=v.expected_at,
            reservation_id=v.reservation_id,
            on_hand_change=v.on_hand_change,
            committed_change=v.committed_change,
            reserved_change=v.reserved_change,
            unavailable_change=v.unavailable_change,
            safety_stock_change=v.safety_stock_change,
            incoming_change=v.incoming_change,
            drift=v.drift,
            version=v.version,
            actor_key_id=v.actor_key_id,
            actor=LedgerActor(
                key_id=v.actor_key_id,
                name=v.actor_name or ("system" if v.actor_key_id is None else "unknown key"),
                prefix=v.actor_prefix,
            ),
        )


@strawberry.type
class InventoryEventEdge:
    cursor: str
    node: InventoryEvent


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type(description="Ledger rows, newest first")
class InventoryEventConnection:
    edges: list[InventoryEventEdge]
    nodes: list[InventoryEvent]
    page_info: PageInfo
