"""The SQL that must be atomic. Overselling is prevented here, by the database, not by Python checks.

`hold` is a single conditional UPDATE: the row changes only if the units are available at the moment
the database applies it. Concurrent holds on one row queue on its row lock and each re-checks the
condition against the latest committed row, so two buyers can never both take the last unit.

The statements every stock change runs (hold, lock, apply, ledger, outbox) go to asyncpg as prepared
statements (app/db/pg.py, for the CPU SQLAlchemy spends per statement); the rarer ones here stay
SQLAlchemy Core, written against the table definitions Alembic migrates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy import ColumnElement, bindparam, func, literal_column, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg
from app.db.engine import Pair as Pair  # re-exported: services name positions stock.Pair
from app.db.engine import note_changed
from app.db.tables import (
    channel_holds,
    channels,
    counters,
    inventory_events,
    reservation_lines,
    reservations,
    stock_levels,
)
from app.domain.events import EventStatus, LedgerKind
from app.domain.quantities import Delta, Magnitude, Position

sl = stock_levels


def available_sql() -> ColumnElement[int]:
    return sl.c.on_hand - sl.c.committed - sl.c.reserved - sl.c.unavailable - sl.c.safety_stock


def can_hold(units: ColumnElement[Any]) -> ColumnElement[bool]:
    """The condition every hold is written under (`hold`, a channel's hold, routing's batch hold): the
    position has `units` available when the database applies the change, so no hold can oversell."""
    return available_sql() >= units


# one hold as the database applied it: (position, units, the position's version after it). A position
# held twice in one transaction (a line at a location and a line anywhere, a re-plan) has two: each
# bumped the version and needs its own ledger row.
Hold = tuple[Pair, int, int]


class LockedPosition(NamedTuple):  # a NamedTuple for speed: an ingested batch locks 500 (domain.quantities)
    position: Position
    version: int
    counted_at: datetime | None
    backordered: int = 0  # incoming units promised to backorders: arrivals fill those first


def position_of(row: Any) -> Position:
    return Position(
        on_hand=row.on_hand,
        committed=row.committed,
        reserved=row.reserved,
        unavailable=row.unavailable,
        safety_stock=row.safety_stock,
        incoming=row.incoming,
    )


# The checkout's statement, prepared on asyncpg (pg.py says why), with the condition compiled from its
# one definition above
_HOLD = (
    "UPDATE stock_levels SET reserved = reserved + $3, version = version + 1, updated_at = $4 "
    "WHERE sku_id = $1 AND location_id = $2 AND "
    # can_hold($5): $5 is the quantity plus the units to leave untouched
    f"{can_hold(literal_column('$5')).compile(dialect=postgresql.dialect())} RETURNING version"  # type: ignore[no-untyped-call]
)


async def hold(
    conn: AsyncConnection, sku_id: int, location_id: int, quantity: int, now: datetime, keep: int = 0
) -> int | None:
    """Reserve `quantity` at one position if, and only if, it is available there with `keep` units left
    untouched (units fenced for other channels). Returns the new version."""
    version = await pg.fetch_value(
        await pg.driver(conn), _HOLD, sku_id, location_id, quantity, pg.naive(now), quantity + keep
    )
    return None if version is None else int(version)


# The checkout's hold with its line, ledger, outbox and sales rows in one statement (pg.hold_named_sql)
_HOLD_NAMED = pg.hold_named_sql(
    str(can_hold(literal_column("$5")).compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
)


async def hold_named(
    conn: AsyncConnection | asyncpg.Connection,
    pair: Pair,
    quantity: int,
    now: datetime,
    ledger: dict[str, Any],
    sale: tuple[str, float] | None,
    half_life: float,
) -> tuple[int, bool] | None:
    """`hold` of a reservation's line at a named position, writing in the same statement its line,
    its ledger row (`ledger`, from ledger_row; the version is the hold's), its outbox row and, `sale`
    given, the sale in the SKU's velocity. None (nothing written) when the units are not available;
    else (the version, whether any channel has a dynamic buffer to move). `conn`: also the asyncpg
    connection of a `Database.write_driver` transaction."""
    note_changed([pair])  # the relay's hint, as enqueue_changes gives it
    db = conn if isinstance(conn, asyncpg.Connection) else await pg.driver(conn)
    return await pg.hold_named(db, _HOLD_NAMED, pair, quantity, now, ledger["reservation_id"], ledger, sale, half_life)


# A backorder is a promise against the position's incoming units: the row changes only while that many
# expected units are not promised yet, and a constraint (backordered <= incoming) stands behind it.
_PROMISE = (
    update(sl)
    .where(
        sl.c.sku_id == bindparam("b_sku"),
        sl.c.location_id == bindparam("b_location"),
        sl.c.incoming - sl.c.backordered >= bindparam("b_quantity"),
    )
    .values(backordered=sl.c.backordered + bindparam("b_quantity"))
    .returning(sl.c.backordered)
)


async def promise_backorder(conn: AsyncConnection, pair: Pair, quantity: int) -> bool:
    """Promise `quantity` of the position's incoming units to a backorder if, and only if, that many
    expected units are not promised yet. False when they are (nothing changed)."""
    result = await conn.execute(_PROMISE, {"b_sku": pair[0], "b_location": pair[1], "b_quantity": quantity})
    if result.first() is None:
        return False
    await _note_promises(conn, pair[0])
    return True


def promises_counter(sku_id: int) -> str:
    """The `counters` row that moves whenever a backorder is promised or forgotten for this SKU."""
    return f"promises:{sku_id}"


async def _note_promises(conn: AsyncConnection, sku_id: int) -> None:
    """A promise moves every channel's figure over that incoming (one expected unit is promised once)
    but no StockLevel field, so no position version: channel versions add this counter instead."""
    ins: Any = postgresql.insert(counters)
    await conn.execute(
        ins.values(name=promises_counter(sku_id), value=1).on_conflict_do_update(
            index_elements=[counters.c.tenant_id, counters.c.name], set_={"value": counters.c.value + 1}
        )
    )


async def forget_backorder(conn: AsyncConnection, pair: Pair, quantity: int) -> None:
    """A backorder given up before its units arrived (its reservation released or expired)."""
    await conn.execute(
        update(sl)
        .where(sl.c.sku_id == pair[0], sl.c.location_id == pair[1])
        .values(backordered=sl.c.backordered - quantity)
    )
    await _note_promises(conn, pair[0])


async def _cover_backorders(conn: AsyncConnection, pair: Pair, arrived: int, now: datetime) -> None:
    """Arriving units (RECEIVED, TRANSFER_IN) fill the backorders promised against them, oldest first.

    A committed order's backordered units are already in `committed`, so the arrival itself settles
    them; an ACTIVE reservation's are held for it from the arriving units (reserved, a RESERVED ledger
    row), so nobody else can buy what was promised to it. Either way they stop counting against the
    channel's backorder limit and the position's incoming. Runs before the arrival lowers `incoming`, so
    `backordered <= incoming` holds after every statement.
    """
    rl, r_ = reservation_lines, reservations
    promised = await conn.scalar(select(sl.c.backordered).where(sl.c.sku_id == pair[0], sl.c.location_id == pair[1]))
    left = min(int(promised or 0), arrived)
    if left <= 0:
        return
    waiting = list(
        await conn.execute(
            select(rl.c.reservation_id, rl.c.backorder_open, r_.c.status, r_.c.channel_code)
            .join(r_, r_.c.id == rl.c.reservation_id)
            .where(rl.c.sku_id == pair[0], rl.c.location_id == pair[1], rl.c.backorder_open > 0)
            .order_by(r_.c.created_at, r_.c.id)
        )
    )
    covered = 0
    ledger: list[dict[str, Any]] = []
    for line in waiting:
        take = min(left - covered, int(line.backorder_open))
        if take <= 0:
            break
        active = line.status == "ACTIVE"
        values: dict[str, Any] = {"backorder_open": rl.c.backorder_open - take}
        if active:
            values |= {"quantity": rl.c.quantity + take, "backordered": rl.c.backordered - take}
        await conn.execute(
            update(rl)
            .where(rl.c.reservation_id == line.reservation_id, rl.c.sku_id == pair[0], rl.c.location_id == pair[1])
            .values(**values)
        )
        if line.channel_code is not None:
            await conn.execute(
                update(channel_holds)
                .where(
                    channel_holds.c.channel_id
                    == select(channels.c.id).where(channels.c.code == line.channel_code).scalar_subquery(),
                    channel_holds.c.sku_id == pair[0],
                )
                .values(
                    backordered=channel_holds.c.backordered - take,
                    reserved=channel_holds.c.reserved + (take if active else 0),
                    version=channel_holds.c.version + 1,
                )
            )
        if active:
            delta = Delta(reserved=take)
            version = await apply_delta(conn, pair, delta, now)
            ledger.append(
                ledger_row(
                    kind=LedgerKind.RESERVED.value,
                    status=EventStatus.APPLIED.value,
                    pair=pair,
                    quantity=take,
                    delta=delta,
                    version=version,
                    now=now,
                    reservation_id=line.reservation_id,
                    reason="backorder filled by arriving stock",
                )
            )
        covered += take
    await conn.execute(
        update(sl)
        .where(sl.c.sku_id == pair[0], sl.c.location_id == pair[1])
        # promises no line accounts for (made before backorders were tracked per line) are settled too
        .values(backordered=sl.c.backordered - left)
    )
    await write_ledger(conn, ledger)


_CREATE = postgresql.insert(sl).on_conflict_do_nothing()


async def ensure_positions(conn: AsyncConnection, pairs: Iterable[Pair], now: datetime) -> None:
    """Create empty positions that do not exist yet (version 0: the first change makes it 1)."""
    rows = [{"sku_id": s, "location_id": loc, "updated_at": now} for s, loc in sorted(set(pairs))]
    await insert_rows(conn, _CREATE, rows)


async def lock_positions(conn: AsyncConnection, pairs: Iterable[Pair]) -> dict[Pair, LockedPosition]:
    """Lock positions in primary-key order, so two batches touching the same rows cannot deadlock."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}
    locked = await pg.lock_positions(await pg.driver(conn), wanted)
    return {
        (r["sku_id"], r["location_id"]): LockedPosition(
            pg.position(r), r["version"], pg.counted_at(r), r["backordered"]
        )
        for r in locked
    }


async def lock_sized(
    conn: AsyncConnection, pairs: Iterable[Pair], now: datetime, asked: list[tuple[Pair, datetime]]
) -> tuple[dict[Pair, LockedPosition], dict[int, Magnitude], list[int]]:
    """`lock_positions(pairs)`, creating the positions that do not exist yet, then `sizes_and_counts`
    of their SKUs and of `asked`, read once the positions are locked: in the lock's own statement
    (pg.lock_positions_sized) when every position exists and every counted one was locked without
    waiting on a newer commit; else the reads of the counts (or, with positions to create, both
    reads) in one more statement, as before."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}, {}, await on_hand_after_many(conn, asked)
    rows, found, after = await pg.lock_positions_sized(await pg.driver(conn), wanted, asked)
    locked = {
        (r["sku_id"], r["location_id"]): LockedPosition(
            pg.position(r), r["version"], pg.counted_at(r), r["backordered"]
        )
        for r in rows
    }
    missing = set(wanted) - locked.keys()
    if missing:
        # created, then locked after the existing ones, out of key order: two batches that both create
        # positions can then deadlock, which Postgres breaks and `Database.write` retries (once per new
        # position; every later change takes the one-statement path). Another batch may have
        # created one first and changed it since the statement's snapshot: both reads again, after
        await ensure_positions(conn, missing, now)
        locked |= await lock_positions(conn, missing)
        sizes, again = await sizes_and_counts(conn, {p[0] for p in wanted}, asked)
        return locked, sizes, again
    if after is None:
        after = await on_hand_after_many(conn, asked)
    return (
        locked,
        {sku: Magnitude(*found[sku]) if sku in found else Magnitude() for sku in {p[0] for p in wanted}},
        after,
    )


async def apply_delta(
    conn: AsyncConnection,
    pair: Pair,
    delta: Delta,
    now: datetime,
    counted_at: datetime | None = None,
) -> int:
    """Add `delta` to a position (relative, so it composes with concurrent holds). Returns the version."""
    if delta.incoming < 0:
        # expected units arrived: they go to the backorders promised against them first
        await _cover_backorders(conn, pair, -delta.incoming, now)
    d = delta
    parts = None if d.is_zero else (d.on_hand, d.committed, d.reserved, d.unavailable, d.safety_stock, d.incoming)
    return await pg.apply_delta(await pg.driver(conn), pair, parts, now, counted_at)


async def apply_summed(
    conn: AsyncConnection, changes: list[tuple[Pair, Delta, int, datetime | None]], now: datetime
) -> dict[Pair, int]:
    """Several positions' summed changes in one statement: (position, the sum of its `n` deltas, `n`,
    counted_at or None). The version moves by `n` (each change has its ledger row); returns the
    versions reached. For locked positions whose changes fill no backorder (see `apply_delta`)."""
    if not changes:
        return {}
    rows = [
        (p, (d.on_hand, d.committed, d.reserved, d.unavailable, d.safety_stock, d.incoming), n, counted)
        for p, d, n, counted in changes
    ]
    return await pg.apply_deltas(await pg.driver(conn), rows, now)


async def apply_and_record(
    conn: AsyncConnection,
    changes: list[tuple[Pair, Delta, int, datetime | None]],
    now: datetime,
    ledger: list[dict[str, Any]] | pg.LedgerRows,
    changed: Iterable[Pair],
    sales: Sequence[tuple[int, int]] = (),
    half_life: float = 1.0,
) -> tuple[dict[Pair, int], bool]:
    """`apply_summed(changes)`, `write_ledger(ledger)`, `enqueue_changes(changed)` and the reported
    `sales` ((SKU id, units) under no channel: services.demand.ledger_sales, decaying with `half_life`
    seconds) in one statement (one round trip inside the batch's row locks). Returns the versions
    reached, as apply_summed, and whether any channel has a dynamic buffer (the caller then moves the
    sold SKUs' buffers, as services.demand.note_sales does)."""
    pairs = sorted(set(changed))
    note_changed(pairs)  # the relay's hint, as enqueue_changes gives it
    if not changes and not ledger and not pairs and not sales:
        return {}, False
    rows = [
        (p, (d.on_hand, d.committed, d.reserved, d.unavailable, d.safety_stock, d.incoming), n, counted)
        for p, d, n, counted in changes
    ]
    return await pg.write_batch(await pg.driver(conn), rows, now, ledger, pairs, sales, half_life)


async def magnitudes(conn: AsyncConnection, sku_ids: Iterable[int]) -> dict[int, Magnitude]:
    """Each SKU's `Magnitude` over all its positions (those not locked may still move: the bound is
    checked against this read, see services.events)."""
    wanted = sorted(set(sku_ids))
    if not wanted:
        return {}
    found = await pg.magnitudes(await pg.driver(conn), wanted)
    return {sku: Magnitude(*found[sku]) if sku in found else Magnitude() for sku in wanted}


async def on_hand_after(conn: AsyncConnection, pair: Pair, after: datetime) -> int:
    """Sum of on-hand effects already applied here by events that occurred strictly after `after`."""
    ie = inventory_events
    total = await conn.scalar(
        select(func.coalesce(func.sum(ie.c.d_on_hand), 0)).where(
            ie.c.sku_id == pair[0], ie.c.location_id == pair[1], ie.c.occurred_at > after
        )
    )
    return int(total or 0)


async def on_hand_after_many(conn: AsyncConnection, asked: list[tuple[Pair, datetime]]) -> list[int]:
    """`on_hand_after` for several (position, time) at once, in one statement (a batch's counts)."""
    if not asked:
        return []
    return await pg.on_hand_after_many(await pg.driver(conn), asked)


async def sizes_and_counts(
    conn: AsyncConnection, sku_ids: Iterable[int], asked: list[tuple[Pair, datetime]]
) -> tuple[dict[int, Magnitude], list[int]]:
    """`magnitudes(sku_ids)` and `on_hand_after_many(asked)`, read in one statement (one round trip
    inside an ingested batch's row locks)."""
    wanted = sorted(set(sku_ids))
    if not wanted:
        return {}, await on_hand_after_many(conn, asked)
    found, after = await pg.sizes_and_counts(await pg.driver(conn), wanted, asked)
    return {sku: Magnitude(*found[sku]) if sku in found else Magnitude() for sku in wanted}, after


# The API key (its id) the current operation runs for, stamped on every ledger row it writes; None:
# Stockwire itself. Set once per operation by the GraphQL scope check (app/graphql/permissions.py),
# rather than passed down through every service that writes a ledger row, so no path can forget it.
_ledger_actor: ContextVar[str | None] = ContextVar("stockwire_ledger_actor", default=None)


@contextmanager
def ledger_actor(key_id: str | None) -> Iterator[None]:
    """Ledger rows written inside are recorded as made by this key (None: by Stockwire itself)."""
    token = _ledger_actor.set(key_id)
    try:
        yield
    finally:
        _ledger_actor.reset(token)


# what `ledger_row` takes by name beyond its own parameters: the optional columns of inventory_events
_LEDGER_EXTRAS = frozenset(
    ("reason", "reference", "to_location_id", "expected_at", "reservation_id", "fingerprint", "unit")
)


def _ledger_row(
    received_at: datetime,
    actor_key_id: Any,
    kind: str,
    status: str,
    pair: Pair,
    quantity: int,
    delta: Delta,
    version: int,
    source: str,
    external_id: str | None,
    occurred_at: datetime,
    drift: int,
    reason: str | None,
    reference: str | None,
    to_location_id: int | None,
    expected_at: datetime | None,
    fingerprint: str | None,
    unit: str | None,
    reservation_id: str | None = None,
) -> dict[str, Any]:
    """One inventory_events row, every column by name (pg.write_ledger inserts them all)."""
    return {
        "source": source,
        "external_id": external_id,
        "kind": kind,
        "status": status,
        "sku_id": pair[0],
        "location_id": pair[1],
        "quantity": quantity,
        "occurred_at": occurred_at,
        "received_at": received_at,
        "reason": reason,
        "reference": reference,
        "to_location_id": to_location_id,
        "expected_at": expected_at,
        "reservation_id": reservation_id,
        "fingerprint": fingerprint,
        "actor_key_id": actor_key_id,
        "unit": unit,
        "d_on_hand": delta.on_hand,
        "d_committed": delta.committed,
        "d_reserved": delta.reserved,
        "d_unavailable": delta.unavailable,
        "d_safety_stock": delta.safety_stock,
        "d_incoming": delta.incoming,
        "drift": drift,
        "version": version,
    }


def ledger_row(
    *,
    kind: str,
    status: str,
    pair: Pair,
    quantity: int,
    delta: Delta,
    version: int,
    now: datetime,
    source: str = "stockwire",
    external_id: str | None = None,
    occurred_at: datetime | None = None,
    drift: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """One inventory_events row (pg.write_ledger inserts every column of the table, by name)."""
    if not extra.keys() <= _LEDGER_EXTRAS:
        raise TypeError(f"ledger_row() got no such column: {sorted(extra.keys() - _LEDGER_EXTRAS)}")
    get = extra.get
    return _ledger_row(
        now,
        _ledger_actor.get(),
        kind,
        status,
        pair,
        quantity,
        delta,
        version,
        source,
        external_id,
        occurred_at or now,
        drift,
        get("reason"),
        get("reference"),
        get("to_location_id"),
        get("expected_at"),
        get("fingerprint"),
        get("unit"),
        get("reservation_id"),
    )


# the columns an ingested event gives its ledger row, in event_fixed_maker's order
_EVENT_FIXED = (
    "kind",
    "sku_id",
    "location_id",
    "quantity",
    "source",
    "external_id",
    "occurred_at",
    "reason",
    "reference",
    "to_location_id",
    "expected_at",
    "fingerprint",
    "unit",
)


def event_fixed_maker(now: datetime) -> Callable[..., pg.FixedColumns]:
    """The fixed columns of an ingested event's ledger row (pg.LedgerRows.fixed), received at `now` by
    the current actor, its arguments given positionally: (kind, sku_id, location_id, quantity, source,
    external_id, occurred_at, reason, reference, to_location_id, expected_at, fingerprint, unit). A
    batch makes them before it takes its positions' row locks, and adds each row's decided columns
    (`decided_columns`) in them."""
    constants = {"received_at": now, "actor_key_id": _ledger_actor.get(), "reservation_id": None}
    return pg.fixed_columns_maker(_EVENT_FIXED, constants)


def decided_columns(status: str, delta: Delta, drift: int, version: int) -> tuple[Any, ...]:
    """A ledger row's pg.LEDGER_DECIDED values: its status, the six quantity deltas, drift and version."""
    return (
        status,
        delta.on_hand,
        delta.committed,
        delta.reserved,
        delta.unavailable,
        delta.safety_stock,
        delta.incoming,
        drift,
        version,
    )


# A column added to inventory_events without a value here (or a key here with no column) fails at
# import, not at the first write, and not by silently leaving it out of the insert
if ledger_row(kind="", status="", pair=(0, 0), quantity=0, delta=Delta(), version=0, now=datetime.min).keys() != set(
    pg.LEDGER_COLUMNS
):
    raise RuntimeError("stock.ledger_row and the inventory_events table disagree on the ledger's columns")
if ("status", *(f"d_{name}" for name in Delta._fields), "drift", "version") != pg.LEDGER_DECIDED:
    raise RuntimeError("stock.decided_columns and pg.LEDGER_DECIDED disagree on the decided columns' order")


async def insert_rows(conn: AsyncConnection, stmt: Any, rows: list[dict[str, Any]]) -> None:
    """One row as a plain execute (a list of one takes SQLAlchemy's costlier executemany path)."""
    if len(rows) == 1:
        await conn.execute(stmt, rows[0])
    elif rows:
        await conn.execute(stmt, rows)


async def write_ledger(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Ledger rows made by `ledger_row`."""
    if rows:
        await pg.write_ledger(await pg.driver(conn), rows)


async def enqueue_changes(conn: AsyncConnection, pairs: Iterable[Pair], now: datetime) -> None:
    """Outbox rows, in the change's own transaction: a crash after commit cannot lose the publication."""
    pairs = list(pairs)
    note_changed(pairs)  # and a hint for the relay, which can then publish without claiming first
    wanted = sorted(set(pairs))
    if wanted:
        await pg.enqueue_changes(await pg.driver(conn), wanted, now)
