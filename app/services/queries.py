"""Reading positions, availability and the ledger. No writes here."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from typing import Any, NamedTuple

from sqlalchemy import Select, and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg
from app.db.stock import position_of
from app.db.tables import locations, skus, stock_levels
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


async def unknown_sku_codes(ctx: Ctx, sku_codes: list[str]) -> list[str]:
    """The codes that name no SKU, once each, in the order asked (`availability` leaves them out)."""
    wanted = list(dict.fromkeys(sku_codes))
    if not wanted:
        return []
    async with ctx.db.read() as conn:
        known = {r.code for r in await conn.execute(_SKU_CODES, {"codes": wanted})}
    return [c for c in wanted if c not in known]


_SKU_CODES = select(skus.c.code).where(skus.c.code.in_(bindparam("codes", expanding=True)))


async def availability(ctx: Ctx, sku_codes: list[str]) -> list[AvailabilityView]:
    async with ctx.db.read() as conn:
        return await availability_in(conn, sku_codes)


async def availability_in(conn: AsyncConnection, sku_codes: list[str]) -> list[AvailabilityView]:
    """Across all active locations: Σ max(0, available); in the order asked, unknown codes left out."""
    views, _ = await availability_and_levels(conn, sku_codes=sku_codes)
    by_code = {v.sku_code: v for v in views}
    return [by_code[c] for c in sku_codes if c in by_code]


async def availability_and_levels(
    conn: AsyncConnection, *, sku_codes: Collection[str] = (), sku_ids: Collection[int] = ()
) -> tuple[list[AvailabilityView], dict[tuple[int, int], StockLevelView]]:
    """The availability of the SKUs named by code or id (by code order) and every one of their
    positions by (sku_id, location_id)."""
    if not sku_codes and not sku_ids:
        return [], {}
    # one statement, so figures and versions come from one snapshot (the relay runs it for every batch)
    return _assemble(*_from_pg(await pg.availability_rows(await pg.driver(conn), list(sku_ids), list(sku_codes))))


class _Sku(NamedTuple):
    id: int
    code: str
    active: bool
    version: int  # the SKU's own version plus the location epoch


def _from_pg(rows: list[Any]) -> tuple[dict[int, _Sku], list[tuple[tuple[int, int], StockLevelView]]]:
    known: dict[int, _Sku] = {}
    levels = []
    for r in rows:
        sku_id = r["sku_id"]
        if sku_id not in known:
            known[sku_id] = _Sku(sku_id, r["sku_code"], r["sku_active"], r["sku_version"] + r["location_epoch"])
        if r["location_id"] is None:
            continue  # a SKU without positions
        view = StockLevelView(
            r["sku_code"],
            r["location_code"],
            pg.position(r),
            r["version"],
            pg.aware(r["updated_at"]),
            r["location_active"],
        )
        levels.append(((sku_id, r["location_id"]), view))
    return known, levels


def _assemble(
    known: dict[int, _Sku], levels: list[tuple[tuple[int, int], StockLevelView]]
) -> tuple[list[AvailabilityView], dict[tuple[int, int], StockLevelView]]:
    """Views from the SKUs and their positions (in location-code order)."""
    shown: dict[str, list[StockLevelView]] = defaultdict(list)
    version_sum: dict[str, int] = defaultdict(int)
    every: dict[tuple[int, int], StockLevelView] = {}
    for pair, view in levels:
        every[pair] = view
        # every position counts toward the version, active or not, so switching a location off and
        # on again can never bring a version back
        version_sum[view.sku_code] += view.version
        if view.location_active and view.version > 0:
            shown[view.sku_code].append(view)
    result = []
    for sku in sorted(known.values(), key=lambda k: k.code):
        here = shown[sku.code] if sku.active else []
        positions = [lv.position for lv in here]
        result.append(
            AvailabilityView(
                sku_code=sku.code,
                channel_code=None,
                available=sellable_across(positions),
                oversold=sum(p.oversold for p in positions),
                version=version_sum[sku.code] + sku.version,
                locations=tuple(shown[sku.code]),
            )
        )
    return result, every


def ledger_entry(r: Any) -> LedgerEntryView:
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
        actor_key_id=r.actor_key_id,
        actor_name=r.actor_name,
        actor_prefix=r.actor_prefix,
    )
