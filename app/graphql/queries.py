from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

import strawberry

from app.domain.errors import Refused
from app.graphql import b2b
from app.graphql.context import Context
from app.graphql.ledger_types import InventoryEvent, InventoryEventConnection, InventoryEventEdge, PageInfo
from app.graphql.permissions import acting
from app.graphql.types import (
    Availability,
    LedgerEntryKind,
    Location,
    Reservation,
    StockLevel,
    decode_cursor,
    encode_cursor,
)
from app.services import catalog_read, channels, ledger, queries, reservations

Info = strawberry.Info[Context, None]
DEFAULT_PAGE = 100


class BadCursorError(ValueError):
    """Raised for an `after` value this server did not hand out (extensions.code INVALID_CURSOR)."""

    extensions = {"code": "INVALID_CURSOR"}  # graphql-core copies these onto the GraphQL error


_LEDGER_ID = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes "²"
_MAX_ID = 2**63 - 1  # a BIGINT


def _ledger_cursor(after: str) -> int:
    decoded = decode_cursor(after)
    if decoded is None or not _LEDGER_ID.fullmatch(decoded) or int(decoded) > _MAX_ID:
        raise BadCursorError("after is not a cursor returned by inventoryEvents")
    return int(decoded)


def page_size(first: int | None) -> int:
    if first is None:
        return DEFAULT_PAGE
    if not 1 <= first <= queries.MAX_PAGE:
        raise ValueError(f"first must be between 1 and {queries.MAX_PAGE}")
    return first


@strawberry.type
class Query:
    @strawberry.field(description="Per-location quantities, ordered by SKU code then location code")
    async def stock_levels(
        self,
        info: Info,
        sku_codes: list[str] | None = None,
        location_codes: list[str] | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> list[StockLevel]:
        key: tuple[str, str] | None = None
        if after is not None:
            decoded = decode_cursor(after)
            # a cursor decoding to NUL would reach PostgreSQL, which cannot take it in text
            if decoded is None or "\x1f" not in decoded or "\x00" in decoded:
                raise BadCursorError("after is not a cursor returned by stockLevels")
            sku, loc = decoded.split("\x1f", 1)
            key = (sku, loc)
        views = await queries.stock_levels_page(info.context.ctx, sku_codes, location_codes, page_size(first), key)
        return [StockLevel.of(v) for v in views]

    @strawberry.field(description="What may be sold now, per SKU; unknown SKU codes are left out (ask unknownSkuCodes)")
    async def availability(
        self,
        info: Info,
        sku_codes: list[str],
        channel_code: str | None = None,
        account_code: Annotated[str | None, strawberry.argument(description="A B2B account of the channel")] = None,
        unit: Annotated[str | None, strawberry.argument(description="Count `available` in this sell unit")] = None,
    ) -> list[Availability]:
        if len(sku_codes) > queries.MAX_PAGE:
            raise ValueError(f"at most {queries.MAX_PAGE} skuCodes per call")
        b2b_rows = await b2b.availability(info, sku_codes, channel_code, account_code, unit)
        if b2b_rows is not None:  # an account (a key bound to one always is) or a sell unit: issue 19
            return b2b_rows
        if channel_code is not None:
            try:
                views = await channels.availability(info.context.ctx, channel_code, sku_codes)
            except Refused as r:
                raise ValueError(r.errors[0].message) from None
            return [Availability.of(v) for v in views]
        return [Availability.of(v) for v in await queries.availability(info.context.ctx, sku_codes)]

    @strawberry.field(
        description="The codes among skuCodes that name no SKU, in the order asked: what availability "
        "left out. Ask both in one request: { availability(skuCodes: $s) { … } unknownSkuCodes(skuCodes: $s) }"
    )
    async def unknown_sku_codes(self, info: Info, sku_codes: list[str]) -> list[str]:
        if len(sku_codes) > queries.MAX_PAGE:
            raise ValueError(f"at most {queries.MAX_PAGE} skuCodes per call")
        return await queries.unknown_sku_codes(info.context.ctx, sku_codes)

    @strawberry.field(description="A reservation this key made (an admin key: any); null when there is none")
    async def reservation(self, info: Info, id: strawberry.ID) -> Reservation | None:
        view = await reservations.get(acting(info), str(id))
        return Reservation.of(view) if view else None

    @strawberry.field(description="The reservations this key made for a cart (an admin key: every key's), oldest first")
    async def reservations(self, info: Info, cart_ref: str) -> list[Reservation]:
        return [Reservation.of(v) for v in await reservations.by_cart(acting(info), cart_ref)]

    @strawberry.field(description="The ledger, newest first: every reported event and every movement Stockwire made")
    async def inventory_events(
        self,
        info: Info,
        sku_code: str | None = None,
        location_code: str | None = None,
        source: str | None = None,
        first: int | None = None,
        after: str | None = None,
        types: list[LedgerEntryKind] | None = None,
        reference: str | None = None,
        occurred_from: Annotated[datetime | None, strawberry.argument(description="Inclusive")] = None,
        occurred_before: Annotated[datetime | None, strawberry.argument(description="Exclusive")] = None,
    ) -> InventoryEventConnection:
        after_id = None if after is None else _ledger_cursor(after)
        for name, when in (("occurredFrom", occurred_from), ("occurredBefore", occurred_before)):
            if when is not None and when.tzinfo is None:
                raise ValueError(f"{name} needs a timezone offset (e.g. 2026-01-01T09:00:00Z)")
        where = ledger.LedgerFilter(
            sku_code,
            location_code,
            source,
            tuple(t.value for t in types) if types is not None else None,
            reference,
            occurred_from,
            occurred_before,
        )
        entries, more = await ledger.page(info.context.ctx, where, page_size(first), after_id)
        nodes = [InventoryEvent.of(e) for e in entries]
        edges = [
            InventoryEventEdge(cursor=encode_cursor(str(e.id)), node=n) for e, n in zip(entries, nodes, strict=True)
        ]
        return InventoryEventConnection(
            edges=edges,
            nodes=nodes,
            page_info=PageInfo(has_next_page=more, end_cursor=edges[-1].cursor if edges else None),
        )

    @strawberry.field(description="Locations, by code")
    async def locations(self, info: Info, codes: list[str] | None = None) -> list[Location]:
        return [Location.of(v) for v in await catalog_read.locations(info.context.ctx, codes)]
