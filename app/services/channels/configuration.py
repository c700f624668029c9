"""A channel's configuration: its rules and locations, and ring-fences (units kept for one channel).

A change moves the channel's version (part of its Availability.version) and queues every affected SKU
for publication.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, delete, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.engine import note_outbox_rows
from app.db.tables import (
    channel_locations,
    channel_publications,
    channels,
    locations,
    outbox,
    ring_fences,
    skus,
    stock_levels,
)
from app.domain import demand as demand_rules
from app.domain.channel_rules import ChannelRules, rule_errors
from app.domain.errors import ErrorCode, Refused, UserError
from app.services import demand
from app.services.channels.figure import rules_of
from app.services.context import Ctx

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
