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

from app.db import pg, stock
from app.db.tables import (
    channels,
    reservation_lines,
    reservations,
    ring_fences,
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


# An order counted against each shipping location's daily capacity and each shared site's, in ONE
# statement (it was one per location plus a look-up of the sites and one per site: ~3 round trips of
# a routed order's ~19). Every row is a conditional upsert checked by the database under the row's
# lock: a location or site full since the read is not counted, and the statement then says False
# (the caller rolls back and routes again). A row not there yet starts at one order (as before). Rows
# are taken in id order, locations before sites, so concurrent orders queue rather than deadlock.
_COUNT_ORDERS = (
    "WITH want AS (SELECT * FROM unnest($1::int[], $2::int[]) AS w(location_id, cap)), "
    "loc AS (INSERT INTO location_daily_orders AS t (location_id, day, orders) "
    "SELECT location_id, $3::varchar, 1 FROM want ORDER BY location_id "
    "ON CONFLICT (tenant_id, location_id, day) DO UPDATE SET orders = t.orders + 1 "
    "WHERE t.orders < coalesce((SELECT w.cap FROM want w WHERE w.location_id = excluded.location_id), t.orders + 1) "
    "RETURNING location_id), "
    # a shared site counts every tenant's orders there (LEAST of the two rooms: SITE_ORDERS_SQL)
    "at_site AS (SELECT DISTINCT st.id, st.daily_order_capacity AS cap FROM sites st "
    "JOIN locations l ON l.site_id = st.id WHERE l.id = ANY($1::int[])), "
    "site AS (INSERT INTO site_daily_orders AS t (site_id, day, orders) "
    "SELECT id, $3::varchar, 1 FROM at_site ORDER BY id "
    "ON CONFLICT (site_id, day) DO UPDATE SET orders = t.orders + 1 "
    "WHERE t.orders < coalesce((SELECT a.cap FROM at_site a WHERE a.id = excluded.site_id), t.orders + 1) "
    "RETURNING site_id) "
    "SELECT (SELECT count(*) FROM loc) = cardinality($1::int[]) "
    "AND (SELECT count(*) FROM site) = (SELECT count(*) FROM at_site)"
)


async def count_orders(conn: AsyncConnection, limits: dict[int, int | None], day: str) -> bool:
    """One more order shipping today from each of these locations (location id -> its daily capacity,
    None for none) and at the shared sites among them: False (and the caller rolls back) when one of
    them is full. See _COUNT_ORDERS."""
    if not limits:
        return True
    ids = sorted(limits)
    db = await pg.driver(conn)
    return bool(await pg.fetch_value(db, _COUNT_ORDERS, ids, [limits[i] for i in ids], day))
