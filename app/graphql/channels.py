"""Channels in GraphQL: configure channels and ring-fences. Thin: parse, call one service, map."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import datetime
from enum import Enum

import strawberry

from app.domain import channel_rules
from app.domain.errors import Refused
from app.graphql.context import Context
from app.graphql.inputs import given, nulled
from app.graphql.types import EventStatus, UserError
from app.services import channel_external_holds, channel_publication, channel_reconciliation, channels, demand
from app.services.channel_external_holds import HoldAction, HoldStatus
from app.services.channels import ChannelView

strawberry.enum(HoldAction, name="ExternalHoldAction")
strawberry.enum(HoldStatus, name="ExternalHoldStatus")
ExternalHoldAction = HoldAction
ExternalHoldStatus = HoldStatus

Info = strawberry.Info[Context, None]


@strawberry.input(
    description="A channel by code; omitted fields keep their stored value, null clears an optional setting"
)
class ChannelInput:
    code: str
    name: str
    location_codes: list[str] = strawberry.field(description="Every location the channel sells from (the full set)")
    safety_buffer_units: int | None = None
    safety_buffer_percent: float | None = strawberry.UNSET
    allocation_percent: float | None = strawberry.UNSET
    allocation_cap: int | None = strawberry.field(default=strawberry.UNSET, description="null: no cap")
    out_of_stock_threshold: int | None = None
    backorder_limit: int | None = strawberry.field(default=strawberry.UNSET, description="null: no backorders")
    active: bool | None = None
    endpoint_url: str | None = strawberry.field(
        default=strawberry.UNSET, description="Where changed availability is pushed; null: nowhere"
    )
    endpoint_secret: str | None = strawberry.field(
        default=strawberry.UNSET, description="HMAC-SHA256 key for the pushes"
    )
    low_stock_threshold: int | None = strawberry.field(
        default=strawberry.UNSET, description="LOW_STOCK alerts when the channel's figure drops below this; null: none"
    )
    sync_lag_seconds: float | None = strawberry.field(
        default=None,
        description="How late the channel hears of a change (set it for channels that poll); the dynamic buffer "
        "plans for the longer of this and the lag measured from push acknowledgements",
    )
    dynamic_buffer_factor: float | None = strawberry.field(
        default=None,
        description="Turns on the buffer that follows demand: clamp(ceil(velocity x lag x factor), min, max); "
        "0 keeps only dynamicBufferMin",
    )
    dynamic_buffer_min: int | None = None
    dynamic_buffer_max: int | None = None
    dynamic_buffer_band: int | None = strawberry.field(
        default=None, description="Hysteresis: the applied buffer moves only when its target is this many units away"
    )


@strawberry.type
class Channel:
    code: str
    name: str
    active: bool
    location_codes: list[str]
    safety_buffer_units: int
    safety_buffer_percent: float | None
    allocation_percent: float | None
    allocation_cap: int | None
    out_of_stock_threshold: int
    backorder_limit: int | None
    endpoint_url: str | None
    low_stock_threshold: int | None
    version: int
    sync_lag_seconds: float | None
    dynamic_buffer_factor: float | None
    dynamic_buffer_min: int
    dynamic_buffer_max: int | None
    dynamic_buffer_band: int

    @classmethod
    def of(cls, v: ChannelView) -> Channel:
        r = v.rules
        return cls(
            code=v.code,
            name=v.name,
            active=v.active,
            location_codes=list(v.location_codes),
            safety_buffer_units=r.safety_buffer_units,
            safety_buffer_percent=r.safety_buffer_percent,
            allocation_percent=r.allocation_percent,
            allocation_cap=r.allocation_cap,
            out_of_stock_threshold=r.out_of_stock_threshold,
            backorder_limit=r.backorder_limit,
            endpoint_url=v.endpoint_url,
            low_stock_threshold=v.low_stock_threshold,
            version=v.version,
            sync_lag_seconds=v.sync_lag_seconds,
            dynamic_buffer_factor=v.dynamic_buffer.factor,
            dynamic_buffer_min=v.dynamic_buffer.minimum,
            dynamic_buffer_max=v.dynamic_buffer.maximum,
            dynamic_buffer_band=v.dynamic_buffer.band,
        )


@strawberry.type
class UpsertChannelsPayload:
    channels: list[Channel]
    user_errors: list[UserError]


@strawberry.input(description="Units at a location kept for one channel only; 0 removes the fence")
class RingFenceInput:
    sku_code: str
    location_code: str
    units: int


@strawberry.type
class SetRingFencesPayload:
    count: int
    user_errors: list[UserError]


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


@strawberry.enum(description="What happened to a channel's figure for one SKU")
class ChannelAlertKind(Enum):
    OUT_OF_STOCK = channel_rules.OUT_OF_STOCK
    BACK_IN_STOCK = channel_rules.BACK_IN_STOCK
    LOW_STOCK = channel_rules.LOW_STOCK


@strawberry.type(description="An alert for one SKU on one channel: its figure crossed 0 or the low-stock threshold")
class ChannelAlert:
    channel_code: str
    sku_code: str
    kind: ChannelAlertKind
    available: int = strawberry.field(description="The channel's figure now")
    previous: int | None = strawberry.field(description="The figure this subscriber saw before (null: none yet)")
    low_stock_threshold: int | None
    version: int = strawberry.field(description="The Availability.version the alert is about")


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


@strawberry.input(description="A SKU's launch: before launchAt it sells only as preorders, up to preorderLimit")
class SkuLaunchInput:
    sku_code: str
    launch_at: datetime | None = strawberry.field(description="Null: launched (sells from stock)")
    preorder_limit: int | None = strawberry.field(description="Units sellable before launch (null: none)")


@strawberry.type
class SetSkuLaunchesPayload:
    count: int
    user_errors: list[UserError]


def _errors(refused: Refused) -> list[UserError]:
    return [UserError.of(e) for e in refused.errors]


@strawberry.type
class ChannelQuery:
    @strawberry.field(description="Channels by code (all if omitted)")
    async def channels(self, info: Info, codes: list[str] | None = None) -> list[Channel]:
        return [Channel.of(v) for v in await channels.list_channels(info.context.ctx, codes)]

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
class ChannelMutation:
    @strawberry.mutation(description="Create or update channels by code, with their locations and rules")
    async def upsert_channels(self, info: Info, input: list[ChannelInput]) -> UpsertChannelsPayload:
        items = [
            channels.ChannelInput(
                code=i.code,
                name=i.name,
                location_codes=list(i.location_codes),
                safety_buffer_units=i.safety_buffer_units,
                safety_buffer_percent=given(i.safety_buffer_percent),
                allocation_percent=given(i.allocation_percent),
                allocation_cap=given(i.allocation_cap),
                out_of_stock_threshold=i.out_of_stock_threshold,
                backorder_limit=given(i.backorder_limit),
                active=i.active,
                endpoint_url=given(i.endpoint_url),
                endpoint_secret=given(i.endpoint_secret),
                low_stock_threshold=given(i.low_stock_threshold),
                cleared=nulled(i, channels.CLEARABLE),
                sync_lag_seconds=i.sync_lag_seconds,
                dynamic_buffer_factor=i.dynamic_buffer_factor,
                dynamic_buffer_min=i.dynamic_buffer_min,
                dynamic_buffer_max=i.dynamic_buffer_max,
                dynamic_buffer_band=i.dynamic_buffer_band,
            )
            for i in input
        ]
        try:
            views = await channels.upsert_channels(info.context.ctx, items)
        except Refused as r:
            return UpsertChannelsPayload(channels=[], user_errors=_errors(r))
        return UpsertChannelsPayload(channels=[Channel.of(v) for v in views], user_errors=[])

    @strawberry.mutation(
        description="Launch dates and preorder limits: before launch a SKU sells on channels only as preorders "
        "against incoming stock, up to its preorder limit over every channel"
    )
    async def set_sku_launches(self, info: Info, input: list[SkuLaunchInput]) -> SetSkuLaunchesPayload:
        items = [demand.LaunchInput(i.sku_code, i.launch_at, i.preorder_limit) for i in input]
        try:
            count = await demand.set_launches(info.context.ctx, items)
        except Refused as r:
            return SetSkuLaunchesPayload(count=0, user_errors=_errors(r))
        return SetSkuLaunchesPayload(count=count, user_errors=[])

    @strawberry.mutation(description="Keep units for one channel at (SKU, location): invisible to every other channel")
    async def set_ring_fences(self, info: Info, channel_code: str, input: list[RingFenceInput]) -> SetRingFencesPayload:
        fences = [channels.RingFenceInput(i.sku_code, i.location_code, i.units) for i in input]
        try:
            count = await channels.set_ring_fences(info.context.ctx, channel_code, fences)
        except Refused as r:
            return SetRingFencesPayload(count=0, user_errors=_errors(r))
        return SetRingFencesPayload(count=count, user_errors=[])

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


@strawberry.type
class ChannelSubscription:
    @strawberry.subscription(
        description="Alerts for a channel: OUT_OF_STOCK, BACK_IN_STOCK, LOW_STOCK (below lowStockThreshold, "
        "default the channel's). With skuCodes, the current state counts as news first (an SKU already out "
        "of stock is reported at once); without, the first change seen per SKU is compared with nothing. "
        "Follows availabilityChanged, which skips to the latest state: a figure that goes to 0 and back "
        "between two deliveries raises no alert."
    )
    async def channel_alerts(
        self,
        info: Info,
        channel_code: str,
        sku_codes: list[str] | None = None,
        low_stock_threshold: int | None = None,
    ) -> AsyncGenerator[ChannelAlert, None]:
        threshold = low_stock_threshold
        if threshold is not None and threshold < 0:
            raise ValueError("lowStockThreshold must be 0 or more")
        found = await channels.list_channels(info.context.ctx, [channel_code])
        if not found:
            raise ValueError(f"no channel {channel_code!r}")
        if threshold is None:
            threshold = found[0].low_stock_threshold
        seen: dict[str, int] = {}
        async with aclosing(info.context.realtime.availability(sku_codes, channel_code)) as views:
            async for view in views:
                previous = seen.get(view.sku_code)
                seen[view.sku_code] = view.available
                for kind in channel_rules.channel_alerts(previous, view.available, threshold):
                    yield ChannelAlert(
                        channel_code=channel_code,
                        sku_code=view.sku_code,
                        kind=ChannelAlertKind(kind),
                        available=view.available,
                        previous=previous,
                        low_stock_threshold=threshold,
                        version=view.version,
                    )
