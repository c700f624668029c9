"""Subscriptions: the current state of what was asked for, then every change (versions increasing)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import strawberry

from app.graphql.context import Context
from app.graphql.fanout import shared_root
from app.graphql.types import Availability, StockLevel

Info = strawberry.Info[Context, None]


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Availability of these SKUs (all SKUs if omitted: changes only, no initial state)"
    )
    async def availability_changed(
        self, info: Info, sku_codes: list[str] | None = None, channel_code: str | None = None
    ) -> AsyncGenerator[Availability, None]:
        # aclosing: when the client completes, the stream unsubscribes now, not when collected
        async with aclosing(info.context.realtime.availability(sku_codes, channel_code)) as views:
            async for view in views:
                yield shared_root(view, Availability.of)  # one object per view: see fanout.py

    @strawberry.subscription(
        description="Per-location stock of these SKUs and/or locations (both omitted: changes only)"
    )
    async def stock_level_changed(
        self, info: Info, sku_codes: list[str] | None = None, location_codes: list[str] | None = None
    ) -> AsyncGenerator[StockLevel, None]:
        async with aclosing(info.context.realtime.stock_levels(sku_codes, location_codes)) as levels:
            async for level in levels:
                yield shared_root(level, StockLevel.of)
