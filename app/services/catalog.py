"""Upserting SKUs and locations. An omitted field keeps its stored value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.engine import note_outbox_rows
from app.db.tables import counters, locations, outbox, skus, stock_levels
from app.domain.errors import ErrorCode, Refused, UserError
from app.services.context import Ctx
from app.services.views import LocationView, SkuView


class LocationKind(StrEnum):
    WAREHOUSE = "WAREHOUSE"
    STORE = "STORE"
    THIRD_PARTY = "THIRD_PARTY"
    DROPSHIP = "DROPSHIP"


@dataclass(frozen=True, slots=True)
class SkuInput:
    code: str
    name: str
    active: bool | None = None


@dataclass(frozen=True, slots=True)
class LocationInput:
    code: str
    name: str
    kind: LocationKind
    latitude: float | None = None
    longitude: float | None = None
    priority: int | None = None
    active: bool | None = None
    count_authority: str | None = None
    # fields given as an explicit null: cleared (None above otherwise means "keep the stored value")
    cleared: frozenset[str] = frozenset()


# what a location may be without; null clears it (the other fields keep their stored value)
CLEARABLE = frozenset({"count_authority"})


def _code_errors(codes: list[str], max_batch: int) -> list[UserError]:
    errors: list[UserError] = []
    if len(codes) > max_batch:
        return [UserError(ErrorCode.BATCH_TOO_LARGE, f"at most {max_batch} items per call", ("input",))]
    seen: set[str] = set()
    for i, code in enumerate(codes):
        if not code.strip() or len(code) > 100 or code != code.strip():
            errors.append(
                UserError(
                    ErrorCode.INVALID_INPUT, "code must be 1-100 characters, no outer spaces", ("input", str(i), "code")
                )
            )
        if code in seen:
            errors.append(
                UserError(ErrorCode.INVALID_INPUT, f"{code} appears twice in this call", ("input", str(i), "code"))
            )
        seen.add(code)
    return errors


def _name_errors(names: list[str]) -> list[UserError]:
    return [
        UserError(ErrorCode.INVALID_INPUT, "name must be 1-300 characters", ("input", str(i), "name"))
        for i, name in enumerate(names)
        if not name.strip() or len(name) > 300
    ]


def _sku_view(r: Any) -> SkuView:
    return SkuView(r.code, r.name, r.active, r.updated_at)


def location_view(r: Any) -> LocationView:
    return LocationView(
        r.code, r.name, r.kind, r.latitude, r.longitude, r.priority, r.active, r.count_authority, r.updated_at
    )


async def upsert_skus(ctx: Ctx, items: list[SkuInput]) -> list[SkuView]:
    """Raises Refused with every problem found; nothing is written then."""
    errors = _code_errors([i.code for i in items], ctx.settings.max_batch_size) + _name_errors([i.name for i in items])
    if errors:
        raise Refused(errors)
    now = ctx.clock()

    async def work(conn: AsyncConnection) -> list[SkuView]:
        existing = {r.code: r for r in await conn.execute(select(skus).where(skus.c.code.in_([i.code for i in items])))}
        for item in items:
            old = existing.get(item.code)
            if old is None:
                await conn.execute(
                    insert(skus).values(
                        code=item.code,
                        name=item.name,
                        active=True if item.active is None else item.active,
                        version=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
                continue
            changes: dict[str, Any] = {}
            if item.name != old.name:
                changes["name"] = item.name
            if item.active is not None and item.active != old.active:
                changes["active"] = item.active
            if changes:
                await conn.execute(
                    update(skus)
                    .where(skus.c.id == old.id)
                    .values(**changes, version=skus.c.version + 1, updated_at=now)
                )
            if "active" in changes:
                # switching a SKU on or off changes its availability everywhere: publish it
                note_outbox_rows()  # claimed at once by the relay
                await conn.execute(
                    insert(outbox).from_select(
                        ["sku_id", "location_id", "created_at"],
                        select(
                            stock_levels.c.sku_id,
                            stock_levels.c.location_id,
                            literal(now, type_=outbox.c.created_at.type),
                        ).where(stock_levels.c.sku_id == old.id),
                    )
                )
        rows = await conn.execute(select(skus).where(skus.c.code.in_([i.code for i in items])))
        by_code = {r.code: r for r in rows}
        return [_sku_view(by_code[i.code]) for i in items]

    return await ctx.db.write(work)


def _location_errors(items: list[LocationInput]) -> list[UserError]:
    errors: list[UserError] = []
    for i, item in enumerate(items):
        where = ("input", str(i))
        if (item.latitude is None) != (item.longitude is None):
            errors.append(
                UserError(ErrorCode.INVALID_INPUT, "give both latitude and longitude, or neither", (*where, "latitude"))
            )
        if item.latitude is not None and not -90 <= item.latitude <= 90:
            errors.append(UserError(ErrorCode.INVALID_INPUT, "latitude must be within -90..90", (*where, "latitude")))
        if item.longitude is not None and not -180 <= item.longitude <= 180:
            errors.append(
                UserError(ErrorCode.INVALID_INPUT, "longitude must be within -180..180", (*where, "longitude"))
            )
        if item.priority is not None and not 0 <= item.priority <= 1_000_000:
            errors.append(
                UserError(ErrorCode.INVALID_INPUT, "priority must be within 0..1000000", (*where, "priority"))
            )
        if item.count_authority is not None and not 1 <= len(item.count_authority.strip()) <= 100:
            # "" would name a source no event comes from: no count at the location would ever apply
            errors.append(
                UserError(
                    ErrorCode.INVALID_INPUT,
                    "countAuthority must be a source of 1-100 characters (null: counts from every source)",
                    (*where, "countAuthority"),
                )
            )
    return errors


async def upsert_locations(ctx: Ctx, items: list[LocationInput]) -> list[LocationView]:
    errors = (
        _code_errors([i.code for i in items], ctx.settings.max_batch_size)
        + _name_errors([i.name for i in items])
        + _location_errors(items)
    )
    if errors:
        raise Refused(errors)
    now = ctx.clock()

    async def work(conn: AsyncConnection) -> list[LocationView]:
        codes = [i.code for i in items]
        existing = {r.code: r for r in await conn.execute(select(locations).where(locations.c.code.in_(codes)))}
        touched: list[int] = []
        for item in items:
            old = existing.get(item.code)
            if old is None:
                await conn.execute(
                    insert(locations).values(
                        code=item.code,
                        name=item.name,
                        kind=item.kind.value,
                        latitude=item.latitude,
                        longitude=item.longitude,
                        priority=100 if item.priority is None else item.priority,
                        active=True if item.active is None else item.active,
                        count_authority=item.count_authority,
                        created_at=now,
                        updated_at=now,
                    )
                )
                continue
            wanted: dict[str, Any] = {"name": item.name, "kind": item.kind.value}
            for column, value in (
                ("latitude", item.latitude),
                ("longitude", item.longitude),
                ("priority", item.priority),
                ("active", item.active),
                ("count_authority", item.count_authority),
            ):
                if value is not None:
                    wanted[column] = value
                elif column in item.cleared and column in CLEARABLE:
                    wanted[column] = None
            changes = {k: v for k, v in wanted.items() if getattr(old, k) != v}
            if changes:
                await conn.execute(update(locations).where(locations.c.id == old.id).values(**changes, updated_at=now))
                touched.append(old.id)
        if touched:
            await _bump_location_epoch(conn, now, touched)
        rows = {r.code: r for r in await conn.execute(select(locations).where(locations.c.code.in_(codes)))}
        return [location_view(rows[c]) for c in codes]

    return await ctx.db.write(work)


async def _bump_location_epoch(conn: AsyncConnection, now: datetime, location_ids: list[int]) -> None:
    """Location changes move every affected Availability.version and publish the SKUs stocked there."""
    moved = await conn.execute(
        update(counters).where(counters.c.name == "locations").values(value=counters.c.value + 1)
    )
    if moved.rowcount == 0:
        await conn.execute(insert(counters).values(name="locations", value=1))
    note_outbox_rows()  # claimed at once by the relay
    await conn.execute(
        insert(outbox).from_select(
            ["sku_id", "location_id", "created_at"],
            select(
                stock_levels.c.sku_id, stock_levels.c.location_id, literal(now, type_=outbox.c.created_at.type)
            ).where(stock_levels.c.location_id.in_(location_ids)),
        )
    )
