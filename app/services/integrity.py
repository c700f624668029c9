"""The integrity check: every position must equal the fold (sum) of its ledger rows, and its versions
must each have exactly one ledger row that changed it (1, 2, … version: no gap, no repeat)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import distinct, func, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import (
    LEDGER_ROW_CHANGES,
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
        return (
            await _positions_vs_ledger(conn)
            + await _versions_without_gaps(conn)
            + await _reserved_vs_reservations(conn)
        )


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


async def _versions_without_gaps(conn: AsyncConnection) -> list[Mismatch]:
    """A position at version v has ledger rows that changed it at versions 1..v, each exactly once:
    a client that sees v after v-2 has missed a change. Rows that changed nothing keep the version
    they saw and are not counted.

    Reported as `ledger_versions` (stored: the position's version; ledger: how many distinct versions
    its changing rows hold; also when one lies outside 1..version) and `ledger_versions_repeated` (stored: distinct
    versions; ledger: changing rows)."""
    ie = inventory_events
    per_position = (
        select(
            ie.c.sku_id,
            ie.c.location_id,
            func.count().label("rows"),
            func.count(distinct(ie.c.version)).label("versions"),
            func.min(ie.c.version).label("lowest"),
            func.max(ie.c.version).label("highest"),
        )
        .where(text(f"({LEDGER_ROW_CHANGES})"))
        .group_by(ie.c.sku_id, ie.c.location_id)
        .subquery()
    )
    sl = stock_levels
    rows = await conn.execute(
        select(
            sl.c.version,
            per_position.c.rows,
            per_position.c.versions,
            per_position.c.lowest,
            per_position.c.highest,
            skus.c.code.label("sku_code"),
            locations.c.code.label("location_code"),
        )
        .join(skus, skus.c.id == sl.c.sku_id)
        .join(locations, locations.c.id == sl.c.location_id)
        .outerjoin(
            per_position,
            (per_position.c.sku_id == sl.c.sku_id) & (per_position.c.location_id == sl.c.location_id),
        )
    )
    out: list[Mismatch] = []
    for r in rows:
        version, n, distinct_n = int(r.version), int(r.rows or 0), int(r.versions or 0)
        inside = n == 0 or (int(r.lowest) >= 1 and int(r.highest) <= version)
        if distinct_n != version or not inside:
            out.append(Mismatch(r.sku_code, r.location_code, "ledger_versions", version, distinct_n))
        if n != distinct_n:
            out.append(Mismatch(r.sku_code, r.location_code, "ledger_versions_repeated", distinct_n, n))
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
