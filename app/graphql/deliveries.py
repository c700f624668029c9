"""Operators' view of channel publication: the delivery log, and replaying a channel from a version."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry
from strawberry.types import Info

from app.domain.errors import Refused
from app.graphql.types import UserError
from app.services import channel_publication

MAX_DELIVERIES = 500


@strawberry.enum(description="What came of one push to a channel's endpoint")
class DeliveryStatus(Enum):
    DELIVERED = channel_publication.DELIVERED
    FAILED = channel_publication.FAILED


@strawberry.type(description="One push attempt to a channel's endpoint (one batch of SKU figures)")
class ChannelDelivery:
    id: strawberry.ID
    channel_code: str
    attempted_at: datetime
    items: int = strawberry.field(description="SKU figures in the batch")
    min_version: int = strawberry.field(description="The lowest Availability.version in the batch")
    max_version: int = strawberry.field(description="The highest Availability.version in the batch")
    status: DeliveryStatus
    latency_ms: int
    error: str | None = strawberry.field(description="Why it failed: HTTP status or connection error")
    publisher: str = strawberry.field(description="The process that pushed (host:pid): the channel's elected one")


@strawberry.type
class ReplayChannelPayload:
    replayed: int = strawberry.field(description="SKUs the channel's publisher will send again")
    user_errors: list[UserError]


@strawberry.type
class DeliveryQuery:
    @strawberry.field(description="A channel's push attempts, newest first (at most 500)")
    async def channel_deliveries(self, info: Info, channel_code: str, first: int = 50) -> list[ChannelDelivery]:
        if not 1 <= first <= MAX_DELIVERIES:
            raise ValueError(f"first must be between 1 and {MAX_DELIVERIES}")
        try:
            found = await channel_publication.deliveries(info.context.ctx, channel_code, first)
        except Refused as r:
            raise ValueError(r.errors[0].message) from None
        return [
            ChannelDelivery(
                id=strawberry.ID(str(d.id)),
                channel_code=d.channel_code,
                attempted_at=d.attempted_at,
                items=d.items,
                min_version=d.min_version,
                max_version=d.max_version,
                status=DeliveryStatus(d.status),
                latency_ms=d.latency_ms,
                error=d.error,
                publisher=d.publisher,
            )
            for d in found
        ]


@strawberry.type
class DeliveryMutation:
    @strawberry.mutation(
        description="Send a channel's figures again: every SKU acknowledged at fromVersion or later is pushed anew"
    )
    async def replay_channel(self, info: Info, channel_code: str, from_version: int = 0) -> ReplayChannelPayload:
        try:
            replayed = await channel_publication.replay(info.context.ctx, channel_code, from_version)
        except Refused as r:
            return ReplayChannelPayload(replayed=0, user_errors=[UserError.of(e) for e in r.errors])
        return ReplayChannelPayload(replayed=replayed, user_errors=[])
