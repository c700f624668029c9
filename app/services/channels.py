"""Channels: their rules and locations, ring-fences, the channel figure, and holding under a channel.

The figure itself is computed by the pure `app.domain.channel_rules.channel_availability`; this module
only gathers its inputs in one read (or, for `reserve`, inside the reserving transaction after the
channel's guard row is locked) so the API, `reserve` and the publication all agree on one number.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from dataclasses import replace as dc_replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import stock
from app.db.engine import note_outbox_rows
from app.db.tables import (
    channel_holds,
    channel_locations,
    channel_publications,
    channels,
    counters,
    inventory_events,
    locations,
    outbox,
    reservation_lines,
    reservations,
    ring_fences,
    skus,
    stock_levels,
)
from app.domain import demand as demand_rules
from app.domain.accounts import partial_quantities
from app.domain.channel_rules import (
    ChannelFigure,
    ChannelRules,
    ChannelStock,
    ExceedsChannelFigure,
    Preorder,
    channel_availability,
    rule_errors,
    split_hold,
)
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.reservations import RequestedLine, ReservationStatus, plan_split
from app.services import accounts, demand
from app.services.context import Ctx
from app.services.queries import level_view, levels_query
from app.services.views import AvailabilityView, StockLevelView

MAX_CHANNELS_PER_CALL = 100
_NO_DYNAMIC_BUFFER = demand_rules.DynamicBufferRule()


@dataclass(frozen=True, slots=True)
class ChannelInput:
    code: str
    name: str
    location_codes: list[str]
    safety_buffer_units: int | None = None
    safety_buffer_percent: float | None = None
    allocation_percent: float | None = None
    allocation_cap: int | None = None
    out_of_stock_threshold: int | None = None
    backorder_limit: int | None = None
    active: bool | None = None
    endpoint_url: str | None = None
    endpoint_secret: str | None = None
    low_stock_threshold: int | None = None
    # issue 18: the buffer that follows demand, and the lag of a channel that polls
    sync_lag_seconds: float | None = None
    dynamic_buffer_factor: float | None = None
    dynamic_buffer_min: int | None = None
    dynamic_buffer_max: int | None = None
    dynamic_buffer_band: int | None = None
    # fields given as an explicit null: cleared (None above otherwise means "keep the stored value")
    cleared: frozenset[str] = frozenset()


# the settings a channel may be without; null clears them (the others keep their stored value)
CLEARABLE = frozenset(
    {
        "safety_buffer_percent",
        "allocation_percent",
        "allocation_cap",
        "backorder_limit",
        "endpoint_url",
        "endpoint_secret",
        "low_stock_threshold",
    }
)


@dataclass(frozen=True, slots=True)
class ChannelView:
    code: str
    name: str
    active: bool
    location_codes: tuple[str, ...]
    rules: ChannelRules
    endpoint_url: str | None
    version: int
    updated_at: datetime
    low_stock_threshold: int | None = None
    sync_lag_seconds: float | None = None
    dynamic_buffer: demand_rules.DynamicBufferRule = _NO_DYNAMIC_BUFFER


@dataclass(frozen=True, slots=True)
class RingFenceInput:
    sku_code: str
    location_code: str
    units: int


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


# --- configuration -----------------------------------------------------------------------------


def _input_errors(items: list[ChannelInput]) -> list[UserError]:
    errors: list[UserError] = []
    if len(items) > MAX_CHANNELS_PER_CALL:
        return [UserError(ErrorCode.BATCH_TOO_LARGE, f"at most {MAX_CHANNELS_PER_CALL} channels per call", ("input",))]
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = ("input", str(i))
        if not item.code.strip() or len(item.code) > 100 or item.code != item.code.strip():
            errors.append(UserError(ErrorCode.INVALID_INPUT, "code must be 1-100 characters", (*where, "code")))
        if item.code in seen:
            errors.append(UserError(ErrorCode.INVALID_INPUT, f"{item.code} appears twice", (*where, "code")))
        seen.add(item.code)
        if not item.name.strip() or len(item.name) > 300:
            errors.append(UserError(ErrorCode.INVALID_INPUT, "name must be 1-300 characters", (*where, "name")))
        rules = ChannelRules(
            safety_buffer_units=item.safety_buffer_units or 0,
            safety_buffer_percent=item.safety_buffer_percent,
            allocation_percent=item.allocation_percent,
            allocation_cap=item.allocation_cap,
            out_of_stock_threshold=item.out_of_stock_threshold or 0,
            backorder_limit=item.backorder_limit,
        )
        errors += [UserError(ErrorCode.INVALID_INPUT, msg, (*where, f)) for f, msg in rule_errors(rules)]
        errors += [UserError(ErrorCode.INVALID_INPUT, msg, (*where, f)) for f, msg in _dynamic_errors(item)]  # issue 18
        if item.low_stock_threshold is not None and item.low_stock_threshold < 0:
            errors.append(
                UserError(ErrorCode.INVALID_INPUT, "lowStockThreshold must be 0 or more", (*where, "lowStockThreshold"))
            )
        if item.endpoint_url is not None and not item.endpoint_url.startswith(("http://", "https://")):
            errors.append(UserError(ErrorCode.INVALID_INPUT, "endpointUrl must be http(s)", (*where, "endpointUrl")))
    return errors


async def upsert_channels(ctx: Ctx, items: list[ChannelInput]) -> list[ChannelView]:
    """Create or update channels by code; omitted rule fields keep their stored value.

    `locationCodes` is the complete set of linked locations. Any change bumps the channel's version
    (part of its Availability.version) and queues every affected SKU for publication.
    """
    errors = _input_errors(items)
    if errors:
        raise Refused(errors)
    now = ctx.clock()

    async def work(conn: AsyncConnection) -> list[ChannelView]:
        wanted_locs = {c for item in items for c in item.location_codes}
        loc_ids = {
            r.code: r.id
            for r in await conn.execute(
                select(locations.c.code, locations.c.id).where(locations.c.code.in_(wanted_locs))
            )
        }
        problems = [
            UserError(ErrorCode.UNKNOWN_LOCATION, f"no location {code!r}", ("input", str(i), "locationCodes"))
            for i, item in enumerate(items)
            for code in item.location_codes
            if code not in loc_ids
        ]
        if problems:
            raise Refused(problems)
        existing = {
            r.code: r for r in await conn.execute(select(channels).where(channels.c.code.in_([i.code for i in items])))
        }
        touched_locations: set[int] = set()
        dynamic_changed: set[int] = set()
        dynamic_new: set[str] = set()
        for index, item in enumerate(items):
            old = existing.get(item.code)
            values: dict[str, Any] = {"name": item.name}
            if old is None and item.dynamic_buffer_factor is not None:
                dynamic_new.add(item.code)
            for field in (
                "safety_buffer_units",
                "safety_buffer_percent",
                "allocation_percent",
                "allocation_cap",
                "out_of_stock_threshold",
                "backorder_limit",
                "active",
                "endpoint_url",
                "endpoint_secret",
                "low_stock_threshold",
                *_DYNAMIC_FIELDS,  # issue 18
            ):
                value = getattr(item, field)
                if value is not None:
                    exact = field.endswith(("_percent", "_factor"))
                    values[field] = Decimal(str(value)) if exact else value
                elif field in item.cleared and field in CLEARABLE:
                    values[field] = None
            new_links = {loc_ids[c] for c in item.location_codes}
            url = values.get("endpoint_url", None if old is None else old.endpoint_url)
            secret = values.get("endpoint_secret", None if old is None else old.endpoint_secret)
            if url is not None and not secret:
                # every push is signed: an endpoint without a secret could not tell ours from a forgery
                where = ("input", str(index), "endpointSecret")
                raise Refused([UserError(ErrorCode.INVALID_INPUT, "endpointUrl needs an endpointSecret", where)])
            if old is None:
                result = await conn.execute(
                    insert(channels)
                    .values(**values, code=item.code, version=1, created_at=now, updated_at=now)
                    .returning(channels.c.id)
                )
                channel_id = int(result.scalar_one())
                old_links: set[int] = set()
            else:
                channel_id = old.id
                old_links = {
                    r.location_id
                    for r in await conn.execute(
                        select(channel_locations.c.location_id).where(channel_locations.c.channel_id == channel_id)
                    )
                }
                changed = {k: v for k, v in values.items() if _differs(getattr(old, k), v)}
                if set(changed) & set(_DYNAMIC_FIELDS):
                    dynamic_changed.add(channel_id)  # issue 18
                if changed or new_links != old_links:
                    await conn.execute(
                        update(channels)
                        .where(channels.c.id == channel_id)
                        .values(**changed, version=channels.c.version + 1, updated_at=now)
                    )
                    touched_locations |= old_links | new_links
                if "endpoint_url" in changed:
                    # what the old endpoint acknowledged says nothing about the new one: tell it everything
                    told = channel_publications
                    await conn.execute(delete(told).where(told.c.channel_id == channel_id))
            if new_links != old_links:
                await conn.execute(
                    delete(channel_locations).where(
                        channel_locations.c.channel_id == channel_id,
                        channel_locations.c.location_id.in_(old_links - new_links),
                    )
                )
                if new_links - old_links:
                    await conn.execute(
                        insert(channel_locations),
                        [{"channel_id": channel_id, "location_id": loc} for loc in sorted(new_links - old_links)],
                    )
        # issue 18: a new rule or lag moves the channel's dynamic buffers at once (its version moved above)
        new_ids = await conn.scalars(select(channels.c.id).where(channels.c.code.in_(dynamic_new)))
        if dynamic_changed or dynamic_new:
            await demand.refresh_buffers(conn, now, channel_ids=dynamic_changed | set(new_ids))
        await _publish_locations(conn, touched_locations, now)
        return await _views(conn, [i.code for i in items])

    return await ctx.db.write(work)


_DYNAMIC_FIELDS = (
    "sync_lag_seconds",
    "dynamic_buffer_factor",
    "dynamic_buffer_min",
    "dynamic_buffer_max",
    "dynamic_buffer_band",
)


def _dynamic_errors(item: ChannelInput) -> list[tuple[str, str]]:
    rule = demand_rules.DynamicBufferRule(
        factor=item.dynamic_buffer_factor,
        minimum=item.dynamic_buffer_min or 0,
        maximum=item.dynamic_buffer_max,
        band=1 if item.dynamic_buffer_band is None else item.dynamic_buffer_band,
    )
    return demand_rules.rule_errors(rule, item.sync_lag_seconds)


def _differs(old: Any, new: Any) -> bool:
    if isinstance(new, Decimal) and old is not None:
        return Decimal(old) != new
    return bool(old != new)


async def _publish_locations(conn: AsyncConnection, location_ids: set[int], now: datetime) -> None:
    """Queue every SKU stocked at these locations: its channel figures may have moved."""
    if not location_ids:
        return
    note_outbox_rows()  # claimed at once by the relay
    await conn.execute(
        insert(outbox).from_select(
            ["sku_id", "location_id", "created_at"],
            select(
                stock_levels.c.sku_id,
                stock_levels.c.location_id,
                literal(now, type_=outbox.c.created_at.type),
            ).where(stock_levels.c.location_id.in_(location_ids)),
        )
    )


async def _views(conn: AsyncConnection, codes: list[str] | None) -> list[ChannelView]:
    q = select(channels).order_by(channels.c.code)
    if codes is not None:
        q = q.where(channels.c.code.in_(codes))
    rows = list(await conn.execute(q))
    links: dict[int, list[str]] = defaultdict(list)
    for r in await conn.execute(
        select(channel_locations.c.channel_id, locations.c.code)
        .join(locations, locations.c.id == channel_locations.c.location_id)
        .order_by(locations.c.priority, locations.c.code)
    ):
        links[r.channel_id].append(r.code)
    return [
        ChannelView(
            code=r.code,
            name=r.name,
            active=bool(r.active),
            location_codes=tuple(links[r.id]),
            rules=rules_of(r),
            endpoint_url=r.endpoint_url,
            version=int(r.version),
            updated_at=r.updated_at,
            low_stock_threshold=None if r.low_stock_threshold is None else int(r.low_stock_threshold),
            sync_lag_seconds=r.sync_lag_seconds,
            dynamic_buffer=demand.rule_of(r),
        )
        for r in rows
    ]


async def list_channels(ctx: Ctx, codes: list[str] | None) -> list[ChannelView]:
    async with ctx.db.read() as conn:
        return await _views(conn, codes)


async def set_ring_fences(ctx: Ctx, channel_code: str, fences: list[RingFenceInput]) -> int:
    """Set the units kept for one channel at (SKU, location); 0 removes the fence. Returns how many set.

    A fence changes what every *other* channel sees, so every channel's version moves.
    """
    errors = [
        UserError(ErrorCode.INVALID_QUANTITY, "units must be 0 or more", ("input", str(i), "units"))
        for i, f in enumerate(fences)
        if f.units < 0
    ]
    if errors:
        raise Refused(errors)
    now = ctx.clock()

    async def work(conn: AsyncConnection) -> int:
        channel_id = await conn.scalar(select(channels.c.id).where(channels.c.code == channel_code))
        if channel_id is None:
            raise Refused([UserError(ErrorCode.UNKNOWN_CHANNEL, f"no channel {channel_code!r}", ("channelCode",))])
        sku_ids = {
            r.code: r.id
            for r in await conn.execute(
                select(skus.c.code, skus.c.id).where(skus.c.code.in_({f.sku_code for f in fences}))
            )
        }
        loc_ids = {
            r.code: r.id
            for r in await conn.execute(
                select(locations.c.code, locations.c.id).where(locations.c.code.in_({f.location_code for f in fences}))
            )
        }
        problems: list[UserError] = []
        for i, f in enumerate(fences):
            if f.sku_code not in sku_ids:
                problems.append(
                    UserError(ErrorCode.UNKNOWN_SKU, f"no SKU {f.sku_code!r}", ("input", str(i), "skuCode"))
                )
            if f.location_code not in loc_ids:
                problems.append(
                    UserError(
                        ErrorCode.UNKNOWN_LOCATION,
                        f"no location {f.location_code!r}",
                        ("input", str(i), "locationCode"),
                    )
                )
        if problems:
            raise Refused(problems)
        for f in fences:
            key = and_(
                ring_fences.c.channel_id == channel_id,
                ring_fences.c.sku_id == sku_ids[f.sku_code],
                ring_fences.c.location_id == loc_ids[f.location_code],
            )
            await conn.execute(delete(ring_fences).where(key))
            if f.units > 0:
                await conn.execute(
                    insert(ring_fences).values(
                        channel_id=channel_id,
                        sku_id=sku_ids[f.sku_code],
                        location_id=loc_ids[f.location_code],
                        units=f.units,
                    )
                )
        await conn.execute(update(channels).values(version=channels.c.version + 1, updated_at=now))
        if fences:
            note_outbox_rows()  # claimed at once by the relay
            await conn.execute(
                insert(outbox),
                [
                    {"sku_id": sku_ids[f.sku_code], "location_id": loc_ids[f.location_code], "created_at": now}
                    for f in fences
                ],
            )
        return len(fences)

    return await ctx.db.write(work)


# --- the figure --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Inputs:
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


async def _linked(conn: AsyncConnection, channel_id: int) -> list[Any]:
    return list(
        await conn.execute(
            select(locations.c.id, locations.c.code, locations.c.active)
            .join(channel_locations, channel_locations.c.location_id == locations.c.id)
            .where(channel_locations.c.channel_id == channel_id)
            .order_by(locations.c.priority, locations.c.code)
        )
    )


async def _inputs(conn: AsyncConnection, channel: Any, sku_rows: list[Any], now: datetime) -> dict[int, _Inputs]:
    """The rules' inputs for these SKUs under `channel`, computed from what this transaction sees."""
    sku_ids = [s.id for s in sku_rows]
    if not sku_ids:
        return {}
    linked = await _linked(conn, channel.id)
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
    out: dict[int, _Inputs] = {}
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
        out[sku.id] = _Inputs(
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
    inputs = await _inputs(conn, channel, list(known.values()), now)
    # B2B (issue 19): step 7, the account's allocation (or, for no account, what accounts keep)
    narrowed, account_version = await accounts.narrow(
        conn, channel.id, {k: v.figure for k, v in inputs.items()}, account_code
    )
    inputs = {
        k: dc_replace(v, figure=narrowed[k], version_parts=v.version_parts + account_version)
        for k, v in inputs.items()
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


# --- holding under a channel --------------------------------------------------------------------


@dataclass
class ChannelHold:
    """What `reserve` took under a channel: stock units (reserved) and backordered units, per position."""

    held: dict[stock.Pair, int]
    backordered: dict[stock.Pair, int]
    holds: list[stock.Hold]  # each hold as applied: a position held twice has two ledger rows
    # of `backordered`, units sold as preorders (the SKU not launched yet): counted against the SKU's limit
    preordered: dict[stock.Pair, int] = dataclass_field(default_factory=dict)


async def _lock_guard(conn: AsyncConnection, channel_id: int, sku_id: int) -> None:
    """Take the (channel, SKU) guard row's lock: concurrent reserves under this channel queue here.

    The figure depends on several rows (every location, the channel's own holds), so no single
    conditional UPDATE on a stock row can enforce a cap or a share; the guard row serialises them,
    and the figure is computed only after the lock is held, from committed truth.
    """
    row = {"channel_id": channel_id, "sku_id": sku_id, "reserved": 0, "backordered": 0, "version": 0}
    ins: Any = postgresql.insert(channel_holds) if conn.dialect.name == "postgresql" else sqlite.insert(channel_holds)
    await conn.execute(ins.values(**row).on_conflict_do_nothing())
    await conn.execute(
        update(channel_holds)
        .where(channel_holds.c.channel_id == channel_id, channel_holds.c.sku_id == sku_id)
        .values(version=channel_holds.c.version + 1)
    )


async def _hold_keeping(conn: AsyncConnection, pair: stock.Pair, quantity: int, keep: int, now: datetime) -> int | None:
    """`stock.hold`, but leaving `keep` units (fenced for other channels) untouched at the position."""
    sl = stock_levels
    result = await conn.execute(
        update(sl)
        .where(sl.c.sku_id == pair[0], sl.c.location_id == pair[1], stock.available_sql() >= quantity + keep)
        .values(reserved=sl.c.reserved + quantity, version=sl.c.version + 1, updated_at=now)
        .returning(sl.c.version)
    )
    version = result.scalar_one_or_none()
    return None if version is None else int(version)


async def hold_under_channel(
    conn: AsyncConnection,
    now: datetime,
    channel_code: str,
    lines: list[RequestedLine],
    sku_rows: dict[str, Any],
    loc_rows: dict[str, Any],
    expire: Callable[[AsyncConnection, datetime, list[int]], Awaitable[int]],
    account_code: str | None = None,
    allow_partial: bool = False,
) -> ChannelHold:
    """Hold `lines` under a channel, never more per SKU than the channel's figure. Raises Refused."""
    channel = await channel_row(conn, channel_code)
    if channel is None or not channel.active:
        what = "no channel" if channel is None else "inactive channel"
        raise Refused([UserError(ErrorCode.UNKNOWN_CHANNEL, f"{what} {channel_code!r}", ("channelCode",))])
    linked = {r.id for r in await _linked(conn, channel.id) if r.active}
    by_sku: dict[int, list[RequestedLine]] = defaultdict(list)
    for i, ln in enumerate(lines):
        if ln.location_code is not None and loc_rows[ln.location_code].id not in linked:
            raise Refused(
                [
                    UserError(
                        ErrorCode.UNKNOWN_LOCATION,
                        f"location {ln.location_code!r} does not sell for channel {channel_code!r}",
                        ("lines", str(i), "locationCode"),
                    )
                ]
            )
        by_sku[sku_rows[ln.sku_code].id].append(ln)
    out = ChannelHold(defaultdict(int), defaultdict(int), [])
    # guard rows in SKU order, always before stock rows: two checkouts lock in the same order
    for sku_id in sorted(by_sku):
        await _lock_guard(conn, channel.id, sku_id)
    for sku_id in sorted(by_sku):
        sku_lines = by_sku[sku_id]
        total = sum(ln.quantity for ln in sku_lines)
        sku_full = (await conn.execute(select(skus).where(skus.c.id == sku_id))).one()
        sku = sku_full
        got = (await _inputs(conn, channel, [sku_full], now))[sku_id]
        got = await _for_account(conn, channel.id, sku_id, got, account_code)
        if total > got.figure.available and await expire(conn, now, [sku_id]):
            # holds past their expiry never block a new reservation, even before the sweeper runs
            got = (await _inputs(conn, channel, [sku_full], now))[sku_id]
            got = await _for_account(conn, channel.id, sku_id, got, account_code)
        if allow_partial:
            # B2B (issue 19): hold what the figure allows, in line order, instead of refusing
            sku_lines = _partial(sku_lines, got.figure.available)
            total = sum(ln.quantity for ln in sku_lines)
        try:
            from_stock, _ = split_hold(got.figure, total)
        except ExceedsChannelFigure as exc:
            raise Refused(
                [
                    UserError(
                        ErrorCode.INSUFFICIENT_STOCK,
                        f"{sku.code}: {total} requested, channel {channel_code} may sell {exc.available}",
                        ("lines", sku.code),
                    )
                ]
            ) from exc
        free = dict(got.free)
        unpromised = dict(got.incoming_at)
        stock_left = from_stock
        stock_units = 0
        backorder_units = 0
        for ln in sku_lines:
            q_stock = min(ln.quantity, stock_left)
            stock_left -= q_stock
            q_back = ln.quantity - q_stock
            if ln.location_code is not None:
                loc_id = loc_rows[ln.location_code].id
                plan = [(loc_id, q_stock)] if q_stock else []
                back_plan = [(loc_id, q_back)] if q_back else []
            else:
                plan = plan_split(q_stock, [(loc, free[loc]) for loc, _ in got.free])
                back_plan = plan_split(q_back, [(loc, unpromised[loc]) for loc, _ in got.incoming_at])
            if sum(q for _, q in plan) < q_stock or sum(q for _, q in back_plan) < q_back:
                raise Refused([_short(sku.code, ln, got.figure.available)])
            for loc, q in plan:
                pair = (sku_id, loc)
                version = await _hold_keeping(conn, pair, q, got.fenced.get(loc, 0), now)
                if version is None:
                    raise Refused([_short(sku.code, ln, got.figure.available)])
                free[loc] -= q
                out.held[pair] += q
                out.holds.append((pair, q, version))
                stock_units += q
            for loc, q in back_plan:
                pair = (sku_id, loc)
                # the database refuses a promise beyond the units expected there (any channel's included)
                if not await stock.promise_backorder(conn, pair, q):
                    raise Refused([_short(sku.code, ln, got.figure.available)])
                unpromised[loc] = unpromised.get(loc, 0) - q
                out.backordered[pair] += q
                backorder_units += q
        if got.figure.preorderable:  # issue 18: before launch, backorders are preorders, under the SKU's limit
            if not await demand.take_preorders(conn, sku_id, backorder_units, now):
                raise Refused([_short(sku.code, sku_lines[0], got.figure.available)])
            out.preordered.update({p: q for p, q in out.backordered.items() if p[0] == sku_id})
        limited = not got.figure.preorderable  # preorders count as backorders, but under the SKU's limit
        if not await _count_holds(conn, channel.id, sku_id, stock_units, backorder_units, limited):
            raise Refused(
                [
                    UserError(
                        ErrorCode.INSUFFICIENT_STOCK,
                        f"{sku.code}: {total} requested, channel {channel_code} has used its backorder limit",
                        ("lines", sku.code),
                    )
                ]
            )
    if allow_partial and not (any(out.held.values()) or any(out.backordered.values())):
        nothing = f"channel {channel_code} has nothing to hold"
        raise Refused([UserError(ErrorCode.INSUFFICIENT_STOCK, nothing, ("lines",))])
    return out


async def _for_account(
    conn: AsyncConnection, channel_id: int, sku_id: int, got: _Inputs, account_code: str | None
) -> _Inputs:
    """B2B (issue 19): the inputs with step 7 applied to the figure (the guard row is locked already)."""
    narrowed, _ = await accounts.narrow(conn, channel_id, {sku_id: got.figure}, account_code)
    return dc_replace(got, figure=narrowed[sku_id])


def _partial(lines: list[RequestedLine], available: int) -> list[RequestedLine]:
    shares = partial_quantities([ln.quantity for ln in lines], available)
    return [dc_replace(ln, quantity=q) for ln, q in zip(lines, shares, strict=True)]


async def _count_holds(
    conn: AsyncConnection, channel_id: int, sku_id: int, units: int, backordered: int, limited: bool = True
) -> bool:
    """Add what a reserve took to the channel's counters. With backorders, only while the channel's
    backorders not yet arrived stay within its limit: the database checks it, in the same statement."""
    ch = channel_holds
    stmt = (
        update(ch)
        .where(ch.c.channel_id == channel_id, ch.c.sku_id == sku_id)
        .values(reserved=ch.c.reserved + units, backordered=ch.c.backordered + backordered)
        .returning(ch.c.version)
    )
    if backordered and limited:
        limit = select(channels.c.backorder_limit).where(channels.c.id == channel_id).scalar_subquery()
        stmt = stmt.where(ch.c.backordered + backordered <= func.coalesce(limit, 0))
    return (await conn.execute(stmt)).first() is not None


def _short(sku_code: str, line: RequestedLine, figure: int) -> UserError:
    where = f" at {line.location_code}" if line.location_code else ""
    return UserError(
        ErrorCode.INSUFFICIENT_STOCK,
        f"{sku_code}: {line.quantity} requested{where}, the channel may sell {figure}",
        ("lines", sku_code),
    )


async def release_channel_holds(conn: AsyncConnection, reservation_ids: list[str], committed: bool = False) -> None:
    """Give a channel's counters back when its reservations leave ACTIVE (commit, release, expiry).

    A commit gives back the stock units only: its backordered units are an order waiting for incoming
    stock and count against the channel's backorder limit until they arrive (`stock._cover_backorders`).
    Runs before the stock rows are touched, so every path locks guard rows before stock rows.
    """
    r_, rl = reservations, reservation_lines
    rows = list(
        await conn.execute(
            select(
                channels.c.id.label("channel_id"),
                rl.c.sku_id,
                func.sum(rl.c.quantity).label("units"),
                func.sum(literal(0) if committed else rl.c.backorder_open).label("back"),
            )
            .join(r_, r_.c.id == rl.c.reservation_id)
            .join(channels, channels.c.code == r_.c.channel_code)
            .where(rl.c.reservation_id.in_(reservation_ids))
            .group_by(channels.c.id, rl.c.sku_id)
            .order_by(rl.c.sku_id, channels.c.id)
        )
    )
    for r in rows:
        await conn.execute(
            update(channel_holds)
            .where(channel_holds.c.channel_id == r.channel_id, channel_holds.c.sku_id == r.sku_id)
            .values(
                reserved=channel_holds.c.reserved - int(r.units),
                backordered=channel_holds.c.backordered - int(r.back),
                version=channel_holds.c.version + 1,
            )
        )
