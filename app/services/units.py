"""Sell units per SKU: define them, and convert quantities in a named unit to base units.

Stock is kept, held and recorded in base units only; these functions are the edge where a case
becomes 12 eaches (in) and a figure becomes whole cases (out). See app/domain/units.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace

from sqlalchemy import and_, delete, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import sku_units, skus
from app.domain.errors import ErrorCode, Refused, UserError
from app.domain.events import InventoryEvent
from app.domain.reservations import RequestedLine
from app.domain.units import BASE_UNIT, NotWholeBaseUnits, SellUnit, UnknownUnit, find_unit, to_base, unit_errors
from app.services.context import Ctx

MAX_BASE_QUANTITY = 2**53  # quantities are BIGINT; anything near this is a mistake, not an order


@dataclass(frozen=True, slots=True)
class SellUnitInput:
    sku_code: str
    name: str
    size: int  # 0 removes the unit


async def set_units(ctx: Ctx, items: list[SellUnitInput]) -> dict[str, list[SellUnit]]:
    """Define (or with size 0, remove) named units; returns every unit of the SKUs named, by SKU code."""
    errors: list[UserError] = []
    for i, item in enumerate(items):
        if item.size == 0:
            continue
        errors += [
            UserError(ErrorCode.INVALID_INPUT, m, ("input", str(i), f)) for f, m in unit_errors(item.name, item.size)
        ]
    if errors:
        raise Refused(errors)

    async def work(conn: AsyncConnection) -> dict[str, list[SellUnit]]:
        ids = await _sku_ids(conn, {i.sku_code for i in items})
        missing = [
            UserError(ErrorCode.UNKNOWN_SKU, f"no SKU {i.sku_code!r}", ("input", str(n), "skuCode"))
            for n, i in enumerate(items)
            if i.sku_code not in ids
        ]
        if missing:
            raise Refused(missing)
        for item in items:
            key = and_(sku_units.c.sku_id == ids[item.sku_code], sku_units.c.name == item.name)
            if item.size == 0:
                await conn.execute(delete(sku_units).where(key))
                continue
            row = {"sku_id": ids[item.sku_code], "name": item.name, "size": item.size}
            stmt = postgresql.insert(sku_units).values(**row)
            await conn.execute(
                stmt.on_conflict_do_update(index_elements=["tenant_id", "sku_id", "name"], set_={"size": item.size})
            )
        return await units_of(conn, list(ids))

    return await ctx.db.write(work)


async def _sku_ids(conn: AsyncConnection, codes: Iterable[str]) -> dict[str, int]:
    return {
        r.code: r.id for r in await conn.execute(select(skus.c.code, skus.c.id).where(skus.c.code.in_(list(codes))))
    }


async def sizes(conn: AsyncConnection, sku_codes: Iterable[str]) -> dict[str, dict[str, int]]:
    """Every SKU's named units (name -> size), by SKU code; SKUs without any map to {}."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    rows = await conn.execute(
        select(skus.c.code, sku_units.c.name, sku_units.c.size)
        .join(sku_units, sku_units.c.sku_id == skus.c.id)
        .where(skus.c.code.in_(list(set(sku_codes))))
    )
    for r in rows:
        out[r.code][r.name] = int(r.size)
    return out


async def units_of(conn: AsyncConnection, sku_codes: list[str]) -> dict[str, list[SellUnit]]:
    found = await sizes(conn, sku_codes)
    return {
        code: [
            SellUnit(BASE_UNIT, 1),
            *sorted((SellUnit(n, s) for n, s in found.get(code, {}).items()), key=lambda u: u.size),
        ]
        for code in sku_codes
    }


def _convert(
    sku_code: str, quantity: int, unit: str | None, known: dict[str, int], where: tuple[str, ...]
) -> int | UserError:
    try:
        base = to_base(quantity, find_unit(sku_code, known, unit))
    except UnknownUnit as exc:
        return UserError(ErrorCode.UNKNOWN_UNIT, str(exc), (*where, "unit"))
    except NotWholeBaseUnits as exc:
        return UserError(ErrorCode.INVALID_QUANTITY, str(exc), (*where, "quantity"))
    if abs(base) > MAX_BASE_QUANTITY:
        return UserError(ErrorCode.INVALID_QUANTITY, f"{quantity} {unit} is too many base units", (*where, "quantity"))
    return base


async def lines_in_base_units(
    ctx: Ctx, lines: list[RequestedLine], line_units: list[str | None]
) -> list[RequestedLine]:
    """Reserve lines with quantities in base units (`line_units[i]`: the unit of line i, None: base).

    Raises Refused (UNKNOWN_UNIT, INVALID_QUANTITY) naming the line."""
    if all(u is None or u == BASE_UNIT for u in line_units):
        return lines
    async with ctx.db.read() as conn:
        known = await sizes(conn, [ln.sku_code for ln in lines])
    out: list[RequestedLine] = []
    errors: list[UserError] = []
    for i, (ln, unit) in enumerate(zip(lines, line_units, strict=True)):
        base = _convert(ln.sku_code, ln.quantity, unit, known.get(ln.sku_code, {}), ("input", "lines", str(i)))
        if isinstance(base, UserError):
            errors.append(base)
        else:
            out.append(replace(ln, quantity=base))
    if errors:
        raise Refused(errors)
    return out


async def events_in_base_units(
    conn: AsyncConnection, events: list[InventoryEvent]
) -> tuple[list[InventoryEvent], list[UserError]]:
    """Events with quantities in base units, each keeping the unit it came in; errors name the event.

    Runs inside the recording transaction, so a unit is read as it is when the event is applied."""
    if all(e.unit is None for e in events):
        return events, []
    known = await sizes(conn, [e.sku_code for e in events if e.unit is not None])
    out: list[InventoryEvent] = []
    errors: list[UserError] = []
    for i, e in enumerate(events):
        if e.unit is None:
            out.append(e)
            continue
        base = _convert(e.sku_code, e.quantity, e.unit, known.get(e.sku_code, {}), ("input", str(i)))
        if isinstance(base, UserError):
            errors.append(base)
            out.append(e)
        else:
            out.append(replace(e, quantity=base))
    return out, errors


async def unit_sizes_for(ctx: Ctx, sku_codes: list[str], unit: str) -> dict[str, SellUnit]:
    """The unit `unit` of each SKU; raises Refused (UNKNOWN_UNIT) naming the SKUs that lack it."""
    async with ctx.db.read() as conn:
        known = await sizes(conn, sku_codes)
    found: dict[str, SellUnit] = {}
    errors: list[UserError] = []
    for code in sku_codes:
        try:
            found[code] = find_unit(code, known.get(code, {}), unit)
        except UnknownUnit as exc:
            errors.append(UserError(ErrorCode.UNKNOWN_UNIT, str(exc), ("unit",)))
    if errors:
        raise Refused(errors)
    return found
