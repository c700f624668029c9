"""What operators read in the console (/ops): the catalogue, what is wrong now, a SKU's holds. Thin."""

from __future__ import annotations

from datetime import datetime

import strawberry

from app.graphql.context import Context
from app.graphql.ledger_types import InventoryEvent, PageInfo
from app.graphql.queries import BadCursorError, page_size
from app.graphql.types import Sku, StockLevel, decode_cursor, encode_cursor
from app.services import catalog_search, ledger

Info = strawberry.Info[Context, None]


@strawberry.type
class SkuEdge:
    cursor: str
    node: Sku


@strawberry.type(description="SKUs by code")
class SkuConnection:
    edges: list[SkuEdge]
    nodes: list[Sku]
    page_info: PageInfo


@strawberry.type(description="A hold on a SKU that still counts: an active reservation line or external hold")
class ActiveHold:
    kind: str = strawberry.field(description="RESERVATION or EXTERNAL_HOLD")
    id: str = strawberry.field(description="The reservation's id, or source/externalId of an external hold")
    location_code: str
    quantity: int
    backordered: int
    channel_code: str | None
    reference: str | None = strawberry.field(description="The reservation's order or cart; the hold's source")
    created_at: datetime
    expires_at: datetime | None

    @classmethod
    def of(cls, h: catalog_search.ActiveHold) -> ActiveHold:
        return cls(
            kind=h.kind,
            id=h.id,
            location_code=h.location_code,
            quantity=h.quantity,
            backordered=h.backordered,
            channel_code=h.channel_code,
            reference=h.reference,
            created_at=h.created_at,
            expires_at=h.expires_at,
        )


def _after_key(after: str | None, field: str) -> tuple[str, str] | None:
    if after is None:
        return None
    decoded = decode_cursor(after)
    if decoded is None or "\x1f" not in decoded:
        raise BadCursorError(f"after is not a cursor returned by {field}")
    sku, loc = decoded.split("\x1f", 1)
    return sku, loc


@strawberry.type
class OpsQuery:
    @strawberry.field(description="SKUs by code; search matches anywhere in the code or name, ignoring case")
    async def skus(
        self, info: Info, search: str | None = None, first: int | None = None, after: str | None = None
    ) -> SkuConnection:
        last_code = None
        if after is not None:
            last_code = decode_cursor(after)
            if not last_code:
                raise BadCursorError("after is not a cursor returned by skus")
        if search is not None and len(search) > 300:
            raise ValueError("search must be at most 300 characters")
        views, more = await catalog_search.skus_page(info.context.ctx, search, page_size(first), last_code)
        edges = [SkuEdge(cursor=encode_cursor(v.code), node=Sku.of(v)) for v in views]
        return SkuConnection(
            edges=edges,
            nodes=[e.node for e in edges],
            page_info=PageInfo(has_next_page=more, end_cursor=edges[-1].cursor if edges else None),
        )

    @strawberry.field(description="Positions with more claimed than on hand (oversold > 0), by SKU then location")
    async def oversold_positions(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> list[StockLevel]:
        key = _after_key(after, "oversoldPositions")
        views = await catalog_search.oversold_positions(info.context.ctx, page_size(first), key)
        return [StockLevel.of(v) for v in views]

    @strawberry.field(
        description="What the last applied reconciliation snapshot corrected: its COUNTED rows that moved onHand"
    )
    async def snapshot_corrections(self, info: Info, first: int | None = None) -> list[InventoryEvent]:
        return [InventoryEvent.of(e) for e in await ledger.snapshot_corrections(info.context.ctx, page_size(first))]

    @strawberry.field(description="Active reservation lines and external holds on a SKU, soonest expiry first")
    async def active_holds(self, info: Info, sku_code: str) -> list[ActiveHold]:
        return [ActiveHold.of(h) for h in await catalog_search.active_holds(info.context.ctx, sku_code)]
