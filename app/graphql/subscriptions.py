"""Subscriptions: the current state of what was asked for, then every change (versions increasing)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry
from graphql import GraphQLError

from app.graphql import b2b
from app.graphql.context import Context
from app.graphql.fanout import shared_root
from app.graphql.types import Availability, StockLevel
from app.realtime.limits import LimitExceeded
from app.realtime.streams import Streams
from app.services.views import AvailabilityView, StockLevelView

Info = strawberry.Info[Context, None]


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Availability of these SKUs (all SKUs if omitted: changes only, no initial state)"
    )
    async def availability_changed(
        self,
        info: Info,
        sku_codes: list[str] | None = None,
        channel_code: str | None = None,
        account_code: Annotated[str | None, strawberry.argument(description="A B2B account of the channel")] = None,
    ) -> AsyncGenerator[Availability, None]:
        # Not a generator itself: it hands over the stream, which yields the GraphQL objects, so a
        # subscriber costs one async generator fewer (memory per idle subscriber, a hop per message).
        # graphql-core closes the stream it got when the client completes (it unsubscribes at once).
        scope = await b2b.account_scope(info, channel_code, account_code)
        try:
            if scope.account_code is not None:  # issue 19: the account's figure, pushed when the channel's moves
                return b2b.account_availability_changed(info, sku_codes, channel_code, scope.account_code)
            # one object per view: see fanout.py
            realtime: Streams = info.context.realtime
            return realtime.availability_as(_availability, sku_codes, channel_code)
        except LimitExceeded as refused:
            raise _limit_error(refused) from None

    @strawberry.subscription(
        description="Per-location stock of these SKUs and/or locations (both omitted: changes only)"
    )
    async def stock_level_changed(
        self, info: Info, sku_codes: list[str] | None = None, location_codes: list[str] | None = None
    ) -> AsyncGenerator[StockLevel, None]:
        try:
            realtime: Streams = info.context.realtime
            return realtime.stock_levels_as(_stock_level, sku_codes, location_codes)
        except LimitExceeded as refused:
            raise _limit_error(refused) from None


def _availability(view: AvailabilityView) -> Availability:
    return shared_root(view, Availability.of)


def _stock_level(level: StockLevelView) -> StockLevel:
    return shared_root(level, StockLevel.of)


def _limit_error(refused: LimitExceeded) -> GraphQLError:
    # its own code (TOO_MANY_CODES) and the setting's name, not the BAD_USER_INPUT of other ValueErrors
    return GraphQLError(str(refused), extensions=refused.extensions())
