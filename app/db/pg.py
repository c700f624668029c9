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

import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.compat import begin_driver_transaction
from app.db.engine import Pair
from app.db.tables import inventory_events
from app.db.types import UTCDateTime
from app.domain.quantities import Position

T = TypeVar("T")


async def driver(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `conn`, in `conn`'s transaction if it has one.

    A connection SQLAlchemy has not begun (a `Database.read()` that ran nothing yet) gets none: its
    statements run on their own, each with its own snapshot, like single reads do anyway.
    """
    raw = await conn.get_raw_connection()
    connection: asyncpg.Connection = raw.driver_connection
    if conn.in_transaction():
        # SQLAlchemy's asyncpg adapter sends BEGIN with its first statement; without this, statements
        # sent here first would run outside the transaction (each committed on its own)
        await begin_driver_transaction(raw.dbapi_connection)
        if not connection.is_in_transaction():
            raise RuntimeError("pg.driver(): the asyncpg connection is not in the transaction")
    return connection


async def _run(call: Callable[..., Awaitable[T]], sql: str, *args: Any) -> T:
    try:
        return await call(sql, *args)
    except asyncpg.PostgresError as exc:
        if str(getattr(exc, "sqlstate", "")).startswith("23"):
            raise IntegrityError(sql, args, exc) from exc
        raise DBAPIError(sql, args, exc) from exc


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
# version, fingerprint)
_LOOK_UP = (
    "SELECT 'S' AS kind, code AS a, NULL::varchar AS b, id::bigint AS n, NULL::varchar AS c "
    "FROM skus WHERE code = ANY($1::varchar[]) "
    "UNION ALL SELECT 'L', code, count_authority, id, NULL FROM locations WHERE code = ANY($2::varchar[]) "
    "UNION ALL SELECT 'E', e.source, e.external_id, e.version, e.fingerprint FROM inventory_events e "
    "JOIN unnest($3::varchar[], $4::varchar[]) AS k(source, external_id) "
    "ON e.source = k.source AND e.external_id = k.external_id"
)


async def look_up(
    db: asyncpg.Connection, sku_codes: Sequence[str], location_codes: Sequence[str], keys: Sequence[tuple[str, str]]
) -> tuple[dict[str, int], dict[str, tuple[int, str | None]], dict[tuple[str, str], tuple[str | None, int]]]:
    """SKU code -> id; location code -> (id, count_authority); (source, external id) -> (fingerprint,
    version) of the events already recorded."""
    rows = await _run(
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

_LOCK = (
    "SELECT s.sku_id, s.location_id, s.on_hand, s.committed, s.reserved, s.unavailable, s.safety_stock, "
    "s.incoming, s.version, s.counted_at, s.backordered FROM stock_levels s "
    "JOIN unnest($1::int[], $2::int[]) AS k(sku_id, location_id) "
    "ON s.sku_id = k.sku_id AND s.location_id = k.location_id "
    "ORDER BY s.sku_id, s.location_id FOR UPDATE OF s"
)


async def lock_positions(db: asyncpg.Connection, pairs: Sequence[Pair]) -> list[asyncpg.Record]:
    """Rows locked in key order (see stock.lock_positions); counted_at still naive."""
    return list(await _run(db.fetch, _LOCK, [p[0] for p in pairs], [p[1] for p in pairs]))


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
    version = await _run(db.fetchval, _APPLY[(delta is not None, counted is not None)], *args)
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


async def apply_deltas(
    db: asyncpg.Connection,
    changes: Sequence[tuple[Pair, Sequence[int], int, datetime | None]],
    now: datetime,
) -> dict[Pair, int]:
    """(position, the six summed deltas, number of changes, counted_at or None) for each position, in
    one UPDATE; returns each position's version after it."""
    if not changes:
        return {}
    columns: list[list[Any]] = [[] for _ in range(10)]
    for pair, delta, n, counted in changes:
        columns[0].append(pair[0])
        columns[1].append(pair[1])
        for k in range(6):
            columns[2 + k].append(delta[k])
        columns[8].append(n)
        columns[9].append(_naive(counted))
    rows = await _run(db.fetch, _APPLY_MANY, *columns, _naive(now))
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
    rows = await _run(
        db.fetch, _ON_HAND_AFTER, [p[0] for p, _ in asked], [p[1] for p, _ in asked], [_naive(t) for _, t in asked]
    )
    found = {int(r[0]): int(r[1]) for r in rows}
    return [found[i] for i in range(1, len(asked) + 1)]


async def fetch_value(db: asyncpg.Connection, sql: str, *args: Any) -> Any:
    """The first column of the first row of `sql` (prepared once per connection), None without a row;
    errors raised as SQLAlchemy's, like every statement here. Datetimes must be given naive (`naive`)."""
    return await _run(db.fetchval, sql, *args)


async def execute(db: asyncpg.Connection, sql: str, *args: Any) -> None:
    """Run `sql` (prepared once per connection) for its effect; errors raised as SQLAlchemy's."""
    await _run(db.execute, sql, *args)


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
# Several rows as ONE statement over arrays, one per column: an executemany runs the insert (its
# executor, the unique index checks' setup) once per row; a batch of 500 ingested events spent most
# of its time inside the positions' row locks doing that (bench/ingest.py)
_INSERT_LEDGER_MANY = (
    f"INSERT INTO inventory_events ({', '.join(LEDGER_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(
        # without a length: an explicit cast to varchar(n) would cut a longer text silently, the
        # insert itself refuses it (as the single-row insert does)
        f"${i}::{re.sub(r'[(].*[)]', '', c.type.compile(dialect=postgresql.dialect()))}[]"  # type: ignore[no-untyped-call]
        for i, c in enumerate((inventory_events.c[n] for n in LEDGER_COLUMNS), start=1)
    )
    + ")"
)
_INSERT_OUTBOX = "INSERT INTO outbox (sku_id, location_id, created_at) VALUES ($1, $2, $3)"
_INSERT_OUTBOX_MANY = (
    "INSERT INTO outbox (sku_id, location_id, created_at) SELECT s, l, $3 FROM unnest($1::int[], $2::int[]) AS u(s, l)"
)


async def write_ledger(db: asyncpg.Connection, rows: Sequence[dict[str, Any]]) -> None:
    if len(rows) == 1:
        row = rows[0]
        await _run(db.execute, _INSERT_LEDGER, *[_naive(row[c]) if c in _TIMES else row[c] for c in LEDGER_COLUMNS])
    elif rows:
        # unnest keeps the arrays' order, so ids follow the rows' order as an executemany's did
        columns = [[_naive(r[c]) for r in rows] if c in _TIMES else [r[c] for r in rows] for c in LEDGER_COLUMNS]
        await _run(db.execute, _INSERT_LEDGER_MANY, *columns)


async def enqueue_changes(db: asyncpg.Connection, pairs: Sequence[Pair], now: datetime) -> None:
    if len(pairs) == 1:
        await _run(db.execute, _INSERT_OUTBOX, pairs[0][0], pairs[0][1], _naive(now))
    elif pairs:
        await _run(db.execute, _INSERT_OUTBOX_MANY, [p[0] for p in pairs], [p[1] for p in pairs], _naive(now))


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
    return list(await _run(db.fetch, _AVAILABILITY, list(sku_ids), list(sku_codes)))


def aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


_CLAIM = (
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) "
    "RETURNING id, sku_id, location_id, tenant_id"
)


async def claim_outbox(db: asyncpg.Connection, batch_size: int) -> list[asyncpg.Record]:
    """The oldest outbox rows, deleted now (restored by a rollback), skipping rows another relay holds.

    The claim's commit does not wait for the WAL flush: lost in a crash, it only means the rows are
    published again. That halves the flushes of a busy service (one per change, one per relay batch).
    """
    await _run(db.execute, "SET LOCAL synchronous_commit TO off")
    return list(await _run(db.fetch, _CLAIM, batch_size))


async def channel_codes(db: asyncpg.Connection) -> list[str]:
    return [r["code"] for r in await _run(db.fetch, "SELECT code FROM channels ORDER BY code")]
