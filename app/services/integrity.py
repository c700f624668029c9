"""The integrity check: every position must equal the fold (sum) of its ledger rows."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import (
    external_holds,
    inventory_events,
    locations,
    reservation_lines,
    reservations,
    skus,
    stock_levels,
)
from app.domain.reservations import ReservationStatus
from app.services.context import Ctx

_FIELDS = ("on_hand", "committed", "reserved", "unavailable", "safety_stock", "incoming")


@dataclass(frozen=True, slots=True)
class Mismatch:
    sku_code: str
    location_code: str
    field: str
    stored: int
    ledger: int


async def check(ctx: Ctx) -> list[Mismatch]:
    async with ctx.db.read() as conn:
        return await _positions_vs_ledger(conn) + await _reserved_vs_reservations(conn)


async def _positions_vs_ledger(conn: AsyncConnection) -> list[Mismatch]:
    ie = inventory_events
    folded = (
        select(
            ie.c.sku_id,
            ie.c.location_id,
            *(func.sum(getattr(ie.c, f"d_{f}")).label(f) for f in _FIELDS),
            func.max(ie.c.version).label("version"),
        )
        .group_by(ie.c.sku_id, ie.c.location_id)
        .subquery()
    )
    sl = stock_levels
    rows = await conn.execute(
        select(
            sl,
            skus.c.code.label("sku_code"),
            locations.c.code.label("location_code"),
            *(getattr(folded.c, f).label(f"ledger_{f}") for f in (*_FIELDS, "version")),
        )
        .join(skus, skus.c.id == sl.c.sku_id)
        .join(locations, locations.c.id == sl.c.location_id)
        .outerjoin(folded, (folded.c.sku_id == sl.c.sku_id) & (folded.c.location_id == sl.c.location_id))
    )
    out: list[Mismatch] = []
    for r in rows:
        for f in (*_FIELDS, "version"):
            stored, ledger = int(getattr(r, f)), int(getattr(r, f"ledger_{f}") or 0)
            if stored != ledger:
                out.append(Mismatch(r.sku_code, r.location_code, f, stored, ledger))
    return out


async def _reserved_vs_reservations(conn: AsyncConnection) -> list[Mismatch]:
    """`reserved` must equal the units of ACTIVE reservations and ACTIVE external holds (expired ones
    count until swept)."""
    rl, r_, eh = reservation_lines, reservations, external_holds
    claims = union_all(
        select(rl.c.sku_id, rl.c.location_id, rl.c.quantity.label("units"))
        .join(r_, r_.c.id == rl.c.reservation_id)
        .where(r_.c.status == ReservationStatus.ACTIVE.value),
        select(eh.c.sku_id, eh.c.location_id, eh.c.quantity.label("units")).where(eh.c.status == "ACTIVE"),
    ).subquery()
    held = (
        select(claims.c.sku_id, claims.c.location_id, func.sum(claims.c.units).label("units"))
        .group_by(claims.c.sku_id, claims.c.location_id)
        .subquery()
    )
    sl = stock_levels
    rows = await conn.execute(
        select(sl.c.reserved, held.c.units, skus.c.code.label("sku_code"), locations.c.code.label("location_code"))
        .join(skus, skus.c.id == sl.c.sku_id)
        .join(locations, locations.c.id == sl.c.location_id)
        .outerjoin(held, (held.c.sku_id == sl.c.sku_id) & (held.c.location_id == sl.c.location_id))
    )
    return [
        Mismatch(r.sku_code, r.location_code, "reserved_by_reservations", int(r.reserved), int(r.units or 0))
        for r in rows
        if int(r.reserved) != int(r.units or 0)
    ]
