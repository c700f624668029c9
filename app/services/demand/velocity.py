"""Sales velocity: the stored counts of units sold, decayed with the clock to a rate per SKU."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import sku_demand
from app.domain import demand
from app.settings import Settings

_half_life: float | None = None


def half_life_seconds() -> float:
    """`STOCKWIRE_VELOCITY_HALF_LIFE_SECONDS` (default one hour): how fast a sale stops counting."""
    global _half_life
    if _half_life is None:
        _half_life = Settings().velocity_half_life_seconds
    return _half_life


async def velocities(conn: AsyncConnection, sku_ids: Iterable[int], now: datetime) -> dict[int, float]:
    """Units per second per SKU, over every channel (what runs out of the shared stock), decayed to now."""
    ids = sorted(set(sku_ids))
    if not ids:
        return {}
    h = half_life_seconds()
    counts: dict[int, float] = defaultdict(float)
    for r in await conn.execute(select(sku_demand).where(sku_demand.c.sku_id.in_(ids))):
        counts[r.sku_id] += demand.decayed(demand.DecayedCount(float(r.units), r.last_at), now, h)
    tau = h / math.log(2)
    return {s: counts[s] / tau for s in ids}


async def _decayed_counts(conn: AsyncConnection, sku_ids: Iterable[int], now: datetime) -> dict[int, float]:
    tau = half_life_seconds() / math.log(2)
    return {s: v * tau for s, v in (await velocities(conn, sku_ids, now)).items()}
