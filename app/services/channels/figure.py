"""A channel's figure: what it may sell of each SKU now, and how the rules got there.

The figure itself is computed by the pure `app.domain.channel_rules.channel_availability`; this module
only gathers its inputs in one read (or, for `reserve`, inside the reserving transaction after the
channel's guard row is locked) so the API, `reserve` and the publication all agree on one number.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import stock
from app.db.tables import (
    channel_holds,
    channel_locations,
    channels,
    counters,
    inventory_events,
    locations,
    reservation_lines,
    reservations,
    ring_fences,
    skus,
    stock_levels,
)
from app.domain.channel_rules import ChannelFigure, ChannelRules, ChannelStock, Preorder, channel_availability
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.reservations import ReservationStatus
from app.services import accounts, demand
from app.services.context import Ctx
from app.services.queries import level_view, levels_query
from app.services.views import AvailabilityView, StockLevelView


@dataclass(frozen=True, slots=True)
class ChannelAvailabilityView(AvailabilityView):
    """A channel's figure for one SKU, with how the rules got there."""

    figure: ChannelFigure | None = None


def _percent(value: Any) -> float | None:
    # stored as an exact decimal; str() keeps "33.3" as written, which the rules read with Decimal(str(x))
    return None if value is None else float(str(Decimal(value).normalize()))


def rules_of(row: Any) -> ChannelRules:
    return ChannelRules(
        safety_buffer_units=int(row.safety_buffer_units or 0),
        safety_buffer_percent=_percent(row.safety_buffer_percent),
        allocation_percent=_percent(row.allocation_percent),
        allocation_cap=None if row.allocation_cap is None else int(row.allocation_cap),
        out_of_stock_threshold=int(row.out_of_stock_threshold or 0),
        backorder_limit=None if row.backorder_limit is None else int(row.backorder_limit),
    )


@dataclass(frozen=True, slots=True)
class FigureInputs:
    """Everything the rules need for one SKU under one channel, as read in one transaction."""

    figure: ChannelFigure
    # the channel's active locations in priority order: (location_id, units free for this channel)
    free: list[tuple[int, int]]
    # units fenced for other channels per location: a hold there must leave them
    fenced: dict[int, int]
    # active locations with incoming units not promised yet, in priority order: (location_id, those units)
    incoming_at: list[tuple[int, int]]
    levels: list[StockLevelView]
    version_parts: int


async def channel_row(conn: AsyncConnection, code: str) -> Any:
    return (await conn.execute(select(channels).where(channels.c.code == code))).first()


async def linked_locations(conn: AsyncConnection, channel_id: int) -> list[Any]:
    return list(
        await conn.execute(
            select(locations.c.id, locations.c.code, locations.c.active)
            .join(channel_locations, channel_locations.c.location_id == locations.c.id)
            .where(channel_locations.c.channel_id == channel_id)
            .order_by(locations.c.priority, locations.c.code)
        )
    )


async def figure_inputs(
    conn: AsyncConnection, channel: Any, sku_rows: list[Any], now: datetime
) -> dict[int, FigureInputs]:
    """The rules' inputs for these SKUs under `channel`, computed from what this transaction sees."""
    sku_ids = [s.id for s in sku_rows]
    if not sku_ids:
        return {}
    linked = await linked_locations(conn, channel.id)
    active_ids = [r.id for r in linked if r.active]
    order = {loc_id: i for i, loc_id in enumerate(active_ids)}
    levels: dict[int, dict[int, Any]] = defaultdict(dict)
    version_sum: dict[int, int] = defaultdict(int)
    for r in await conn.execute(levels_query().where(stock_levels.c.sku_id.in_(sku_ids))):
        # every position of the SKU counts toward the version, linked or not, so unlinking a location
        # can never bring a version back
        version_sum[r.sku_id] += int(r.version)
        if r.location_id in order and r.version > 0:
            levels[r.sku_id][r.location_id] = r
    # units other channels keep at these locations, less what those channels already hold there
    fenced: dict[tuple[int, int], int] = defaultdict(int)
    if active_ids:
        fences = list(
            await conn.execute(
                select(ring_fences, channels.c.code)
                .join(channels, channels.c.id == ring_fences.c.channel_id)
                .where(
                    ring_fences.c.sku_id.in_(sku_ids),
                    ring_fences.c.location_id.in_(active_ids),
                    ring_fences.c.channel_id != channel.id,
                )
            )
        )
        if fences:
            held = {
                (r.channel_code, r.sku_id, r.location_id): int(r.units)
                for r in await conn.execute(
                    select(
                        reservations.c.channel_code,
                        reservation_lines.c.sku_id,
                        reservation_lines.c.location_id,
                        func.sum(reservation_lines.c.quantity).label("units"),
                    )
                    .join(reservations, reservations.c.id == reservation_lines.c.reservation_id)
                    .where(
                        reservations.c.status == ReservationStatus.ACTIVE.value,
                        reservations.c.channel_code.in_({f.code for f in fences}),
                        reservation_lines.c.sku_id.in_(sku_ids),
                    )
                    .group_by(reservations.c.channel_code, reservation_lines.c.sku_id, reservation_lines.c.location_id)
                )
            }
            for f in fences:
                left = int(f.units) - held.get((f.code, f.sku_id, f.location_id), 0)
                fenced[(f.sku_id, f.location_id)] += max(0, left)
    holds = {
        r.sku_id: r
        for r in await conn.execute(
            select(channel_holds).where(channel_holds.c.channel_id == channel.id, channel_holds.c.sku_id.in_(sku_ids))
        )
    }
    expected: dict[tuple[int, int], datetime] = {}
    if active_ids:
        ie = inventory_events
        for r in await conn.execute(
            select(ie.c.sku_id, ie.c.location_id, func.min(ie.c.expected_at).label("at"))
            .where(
                ie.c.sku_id.in_(sku_ids),
                ie.c.location_id.in_(active_ids),
                ie.c.expected_at.is_not(None),
                ie.c.expected_at >= now,
            )
            .group_by(ie.c.sku_id, ie.c.location_id)
        ):
            expected[(r.sku_id, r.location_id)] = r.at
    rules = rules_of(channel)
    buffers = await demand.applied_buffers(conn, channel.id, sku_ids)  # issue 18: (applied, version) per SKU
    epoch = int(
        await conn.scalar(select(func.coalesce(func.max(counters.c.value), 0)).where(counters.c.name == "locations"))
        or 0
    )
    promised = {  # backorders promised or forgotten move the figure but no position version
        r.name: int(r.value)
        for r in await conn.execute(
            select(counters).where(counters.c.name.in_([stock.promises_counter(s) for s in sku_ids]))
        )
    }
    out: dict[int, FigureInputs] = {}
    for sku in sku_rows:
        here = [levels[sku.id][loc] for loc in active_ids if loc in levels[sku.id]] if sku.active else []
        rows = [
            ChannelStock(
                available=stock.position_of(r).available,
                incoming=int(r.incoming),
                ring_fenced_for_others=fenced.get((sku.id, r.location_id), 0),
                expected_at=expected.get((sku.id, r.location_id)),
                backordered=int(r.backordered),
            )
            for r in here
        ]
        hold_row = holds.get(sku.id)
        mine = int(hold_row.reserved) if hold_row is not None else 0
        backordered = int(hold_row.backordered) if hold_row is not None else 0
        buffer, buffer_version = buffers.get(sku.id, (0, 0))
        figure = channel_availability(rules, rows, mine, backordered, buffer, _preorder(sku, now))
        out[sku.id] = FigureInputs(
            figure=figure,
            free=[
                (r.location_id, max(0, stock.position_of(r).available - fenced.get((sku.id, r.location_id), 0)))
                for r in here
            ],
            fenced={r.location_id: fenced.get((sku.id, r.location_id), 0) for r in here},
            incoming_at=[
                (r.location_id, int(r.incoming) - int(r.backordered))
                for r in here
                if int(r.incoming) > int(r.backordered)
            ],
            levels=[level_view(r) for r in here],
            version_parts=version_sum[sku.id]
            + int(sku.version)
            + epoch
            + int(channel.version)
            + (int(hold_row.version) if hold_row is not None else 0)
            + buffer_version
            + promised.get(stock.promises_counter(sku.id), 0),
        )
    return out


def _preorder(sku: Any, now: datetime) -> Preorder | None:
    """Before its launch date a SKU sells only as preorders (issue 18)."""
    if sku.launch_at is None or sku.launch_at <= now:
        return None
    return Preorder(None if sku.preorder_limit is None else int(sku.preorder_limit), int(sku.preordered))


async def availability_in(
    conn: AsyncConnection, channel_code: str, sku_codes: list[str], now: datetime, account_code: str | None = None
) -> list[ChannelAvailabilityView]:
    """A channel's figure per SKU (for one of its B2B accounts: after step 7); unknown SKU codes are left
    out. Raises Refused for an unknown channel or account."""
    channel = await channel_row(conn, channel_code)
    if channel is None:
        raise Refused([UserError(ErrorCode.UNKNOWN_CHANNEL, f"no channel {channel_code!r}", ("channelCode",))])
    known = {r.code: r for r in await conn.execute(select(skus).where(skus.c.code.in_(sku_codes)))}
    inputs = await figure_inputs(conn, channel, list(known.values()), now)
    # B2B (issue 19): step 7, the account's allocation (or, for no account, what accounts keep)
    narrowed, account_version = await accounts.narrow(
        conn, channel.id, {k: v.figure for k, v in inputs.items()}, account_code
    )
    inputs = {
        k: dc_replace(v, figure=narrowed[k], version_parts=v.version_parts + account_version) for k, v in inputs.items()
    }
    result: list[ChannelAvailabilityView] = []
    for code in sku_codes:
        sku = known.get(code)
        if sku is None:
            continue
        got = inputs[sku.id]
        # an inactive channel sells nothing, but still explains what it would sell
        available = got.figure.available if channel.active else 0
        result.append(
            ChannelAvailabilityView(
                sku_code=code,
                channel_code=channel_code,
                available=available,
                oversold=sum(lv.position.oversold for lv in got.levels),
                version=got.version_parts,
                locations=tuple(got.levels),
                figure=got.figure,
            )
        )
    return result


async def availability(
    ctx: Ctx, channel_code: str, sku_codes: list[str], account_code: str | None = None
) -> list[ChannelAvailabilityView]:
    async with ctx.db.read() as conn:
        return await availability_in(conn, channel_code, sku_codes, ctx.clock(), account_code)
