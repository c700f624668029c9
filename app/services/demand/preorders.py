"""Preorders: SKUs sold before their launch date, up to a limit kept by one conditional UPDATE."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.engine import note_outbox_rows
from app.db.tables import outbox, reservation_lines, skus
from app.domain.errors import ErrorCode, Refused, UserError
from app.services.context import Ctx


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
