from __future__ import annotations

from sqlalchemy import select

from app.db.tables import locations as locations_table
from app.services.catalog import location_view
from app.services.context import Ctx
from app.services.views import LocationView


async def locations(ctx: Ctx, codes: list[str] | None) -> list[LocationView]:
    q = select(locations_table).order_by(locations_table.c.code)
    if codes is not None:
        q = q.where(locations_table.c.code.in_(codes))
    async with ctx.db.read() as conn:
        return [location_view(r) for r in await conn.execute(q)]
