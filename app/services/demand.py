"""Demand, sync lag and the dynamic buffer, kept current where they change (app.domain.demand does the math).

- Sales velocity: `note_sales` adds a sale's units to `sku_demand` (one upsert, in the sale's own
  transaction: reserve, routeAndReserve, SOLD and ORDER_PLACED events). A reservation counts once, when
  it is made: its commit is the same demand, and a release does not undo that units left the figure
  for a while. Readers decay the stored count with the clock, so nothing scans the ledger.
- Sync lag: `note_push` turns a push and its acknowledgement into a sample (from the first attempt of a
  push that failed, so an endpoint that was down counts as slow), kept as an EWMA per channel.
- The dynamic buffer applied per (channel, SKU) lives in `dynamic_buffers`. It moves with hysteresis
  (`demand.settle`) in the transactions that change its inputs (a sale, a lag sample, a rule change),
  and when decay alone lowers its target (`review_due`, run by the expiry sweeper at each row's
  `review_at`). Each move bumps the row's version (part of the channel's Availability.version) and
  queues the SKU for publication, so the figure never changes without its version and its push.

Lock order: these rows are taken after any stock rows of the transaction, in (channel, SKU) order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg
from app.db.engine import note_outbox_rows
from app.db.tables import (
    channel_sync_lag,
    channels,
    dynamic_buffers,
    outbox,
    reservation_lines,
    reservations,
    sku_demand,
    skus,
)
from app.domain import demand
from app.domain.errors import ErrorCode, Refused, UserError
from app.services.context import Ctx
from app.settings import Settings

# one row reviewed per sweep at most this many; the rest wait for the next pass
REVIEW_BATCH = 200
# a buffer whose decay would lower it sooner than this is looked at again after this long
_MIN_REVIEW = timedelta(seconds=1)

_half_life: float | None = None


def half_life_seconds() -> float:
    """`STOCKWIRE_VELOCITY_HALF_LIFE_SECONDS` (default one hour): how fast a sale stops counting."""
    global _half_life
    if _half_life is None:
        _half_life = Settings().velocity_half_life_seconds
    return _half_life


# --- velocity ----------------------------------------------------------------------------------------


# The stored count decays from last_at to now (2^(-age / half-life); a clock that went back, another
# process's, never grows it), then the new units are added: demand.add_sale, in one prepared statement on
# the checkout's path (built with SQLAlchemy it was compiled again on every reserve: 40 % of the server's
# CPU per reserve in bench/reserve.py's profile)
_NOTE_SALES = """
INSERT INTO sku_demand AS d (sku_id, channel_code, units, last_at)
SELECT s, c, u, $4 FROM unnest($1::int[], $2::varchar[], $3::float8[]) AS t(s, c, u)
ON CONFLICT (sku_id, channel_code) DO UPDATE SET
  units = d.units * power(2.0, -greatest(0.0, extract(epoch FROM excluded.last_at - d.last_at)) / $5::float8)
          + excluded.units,
  last_at = greatest(d.last_at, excluded.last_at)
"""


async def note_sales(conn: AsyncConnection, now: datetime, sales: Mapping[tuple[int, str], int]) -> None:
    """Add units sold per (SKU id, channel code or '') to the velocities, and move the dynamic buffers of
    those SKUs. Call it last in the sale's transaction (after its stock rows)."""
    rows = sorted((key, units) for key, units in sales.items() if units > 0)
    if not rows:
        return
    (sku_ids, codes), units = zip(*(key for key, _ in rows), strict=True), [float(q) for _, q in rows]
    await pg.execute(
        await pg.driver(conn), _NOTE_SALES, list(sku_ids), list(codes), units, pg.naive(now), half_life_seconds()
    )
    await refresh_buffers(conn, now, sku_ids={s for (s, _), _ in rows})


async def velocities(conn: AsyncConnection, sku_ids: Iterable[int], now: datetime) -> dict[int, float]:
    """Units per second per SKU, over every channel (what runs out of the shared stock), decayed to now."""
    ids = sorted(set(sku_ids))
    if not ids:
        return {}
    h = half_life_seconds()
    counts: dict[int, float] = defaultdict(float)
    for r in await conn.execute(select(sku_demand).where(sku_demand.c.sku_id.in_(ids))):
        counts[r.sku_id] += demand.decayed(demand.DecayedCount(float(r.units), r.last_at), now, h)
    tau = h / math.log(2)
    return {s: counts[s] / tau for s in ids}


async def _decayed_counts(conn: AsyncConnection, sku_ids: Iterable[int], now: datetime) -> dict[int, float]:
    tau = half_life_seconds() / math.log(2)
    return {s: v * tau for s, v in (await velocities(conn, sku_ids, now)).items()}


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


# --- sync lag ----------------------------------------------------------------------------------------


async def note_push(ctx: Ctx, channel_id: int, sent_at: datetime, acknowledged: bool) -> None:
    """A push to a channel's endpoint went out at `sent_at` and was acknowledged (2xx) or not, now.

    An acknowledgement is a sample from the first unacknowledged attempt: while an endpoint refuses,
    the channel shows old figures, which is exactly the lag the buffer must cover."""

    async def work(conn: AsyncConnection) -> None:
        now = ctx.clock()
        ins = postgresql.insert(channel_sync_lag).values(channel_id=channel_id, samples=0, waiting_since=sent_at)
        await conn.execute(ins.on_conflict_do_nothing())
        row = (
            await conn.execute(
                select(channel_sync_lag).where(channel_sync_lag.c.channel_id == channel_id).with_for_update()
            )
        ).one()
        waiting = row.waiting_since or sent_at
        if not acknowledged:
            if row.waiting_since is None:
                await conn.execute(
                    update(channel_sync_lag)
                    .where(channel_sync_lag.c.channel_id == channel_id)
                    .values(waiting_since=sent_at)
                )
            return
        sample = (now - min(waiting, sent_at)).total_seconds()
        lag = demand.measured_lag(row.measured_seconds, sample)
        await conn.execute(
            update(channel_sync_lag)
            .where(channel_sync_lag.c.channel_id == channel_id)
            .values(measured_seconds=lag, samples=channel_sync_lag.c.samples + 1, waiting_since=None, measured_at=now)
        )
        await refresh_buffers(conn, now, channel_ids=[channel_id])

    await ctx.db.write(work, notify=True)


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


# --- preorders ---------------------------------------------------------------------------------------


async def take_preorders(conn: AsyncConnection, sku_id: int, units: int, now: datetime) -> bool:
    """Count `units` sold as preorders against the SKU's limit, only while it is not launched and the
    limit allows them: one conditional UPDATE, so concurrent checkouts on any channels cannot sell
    more preorders than the limit. Bumps the SKU's version (every channel's figure moves)."""
    if units <= 0:
        return True
    result = await conn.execute(
        update(skus)
        .where(
            skus.c.id == sku_id,
            skus.c.launch_at > now,
            skus.c.preorder_limit.is_not(None),
            skus.c.preordered + units <= skus.c.preorder_limit,
        )
        .values(preordered=skus.c.preordered + units, version=skus.c.version + 1)
        .returning(skus.c.id)
    )
    return result.first() is not None


async def give_back_preorders(conn: AsyncConnection, reservation_ids: list[str]) -> None:
    """Preorders of reservations released or expired no longer count against their SKU's limit."""
    rl = reservation_lines
    given = [
        (int(r.sku_id), int(r.units))
        for r in await conn.execute(
            select(rl.c.sku_id, func.sum(rl.c.preordered).label("units"))
            .where(rl.c.reservation_id.in_(reservation_ids), rl.c.preordered > 0)
            .group_by(rl.c.sku_id)
            .order_by(rl.c.sku_id)
        )
    ]
    for sku_id, units in given:
        await conn.execute(
            update(skus)
            .where(skus.c.id == sku_id)
            .values(preordered=func.greatest(0, skus.c.preordered - units), version=skus.c.version + 1)
        )


async def note_reserved(
    conn: AsyncConnection, now: datetime, reservation_id: str, units: Mapping[int, int], channel_code: str | None = None
) -> None:
    """A reservation's units per SKU as demand under its channel (looked up when not given)."""
    if not any(units.values()):
        return
    if channel_code is None:
        found = await conn.scalar(select(reservations.c.channel_code).where(reservations.c.id == reservation_id))
        channel_code = found or ""
    await note_sales(conn, now, {(s, channel_code): q for s, q in units.items()})


# ledger kinds that are demand when reported by an integration: a sale outside our reservations and an
# order taken elsewhere (a reservation's own rows count once, in note_reserved)
_DEMAND_KINDS = frozenset({"SOLD", "ORDER_PLACED"})
_COUNTED_STATUSES = frozenset({"APPLIED", "SUPERSEDED"})


async def note_ledger(conn: AsyncConnection, now: datetime, rows: Iterable[Mapping[str, Any]]) -> None:
    """Reported sales and orders in these ledger rows, as demand under no channel."""
    sales: dict[tuple[int, str], int] = defaultdict(int)
    for r in rows:
        if r["kind"] in _DEMAND_KINDS and r["status"] in _COUNTED_STATUSES and r["quantity"] > 0:
            sales[(int(r["sku_id"]), "")] += int(r["quantity"])
    await note_sales(conn, now, sales)


@dataclass(frozen=True, slots=True)
class LaunchInput:
    sku_code: str
    launch_at: datetime | None  # None: launched (sells from stock as usual)
    preorder_limit: int | None  # None: no preorders before launch


async def set_launches(ctx: Ctx, items: list[LaunchInput]) -> int:
    """Set SKUs' launch dates and preorder limits; each SKU's version moves and its figures are pushed."""
    errors = [
        UserError(ErrorCode.INVALID_QUANTITY, "preorderLimit must be 0 or more", ("input", str(i), "preorderLimit"))
        for i, item in enumerate(items)
        if item.preorder_limit is not None and item.preorder_limit < 0
    ]
    if errors:
        raise Refused(errors)
    if not items:
        return 0  # nothing to set (an INSERT of no rows is an error to SQLAlchemy, not a no-op)

    async def work(conn: AsyncConnection) -> int:
        now = ctx.clock()
        ids = {
            r.code: int(r.id)
            for r in await conn.execute(
                select(skus.c.code, skus.c.id).where(skus.c.code.in_([i.sku_code for i in items]))
            )
        }
        unknown = [
            UserError(ErrorCode.UNKNOWN_SKU, f"no SKU {item.sku_code!r}", ("input", str(i), "skuCode"))
            for i, item in enumerate(items)
            if item.sku_code not in ids
        ]
        if unknown:
            raise Refused(unknown)
        for item in sorted(items, key=lambda i: ids[i.sku_code]):
            await conn.execute(
                update(skus)
                .where(skus.c.id == ids[item.sku_code])
                .values(
                    launch_at=item.launch_at,
                    preorder_limit=item.preorder_limit,
                    version=skus.c.version + 1,
                    updated_at=now,
                )
            )
        note_outbox_rows()
        await conn.execute(
            insert(outbox), [{"sku_id": s, "location_id": None, "created_at": now} for s in sorted(ids.values())]
        )
        return len(items)

    return await ctx.db.write(work)
