"""Per-location routing settings: a daily order capacity and a shipping cost, and today's order count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import location_daily_orders, location_routing, locations
from app.domain.errors import ErrorCode, Refused, UserError
from app.services.context import Ctx
from app.services.routing.inputs import day


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


@dataclass(frozen=True, slots=True)
class LocationRoutingInput:
    location_code: str
    # None: clear the setting; UNSET (the default): keep what is stored
    daily_order_capacity: int | _Unset | None = UNSET
    shipping_cost: Decimal | _Unset | None = UNSET


@dataclass(frozen=True, slots=True)
class LocationRoutingView:
    location_code: str
    daily_order_capacity: int | None
    shipping_cost: Decimal | None
    orders_today: int


def _input_errors(items: Sequence[LocationRoutingInput]) -> list[UserError]:
    errors: list[UserError] = []
    for i, item in enumerate(items):
        cap = item.daily_order_capacity
        if isinstance(cap, int) and cap < 0:
            errors.append(
                UserError(ErrorCode.INVALID_INPUT, "dailyOrderCapacity must be >= 0", (str(i), "dailyOrderCapacity"))
            )
        cost = item.shipping_cost
        if isinstance(cost, Decimal):
            try:
                bad = not cost.is_finite() or cost < 0 or cost >= Decimal("1e8")
            except InvalidOperation:
                bad = True
            if bad:
                errors.append(
                    UserError(ErrorCode.INVALID_INPUT, "shippingCost must be 0 to 99999999", (str(i), "shippingCost"))
                )
    codes = [item.location_code for item in items]
    if len(set(codes)) != len(codes):
        errors.append(UserError(ErrorCode.DUPLICATE_LINE, "a location appears twice", ("input",)))
    return errors


async def set_location_routing(ctx: Ctx, items: Sequence[LocationRoutingInput]) -> list[LocationRoutingView]:
    errors = _input_errors(items)
    if errors:
        raise Refused(errors)
    codes = [item.location_code for item in items]

    async def work(conn: AsyncConnection) -> list[LocationRoutingView]:
        ids = {
            r.code: r.id
            for r in await conn.execute(select(locations.c.id, locations.c.code).where(locations.c.code.in_(codes)))
        }
        unknown = [
            UserError(ErrorCode.UNKNOWN_LOCATION, f"no location {c!r}", (str(i), "locationCode"))
            for i, c in enumerate(codes)
            if c not in ids
        ]
        if unknown:
            raise Refused(unknown)
        lr = location_routing
        for item in sorted(items, key=lambda it: ids[it.location_code]):
            values: dict[str, Any] = {}
            if not isinstance(item.daily_order_capacity, _Unset):
                values["daily_order_capacity"] = item.daily_order_capacity
            if not isinstance(item.shipping_cost, _Unset):
                values["shipping_cost"] = item.shipping_cost
            stmt = postgresql.insert(lr).values(location_id=ids[item.location_code], **values)
            if values:
                stmt = stmt.on_conflict_do_update(index_elements=[lr.c.tenant_id, lr.c.location_id], set_=values)
            else:
                stmt = stmt.on_conflict_do_nothing()
            await conn.execute(stmt)
        return await _views(conn, ctx.clock(), codes)

    return await ctx.db.write(work, notify=False)


async def _views(conn: AsyncConnection, now: datetime, codes: list[str]) -> list[LocationRoutingView]:
    lr, ldo = location_routing, location_daily_orders
    rows = {
        r.code: r
        for r in await conn.execute(
            select(locations.c.code, lr.c.daily_order_capacity, lr.c.shipping_cost, ldo.c.orders)
            .outerjoin(lr, lr.c.location_id == locations.c.id)
            .outerjoin(ldo, and_(ldo.c.location_id == locations.c.id, ldo.c.day == day(now)))
            .where(locations.c.code.in_(codes))
        )
    }
    return [
        LocationRoutingView(
            location_code=c,
            daily_order_capacity=rows[c].daily_order_capacity,
            shipping_cost=Decimal(rows[c].shipping_cost) if rows[c].shipping_cost is not None else None,
            orders_today=int(rows[c].orders or 0),
        )
        for c in codes
    ]


async def location_routing_settings(ctx: Ctx, codes: list[str] | None) -> list[LocationRoutingView]:
    async with ctx.db.read() as conn:
        if codes is None:
            codes = [r.code for r in await conn.execute(select(locations.c.code).order_by(locations.c.code))]
        else:
            known = {r.code for r in await conn.execute(select(locations.c.code).where(locations.c.code.in_(codes)))}
            codes = [c for c in codes if c in known]
        return await _views(conn, ctx.clock(), codes)
