"""Expiry: ACTIVE reservations past their expiry become EXPIRED and give their units back, in the
background sweeper and, for the SKUs it needs, inside a reserve."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import stock
from app.db.tables import reservation_lines, reservations
from app.domain.events import LedgerKind
from app.domain.reservations import ReservationStatus
from app.services import channel_external_holds, demand
from app.services.context import Ctx
from app.services.reservations.transitions import move_lines

r_ = reservations
rl = reservation_lines


async def expire_due(
    conn: AsyncConnection, now: datetime, sku_ids: list[int] | None = None, limit: int = 500, wait: bool = False
) -> int:
    """Turn ACTIVE reservations past expiry into EXPIRED and give their units back. Returns how many.

    Safe with many processes: each sweeper skips rows another has locked, and the
    status condition means a reservation is expired (or committed, or released) exactly once.
    `wait`: wait for a reservation another transaction has locked instead of skipping it (a reserve
    that needs its units must see them given back, not find them still held by a sweeper mid-way).
    The clock expires a hold, not the caller whose reserve found it due: its ledger rows name no key.
    """
    with stock.ledger_actor(None):
        return await _expire_due(conn, now, sku_ids, limit, wait)


async def _expire_due(conn: AsyncConnection, now: datetime, sku_ids: list[int] | None, limit: int, wait: bool) -> int:
    due = select(r_.c.id).where(r_.c.status == ReservationStatus.ACTIVE.value, r_.c.expires_at <= now)
    if sku_ids is not None:
        due = due.where(r_.c.id.in_(select(rl.c.reservation_id).where(rl.c.sku_id.in_(sku_ids))))
    due = due.order_by(r_.c.expires_at).limit(limit).with_for_update(skip_locked=not wait)
    ids = [r.id for r in await conn.execute(due)]
    if not ids:
        return 0
    expired = await conn.execute(
        update(r_)
        .where(r_.c.id.in_(ids), r_.c.status == ReservationStatus.ACTIVE.value)
        .values(status=ReservationStatus.EXPIRED.value, updated_at=now)
        .returning(r_.c.id)
    )
    won = [r.id for r in expired]
    if won:
        await move_lines(conn, now, won, LedgerKind.RESERVATION_EXPIRED, -1, 0)
    return len(won)


async def sweep_expired(ctx: Ctx) -> int:
    """One pass of the background sweeper, in its own transaction."""

    async def work(conn: AsyncConnection) -> int:
        now = ctx.clock()
        expired = await expire_due(conn, now) + await channel_external_holds.expire_due(conn, now)
        return expired + await demand.review_due(conn, now)  # issue 18: buffers that decay

    return await ctx.db.write(work)
