"""The dynamic buffer applied per (channel, SKU): moved toward its target with hysteresis, reviewed
when decay alone lowers it, and read back for the API (`channel_demand`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.engine import note_outbox_rows
from app.db.tables import channel_sync_lag, channels, dynamic_buffers, outbox, sku_demand, skus
from app.domain import demand
from app.domain.errors import ErrorCode, Refused, UserError
from app.services.context import Ctx
from app.services.demand.velocity import _decayed_counts, half_life_seconds, velocities

# one row reviewed per sweep at most this many; the rest wait for the next pass
REVIEW_BATCH = 200
# a buffer whose decay would lower it sooner than this is looked at again after this long
_MIN_REVIEW = timedelta(seconds=1)


# --- the dynamic buffer ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Channel:
    id: int
    rule: demand.DynamicBufferRule
    lag: float


def rule_of(row: Any) -> demand.DynamicBufferRule:
    factor = row.dynamic_buffer_factor
    return demand.DynamicBufferRule(
        factor=None if factor is None else float(str(Decimal(factor).normalize())),
        minimum=int(row.dynamic_buffer_min or 0),
        maximum=None if row.dynamic_buffer_max is None else int(row.dynamic_buffer_max),
        band=max(1, int(row.dynamic_buffer_band or 1)),
    )


async def _dynamic_channels(conn: AsyncConnection, channel_ids: Iterable[int] | None = None) -> list[_Channel]:
    q = (
        select(channels, channel_sync_lag.c.measured_seconds)
        .outerjoin(channel_sync_lag, channel_sync_lag.c.channel_id == channels.c.id)
        .where(channels.c.dynamic_buffer_factor.is_not(None))
        .order_by(channels.c.id)
    )
    if channel_ids is not None:
        q = q.where(channels.c.id.in_(sorted(set(channel_ids))))
    return [
        _Channel(int(r.id), rule_of(r), demand.sync_lag(r.sync_lag_seconds, r.measured_seconds))
        for r in await conn.execute(q)
    ]


async def refresh_buffers(
    conn: AsyncConnection,
    now: datetime,
    sku_ids: Iterable[int] | None = None,
    channel_ids: Iterable[int] | None = None,
    only: Iterable[tuple[int, int]] | None = None,
) -> int:
    """Move the applied buffer of these SKUs (default: every SKU with demand or a buffer) on these
    channels (default: every channel with a dynamic buffer) toward its target, with hysteresis.
    Returns how many moved."""
    found = await _dynamic_channels(conn, channel_ids)
    if not found:
        return 0
    if only is not None:
        pairs = sorted(set(only))
    else:
        if sku_ids is None:
            known = select(sku_demand.c.sku_id).union(
                select(dynamic_buffers.c.sku_id).where(dynamic_buffers.c.channel_id.in_([c.id for c in found]))
            )
            sku_ids = [int(r[0]) for r in await conn.execute(known)]
        pairs = sorted((c.id, s) for c in found for s in set(sku_ids))
    if not pairs:
        return 0
    by_id = {c.id: c for c in found}
    pairs = [p for p in pairs if p[0] in by_id]
    # rows first (0 applied: nothing kept back yet), then locked in (channel, SKU) order
    ins = postgresql.insert(dynamic_buffers).values(
        [{"channel_id": c, "sku_id": s, "applied": 0, "target": 0, "version": 1, "updated_at": now} for c, s in pairs]
    )
    await conn.execute(ins.on_conflict_do_nothing())
    locked = list(
        await conn.execute(
            select(dynamic_buffers)
            .where(tuple_(dynamic_buffers.c.channel_id, dynamic_buffers.c.sku_id).in_(pairs))
            .order_by(dynamic_buffers.c.channel_id, dynamic_buffers.c.sku_id)
            .with_for_update()
        )
    )
    counts = await _decayed_counts(conn, {s for _, s in pairs}, now)
    h = half_life_seconds()
    tau = h / math.log(2)
    moved: set[int] = set()
    for row in locked:
        ch = by_id[row.channel_id]
        count = counts.get(row.sku_id, 0.0)
        target = demand.buffer_target(count / tau, ch.lag, ch.rule)
        applied = demand.settle(int(row.applied), target, ch.rule.band)
        wait = demand.seconds_until_lower(count, applied, ch.lag, ch.rule, h)
        review_at = None if wait is None else now + max(_MIN_REVIEW, timedelta(seconds=min(wait, 10 * 365 * 86400)))
        values: dict[str, Any] = {"target": target, "review_at": review_at, "updated_at": now}
        if applied != row.applied:
            values |= {"applied": applied, "version": dynamic_buffers.c.version + 1}
            moved.add(row.sku_id)
        elif target == row.target and review_at == row.review_at:
            continue
        await conn.execute(
            update(dynamic_buffers)
            .where(dynamic_buffers.c.channel_id == row.channel_id, dynamic_buffers.c.sku_id == row.sku_id)
            .values(**values)
        )
    if moved:
        # the relay reads every channel's figure of these SKUs and publishes what is news
        note_outbox_rows()
        await conn.execute(
            insert(outbox), [{"sku_id": s, "location_id": None, "created_at": now} for s in sorted(moved)]
        )
    return len(moved)


async def review_due(conn: AsyncConnection, now: datetime) -> int:
    """Lower the buffers whose target decay has brought a band below them (the sweeper calls this).
    Skips rows another process is reviewing; returns how many moved."""
    due = [
        (int(r.channel_id), int(r.sku_id))
        for r in await conn.execute(
            select(dynamic_buffers.c.channel_id, dynamic_buffers.c.sku_id)
            .where(dynamic_buffers.c.review_at <= now)
            .order_by(dynamic_buffers.c.channel_id, dynamic_buffers.c.sku_id)
            .limit(REVIEW_BATCH)
            .with_for_update(skip_locked=True)
        )
    ]
    if not due:
        return 0
    await refresh_buffers(conn, now, only=due)
    return 0  # reviewed rows are scheduled ahead: nothing left for an immediate second pass


async def applied_buffers(conn: AsyncConnection, channel_id: int, sku_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
    """(applied, version) of the dynamic buffer per SKU on this channel."""
    ids = sorted(set(sku_ids))
    if not ids:
        return {}
    db_ = dynamic_buffers
    return {
        int(r.sku_id): (int(r.applied), int(r.version))
        for r in await conn.execute(
            select(db_.c.sku_id, db_.c.applied, db_.c.version).where(
                db_.c.channel_id == channel_id, db_.c.sku_id.in_(ids)
            )
        )
    }


# --- reading, for the API ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemandView:
    sku_code: str
    channel_code: str
    velocity_per_hour: float  # every channel's sales of the SKU
    channel_velocity_per_hour: float  # this channel's own
    configured_lag_seconds: float | None
    measured_lag_seconds: float | None
    lag_seconds: float
    target: int
    applied: int


async def channel_demand(ctx: Ctx, channel_code: str, sku_codes: list[str]) -> list[DemandView]:
    """Per SKU: the velocities, the lags, and the dynamic buffer's target and applied value on a channel."""
    async with ctx.db.read() as conn:
        now = ctx.clock()
        channel = (
            await conn.execute(
                select(channels, channel_sync_lag.c.measured_seconds)
                .outerjoin(channel_sync_lag, channel_sync_lag.c.channel_id == channels.c.id)
                .where(channels.c.code == channel_code)
            )
        ).first()
        if channel is None:
            raise Refused([UserError(ErrorCode.UNKNOWN_CHANNEL, f"no channel {channel_code!r}", ("channelCode",))])
        known = {
            r.code: int(r.id)
            for r in await conn.execute(select(skus.c.code, skus.c.id).where(skus.c.code.in_(sku_codes)))
        }
        total = await velocities(conn, known.values(), now)
        h = half_life_seconds()
        tau = h / math.log(2)
        own = {
            int(r.sku_id): demand.decayed(demand.DecayedCount(float(r.units), r.last_at), now, h) / tau
            for r in await conn.execute(
                select(sku_demand).where(
                    and_(sku_demand.c.sku_id.in_(list(known.values())), sku_demand.c.channel_code == channel_code)
                )
            )
        }
        applied = await applied_buffers(conn, int(channel.id), known.values())
        lag = demand.sync_lag(channel.sync_lag_seconds, channel.measured_seconds)
        rule = rule_of(channel)
        return [
            DemandView(
                sku_code=code,
                channel_code=channel_code,
                velocity_per_hour=total[known[code]] * 3600,
                channel_velocity_per_hour=own.get(known[code], 0.0) * 3600,
                configured_lag_seconds=channel.sync_lag_seconds,
                measured_lag_seconds=channel.measured_seconds,
                lag_seconds=lag,
                target=demand.buffer_target(total[known[code]], lag, rule),
                applied=applied.get(known[code], (0, 0))[0],
            )
            for code in sku_codes
            if code in known
        ]
