"""Subscriptions: the current state of what was asked for, then every change (versions increasing)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated

import strawberry
from graphql import GraphQLError

from app.graphql import b2b
from app.graphql.context import Context
from app.graphql.fanout import shared_root
from app.graphql.types import Availability, StockLevel
from app.realtime.limits import LimitExceeded

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
        scope = await b2b.account_scope(info, channel_code, account_code)
        if scope.account_code is not None:  # issue 19: the account's figure, pushed when the channel's moves
            try:
                account_stream = b2b.account_availability_changed(info, sku_codes, channel_code, scope.account_code)
            except LimitExceeded as refused:
                raise _limit_error(refused) from None
            async with aclosing(account_stream) as rows:
                async for row in rows:
                    yield row
            return
        # aclosing: when the client completes, the stream unsubscribes now, not when collected
        try:
            stream = info.context.realtime.availability(sku_codes, channel_code)
        except LimitExceeded as refused:
            raise _limit_error(refused) from None
        async with aclosing(stream) as views:
            async for view in views:
                yield shared_root(view, Availability.of)  # one object per view: see fanout.py

    @strawberry.subscription(
        description="Per-location stock of these SKUs and/or locations (both omitted: changes only)"
    )
    async def stock_level_changed(
        self, info: Info, sku_codes: list[str] | None = None, location_codes: list[str] | None = None
    ) -> AsyncGenerator[StockLevel, None]:
        try:
            stream = info.context.realtime.stock_levels(sku_codes, location_codes)
        except LimitExceeded as refused:
            raise _limit_error(refused) from None
        async with aclosing(stream) as levels:
            async for level in levels:
                yield shared_root(level, StockLevel.of)


def _limit_error(refused: LimitExceeded) -> GraphQLError:
    # its own code (TOO_MANY_CODES) and the setting's name, not the BAD_USER_INPUT of other ValueErrors
    return GraphQLError(str(refused), extensions=refused.extensions())
