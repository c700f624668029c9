"""Channels in GraphQL: configure channels, ring-fences and launches, and follow a channel's alerts.
Thin: parse, call one service, map.

External holds are in app/graphql/channel_holds.py; what each endpoint was told, demand, drift and
orphaned holds in app/graphql/channel_reports.py (merged into the same root types in schema.py)."""

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
from app.graphql.types import UserError
from app.services import channels, demand
from app.services.channels import ChannelView

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
