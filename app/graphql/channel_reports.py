"""Channel reports in GraphQL: what each endpoint was told, demand behind the dynamic buffer, drift
against a snapshot from the system of record, and holds that should be gone. Thin."""

from __future__ import annotations

from datetime import datetime

import strawberry

from app.domain.errors import Refused
from app.graphql.context import Context
from app.graphql.types import UserError
from app.services import channel_publication, channel_reconciliation, demand

Info = strawberry.Info[Context, None]


@strawberry.type(description="What a channel's endpoint was last told about a SKU, and what it should show now")
class ChannelPublication:
    channel_code: str
    sku_code: str
    acked_version: int | None = strawberry.field(description="The last version the endpoint acknowledged (2xx)")
    acked_available: int | None
    acked_at: datetime | None
    current_version: int
    current_available: int
    in_sync: bool = strawberry.field(description="False: the endpoint shows something other than the figure now")
    attempts: int = strawberry.field(description="Failed pushes since the last acknowledgement")
    last_error: str | None


@strawberry.type(description="Demand and lag behind a channel's dynamic buffer for one SKU")
class ChannelDemand:
    sku_code: str
    channel_code: str
    velocity_per_hour: float = strawberry.field(description="Units per hour sold over every channel (EWMA)")
    channel_velocity_per_hour: float = strawberry.field(description="Units per hour sold on this channel (EWMA)")
    configured_lag_seconds: float | None
    measured_lag_seconds: float | None = strawberry.field(description="From push -> acknowledgement samples")
    lag_seconds: float = strawberry.field(description="What the buffer plans for: the longer of the two")
    target: int = strawberry.field(description="clamp(ceil(velocity x lag x factor), min, max) now")
    applied: int = strawberry.field(description="The buffer in the figure (moves by the band, with hysteresis)")


@strawberry.type(description="A hold that should be gone")
class OrphanedHold:
    kind: str = strawberry.field(
        description="RESERVATION_PAST_EXPIRY, EXTERNAL_HOLD_PAST_EXPIRY or COMMITTED_NOT_SHIPPED"
    )
    id: str
    sku_code: str
    location_code: str
    quantity: int
    since: datetime


@strawberry.input(description="One row of a snapshot from the system of record")
class SnapshotRowInput:
    sku_code: str
    location_code: str
    on_hand: int


@strawberry.type(description="A ledger row that explains drift: its effect was clipped, or it was not applied")
class DriftCause:
    id: strawberry.ID
    source: str
    external_id: str | None
    type: str
    status: str
    occurred_at: datetime
    quantity: int
    on_hand_change: int
    drift: int


@strawberry.type(description="Where our on-hand (as of the snapshot's time) differs from the system of record's")
class StockDrift:
    sku_code: str
    location_code: str
    expected: int = strawberry.field(description="Our on-hand as of the snapshot's time")
    reported: int
    difference: int = strawberry.field(description="reported - expected")
    since: datetime | None = strawberry.field(description="The last count applied here (else the first event)")
    explained_by: list[DriftCause]
    applied: str | None = strawberry.field(description="With apply: the status of the COUNTED event recorded")

    @classmethod
    def of(cls, d: channel_reconciliation.Drift) -> StockDrift:
        return cls(
            sku_code=d.sku_code,
            location_code=d.location_code,
            expected=d.expected,
            reported=d.reported,
            difference=d.difference,
            since=d.since,
            explained_by=[
                DriftCause(
                    id=strawberry.ID(str(c.id)),
                    source=c.source,
                    external_id=c.external_id,
                    type=c.kind,
                    status=c.status,
                    occurred_at=c.occurred_at,
                    quantity=c.quantity,
                    on_hand_change=c.on_hand_change,
                    drift=c.drift,
                )
                for c in d.causes
            ],
            applied=d.applied,
        )


@strawberry.type
class ImportSnapshotPayload:
    rows: int
    matched: int
    drift: list[StockDrift]
    user_errors: list[UserError] = strawberry.field(description="Unknown SKUs or locations (those rows are skipped)")


def _errors(refused: Refused) -> list[UserError]:
    return [UserError.of(e) for e in refused.errors]


@strawberry.type
class ChannelReportQuery:
    @strawberry.field(description="Per SKU: what the channel's endpoint was last told, and what it should show now")
    async def channel_publications(
        self, info: Info, channel_code: str, out_of_sync_only: bool = False
    ) -> list[ChannelPublication]:
        try:
            found = await channel_publication.status(info.context.ctx, channel_code)
        except Refused as r:
            raise ValueError(r.errors[0].message) from None
        return [
            ChannelPublication(
                channel_code=p.channel_code,
                sku_code=p.sku_code,
                acked_version=p.acked_version,
                acked_available=p.acked_available,
                acked_at=p.acked_at,
                current_version=p.current_version,
                current_available=p.current_available,
                in_sync=p.in_sync,
                attempts=p.attempts,
                last_error=p.last_error,
            )
            for p in found
            if not (out_of_sync_only and p.in_sync)
        ]

    @strawberry.field(description="Per SKU: sales velocity, sync lag and the dynamic buffer on a channel")
    async def channel_demand(self, info: Info, channel_code: str, sku_codes: list[str]) -> list[ChannelDemand]:
        try:
            found = await demand.channel_demand(info.context.ctx, channel_code, sku_codes)
        except Refused as r:
            raise ValueError(r.errors[0].message) from None
        return [
            ChannelDemand(
                sku_code=d.sku_code,
                channel_code=d.channel_code,
                velocity_per_hour=d.velocity_per_hour,
                channel_velocity_per_hour=d.channel_velocity_per_hour,
                configured_lag_seconds=d.configured_lag_seconds,
                measured_lag_seconds=d.measured_lag_seconds,
                lag_seconds=d.lag_seconds,
                target=d.target,
                applied=d.applied,
            )
            for d in found
        ]

    @strawberry.field(
        description="Reservations and external holds past expiry, and commitments older than the given days"
    )
    async def orphaned_holds(self, info: Info, committed_older_than_days: int = 7) -> list[OrphanedHold]:
        if committed_older_than_days < 0:
            raise ValueError("committedOlderThanDays must be 0 or more")
        found = await channel_reconciliation.orphaned_holds(info.context.ctx, committed_older_than_days)
        return [
            OrphanedHold(
                kind=o.kind,
                id=o.id,
                sku_code=o.sku_code,
                location_code=o.location_code,
                quantity=o.quantity,
                since=o.since,
            )
            for o in found
        ]


@strawberry.type
class ReconciliationMutation:
    @strawberry.mutation(
        description="Compare a snapshot from the system of record with our positions and report the drift; "
        "with apply, record each drifting row as a COUNTED event at takenAt"
    )
    async def import_snapshot(
        self, info: Info, source: str, taken_at: datetime, input: list[SnapshotRowInput], apply: bool = False
    ) -> ImportSnapshotPayload:
        rows = [channel_reconciliation.SnapshotRow(i.sku_code, i.location_code, i.on_hand) for i in input]
        try:
            report = await channel_reconciliation.compare(info.context.ctx, source, taken_at, rows, apply)
        except Refused as r:
            return ImportSnapshotPayload(rows=len(rows), matched=0, drift=[], user_errors=_errors(r))
        return ImportSnapshotPayload(
            rows=report.rows,
            matched=report.matched,
            drift=[StockDrift.of(d) for d in report.drift],
            user_errors=[UserError.of(e) for e in report.unknown],
        )
