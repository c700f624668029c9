"""External holds in GraphQL: holds placed, converted or released on other platforms. Thin."""

from __future__ import annotations

from datetime import datetime

import strawberry

from app.domain.errors import Refused
from app.graphql.context import Context
from app.graphql.types import EventStatus, UserError
from app.services import channel_external_holds
from app.services.channel_external_holds import HoldAction, HoldStatus

Info = strawberry.Info[Context, None]

strawberry.enum(HoldAction, name="ExternalHoldAction")
strawberry.enum(HoldStatus, name="ExternalHoldStatus")
ExternalHoldAction = HoldAction
ExternalHoldStatus = HoldStatus


@strawberry.input(description="A hold placed, converted to an order, or released on another platform")
class ExternalHoldInput:
    source: str
    external_id: str = strawberry.field(description="The hold's id on that platform; unique per source")
    action: ExternalHoldAction
    sku_code: str | None = strawberry.field(default=None, description="PLACE only")
    location_code: str | None = strawberry.field(default=None, description="PLACE only")
    quantity: int | None = strawberry.field(default=None, description="PLACE only")
    expires_at: datetime | None = strawberry.field(
        default=None, description="PLACE only; default now + the maximum reservation TTL"
    )
    channel_code: str | None = None


@strawberry.type
class ExternalHoldResult:
    index: int
    status: EventStatus = strawberry.field(description="APPLIED, or DUPLICATE when already in that state")
    hold_status: ExternalHoldStatus


@strawberry.type
class RecordExternalHoldsPayload:
    results: list[ExternalHoldResult]
    user_errors: list[UserError]


def _errors(refused: Refused) -> list[UserError]:
    return [UserError.of(e) for e in refused.errors]


@strawberry.type
class ExternalHoldMutation:
    @strawberry.mutation(
        description="Holds from other platforms, by (source, externalId): counted in reserved while ACTIVE. "
        "All-or-nothing; repeating a report is harmless (DUPLICATE)."
    )
    async def record_external_holds(self, info: Info, input: list[ExternalHoldInput]) -> RecordExternalHoldsPayload:
        commands = [
            channel_external_holds.HoldCommand(
                source=i.source,
                external_id=i.external_id,
                action=HoldAction(i.action),
                sku_code=i.sku_code,
                location_code=i.location_code,
                quantity=i.quantity,
                expires_at=i.expires_at,
                channel_code=i.channel_code,
            )
            for i in input
        ]
        try:
            results = await channel_external_holds.record_holds(info.context.ctx, commands)
        except Refused as r:
            return RecordExternalHoldsPayload(results=[], user_errors=_errors(r))
        return RecordExternalHoldsPayload(
            results=[ExternalHoldResult(index=r.index, status=r.status, hold_status=r.hold_status) for r in results],
            user_errors=[],
        )
