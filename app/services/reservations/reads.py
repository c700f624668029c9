"""Reading reservations, as the actor asking may see them."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import locations, reservation_lines, reservations, skus
from app.domain.reservations import ReservationStatus, effective_status
from app.services.context import SYSTEM, Actor, Ctx
from app.services.views import ReservationLineView, ReservationView

r_ = reservations
rl = reservation_lines


def seen_by(actor: Actor) -> list[Any]:
    """The condition on reservation rows for what this actor may see and act on (none: everything)."""
    if actor.sees_all:
        return []
    return [r_.c.owner_key_id == actor.key_id] if actor.key_id is not None else [literal(False)]


async def load_views(
    conn: AsyncConnection, now: datetime, ids: list[str], visible_to: Actor = SYSTEM
) -> list[ReservationView]:
    """The reservations with these ids that `visible_to` may see, in the order of `ids`."""
    rows = list(await conn.execute(select(r_).where(r_.c.id.in_(ids), *seen_by(visible_to))))
    if not rows:
        return []
    lines: dict[str, list[ReservationLineView]] = defaultdict(list)
    for ln in await conn.execute(
        select(
            rl.c.reservation_id,
            skus.c.code.label("sku_code"),
            locations.c.code.label("location_code"),
            # a line's units: from stock and, under a channel's backorder allowance, against incoming
            (rl.c.quantity + rl.c.backordered).label("quantity"),
            rl.c.backordered,
            rl.c.expected_at,
            rl.c.preordered,
        )
        .join(skus, skus.c.id == rl.c.sku_id)
        .join(locations, locations.c.id == rl.c.location_id)
        .where(rl.c.reservation_id.in_(ids))
        .order_by(skus.c.code, locations.c.code)
    ):
        lines[ln.reservation_id].append(
            ReservationLineView(
                ln.sku_code,
                ln.location_code,
                int(ln.quantity),
                int(ln.backordered),
                ln.expected_at if ln.backordered else None,
                int(ln.preordered),
            )
        )
    order = {rid: i for i, rid in enumerate(ids)}
    rows.sort(key=lambda r: order[r.id])
    return [
        ReservationView(
            id=r.id,
            status=effective_status(ReservationStatus(r.status), r.expires_at, now),
            expires_at=r.expires_at,
            created_at=r.created_at,
            cart_ref=r.cart_ref,
            order_ref=r.order_ref,
            channel_code=r.channel_code,
            lines=tuple(lines[r.id]),
        )
        for r in rows
    ]


async def get(ctx: Ctx, reservation_id: str) -> ReservationView | None:
    """The reservation, or None when there is none this actor may see."""
    async with ctx.db.read() as conn:
        views = await load_views(conn, ctx.clock(), [reservation_id], ctx.actor)
    return views[0] if views else None


async def by_cart(ctx: Ctx, cart_ref: str) -> list[ReservationView]:
    """The cart's reservations that this actor may see (an admin: every key's), oldest first."""
    async with ctx.db.read() as conn:
        ids = [
            r.id
            for r in await conn.execute(
                select(r_.c.id).where(r_.c.cart_ref == cart_ref, *seen_by(ctx.actor)).order_by(r_.c.created_at, r_.c.id)
            )
        ]
        return await load_views(conn, ctx.clock(), ids)
