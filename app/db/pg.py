"""The busiest statements of the write path, run on asyncpg directly, inside SQLAlchemy's transaction.

Why: SQLAlchemy Core spends 200-280 us of CPU per statement (cache key, parameter and result
processing) against about 60 us for a prepared asyncpg statement (measured on these machines). A
stock change runs about eight statements, so on a two-core host at a few hundred changes per second
that overhead alone decides how fast changes are published. stock.py calls these; it has no second,
SQLAlchemy copy of them.

Within the transaction `Database.write` opened: `driver()` begins it on the
asyncpg connection if SQLAlchemy has not sent a statement yet (it begins lazily), so a rollback undoes
these statements like any other. asyncpg prepares each text once per connection.

Timestamps: every column is naive UTC (see types.UTCDateTime); `_naive` and `_aware` convert.
Errors: asyncpg's are raised as SQLAlchemy's (IntegrityError for constraint violations, DBAPIError
otherwise, the asyncpg error as `.orig`), so `Database.write` retries deadlocks and callers catch one
kind of error whichever way a statement ran.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import asyncpg
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.compat import begin_driver_transaction
from app.db.engine import Pair, as_sqlalchemy_error
from app.db.tables import inventory_events
from app.db.types import UTCDateTime
from app.domain.quantities import Position

T = TypeVar("T")

# the key under which `driver` keeps a connection's (DBAPI adapter, asyncpg connection) in its `info`
_DRIVER = "stockwire.pg.driver"


async def driver(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `conn`, in `conn`'s transaction if it has one.

    A connection SQLAlchemy has not begun (a `Database.read()` that ran nothing yet) gets none: its
    statements run on their own, each with its own snapshot, like single reads do anyway.
    """
    # `get_raw_connection` spawns a greenlet to reach the pooled connection (10.7 us, and a write runs
    # this for most of its statements); the pair is kept in the connection's `info`, which SQLAlchemy
    # keeps for the DBAPI connection's life and clears when it is invalidated (1.1 us)
    found: tuple[Any, asyncpg.Connection] | None = conn.info.get(_DRIVER)
    if found is None:
        raw = await conn.get_raw_connection()
        found = conn.info[_DRIVER] = (raw.dbapi_connection, raw.driver_connection)
    dbapi_connection, connection = found
    if conn.in_transaction():
        # SQLAlchemy's asyncpg adapter sends BEGIN with its first statement; without this, statements
        # sent here first would run outside the transaction (each committed on its own)
        await begin_driver_transaction(dbapi_connection)
        if not connection.is_in_transaction():
            raise RuntimeError("pg.driver(): the asyncpg connection is not in the transaction")
    return connection


async def run(call: Callable[..., Awaitable[T]], sql: str, *args: Any) -> T:
    """`call(sql, *args)` (an asyncpg connection's fetch, fetchrow, fetchval or execute) with asyncpg's
    errors raised as SQLAlchemy's (see the module docstring): for statements of other modules too."""
    try:
        return await call(sql, *args)
    except asyncpg.PostgresError as exc:
        raise as_sqlalchemy_error(exc, sql, args) from exc


def _naive(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC).replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


# --- look-ups -------------------------------------------------------------------------------------

# SKUs, locations and already recorded events of a batch in one round trip: kind, two texts, a number,
# a text (SKU: code, -, id, -; location: code, count authority, id, -; event: source, external id,
# version, fingerprint).
#
# Every look-up by key here and below is one index probe per key, as a LATERAL subquery behind a fence
# (`OFFSET 0`, or `FOR UPDATE`: the planner never pulls such a subquery up into a join). Plain forms
# (`code = ANY($1)`, a join with unnest) were planned from the tables' statistics, and a database
# autovacuum has not analysed yet (every new one, for its first minute or so) has none: the planner then
# takes each tenant for a few rows, probes the (tenant_id, ...) key by tenant alone and filters, or
# hash-joins the tenant's whole ledger. bench/push.py ran entirely in that window: each recorded event
# read the tenant's whole ledger (pk_inventory_events: 4.7 M index entries read for 3,114 scans) and
# every position and SKU. tests/test_pg_plans.py checks these plans on a database never analysed.
_LOOK_UP = (
    "SELECT 'S' AS kind, k.code AS a, NULL::varchar AS b, s.id::bigint AS n, NULL::varchar AS c "
    "FROM unnest($1::varchar[]) AS k(code) "
    "CROSS JOIN LATERAL (SELECT id FROM skus WHERE code = k.code OFFSET 0) AS s "
    "UNION ALL SELECT 'L', k.code, l.count_authority, l.id, NULL FROM unnest($2::varchar[]) AS k(code) "
    "CROSS JOIN LATERAL (SELECT id, count_authority FROM locations WHERE code = k.code OFFSET 0) AS l "
    "UNION ALL SELECT 'E', k.source, k.external_id, e.version, e.fingerprint "
    "FROM unnest($3::varchar[], $4::varchar[]) AS k(source, external_id) "
    "CROSS JOIN LATERAL (SELECT i.version, i.fingerprint FROM inventory_events i "
    "WHERE i.source = k.source AND i.external_id = k.external_id OFFSET 0) AS e"
)


async def look_up(
    db: asyncpg.Connection, sku_codes: Sequence[str], location_codes: Sequence[str], keys: Sequence[tuple[str, str]]
) -> tuple[dict[str, int], dict[str, tuple[int, str | None]], dict[tuple[str, str], tuple[str | None, int]]]:
    """SKU code -> id; location code -> (id, count_authority); (source, external id) -> (fingerprint,
    version) of the events already recorded."""
    rows = await run(
        db.fetch, _LOOK_UP, list(sku_codes), list(location_codes), [k[0] for k in keys], [k[1] for k in keys]
    )
    skus: dict[str, int] = {}
    locations: dict[str, tuple[int, str | None]] = {}
    recorded: dict[tuple[str, str], tuple[str | None, int]] = {}
    for kind, a, b, n, c in rows:
        if kind == "S":
            skus[a] = n
        elif kind == "L":
            locations[a] = (n, b)
        else:
            recorded[(a, b)] = (c, n)
    return skus, locations, recorded


# --- positions ------------------------------------------------------------------------------------

# The positions asked for, in key order, each locked by its own probe (see _LOOK_UP): the locks are
# taken in the order of the keys, so primary-key order whatever order the caller passed them in
_KEYS_IN_ORDER = "(SELECT * FROM unnest($1::int[], $2::int[]) AS u(sku_id, location_id) ORDER BY 1, 2) AS k"
_LOCKED_ROW = (
    "CROSS JOIN LATERAL (SELECT ctid, sku_id, location_id, on_hand, committed, reserved, unavailable, "
    "safety_stock, incoming, version, counted_at, backordered FROM stock_levels "
    "WHERE sku_id = k.sku_id AND location_id = k.location_id FOR UPDATE) AS s "
)
_LOCK = (
    "SELECT s.sku_id, s.location_id, s.on_hand, s.committed, s.reserved, s.unavailable, s.safety_stock, "
    f"s.incoming, s.version, s.counted_at, s.backordered FROM {_KEYS_IN_ORDER} {_LOCKED_ROW}"
    "ORDER BY s.sku_id, s.location_id"
)


async def lock_positions(db: asyncpg.Connection, pairs: Sequence[Pair]) -> list[asyncpg.Record]:
    """Rows locked in key order (see stock.lock_positions); counted_at still naive."""
    return list(await run(db.fetch, _LOCK, [p[0] for p in pairs], [p[1] for p in pairs]))


def position(row: asyncpg.Record) -> Position:
    """The quantities of a stock_levels row read here (stock.position_of reads SQLAlchemy rows)."""
    return Position(
        row["on_hand"], row["committed"], row["reserved"], row["unavailable"], row["safety_stock"], row["incoming"]
    )


def counted_at(row: asyncpg.Record) -> datetime | None:
    return _aware(row["counted_at"])


_SET_DELTA = (
    "on_hand = on_hand + $4, committed = committed + $5, reserved = reserved + $6, "
    "unavailable = unavailable + $7, safety_stock = safety_stock + $8, incoming = incoming + $9, "
    "version = version + 1"
)
_APPLY = {
    # (delta not zero, counted_at given) -> statement, like stock._APPLY
    (True, False): f"UPDATE stock_levels SET updated_at = $3, {_SET_DELTA} "
    "WHERE sku_id = $1 AND location_id = $2 RETURNING version",
    (True, True): f"UPDATE stock_levels SET updated_at = $3, counted_at = $10, {_SET_DELTA} "
    "WHERE sku_id = $1 AND location_id = $2 RETURNING version",
    (False, False): "UPDATE stock_levels SET updated_at = $3 WHERE sku_id = $1 AND location_id = $2 RETURNING version",
    (False, True): "UPDATE stock_levels SET updated_at = $3, counted_at = $4 "
    "WHERE sku_id = $1 AND location_id = $2 RETURNING version",
}


async def apply_delta(
    db: asyncpg.Connection, pair: Pair, delta: Sequence[int] | None, now: datetime, counted: datetime | None
) -> int:
    """`delta` as (on_hand, committed, reserved, unavailable, safety_stock, incoming), None if all zero."""
    args: list[Any] = [pair[0], pair[1], _naive(now)]
    if delta is not None:
        args += list(delta)
    if counted is not None:
        args.append(_naive(counted))
    version = await run(db.fetchval, _APPLY[(delta is not None, counted is not None)], *args)
    if version is None:
        raise LookupError(f"no position {pair}")
    return int(version)


# Many positions' summed changes in one statement (an ingested batch: services.events). Each row:
# sku_id, location_id, the six quantity deltas, how many changes (the version moves by that many:
# one ledger row each) and the applied count's time or NULL (keeps the stored one).
_APPLY_MANY = (
    "UPDATE stock_levels s SET on_hand = s.on_hand + u.oh, committed = s.committed + u.c, "
    "reserved = s.reserved + u.r, unavailable = s.unavailable + u.un, safety_stock = s.safety_stock + u.ss, "
    "incoming = s.incoming + u.inc, version = s.version + u.n, counted_at = coalesce(u.counted, s.counted_at), "
    "updated_at = $11 "
    "FROM unnest($1::int[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], "
    "$8::bigint[], $9::int[], $10::timestamp[]) AS u(sku_id, location_id, oh, c, r, un, ss, inc, n, counted) "
    "WHERE s.sku_id = u.sku_id AND s.location_id = u.location_id "
    "RETURNING s.sku_id, s.location_id, s.version"
)


def _delta_columns(changes: Sequence[tuple[Pair, Sequence[int], int, datetime | None]]) -> list[list[Any]]:
    """_APPLY_MANY's ten arrays ($1..$10): sku, location, the six deltas, number of changes, counted_at."""
    columns: list[list[Any]] = [[] for _ in range(10)]
    for pair, delta, n, counted in changes:
        columns[0].append(pair[0])
        columns[1].append(pair[1])
        for k in range(6):
            columns[2 + k].append(delta[k])
        columns[8].append(n)
        columns[9].append(_naive(counted))
    return columns


async def apply_deltas(
    db: asyncpg.Connection,
    changes: Sequence[tuple[Pair, Sequence[int], int, datetime | None]],
    now: datetime,
) -> dict[Pair, int]:
    """(position, the six summed deltas, number of changes, counted_at or None) for each position, in
    one UPDATE; returns each position's version after it."""
    if not changes:
        return {}
    columns = _delta_columns(changes)
    rows = await run(db.fetch, _APPLY_MANY, *columns, _naive(now))
    if len(rows) != len(changes):
        raise LookupError("apply_deltas: a position is missing")
    return {(r[0], r[1]): int(r[2]) for r in rows}


_ON_HAND_AFTER = (
    "SELECT k.i, coalesce(sum(e.d_on_hand), 0)::bigint FROM unnest($1::int[], $2::int[], $3::timestamp[]) "
    "WITH ORDINALITY AS k(sku_id, location_id, after, i) LEFT JOIN inventory_events e "
    "ON e.sku_id = k.sku_id AND e.location_id = k.location_id AND e.occurred_at > k.after GROUP BY k.i"
)


async def on_hand_after_many(db: asyncpg.Connection, asked: Sequence[tuple[Pair, datetime]]) -> list[int]:
    """For each (position, time): the sum of on-hand effects of its ledger rows that occurred after it."""
    rows = await run(
        db.fetch, _ON_HAND_AFTER, [p[0] for p, _ in asked], [p[1] for p, _ in asked], [_naive(t) for _, t in asked]
    )
    found = {int(r[0]): int(r[1]) for r in rows}
    return [found[i] for i in range(1, len(asked) + 1)]


# Each SKU's sums over all its positions (stock.magnitudes: the bounds of the figures that add positions
# up), prepared once per connection: SQLAlchemy's expanding IN rendered one text per number of SKUs, so
# asyncpg prepared a new statement for nearly every ingested batch
_MAGNITUDES = (
    "SELECT sku_id, sum(CASE WHEN on_hand > 0 THEN on_hand ELSE 0 END)::bigint, "
    "sum(committed + reserved + unavailable + safety_stock)::bigint, sum(incoming)::bigint, "
    "sum(CASE WHEN on_hand < 0 THEN -on_hand ELSE 0 END)::bigint "
    "FROM stock_levels WHERE sku_id = ANY($1::int[]) GROUP BY sku_id"
)


async def magnitudes(db: asyncpg.Connection, sku_ids: Sequence[int]) -> dict[int, tuple[int, int, int, int]]:
    """SKU id -> (on hand above 0, claims, incoming, on hand below 0), each summed over its positions;
    SKUs without a position are left out."""
    rows = await run(db.fetch, _MAGNITUDES, list(sku_ids))
    return {r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}


# Both reads a batch makes once its positions are locked (stock.magnitudes and stock.on_hand_after_many)
# in one round trip: 'M' rows are _MAGNITUDES' (SKU id, four sums), 'C' rows _ON_HAND_AFTER's (the
# count's ordinal, its sum)
_SIZES_AND_COUNTS = (
    "SELECT 'M' AS kind, m.* FROM ("
    + _MAGNITUDES.replace("$1", "$4")
    + ") AS m UNION ALL SELECT 'C', c.*, NULL, NULL, NULL FROM ("
    + _ON_HAND_AFTER
    + ") AS c"
)


async def sizes_and_counts(
    db: asyncpg.Connection, sku_ids: Sequence[int], asked: Sequence[tuple[Pair, datetime]]
) -> tuple[dict[int, tuple[int, int, int, int]], list[int]]:
    """`magnitudes(sku_ids)` and `on_hand_after_many(asked)` in one statement."""
    rows = await run(
        db.fetch,
        _SIZES_AND_COUNTS,
        [p[0] for p, _ in asked],
        [p[1] for p, _ in asked],
        [_naive(t) for _, t in asked],
        list(sku_ids),
    )
    sizes: dict[int, tuple[int, int, int, int]] = {}
    found: dict[int, int] = {}
    for r in rows:
        if r[0] == "M":
            sizes[r[1]] = (int(r[2]), int(r[3]), int(r[4]), int(r[5]))
        else:
            found[int(r[1])] = int(r[2])
    return sizes, [found[i] for i in range(1, len(asked) + 1)]


# The lock of an ingested batch's positions (_LOCK) with both reads it needs once they are locked
# (`_SIZES_AND_COUNTS`) in the same round trip, the batch's first in its row locks. Rows by kind:
#   'P' a locked position (its columns as `_LOCK`'s, then `fresh`),
#   'M' a SKU's sums over all its positions (`_MAGNITUDES`' four, in on_hand..unavailable),
#   'C' a count's on-hand after its time (`_ON_HAND_AFTER`: the ordinal in sku_id, the sum in on_hand).
# The catch: the statement reads with the snapshot it started with, and a lock it waited for was held
# by a transaction that committed after that. The locked rows themselves come back as that commit
# left them (Postgres re-reads a row it waited for), so the sums use the locked rows' values, and only
# positions not locked (which may move any time: see services.events) come from the snapshot. A
# count's ledger sum cannot be re-read that way, so `fresh` says whether the locked row is the very
# row version the snapshot sees (same ctid): then every change of that position, and the ledger rows
# written with it, committed before the snapshot. Where a counted position is not fresh, the caller
# reads the counts again (`on_hand_after_many`), as before. Measured: see the commit.
_LOCK_SIZED = (
    "WITH locked AS MATERIALIZED (SELECT s.sku_id, s.location_id, s.on_hand, s.committed, s.reserved, "
    "s.unavailable, s.safety_stock, s.incoming, s.version, s.counted_at, s.backordered, "
    "coalesce(s.ctid = v.ctid, false) AS fresh, v.on_hand AS seen_on_hand, "
    "v.committed + v.reserved + v.unavailable + v.safety_stock AS seen_claims, v.incoming AS seen_incoming "
    f"FROM {_KEYS_IN_ORDER} {_LOCKED_ROW}"
    "LEFT JOIN LATERAL (SELECT x.ctid, x.on_hand, x.committed, x.reserved, x.unavailable, x.safety_stock, "
    "x.incoming FROM stock_levels x WHERE x.sku_id = s.sku_id AND x.location_id = s.location_id OFFSET 0) AS v "
    "ON true ORDER BY s.sku_id, s.location_id) "
    "SELECT 'P' AS kind, sku_id, location_id, on_hand, committed, reserved, unavailable, safety_stock, incoming, "
    "version, counted_at, backordered, fresh, seen_on_hand, seen_claims, seen_incoming FROM locked "
    "UNION ALL SELECT 'M', m.*, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM ("
    + _MAGNITUDES.replace("sku_id, sum(", "sku_id, NULL::int, sum(", 1)
    + ") AS m UNION ALL SELECT 'C', c.i::int, NULL, c.after, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
    "NULL, NULL, NULL FROM ("
    + _ON_HAND_AFTER.replace("$3", "$5").replace("$2", "$4").replace("$1", "$3")
    + ") AS c(i, after)"
)


def _magnitude_of(on_hand: int, claims: int, incoming: int) -> tuple[int, int, int, int]:
    """One position's share of `_MAGNITUDES`' four sums."""
    return (on_hand if on_hand > 0 else 0, claims, incoming, -on_hand if on_hand < 0 else 0)


async def lock_positions_sized(
    db: asyncpg.Connection, pairs: Sequence[Pair], asked: Sequence[tuple[Pair, datetime]]
) -> tuple[list[asyncpg.Record], dict[int, tuple[int, int, int, int]], list[int] | None]:
    """`_LOCK_SIZED` (see there): the rows `lock_positions(pairs)` locks (with `fresh`), each of their
    SKUs' sums as `magnitudes` gives them, and `on_hand_after_many(asked)`, or None for the counts
    when a counted position was not locked fresh here (the caller then reads them again)."""
    rows = await run(
        db.fetch,
        _LOCK_SIZED,
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        [p[0] for p, _ in asked],
        [p[1] for p, _ in asked],
        [_naive(t) for _, t in asked],
    )
    locked: list[asyncpg.Record] = []
    sizes: dict[int, tuple[int, int, int, int]] = {}
    found: dict[int, int] = {}
    fresh: set[Pair] = set()
    moved: list[asyncpg.Record] = []
    for r in rows:
        kind = r[0]
        if kind == "P":
            locked.append(r)
            if r["fresh"]:
                fresh.add((r[1], r[2]))
            else:
                moved.append(r)
        elif kind == "M":
            sizes[r[1]] = (int(r[3]), int(r[4]), int(r[5]), int(r[6]))
        else:
            found[r[1]] = int(r[3])
    # the sums are the snapshot's: a position committed since counts as it was locked, not as seen
    for r in moved:
        share = _magnitude_of(
            r["on_hand"], r["committed"] + r["reserved"] + r["unavailable"] + r["safety_stock"], r["incoming"]
        )
        was = (
            (0, 0, 0, 0)
            if r["seen_on_hand"] is None
            else _magnitude_of(r["seen_on_hand"], r["seen_claims"], r["seen_incoming"])
        )
        before = sizes.get(r[1], (0, 0, 0, 0))
        sizes[r[1]] = (
            before[0] + share[0] - was[0],
            before[1] + share[1] - was[1],
            before[2] + share[2] - was[2],
            before[3] + share[3] - was[3],
        )
    if not all(p in fresh for p, _ in asked):
        return locked, sizes, None
    return locked, sizes, [found[i] for i in range(1, len(asked) + 1)]


async def fetch_value(db: asyncpg.Connection, sql: str, *args: Any) -> Any:
    """The first column of the first row of `sql` (prepared once per connection), None without a row;
    errors raised as SQLAlchemy's, like every statement here. Datetimes must be given naive (`naive`)."""
    return await run(db.fetchval, sql, *args)


async def execute(db: asyncpg.Connection, sql: str, *args: Any) -> None:
    """Run `sql` (prepared once per connection) for its effect; errors raised as SQLAlchemy's."""
    await run(db.execute, sql, *args)


def naive(value: datetime) -> datetime:
    """A UTC datetime as asyncpg takes it for a `timestamp without time zone` column."""
    return value.astimezone(UTC).replace(tzinfo=None)


# --- ledger and outbox ----------------------------------------------------------------------------

# Every column of inventory_events but its generated id, read from the table definition so a new
# column cannot be left out of the insert; stock.ledger_row must give each one (checked at its import).
LEDGER_COLUMNS = tuple(c.name for c in inventory_events.columns if not c.primary_key)
# asyncpg takes naive datetimes for `timestamp without time zone`: these get `_naive`
_TIMES = frozenset(c.name for c in inventory_events.columns if isinstance(c.type, UTCDateTime))
_INSERT_LEDGER = (
    f"INSERT INTO inventory_events ({', '.join(LEDGER_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(LEDGER_COLUMNS) + 1))})"
)


def _ledger_type(column: str) -> str:
    """The Postgres type of a ledger column, without a length (lower case)."""
    compiled = inventory_events.c[column].type.compile(dialect=postgresql.dialect())  # type: ignore[no-untyped-call]
    return re.sub(r"[(].*[)]", "", compiled).lower()


# Several rows as ONE statement over arrays, one per column: an executemany runs the insert (its
# executor, the unique index checks' setup) once per row; a batch of 500 ingested events spent most
# of its time inside the positions' row locks doing that (bench/ingest.py)
def ledger_from_unnest(first: int) -> str:
    """INSERT of ledger rows from one array per column, the arrays being parameters $first, $first + 1..."""
    return (
        f"INSERT INTO inventory_events ({', '.join(LEDGER_COLUMNS)}) SELECT * FROM unnest("
        + ", ".join(
            # without a length: an explicit cast to varchar(n) would cut a longer text silently, the
            # insert itself refuses it (as the single-row insert does)
            f"${i}::{_ledger_type(c).upper()}[]"
            for i, c in enumerate(LEDGER_COLUMNS, start=first)
        )
        + ")"
    )


_INSERT_LEDGER_MANY = ledger_from_unnest(1)

_INSERT_OUTBOX = "INSERT INTO outbox (sku_id, location_id, created_at) VALUES ($1, $2, $3)"
_INSERT_OUTBOX_MANY = (
    "INSERT INTO outbox (sku_id, location_id, created_at) SELECT s, l, $3 FROM unnest($1::int[], $2::int[]) AS u(s, l)"
)


def ledger_columns(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """One list per ledger column (naive UTC times); unnest keeps their order, so ids follow the rows'."""
    return [[_naive(r[c]) for r in rows] if c in _TIMES else [r[c] for r in rows] for c in LEDGER_COLUMNS]


async def write_ledger(db: asyncpg.Connection, rows: Sequence[dict[str, Any]]) -> None:
    if len(rows) == 1:
        row = rows[0]
        await run(db.execute, _INSERT_LEDGER, *[_naive(row[c]) if c in _TIMES else row[c] for c in LEDGER_COLUMNS])
    elif rows:
        await run(db.execute, _INSERT_LEDGER_MANY, *ledger_columns(rows))


async def enqueue_changes(db: asyncpg.Connection, pairs: Sequence[Pair], now: datetime) -> None:
    if len(pairs) == 1:
        await run(db.execute, _INSERT_OUTBOX, pairs[0][0], pairs[0][1], _naive(now))
    elif pairs:
        await run(db.execute, _INSERT_OUTBOX_MANY, [p[0] for p in pairs], [p[1] for p in pairs], _naive(now))


def sales_upsert(rows: str, last_at: str, half_life: str) -> str:
    """The INSERT adding sales to `sku_demand` (services.demand: the stored count decays from last_at
    to now, 2^(-age / half-life), a clock that went back never grows it, then the new units are added):
    `rows` a FROM item giving columns (s: SKU id, c: channel code, u: units), `last_at` and `half_life`
    the SQL of those values."""
    return (
        "INSERT INTO sku_demand AS d (sku_id, channel_code, units, last_at) "
        f"SELECT s, c, u, {last_at} FROM {rows} "
        "ON CONFLICT (tenant_id, sku_id, channel_code) DO UPDATE SET "
        "units = d.units * power(2.0, -greatest(0.0, extract(epoch FROM excluded.last_at - d.last_at)) "
        f"/ {half_life}) + excluded.units, last_at = greatest(d.last_at, excluded.last_at)"
    )


# An ingested batch's writes in ONE statement (services.events): the positions' summed changes
# (_APPLY_MANY, $1..$11), its ledger rows (one array per column from $12), its outbox rows (the two
# arrays after those, created at $11) and its reported sales (SKU ids and units, then the half-life:
# services.demand's sales upsert, at $11), with one more row (sku_id NULL) saying whether any
# channel has a dynamic buffer (then the caller moves those of the sold SKUs). Each of these was its
# own round trip, made while the batch holds its positions' row locks, so every other batch waiting
# on one of them waited for the round trips (and, each time, for the server's event loop to come back
# to this transaction). The sales' rows are locked after the positions (the lock order: stock rows,
# then demand rows): the positions were locked by an earlier statement.
_OUTBOX_FIRST = 12 + len(LEDGER_COLUMNS)
_SALES_FIRST = _OUTBOX_FIRST + 2
_WRITE_BATCH = (
    f"WITH changed AS ({_APPLY_MANY}), "
    f"recorded AS ({ledger_from_unnest(12)}), "
    f"published AS (INSERT INTO outbox (sku_id, location_id, created_at) SELECT s, l, $11 "
    f"FROM unnest(${_OUTBOX_FIRST}::int[], ${_OUTBOX_FIRST + 1}::int[]) AS x(s, l)), "
    "sold AS ("
    + sales_upsert(
        f"(SELECT s, ''::varchar AS c, n::float8 AS u FROM unnest(${_SALES_FIRST}::int[], "
        f"${_SALES_FIRST + 1}::bigint[]) AS y(s, n)) AS t",
        "$11",
        f"${_SALES_FIRST + 2}::float8",
    )
    + ") SELECT sku_id, location_id, version FROM changed UNION ALL SELECT NULL, NULL, "
    "(EXISTS (SELECT 1 FROM channels WHERE dynamic_buffer_factor IS NOT NULL))::int::bigint"
)


# _WRITE_BATCH with every array parameter sent as one array literal (text), which Postgres parses in C:
# asyncpg encodes a list element by element in Python (an isinstance check and a codec call each),
# and a batch of 500 events sends 37 arrays of 500. Client CPU of one 500-row write_batch (process_time
# around the call, best of 40): 3.9-4.1 -> 3.0 ms; its wall time with Postgres' work unchanged (best
# 12.9 ms both). Texts are quoted and escaped, NULLs unquoted (tests/test_pg_fast_path.py reads back
# quotes, backslashes, braces, commas, "NULL" as a text, NULLs and microseconds).
_ARRAY_PARAM = re.compile(r"(\$\d+)::([A-Za-z][A-Za-z ]*?)\[\]")


def _array_literal_sql(sql: str) -> tuple[str, dict[int, Callable[[Sequence[Any]], str]]]:
    """`sql` with each `$n::type[]` taking a text (`$n::text::type[]`), and the encoder of each such
    parameter, by its index in the arguments."""
    encoders: dict[int, Callable[[Sequence[Any]], str]] = {}
    for match in _ARRAY_PARAM.finditer(sql):
        type_ = match.group(2)
        encoder = _LITERALS.get(type_.lower())
        if encoder is None:
            raise ValueError(f"no array literal for {type_}[]")
        encoders[int(match.group(1)[1:]) - 1] = encoder
    return _ARRAY_PARAM.sub(r"\1::text::\2[]", sql), encoders


def _int_literal(values: Sequence[Any]) -> str:
    # str() of an int is its literal; None (a NULL) is the one other value these columns get, and no
    # number's text contains "None". Anything else (a float, a bool) is refused by Postgres' int parser
    return ("{" + ",".join(map(str, values)) + "}").replace("None", "NULL")


def _text_literal(values: Sequence[Any]) -> str:
    return (
        "{"
        + ",".join("NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
        + "}"
    )


def _time_literal(values: Sequence[Any]) -> str:
    # naive UTC already (as asyncpg takes them): ISO text, read back to the microsecond
    return "{" + ",".join("NULL" if v is None else v.isoformat() for v in values) + "}"


_LITERALS: dict[str, Callable[[Sequence[Any]], str]] = {
    "int": _int_literal,
    "integer": _int_literal,
    "bigint": _int_literal,
    "varchar": _text_literal,
    "text": _text_literal,
    "timestamp": _time_literal,
    "timestamp without time zone": _time_literal,
}


# An ingested batch's ledger rows, kept as the elements of _WRITE_BATCH's array literals. The columns
# an event fixes (`LEDGER_FIXED`: its source, external id, kind, position, quantity, times, texts and
# fingerprint) are encoded before the batch takes its positions' row locks; those its decision gives
# (`LEDGER_DECIDED`) as it is decided, in the locks. Made there as one dict per row, then turned into
# one list per column and encoded, 500 rows' arguments took 4.8-8.5 ms of the locked section on a slow
# day (timeit; bench/locked_section.py measures the whole section, bench/README.md "Round h25").
LEDGER_DECIDED = (
    "status",
    "d_on_hand",
    "d_committed",
    "d_reserved",
    "d_unavailable",
    "d_safety_stock",
    "d_incoming",
    "drift",
    "version",
)
LEDGER_FIXED = tuple(c for c in LEDGER_COLUMNS if c not in LEDGER_DECIDED)
if set(LEDGER_DECIDED) - set(LEDGER_COLUMNS):
    raise RuntimeError("pg.LEDGER_DECIDED names a column inventory_events lacks")


def _text_element(value: Any) -> str:
    return "NULL" if value is None else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _int_element(value: Any) -> str:
    return "NULL" if value is None else str(value)


@functools.lru_cache(maxsize=4096)
def _utc_time_element(value: Any) -> str:
    # remembered: a batch's rows share their received_at (and re-sent events their occurred_at)
    return "NULL" if value is None else _naive(value).isoformat()  # type: ignore[union-attr]


def _element_encoder(column: str) -> Callable[[Any], str]:
    """The array-literal element of one value of a ledger column (as the column's `_LITERALS` encoder
    writes each; times given aware, as in the rows)."""
    if column in _TIMES:
        return _utc_time_element
    return _int_element if _LITERALS[_ledger_type(column)] is _int_literal else _text_element


class FixedColumns(NamedTuple):
    """A ledger row's LEDGER_FIXED columns, encoded, and the three of them services.demand reads."""

    elements: tuple[str, ...]
    kind: str
    sku_id: int
    quantity: int


class LedgerRows:
    """Ledger rows for `write_batch`: each row's fixed columns encoded once (`fixed`, before the row
    locks), its decided ones given with it (`add`, in them). Rows made as dicts (`stock.ledger_row`)
    join them with `add_row`."""

    __slots__ = ("_decided", "_fixed", "demand")

    def __init__(self) -> None:
        self._fixed: list[tuple[str, ...]] = []  # the LEDGER_FIXED elements of each row
        self._decided: list[tuple[Any, ...]] = []  # each row's LEDGER_DECIDED values, not encoded yet
        # (kind, status, SKU id, quantity) of each row: services.demand finds the reported sales in them
        self.demand: list[tuple[str, str, int, int]] = []

    @staticmethod
    def fixed(row: Mapping[str, Any]) -> FixedColumns:
        """The LEDGER_FIXED columns of `row` (any mapping with those keys), encoded."""
        elements = tuple([encode(row[c]) for c, encode in _FIXED_ENCODERS])
        return FixedColumns(elements, row["kind"], row["sku_id"], row["quantity"])

    def add(self, fixed: FixedColumns, decided: tuple[Any, ...]) -> None:
        """A row: its `fixed` columns and its LEDGER_DECIDED values, in that order (status first)."""
        self._fixed.append(fixed.elements)
        self._decided.append(decided)
        self.demand.append((fixed.kind, decided[0], fixed.sku_id, fixed.quantity))

    def add_row(self, row: Mapping[str, Any]) -> None:
        """A row made as a dict with every ledger column (stock.ledger_row)."""
        self.add(self.fixed(row), tuple([row[c] for c in LEDGER_DECIDED]))

    def __len__(self) -> int:
        return len(self._fixed)

    def literals(self) -> list[str]:
        """One array literal per ledger column, in LEDGER_COLUMNS order."""
        if not self._fixed:
            return ["{}"] * len(LEDGER_COLUMNS)
        by_column: dict[str, str] = {}
        for c, elements in zip(LEDGER_FIXED, zip(*self._fixed, strict=True), strict=True):
            by_column[c] = "{" + ",".join(elements) + "}"
        for c, values in zip(LEDGER_DECIDED, zip(*self._decided, strict=True), strict=True):
            by_column[c] = _DECIDED_LITERALS[c](values)
        return [by_column[c] for c in LEDGER_COLUMNS]


_FIXED_ENCODERS = [(c, _element_encoder(c)) for c in LEDGER_FIXED]


def fixed_columns_maker(given: Sequence[str], constants: Mapping[str, Any]) -> Callable[..., FixedColumns]:
    """`LedgerRows.fixed` of rows whose LEDGER_FIXED columns are the values `given` names, passed
    positionally in that order, and `constants`, the same for every row (encoded once here): a batch
    makes one row per event, without a dict each."""
    if sorted([*given, *constants]) != sorted(LEDGER_FIXED) or not {"kind", "sku_id", "quantity"} <= set(given):
        raise ValueError("fixed_columns_maker: name every fixed column once, kind, sku_id and quantity among given")
    # per column: the index of its value and its encoder, or (-1, its element)
    plan: list[tuple[int, Any]] = [
        (given.index(c), encode) if c in given else (-1, encode(constants[c])) for c, encode in _FIXED_ENCODERS
    ]
    kind, sku_id, quantity = given.index("kind"), given.index("sku_id"), given.index("quantity")

    def make(*values: Any) -> FixedColumns:
        elements = tuple([encode if i < 0 else encode(values[i]) for i, encode in plan])
        return FixedColumns(elements, values[kind], values[sku_id], values[quantity])

    return make


_DECIDED_LITERALS = {c: _LITERALS[_ledger_type(c)] for c in LEDGER_DECIDED}


async def write_batch(
    db: asyncpg.Connection,
    changes: Sequence[tuple[Pair, Sequence[int], int, datetime | None]],
    now: datetime,
    ledger: Sequence[Mapping[str, Any]] | LedgerRows,
    outbox: Sequence[Pair],
    sales: Sequence[tuple[int, int]] = (),
    half_life: float = 1.0,
) -> tuple[dict[Pair, int], bool]:
    """apply_deltas(changes), write_ledger(ledger), enqueue_changes(outbox) and the reported `sales`
    ((SKU id, units), each SKU once, added to its demand under no channel with `half_life` seconds) as
    one statement. Returns each changed position's version after it, as apply_deltas does, and whether
    any channel has a dynamic buffer."""
    if not isinstance(ledger, LedgerRows):
        given, ledger = ledger, LedgerRows()
        for row in given:
            ledger.add_row(row)
    args: list[Any] = [
        *_delta_columns(changes),
        _naive(now),
        *ledger.literals(),  # encoded already
        [p[0] for p in outbox],
        [p[1] for p in outbox],
        [s for s, _ in sales],
        [units for _, units in sales],
        half_life,
    ]
    for i, encode in _WRITE_BATCH_ENCODERS.items():
        args[i] = encode(args[i])
    rows = await run(db.fetch, _WRITE_BATCH_LITERALS, *args)
    versions: dict[Pair, int] = {}
    dynamic = False
    for r in rows:
        if r[0] is None:
            dynamic = bool(r[2])
        else:
            versions[(r[0], r[1])] = int(r[2])
    if len(versions) != len(changes):
        raise LookupError("write_batch: a position is missing")
    return versions, dynamic


_WRITE_BATCH_LITERALS, _WRITE_BATCH_ENCODERS = _array_literal_sql(_WRITE_BATCH)
# the ledger's arrays come as literals already (LedgerRows.literals)
for _i in range(11, 11 + len(LEDGER_COLUMNS)):
    del _WRITE_BATCH_ENCODERS[_i]


# --- reads of the outbox relay and of availability ------------------------------------------------

# Every SKU asked for (by id or code) with each of its positions, and the location epoch, in ONE
# statement: one snapshot, so figures and versions agree (a SKU with no position yet gives one row
# of NULL position columns).
_AVAILABILITY = (
    "SELECT s.id AS sku_id, s.code AS sku_code, s.active AS sku_active, s.version AS sku_version, "
    "(SELECT coalesce(max(c.value), 0) FROM counters c WHERE c.name = 'locations') AS location_epoch, "
    "p.location_id, p.on_hand, p.committed, p.reserved, p.unavailable, p.safety_stock, p.incoming, "
    "p.version, p.updated_at, l.code AS location_code, l.active AS location_active "
    "FROM skus s LEFT JOIN stock_levels p ON p.sku_id = s.id LEFT JOIN locations l ON l.id = p.location_id "
    "WHERE s.id = ANY($1::int[]) OR s.code = ANY($2::varchar[]) ORDER BY l.code"
)


async def availability_rows(
    db: asyncpg.Connection, sku_ids: Sequence[int], sku_codes: Sequence[str]
) -> list[asyncpg.Record]:
    """Rows of `_AVAILABILITY`; updated_at still naive (see `aware`)."""
    return list(await run(db.fetch, _AVAILABILITY, list(sku_ids), list(sku_codes)))


def aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


# The relay's read of a commit it was told about (relay.publish_hinted), in ONE round trip: the outbox
# rows of the hinted positions claimed (deleted now, restored by a rollback if the publication fails;
# rows another relay holds are skipped), `_AVAILABILITY`'s rows for the SKUs, and one more row
# (sku_id NULL) carrying the claimed positions, the channels' codes and the claim's commit mode. One
# statement is one snapshot: a claimed row's change is in the state read. Before this the hint path
# read the state (and the channels) without claiming, and a drain 50 ms later claimed the rows and read
# the same ~2,400 levels again, for a routed order (bench/routing.py), to publish nothing new.
# The claim takes the named positions' rows in a CTE of its own, each position probed through
# ix_outbox_position (LATERAL), and deletes them by id. The outbox is a queue: its statistics say it
# is nearly empty, and with `id IN (SELECT ... JOIN unnest ...)` Postgres nested a scan of the whole
# outbox inside a scan of the whole outbox (a semi-join): with a backlog of 12,104 rows one claim ran
# for minutes and the relay published nothing meanwhile (tests/test_pg_plans.py, bench/README h23).
_CLAIM_AND_READ = (
    "WITH taken AS MATERIALIZED (SELECT x.id FROM unnest($2::int[], $3::int[]) AS k(sku_id, location_id) "
    "CROSS JOIN LATERAL (SELECT o.id FROM outbox o WHERE o.sku_id = k.sku_id AND o.location_id = k.location_id "
    "FOR UPDATE SKIP LOCKED) AS x), "
    "claimed AS (DELETE FROM outbox o USING taken WHERE o.id = taken.id RETURNING o.sku_id, o.location_id) "
    "SELECT s.id AS sku_id, s.code AS sku_code, s.active AS sku_active, s.version AS sku_version, "
    "(SELECT coalesce(max(c.value), 0) FROM counters c WHERE c.name = 'locations') AS location_epoch, "
    "p.location_id, p.on_hand, p.committed, p.reserved, p.unavailable, p.safety_stock, p.incoming, "
    "p.version, p.updated_at, l.code AS location_code, l.active AS location_active, "
    "NULL::int[] AS claimed_skus, NULL::int[] AS claimed_locations, NULL::varchar[] AS channels, "
    "NULL::text AS sync "
    "FROM unnest($1::int[]) AS q(id) CROSS JOIN LATERAL (SELECT id, code, active, version FROM skus "
    "WHERE id = q.id OFFSET 0) AS s "
    "LEFT JOIN stock_levels p ON p.sku_id = s.id LEFT JOIN locations l ON l.id = p.location_id "
    "UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
    "NULL, NULL, (SELECT array_agg(sku_id) FROM claimed), (SELECT array_agg(location_id) FROM claimed), "
    "(SELECT array_agg(code ORDER BY code) FROM channels), set_config('synchronous_commit', 'off', true) "
    "ORDER BY location_code"
)


async def claim_and_read(
    db: asyncpg.Connection, sku_ids: Sequence[int], pairs: Sequence[Pair]
) -> tuple[list[asyncpg.Record], set[Pair], list[str]]:
    """`_CLAIM_AND_READ` (see there), in a write transaction of the tenant the pairs belong to: the
    SKUs' availability rows (as `availability_rows`), the positions whose outbox rows were claimed,
    and every channel's code. The claim's commit does not wait for the WAL flush (as claim_outbox's)."""
    rows = await run(db.fetch, _CLAIM_AND_READ, list(sku_ids), [p[0] for p in pairs], [p[1] for p in pairs])
    # the meta row has no location code, so it sorts last, among SKUs without positions (also none)
    at = len(rows) - 1
    while rows[at]["sku_id"] is not None:
        at -= 1
    meta = rows.pop(at)
    claimed = set(zip(meta["claimed_skus"] or (), meta["claimed_locations"] or (), strict=True))
    return rows, claimed, list(meta["channels"] or ())


# the oldest rows, taken in a CTE first and deleted by id (as _CLAIM_AND_READ, and for its reason)
_CLAIM = (
    "WITH taken AS MATERIALIZED (SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) "
    "DELETE FROM outbox o USING taken WHERE o.id = taken.id "
    "RETURNING o.id, o.sku_id, o.location_id, o.tenant_id"
)


async def claim_outbox(db: asyncpg.Connection, batch_size: int) -> list[asyncpg.Record]:
    """The oldest outbox rows, deleted now (restored by a rollback), skipping rows another relay holds.

    The claim's commit does not wait for the WAL flush: lost in a crash, it only means the rows are
    published again. That halves the flushes of a busy service (one per change, one per relay batch).
    """
    await run(db.execute, "SET LOCAL synchronous_commit TO off")
    return list(await run(db.fetch, _CLAIM, batch_size))


async def channel_codes(db: asyncpg.Connection) -> list[str]:
    return [r["code"] for r in await run(db.fetch, "SELECT code FROM channels ORDER BY code")]


# --- the checkout (reserve with every location named) ---------------------------------------------
# Each statement below replaces several of the usual path's (issue 15: a reserve ran ~10 statements, half
# through SQLAlchemy): fewer round trips per reserve, and on a hot SKU fewer inside its row lock.

# The idempotency claim, the request's SKUs and locations, and whether any ACTIVE reservation holding
# one of these SKUs is past its expiry, in ONE round trip: kind 'C' (the claim won: the key was free;
# code: the reservation's id, a random UUID made by Postgres when none is given: uuid.uuid4 showed as
# ~15 % of the server's samples per reserve),
# 'S'/'L' (code, id, active), 'D' (some expired hold is due: the caller reclaims it the locking way).
# The claim runs first and alone decides a first call from a retry; the probe reads without locking
# (a hold due now was due before this statement's snapshot: a new hold's expiry is in the future).
_OPEN_RESERVATION = (
    "WITH claim AS (INSERT INTO reservations (id, status, idempotency_scope, idempotency_key, fingerprint, "
    "channel_code, cart_ref, created_at, updated_at, expires_at, owner_key_id, account_code) "
    "VALUES (coalesce($1::varchar, gen_random_uuid()::text), $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11) "
    "ON CONFLICT (tenant_id, idempotency_scope, idempotency_key) DO NOTHING RETURNING id) "
    "SELECT 'C' AS kind, id::varchar AS code, NULL::int AS id, NULL::boolean AS active FROM claim "
    "UNION ALL SELECT 'S', code, id, active FROM skus WHERE code = ANY($12::varchar[]) "
    "UNION ALL SELECT 'L', code, id, active FROM locations WHERE code = ANY($13::varchar[]) "
    "UNION ALL SELECT 'D', NULL, NULL, NULL FROM (SELECT 1 FROM reservations r "
    "WHERE r.status = 'ACTIVE' AND r.expires_at <= $8 AND r.id IN (SELECT rl.reservation_id "
    "FROM reservation_lines rl JOIN skus s ON s.id = rl.sku_id WHERE s.code = ANY($12::varchar[])) LIMIT 1) due"
)


async def open_reservation(
    db: asyncpg.Connection, row: dict[str, Any], sku_codes: Sequence[str], location_codes: Sequence[str]
) -> tuple[str | None, dict[str, tuple[int, bool]], dict[str, tuple[int, bool]], bool]:
    """Claim `row` (a reservation row, reservations' columns by name; id None: made here) under its
    idempotency key and look up the request. Returns (the reservation's id if claimed, else None;
    SKU code -> (id, active); location code -> (id, active); whether an expired hold is due)."""
    rows = await run(
        db.fetch,
        _OPEN_RESERVATION,
        row["id"],
        row["status"],
        row["idempotency_scope"],
        row["idempotency_key"],
        row["fingerprint"],
        row["channel_code"],
        row["cart_ref"],
        _naive(row["created_at"]),
        _naive(row["expires_at"]),
        row["owner_key_id"],
        row["account_code"],
        list(sku_codes),
        list(location_codes),
    )
    return opened(rows)


def opened(
    rows: Sequence[Any],
) -> tuple[str | None, dict[str, tuple[int, bool]], dict[str, tuple[int, bool]], bool]:
    """The rows of a claim-and-look-up statement (kind, code, id, active), kind C the claimed id,
    D an expired hold due, S a SKU, else a location: (claimed id or None, SKUs, locations, due)."""
    claimed: str | None = None
    due = False
    skus: dict[str, tuple[int, bool]] = {}
    locations: dict[str, tuple[int, bool]] = {}
    for kind, code, id_, active in rows:
        if kind == "C":
            claimed = code
        elif kind == "D":
            due = True
        else:
            (skus if kind == "S" else locations)[code] = (id_, active)
    return claimed, skus, locations, due


def _typed(column: Any) -> str:
    from sqlalchemy.dialects import postgresql

    return str(column.type.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]


# The hold of one named position and everything it writes, in one statement (`hold_named_sql`): the
# conditional UPDATE (the row changes only while `$5` units are available: quantity plus the units to leave untouched),
# then, only when it took the units, the reservation line, the ledger row with the version it made, the
# outbox row and (`$8` > 0) the sales-velocity upsert (app/services/demand/recording.py, the same
# arithmetic). The inserts read the UPDATE's result, so the position's row lock is taken first (the lock
# order: stock rows, then demand rows). Returns the version (no row: refused, nothing written) and
# whether any channel has a dynamic buffer (then the caller moves them).
# The ledger row's columns come from stock.ledger_row (every column but the version as a parameter,
# typed from the table), so a new ledger column cannot be left out here either.
_LEDGER_PARAMS = tuple(c for c in LEDGER_COLUMNS if c != "version")


def hold_named_sql(can_hold: str) -> str:
    """`_HOLD_NAMED` with the hold's condition (stock.can_hold of `$5`, compiled: its one definition)."""
    ledger_values = ", ".join(f"${10 + i}::{_typed(inventory_events.c[c])}" for i, c in enumerate(_LEDGER_PARAMS))
    return (
        "WITH h AS (UPDATE stock_levels SET reserved = reserved + $3, version = version + 1, updated_at = $4 "
        f"WHERE sku_id = $1 AND location_id = $2 AND {can_hold} RETURNING sku_id, location_id, version), "
        "line AS (INSERT INTO reservation_lines (reservation_id, sku_id, location_id, quantity, backordered, "
        "backorder_open, preordered) SELECT $6, sku_id, location_id, $3, 0, 0, 0 FROM h), "
        "box AS (INSERT INTO outbox (sku_id, location_id, created_at) SELECT sku_id, location_id, $4 FROM h), "
        "sale AS (INSERT INTO sku_demand AS d (sku_id, channel_code, units, last_at) "
        "SELECT sku_id, $7::varchar, $8::float8, $4 FROM h WHERE $8::float8 > 0 "
        "ON CONFLICT (tenant_id, sku_id, channel_code) DO UPDATE SET "
        "units = d.units * power(2.0, -greatest(0.0, extract(epoch FROM excluded.last_at - d.last_at)) "
        "/ $9::float8) + excluded.units, last_at = greatest(d.last_at, excluded.last_at)), "
        f"led AS (INSERT INTO inventory_events ({', '.join(_LEDGER_PARAMS)}, version) "
        f"SELECT {ledger_values}, version FROM h) "
        "SELECT version, EXISTS (SELECT 1 FROM channels WHERE dynamic_buffer_factor IS NOT NULL) AS dynamic FROM h"
    )


async def hold_named(
    db: asyncpg.Connection,
    sql: str,
    pair: Pair,
    quantity: int,
    now: datetime,
    reservation_id: str,
    ledger: dict[str, Any],
    sale: tuple[str, float] | None,
    half_life: float,
) -> tuple[int, bool] | None:
    """Run `hold_named_sql(...)`: (version, any dynamic buffer) or None when the units are not available.
    `ledger`: the row stock.ledger_row makes (its version is ignored); `sale`: (channel code, units)
    to add to the SKU's velocity, None for none."""
    channel, units = sale if sale is not None else ("", 0.0)
    args = [_naive(ledger[c]) if c in _TIMES else ledger[c] for c in _LEDGER_PARAMS]
    row = await run(
        db.fetchrow,
        sql,
        pair[0],
        pair[1],
        quantity,
        _naive(now),
        quantity,
        reservation_id,
        channel,
        units,
        half_life,
        *args,
    )
    return None if row is None else (int(row["version"]), bool(row["dynamic"]))
