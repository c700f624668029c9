"""Reading positions, availability and the ledger. No writes here."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from app.db.stock import position_of
from app.db.tables import counters, inventory_events, locations, skus, stock_levels
from app.domain.quantities import sellable_across
from app.services.context import Ctx
from app.services.views import AvailabilityView, LedgerEntryView, StockLevelView

sl = stock_levels
MAX_PAGE = 1000


def levels_query() -> Select[Any]:
    return (
        select(
            sl,
            skus.c.code.label("sku_code"),
            locations.c.code.label("location_code"),
            locations.c.active.label("location_active"),
        )
        .join(skus, skus.c.id == sl.c.sku_id)
        .join(locations, locations.c.id == sl.c.location_id)
    )


def level_view(r: Any) -> StockLevelView:
    return StockLevelView(
        r.sku_code, r.location_code, position_of(r), int(r.version), r.updated_at, bool(r.location_active)
    )


async def stock_levels_page(
    ctx: Ctx,
    sku_codes: list[str] | None,
    location_codes: list[str] | None,
    first: int,
    after: tuple[str, str] | None,
) -> list[StockLevelView]:
    """Positions ordered by (sku code, location code); `after` is the key of the last one already seen."""
    q = levels_query().where(sl.c.version > 0)
    if sku_codes is not None:
        q = q.where(skus.c.code.in_(sku_codes))
    if location_codes is not None:
        q = q.where(locations.c.code.in_(location_codes))
    if after is not None:
        q = q.where(or_(skus.c.code > after[0], and_(skus.c.code == after[0], locations.c.code > after[1])))
    q = q.order_by(skus.c.code, locations.c.code).limit(min(first, MAX_PAGE))
    async with ctx.db.read() as conn:
        return [level_view(r) for r in await conn.execute(q)]


async def availability(ctx: Ctx, sku_codes: list[str]) -> list[AvailabilityView]:
    async with ctx.db.read() as conn:
        return await availability_in(conn, sku_codes)


# built once: the outbox relay runs these for every batch of changes
_LOCATION_EPOCH = (
    select(func.coalesce(func.max(counters.c.value), 0)).where(counters.c.name == "locations").scalar_subquery()
)
# the location epoch rides along with the SKU rows: one round trip fewer
_SKUS_BY_CODE = select(skus, _LOCATION_EPOCH.label("location_epoch")).where(
    skus.c.code.in_(bindparam("codes", expanding=True))
)
_SKUS_BY_ID = select(skus, _LOCATION_EPOCH.label("location_epoch")).where(
    skus.c.id.in_(bindparam("ids", expanding=True))
)
_LEVELS_OF_SKUS = levels_query().where(sl.c.sku_id.in_(bindparam("sku_ids", expanding=True))).order_by(locations.c.code)


async def availability_in(conn: AsyncConnection, sku_codes: list[str]) -> list[AvailabilityView]:
    """Across all active locations: Σ max(0, available); in the order asked, unknown codes left out."""
    views, _ = await availability_and_levels(conn, sku_codes=sku_codes)
    by_code = {v.sku_code: v for v in views}
    return [by_code[c] for c in sku_codes if c in by_code]


async def availability_and_levels(
    conn: AsyncConnection, *, sku_codes: Collection[str] = (), sku_ids: Collection[int] = ()
) -> tuple[list[AvailabilityView], dict[tuple[int, int], StockLevelView]]:
    """The availability of the SKUs named by code or id (by code order) and every one of their
    positions by (sku_id, location_id). Two reads, so figures and versions agree."""
    rows: list[Any] = list(await conn.execute(_SKUS_BY_ID, {"ids": list(sku_ids)})) if sku_ids else []
    if sku_codes:
        rows += await conn.execute(_SKUS_BY_CODE, {"codes": list(sku_codes)})
    known = {r.id: r for r in rows}
    if not known:
        return [], {}
    levels: dict[str, list[StockLevelView]] = defaultdict(list)
    version_sum: dict[str, int] = defaultdict(int)
    every: dict[tuple[int, int], StockLevelView] = {}
    for r in await conn.execute(_LEVELS_OF_SKUS, {"sku_ids": list(known)}):
        view = level_view(r)
        every[(r.sku_id, r.location_id)] = view
        # every position counts toward the version, active or not, so switching a location off and
        # on again can never bring a version back
        version_sum[r.sku_code] += view.version
        if view.location_active and view.version > 0:
            levels[r.sku_code].append(view)
    result = []
    for sku in sorted(known.values(), key=lambda k: str(k.code)):
        here = levels[sku.code] if sku.active else []
        positions = [lv.position for lv in here]
        result.append(
            AvailabilityView(
                sku_code=sku.code,
                channel_code=None,
                available=sellable_across(positions),
                oversold=sum(p.oversold for p in positions),
                version=version_sum[sku.code] + int(sku.version) + int(sku.location_epoch or 0),
                locations=tuple(levels[sku.code]),
            )
        )
    return result, every


async def ledger_page(
    ctx: Ctx,
    sku_code: str | None,
    location_code: str | None,
    source: str | None,
    first: int,
    after_id: int | None,
) -> tuple[list[LedgerEntryView], bool]:
    """Newest first. Returns the page and whether older entries remain."""
    ie = inventory_events
    to_loc = aliased(locations)
    q = (
        select(
            ie,
            skus.c.code.label("sku_code"),
            locations.c.code.label("location_code"),
            to_loc.c.code.label("to_location_code"),
        )
        .join(skus, skus.c.id == ie.c.sku_id)
        .join(locations, locations.c.id == ie.c.location_id)
        .outerjoin(to_loc, to_loc.c.id == ie.c.to_location_id)
    )
    if sku_code is not None:
        q = q.where(skus.c.code == sku_code)
    if location_code is not None:
        q = q.where(locations.c.code == location_code)
    if source is not None:
        q = q.where(ie.c.source == source)
    if after_id is not None:
        q = q.where(ie.c.id < after_id)
    size = min(first, MAX_PAGE)
    async with ctx.db.read() as conn:
        rows = list(await conn.execute(q.order_by(ie.c.id.desc()).limit(size + 1)))
    return [_entry(r) for r in rows[:size]], len(rows) > size


def _entry(r: Any) -> LedgerEntryView:
    return LedgerEntryView(
        id=int(r.id),
        source=r.source,
        external_id=r.external_id,
        kind=r.kind,
        status=r.status,
        sku_code=r.sku_code,
        location_code=r.location_code,
        quantity=int(r.quantity),
        occurred_at=r.occurred_at,
        received_at=r.received_at,
        reason=r.reason,
        reference=r.reference,
        to_location_code=r.to_location_code,
        expected_at=r.expected_at,
        reservation_id=r.reservation_id,
        on_hand_change=int(r.d_on_hand),
        committed_change=int(r.d_committed),
        reserved_change=int(r.d_reserved),
        unavailable_change=int(r.d_unavailable),
        safety_stock_change=int(r.d_safety_stock),
        incoming_change=int(r.d_incoming),
        drift=int(r.drift),
        version=int(r.version),
    )
