"""The ledger as operators read it: filtered by SKU, location, source, type, reference and time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import aliased

from app.db.tables import api_keys, inventory_events, locations, skus
from app.services.context import Ctx
from app.services.queries import MAX_PAGE, ledger_entry
from app.services.views import LedgerEntryView

ie = inventory_events


@dataclass(frozen=True, slots=True)
class LedgerFilter:
    sku_code: str | None = None
    location_code: str | None = None
    source: str | None = None
    kinds: tuple[str, ...] | None = None  # ledger entry kinds (event types and Stockwire's movements)
    reference: str | None = None  # exact match: a PO, an order or a transfer number
    occurred_from: datetime | None = None  # inclusive
    occurred_until: datetime | None = None  # exclusive, so consecutive ranges never count a row twice


def _entries() -> Select[Any]:
    """Ledger rows with the codes they name and the key that wrote them (name and prefix, never the secret)."""
    to_loc = aliased(locations)
    return (
        select(
            ie,
            skus.c.code.label("sku_code"),
            locations.c.code.label("location_code"),
            to_loc.c.code.label("to_location_code"),
            api_keys.c.name.label("actor_name"),
            api_keys.c.prefix.label("actor_prefix"),
        )
        .join(skus, skus.c.id == ie.c.sku_id)
        .join(locations, locations.c.id == ie.c.location_id)
        .outerjoin(to_loc, to_loc.c.id == ie.c.to_location_id)
        .outerjoin(api_keys, api_keys.c.id == ie.c.actor_key_id)
    )


async def page(ctx: Ctx, where: LedgerFilter, first: int, after_id: int | None) -> tuple[list[LedgerEntryView], bool]:
    """Newest first (by arrival). Returns the page and whether older entries remain."""
    q = _entries()
    if where.sku_code is not None:
        q = q.where(skus.c.code == where.sku_code)
    if where.location_code is not None:
        q = q.where(locations.c.code == where.location_code)
    if where.source is not None:
        q = q.where(ie.c.source == where.source)
    if where.kinds is not None:
        q = q.where(ie.c.kind.in_(where.kinds))
    if where.reference is not None:
        q = q.where(ie.c.reference == where.reference)
    if where.occurred_from is not None:
        q = q.where(ie.c.occurred_at >= where.occurred_from)
    if where.occurred_until is not None:
        q = q.where(ie.c.occurred_at < where.occurred_until)
    if after_id is not None:
        q = q.where(ie.c.id < after_id)
    size = min(first, MAX_PAGE)
    async with ctx.db.read() as conn:
        rows = list(await conn.execute(q.order_by(ie.c.id.desc()).limit(size + 1)))
    return [ledger_entry(r) for r in rows[:size]], len(rows) > size


async def snapshot_corrections(ctx: Ctx, first: int) -> list[LedgerEntryView]:
    """What the last applied reconciliation snapshot corrected: its COUNTED rows that moved on-hand.

    A snapshot is only stored as the COUNTED events `importSnapshot(apply: true)` records (external ids
    `snapshot:<takenAt>:…`), so "the last snapshot" is the latest such takenAt.
    """
    last = (
        select(ie.c.occurred_at)
        .where(ie.c.external_id.like("snapshot:%"), ie.c.kind == "COUNTED")
        .order_by(ie.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    q = (
        _entries()
        .where(
            ie.c.external_id.like("snapshot:%"),
            ie.c.kind == "COUNTED",
            ie.c.occurred_at == last,
            ie.c.d_on_hand != 0,
        )
        .order_by(skus.c.code, locations.c.code)
        .limit(min(first, MAX_PAGE))
    )
    async with ctx.db.read() as conn:
        return [ledger_entry(r) for r in await conn.execute(q)]
