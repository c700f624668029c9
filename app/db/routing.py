"""Order routing's statements: the candidate read, the batch hold of a routed order, and the day's order
count per shipping location.

Written once, for PostgreSQL. What each location can sell now comes from `stock.available_sql()` and a
hold is made under `stock.can_hold`, so routing, `reserve` and a channel's hold share one rule.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, literal_column, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import stock
from app.db.tables import (
    channels,
    location_daily_orders,
    locations,
    reservation_lines,
    reservations,
    ring_fences,
    site_daily_orders,
    sites,
)
from app.db.types import UTCDateTime
from app.domain.reservations import ReservationStatus


def _pg(clause: Any) -> str:
    return str(clause.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]


# "what a location can sell now", and the hold condition against a planned quantity v.q
_AVAILABLE = _pg(stock.available_sql())
_CAN_HOLD = _pg(stock.can_hold(literal_column("v.q")))

# (location id, code, active, priority, latitude, longitude, shipping cost, daily capacity, orders today,
#  {sku code: units available}, linked to the channel)
CandidateRow = tuple[int, str, bool, int, float | None, float | None, Any, int | None, int | None, dict[str, int], bool]

# The candidate read, for a location at a shared site: what is left today
# is the lesser of the location's own room and the site's (every tenant's orders there count), shown
# as an effective capacity and orders taken. LEAST ignores NULLs: a location without a capacity of
# its own has the site's.
SITE_JOIN_SQL = (
    "LEFT JOIN sites st ON st.id = l.site_id "
    "LEFT JOIN site_daily_orders sdo ON sdo.site_id = l.site_id AND sdo.day = :day"
)
SITE_CAPACITY_SQL = (
    "CASE WHEN st.daily_order_capacity IS NULL THEN lr.daily_order_capacity "
    "ELSE LEAST(lr.daily_order_capacity, st.daily_order_capacity) END"
)
SITE_ORDERS_SQL = (
    "CASE WHEN st.daily_order_capacity IS NULL THEN ldo.orders "
    "ELSE LEAST(lr.daily_order_capacity, st.daily_order_capacity) - LEAST("
    "lr.daily_order_capacity - coalesce(ldo.orders, 0), st.daily_order_capacity - coalesce(sdo.orders, 0)) END"
)


async def count_site_orders(conn: AsyncConnection, location_ids: list[int], day: str) -> bool:
    """Count one order today at each shared site among these locations (in the order's transaction).
    False when a site is full: the conditional upsert is checked by the database under the site row's
    lock, so tenants racing for a site's last slot cannot both take it."""
    rows = await conn.execute(
        select(sites.c.id, sites.c.daily_order_capacity)
        .join(locations, locations.c.site_id == sites.c.id)
        .where(locations.c.id.in_(location_ids))
        .distinct()
        .order_by(sites.c.id)
    )
    sdo = site_daily_orders
    for site_id, limit in rows.all():
        stmt = (
            postgresql.insert(sdo)
            .values(site_id=site_id, day=day, orders=1)
            .on_conflict_do_update(
                index_elements=[sdo.c.site_id, sdo.c.day],
                set_={"orders": sdo.c.orders + 1},
                where=(sdo.c.orders < limit) if limit is not None else None,
            )
            .returning(sdo.c.orders)
        )
        if (await conn.execute(stmt)).first() is None:
            return False
    return True


# One statement, compiled once. What each location can sell now of the order's SKUs comes back as two
# arrays per location (asyncpg decodes arrays natively): 200 rows instead of one row per (SKU,
# location), and no JSON to parse, which is where most of a routing call's time went.
_CANDIDATES = (
    "SELECT l.id, l.code, l.active, l.priority, l.latitude, l.longitude, lr.shipping_cost, "
    f"{SITE_CAPACITY_SQL}, {SITE_ORDERS_SQL}, h.sku_ids, h.units, {{linked}} AS linked "
    "FROM locations l "
    "LEFT JOIN location_routing lr ON lr.location_id = l.id "
    "LEFT JOIN location_daily_orders ldo ON ldo.location_id = l.id AND ldo.day = :day "
    f"{SITE_JOIN_SQL} "
    "LEFT JOIN (SELECT stock_levels.location_id, array_agg(stock_levels.sku_id) AS sku_ids, "
    f"array_agg({_AVAILABLE}) AS units FROM stock_levels "
    f"WHERE stock_levels.sku_id = ANY(CAST(:skus AS integer[])) AND {_AVAILABLE} > 0 "
    "GROUP BY stock_levels.location_id) h ON h.location_id = l.id"
)
_CANDIDATES_ANY = text(_CANDIDATES.format(linked="TRUE"))
# a channel sells only from its linked locations; one with no links sells from none
_CANDIDATES_CHANNEL = text(
    _CANDIDATES.format(
        linked="EXISTS (SELECT 1 FROM channel_locations cl WHERE cl.location_id = l.id AND cl.channel_id = :channel)"
    )
)


async def candidate_rows(
    conn: AsyncConnection, code_of_sku: dict[int, str], day: str, channel_id: int | None
) -> list[CandidateRow]:
    """Every location with what it can sell now of these SKUs (sku id -> code), for an order on `day`."""
    params: dict[str, Any] = {"day": day, "skus": list(code_of_sku)}
    statement = _CANDIDATES_ANY
    if channel_id is not None:
        params["channel"] = channel_id
        statement = _CANDIDATES_CHANNEL
    code_of = code_of_sku.__getitem__
    # map/zip/dict run in C: this is built for every location on every order (asyncpg already gives
    # the bigint array as Python ints)
    return [
        (
            loc_id,
            code,
            active,
            priority,
            lat,
            lon,
            cost,
            capacity,
            orders,
            {} if sku_ids is None else dict(zip(map(code_of, sku_ids), units, strict=True)),
            linked,
        )
        for loc_id, code, active, priority, lat, lon, cost, capacity, orders, sku_ids, units, linked in (
            await conn.execute(statement, params)
        )
    ]


async def fenced_for_others(
    conn: AsyncConnection, channel_id: int, code_of_sku: dict[int, str]
) -> dict[tuple[str, int], int]:
    """(sku code, location id) -> units ring-fenced there for other channels, less what those channels
    already hold there in active reservations: the same rule as a channel's figure
    (`app.services.channels`), so routing never plans a hold the channel's rules would refuse."""
    rf = ring_fences
    fences = list(
        await conn.execute(
            select(rf.c.sku_id, rf.c.location_id, rf.c.units, channels.c.code)
            .join(channels, channels.c.id == rf.c.channel_id)
            .where(rf.c.sku_id.in_(list(code_of_sku)), rf.c.channel_id != channel_id, rf.c.units > 0)
        )
    )
    if not fences:
        return {}
    r_, rl = reservations, reservation_lines
    held = {
        (r.channel_code, r.sku_id, r.location_id): int(r.units)
        for r in await conn.execute(
            select(r_.c.channel_code, rl.c.sku_id, rl.c.location_id, func.sum(rl.c.quantity).label("units"))
            .join(r_, r_.c.id == rl.c.reservation_id)
            .where(
                r_.c.status == ReservationStatus.ACTIVE.value,
                r_.c.channel_code.in_({f.code for f in fences}),
                rl.c.sku_id.in_(list(code_of_sku)),
            )
            .group_by(r_.c.channel_code, rl.c.sku_id, rl.c.location_id)
        )
    }
    out: dict[tuple[str, int], int] = {}
    for f in fences:
        left = max(0, int(f.units) - held.get((f.code, f.sku_id, f.location_id), 0))
        key = (code_of_sku[f.sku_id], f.location_id)
        out[key] = out.get(key, 0) + left
    return out


# Every planned (sku, location, units) held in one conditional UPDATE, in one round trip instead of
# one per line (a 20-line order split over two locations is 20 holds).
_LOCK = text(
    "SELECT stock_levels.sku_id FROM stock_levels "
    "JOIN unnest(CAST(:skus AS integer[]), CAST(:locs AS integer[])) AS v(sku_id, location_id) "
    "ON stock_levels.sku_id = v.sku_id AND stock_levels.location_id = v.location_id "
    "ORDER BY stock_levels.sku_id, stock_levels.location_id FOR UPDATE OF stock_levels"
)
_HOLD = text(
    "UPDATE stock_levels SET reserved = stock_levels.reserved + v.q, version = stock_levels.version + 1, "
    "updated_at = :now "
    "FROM unnest(CAST(:skus AS integer[]), CAST(:locs AS integer[]), CAST(:qs AS bigint[])) "
    "AS v(sku_id, location_id, q) "
    "WHERE stock_levels.sku_id = v.sku_id AND stock_levels.location_id = v.location_id "
    f"AND {_CAN_HOLD} "
    "RETURNING stock_levels.sku_id, stock_levels.location_id, stock_levels.version"
).bindparams(bindparam("now", type_=UTCDateTime))  # stored the way the column's type stores it


async def hold_planned(
    conn: AsyncConnection, now: datetime, plan: list[tuple[stock.Pair, int]]
) -> dict[stock.Pair, int] | None:
    """Hold every planned line, or none: each position's new version, or None when some position no
    longer has its units (the caller rolls back)."""
    skus = [p[0] for p, _ in plan]
    locs = [p[1] for p, _ in plan]
    # lock the rows in (sku, location) order first: two orders wanting the same rows queue instead of
    # deadlocking (the UPDATE alone would lock them in whatever order its join produces)
    await conn.execute(_LOCK, {"skus": skus, "locs": locs})
    rows = await conn.execute(_HOLD, {"skus": skus, "locs": locs, "qs": [q for _, q in plan], "now": now})
    versions = {(r.sku_id, r.location_id): int(r.version) for r in rows}
    return versions if len(versions) == len(plan) else None


async def count_order(conn: AsyncConnection, location_id: int, day: str, limit: int | None) -> bool:
    """One more order shipping from this location on `day`, if its daily capacity (`limit`) allows:
    the database checks the capacity under the row's lock. False when the capacity is used up."""
    ldo = location_daily_orders
    stmt = (
        postgresql.insert(ldo)
        .values(location_id=location_id, day=day, orders=1)
        .on_conflict_do_update(
            index_elements=[ldo.c.tenant_id, ldo.c.location_id, ldo.c.day],
            set_={"orders": ldo.c.orders + 1},
            where=(ldo.c.orders < limit) if limit is not None else None,
        )
        .returning(ldo.c.orders)
    )
    return (await conn.execute(stmt)).first() is not None
