"""What operators look up: SKUs by code or name, oversold positions, the holds on a SKU. Reads only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select

from app.db.tables import external_holds, locations, reservation_lines, reservations, skus
from app.domain.reservations import ReservationStatus
from app.services.catalog import _sku_view
from app.services.context import Ctx
from app.services.queries import MAX_PAGE, level_view, levels_query, sl
from app.services.views import SkuView, StockLevelView


def _like_pattern(search: str) -> str:
    # the operator's text is matched literally: % and _ in a SKU code are not wildcards
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


async def skus_page(ctx: Ctx, search: str | None, first: int, after: str | None) -> tuple[list[SkuView], bool]:
    """SKUs by code; `search` matches anywhere in the code or the name, ignoring case; `after` is the
    last code already seen. Returns the page and whether more follow."""
    q = select(skus)
    if search:
        pattern = _like_pattern(search.strip())
        q = q.where(
            or_(func.lower(skus.c.code).like(pattern, escape="\\"), func.lower(skus.c.name).like(pattern, escape="\\"))
        )
    if after is not None:
        q = q.where(skus.c.code > after)
    size = min(first, MAX_PAGE)
    async with ctx.db.read() as conn:
        rows = list(await conn.execute(q.order_by(skus.c.code).limit(size + 1)))
    return [_sku_view(r) for r in rows[:size]], len(rows) > size


async def oversold_positions(ctx: Ctx, first: int, after: tuple[str, str] | None) -> list[StockLevelView]:
    """Positions whose claims (committed + reserved + unavailable) exceed what is on hand, by SKU and location."""
    q = levels_query().where(sl.c.committed + sl.c.reserved + sl.c.unavailable > sl.c.on_hand)
    if after is not None:
        q = q.where(or_(skus.c.code > after[0], (skus.c.code == after[0]) & (locations.c.code > after[1])))
    q = q.order_by(skus.c.code, locations.c.code).limit(min(first, MAX_PAGE))
    async with ctx.db.read() as conn:
        return [level_view(r) for r in await conn.execute(q)]


@dataclass(frozen=True, slots=True)
class ActiveHold:
    kind: str  # RESERVATION or EXTERNAL_HOLD
    id: str
    location_code: str
    quantity: int
    backordered: int
    channel_code: str | None
    reference: str | None  # the cart or order of a reservation; the source of an external hold
    created_at: datetime
    expires_at: datetime | None


async def active_holds(ctx: Ctx, sku_code: str) -> list[ActiveHold]:
    """Every ACTIVE reservation line and external hold on the SKU, soonest expiry first. Holds past
    expiry are listed too (they still count until the sweeper releases them; orphanedHolds names them)."""
    r_, rl, eh = reservations, reservation_lines, external_holds
    held: list[ActiveHold] = []
    async with ctx.db.read() as conn:
        for r in await conn.execute(
            select(r_, rl.c.quantity, rl.c.backordered, locations.c.code.label("location_code"))
            .join(rl, rl.c.reservation_id == r_.c.id)
            .join(skus, skus.c.id == rl.c.sku_id)
            .join(locations, locations.c.id == rl.c.location_id)
            .where(skus.c.code == sku_code, r_.c.status == ReservationStatus.ACTIVE.value)
        ):
            held.append(
                ActiveHold(
                    "RESERVATION",
                    r.id,
                    r.location_code,
                    int(r.quantity),
                    int(r.backordered),
                    r.channel_code,
                    r.order_ref or r.cart_ref,
                    r.created_at,
                    r.expires_at,
                )
            )
        for r in await conn.execute(
            select(eh, locations.c.code.label("location_code"))
            .join(skus, skus.c.id == eh.c.sku_id)
            .join(locations, locations.c.id == eh.c.location_id)
            .where(skus.c.code == sku_code, eh.c.status == "ACTIVE")
        ):
            held.append(
                ActiveHold(
                    "EXTERNAL_HOLD",
                    f"{r.source}/{r.external_id}",
                    r.location_code,
                    int(r.quantity),
                    0,
                    r.channel_code,
                    r.source,
                    r.created_at,
                    r.expires_at,
                )
            )
    far = datetime.max.replace(tzinfo=held[0].created_at.tzinfo) if held else None
    return sorted(held, key=lambda h: (h.expires_at or far, h.id))
