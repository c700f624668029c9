"""Order routing's statements: the candidate read, the batch hold of a routed order, and the day's order
count per shipping location.

Written once, for PostgreSQL. What each location can sell now comes from `stock.available_sql()` and a
hold is made under `stock.can_hold`, so routing, `reserve` and a channel's hold share one rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import bindparam, func, literal_column, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg, stock
from app.db.tables import (
    channels,
    inventory_events,
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
    return _candidates(code_of_sku, await conn.execute(statement, params))


def _candidates(code_of_sku: dict[int, str], rows: Iterable[Any]) -> list[CandidateRow]:
    """The candidate read's rows as CandidateRows, each location's SKU ids and units as code -> units."""
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
        for loc_id, code, active, priority, lat, lon, cost, capacity, orders, sku_ids, units, linked in rows
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


# --- routeAndReserve on the pooled asyncpg connection (`Database.write_driver`) ----------------------
# An order without a channel or cart in five round trips: BEGIN (with the tenant), `open_order`,
# `candidate_rows_on`, `hold_order` and COMMIT. The same statements' meaning as the general path
# (app/services/routing/reserving.py), fewer of them.

# The candidate read with asyncpg's placeholders: $1 the day, $2 the order's SKU ids
_CANDIDATES_ON = _CANDIDATES.format(linked="TRUE").replace(":day", "$1::varchar").replace(":skus", "$2")


async def candidate_rows_on(db: asyncpg.Connection, code_of_sku: dict[int, str], day: str) -> list[CandidateRow]:
    """`candidate_rows` of an order without a channel, on the asyncpg connection."""
    return _candidates(code_of_sku, await pg.run(db.fetch, _CANDIDATES_ON, day, list(code_of_sku)))


# The idempotency claim (the reservation row, its id made by Postgres), the order's SKUs and whether an
# ACTIVE reservation holding one of them is past its expiry, in ONE round trip (as pg.open_reservation
# for reserve, with the order's reference and no locations): kind 'C' (the claim won; code: the id),
# 'S' (code, id, active), 'D' (an expired hold is due). The probe reads without locking: a hold due
# now was due before this statement's snapshot.
_OPEN_ORDER = (
    "WITH claim AS (INSERT INTO reservations (id, status, idempotency_scope, idempotency_key, fingerprint, "
    "order_ref, created_at, updated_at, expires_at, owner_key_id) "
    "VALUES (gen_random_uuid()::text, $1, $2, $3, $4, $5, $6, $6, $7, $8) "
    "ON CONFLICT (tenant_id, idempotency_scope, idempotency_key) DO NOTHING RETURNING id) "
    "SELECT 'C' AS kind, id::varchar AS code, NULL::int AS id, NULL::boolean AS active FROM claim "
    "UNION ALL SELECT 'S', code, id, active FROM skus WHERE code = ANY($9::varchar[]) "
    "UNION ALL SELECT 'D', NULL, NULL, NULL FROM (SELECT 1 FROM reservations r "
    "WHERE r.status = $1 AND r.expires_at <= $6 AND r.id IN (SELECT rl.reservation_id "
    "FROM reservation_lines rl JOIN skus s ON s.id = rl.sku_id WHERE s.code = ANY($9::varchar[])) LIMIT 1) due"
)


@dataclass(frozen=True, slots=True)
class OpenedOrder:
    reservation_id: str | None  # None: the idempotency key was taken (nothing inserted)
    skus: dict[str, tuple[int, bool]]  # code -> (id, active), for the SKUs that exist
    expired_due: bool  # an ACTIVE hold on one of these SKUs is past its expiry


async def open_order(
    db: asyncpg.Connection,
    now: datetime,
    expires_at: datetime,
    scope: str,
    key: str,
    fingerprint: str,
    order_ref: str,
    owner_key_id: str | None,
    sku_codes: list[str],
) -> OpenedOrder:
    """Claim the order's idempotency key with an ACTIVE reservation row and look up its SKUs (_OPEN_ORDER)."""
    rows = await pg.run(
        db.fetch,
        _OPEN_ORDER,
        ReservationStatus.ACTIVE.value,
        scope,
        key,
        fingerprint,
        order_ref,
        pg.naive(now),
        pg.naive(expires_at),
        owner_key_id,
        sku_codes,
    )
    claimed, found, _, due = pg.opened(rows)  # its look-up names SKUs only
    return OpenedOrder(claimed, found, due)


# A routed order's writes in ONE statement, every one of them conditional on the database's own check:
# - `locked`: the planned positions' rows locked in (sku, location) order first (two orders wanting
#   the same rows queue instead of deadlocking), forced before any UPDATE by the hold's one-time
#   filter on it (a condition without a column of the row is evaluated once, before the scan);
# - `h`: the hold, each position changed only while it has the planned units (stock.can_hold);
# - `loc`/`site`: the order counted against each shipping location's and shared site's daily capacity
#   (as _COUNT_ORDERS), only once every hold took (stock rows, then day rows: the lock order);
# - the lines, ledger rows (the version each hold made), outbox rows, the sale in each SKU's velocity
#   (demand.note_sales' arithmetic, no channel) and the stored decision, all from what `h` held.
# It answers whether everything held and counted (False: the caller rolls back and routes again), the
# stored decision's id, and whether any channel has a dynamic buffer (the caller then leaves the
# order to the general path, which moves buffers).
# The ledger row's columns come from `reserved_row`'s template: what varies per line is read from `h`,
# every other column is one parameter, typed from the table, so a new column cannot be left out.
_PER_LINE = {"sku_id": "h.sku_id", "location_id": "h.location_id", "quantity": "h.q", "d_reserved": "h.q"}
_LEDGER_CONSTANT = tuple(c for c in pg.LEDGER_COLUMNS if c not in _PER_LINE and c != "version")
_LEDGER_FIRST = 14


def _hold_order_sql() -> str:
    ledger = ", ".join(
        _PER_LINE[c]
        if c in _PER_LINE
        else "h.version"
        if c == "version"
        else f"${_LEDGER_FIRST + _LEDGER_CONSTANT.index(c)}::{_typed(inventory_events.c[c])}"
        for c in pg.LEDGER_COLUMNS
    )
    return (
        "WITH v AS MATERIALIZED "
        "(SELECT * FROM unnest($3::int[], $4::int[], $5::bigint[]) AS v(sku_id, location_id, q)), "
        "locked AS MATERIALIZED (SELECT stock_levels.sku_id FROM stock_levels JOIN v "
        "ON stock_levels.sku_id = v.sku_id AND stock_levels.location_id = v.location_id "
        "ORDER BY stock_levels.sku_id, stock_levels.location_id FOR UPDATE OF stock_levels), "
        "h AS (UPDATE stock_levels SET reserved = stock_levels.reserved + v.q, version = stock_levels.version + 1, "
        "updated_at = $1 FROM v WHERE stock_levels.sku_id = v.sku_id AND stock_levels.location_id = v.location_id "
        f"AND (SELECT count(*) FROM locked) >= 0 AND {_CAN_HOLD} "
        "RETURNING stock_levels.sku_id, stock_levels.location_id, stock_levels.version, v.q), "
        "held AS (SELECT count(*) = cardinality($3::int[]) AS ok FROM h), "
        "want AS (SELECT * FROM unnest($6::int[], $7::int[]) AS w(location_id, cap) WHERE (SELECT ok FROM held)), "
        "loc AS (INSERT INTO location_daily_orders AS t (location_id, day, orders) "
        "SELECT location_id, $8::varchar, 1 FROM want ORDER BY location_id "
        "ON CONFLICT (tenant_id, location_id, day) DO UPDATE SET orders = t.orders + 1 "
        "WHERE t.orders < "
        "coalesce((SELECT w.cap FROM want w WHERE w.location_id = excluded.location_id), t.orders + 1) "
        "RETURNING location_id), "
        "at_site AS (SELECT DISTINCT st.id, st.daily_order_capacity AS cap FROM sites st "
        "JOIN locations l ON l.site_id = st.id WHERE l.id IN (SELECT location_id FROM want)), "
        "site AS (INSERT INTO site_daily_orders AS t (site_id, day, orders) "
        "SELECT id, $8::varchar, 1 FROM at_site ORDER BY id "
        "ON CONFLICT (site_id, day) DO UPDATE SET orders = t.orders + 1 "
        "WHERE t.orders < coalesce((SELECT a.cap FROM at_site a WHERE a.id = excluded.site_id), t.orders + 1) "
        "RETURNING site_id), "
        "line AS (INSERT INTO reservation_lines (reservation_id, sku_id, location_id, quantity, backordered, "
        "backorder_open, preordered) SELECT $2, sku_id, location_id, q, 0, 0, 0 FROM h ORDER BY sku_id, location_id), "
        f"led AS (INSERT INTO inventory_events ({', '.join(pg.LEDGER_COLUMNS)}) "
        f"SELECT {ledger} FROM h ORDER BY h.sku_id, h.location_id), "
        "box AS (INSERT INTO outbox (sku_id, location_id, created_at) "
        "SELECT sku_id, location_id, $1 FROM h ORDER BY sku_id, location_id), "
        "sale AS (INSERT INTO sku_demand AS d (sku_id, channel_code, units, last_at) "
        "SELECT sku_id, '', sum(q)::float8, $1 FROM h GROUP BY sku_id ORDER BY sku_id "
        "ON CONFLICT (tenant_id, sku_id, channel_code) DO UPDATE SET "
        "units = d.units * power(2.0, -greatest(0.0, extract(epoch FROM excluded.last_at - d.last_at)) "
        "/ $9::float8) + excluded.units, last_at = greatest(d.last_at, excluded.last_at)), "
        "stored AS (INSERT INTO routing_decisions (order_ref, channel_code, reservation_id, owner_key_id, request, "
        "decision, created_at) VALUES ($10, NULL, $2, $11, $12, $13, $1) RETURNING id) "
        "SELECT (SELECT ok FROM held) AND (SELECT count(*) FROM loc) = cardinality($6::int[]) "
        "AND (SELECT count(*) FROM site) = (SELECT count(*) FROM at_site) AS done, "
        "(SELECT id FROM stored) AS decision_id, "
        "EXISTS (SELECT 1 FROM channels WHERE dynamic_buffer_factor IS NOT NULL) AS dynamic"
    )


def _typed(column: Any) -> str:
    """The column's type without a length: a cast to varchar(n) would cut a longer text silently, the
    insert itself refuses it."""
    return re.sub(r"[(].*[)]", "", str(column.type.compile(dialect=postgresql.dialect())))  # type: ignore[no-untyped-call]


_HOLD_ORDER = _hold_order_sql()


@dataclass(frozen=True, slots=True)
class HeldOrder:
    done: bool  # every line held and the order counted everywhere it ships from (else: roll back)
    decision_id: int
    dynamic: bool  # some channel has a dynamic buffer (the general path moves them)


async def hold_order(
    db: asyncpg.Connection,
    now: datetime,
    reservation_id: str,
    plan: list[tuple[stock.Pair, int]],
    capacity: dict[int, int | None],
    day: str,
    half_life: float,
    decision: tuple[str, str, str, str | None],
    ledger: dict[str, Any],
) -> HeldOrder:
    """Hold `plan` ((sku id, location id), units; sorted) for the reservation and write everything that
    goes with it (_HOLD_ORDER); `capacity`: each shipping location's daily capacity (None: none);
    `decision`: (order reference, request JSON, decision JSON, owner key id); `ledger`: a
    reserved_row of the reservation, whose per-line columns are ignored."""
    order_ref, request_json, decision_json, owner_key_id = decision
    shipping = sorted(capacity)
    row = await pg.run(
        db.fetchrow,
        _HOLD_ORDER,
        pg.naive(now),
        reservation_id,
        [p[0] for p, _ in plan],
        [p[1] for p, _ in plan],
        [q for _, q in plan],
        shipping,
        [capacity[i] for i in shipping],
        day,
        half_life,
        order_ref,
        owner_key_id,
        request_json,
        decision_json,
        *[pg.naive(ledger[c]) if isinstance(ledger[c], datetime) else ledger[c] for c in _LEDGER_CONSTANT],
    )
    assert row is not None  # the final SELECT has no FROM: always one row
    return HeldOrder(bool(row["done"]), int(row["decision_id"] or 0), bool(row["dynamic"]))
