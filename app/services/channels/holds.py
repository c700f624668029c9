"""Holding under a channel: `reserve` (and routeAndReserve) with a channelCode take at most the channel's
figure per SKU, behind the (channel, SKU) guard row, and count what they took in the channel's holds;
commit, release and expiry give it back."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from dataclasses import replace as dc_replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, literal, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import stock
from app.db.tables import channel_holds, channels, reservation_lines, reservations, skus
from app.domain.accounts import partial_quantities
from app.domain.channel_rules import ExceedsChannelFigure, split_hold
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.reservations import RequestedLine, plan_split
from app.services import accounts, demand
from app.services.channels.figure import FigureInputs, channel_row, figure_inputs, linked_locations


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
    await conn.execute(postgresql.insert(channel_holds).values(**row).on_conflict_do_nothing())
    await conn.execute(
        update(channel_holds)
        .where(channel_holds.c.channel_id == channel_id, channel_holds.c.sku_id == sku_id)
        .values(version=channel_holds.c.version + 1)
    )


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
    linked = {r.id for r in await linked_locations(conn, channel.id) if r.active}
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
        got = (await figure_inputs(conn, channel, [sku_full], now))[sku_id]
        got = await _for_account(conn, channel.id, sku_id, got, account_code)
        if total > got.figure.available and await expire(conn, now, [sku_id]):
            # holds past their expiry never block a new reservation, even before the sweeper runs
            got = (await figure_inputs(conn, channel, [sku_full], now))[sku_id]
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
                version = await stock.hold(conn, sku_id, loc, q, now, keep=got.fenced.get(loc, 0))
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
    conn: AsyncConnection, channel_id: int, sku_id: int, got: FigureInputs, account_code: str | None
) -> FigureInputs:
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
