"""The asyncpg statements of app/db/pg.py run inside the service's transaction and fail like SQLAlchemy's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import pg, stock
from app.db.engine import Database, _sqlstate, is_unique_violation
from app.db.tables import inventory_events, stock_levels
from app.domain.events import EventType, InventoryEvent
from app.domain.quantities import Delta
from app.services import catalog, events
from app.services.context import Ctx
from app.settings import Settings

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


# a backend of this database waiting for a lock (pg_locks' row-lock waits carry no database)
_WAITING = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")


class Boom(Exception):
    pass


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[Database]:
    from tests.conftest import _truncate

    await _truncate(postgres_url)
    database = Database(postgres_url)
    ctx = Ctx(db=database, settings=Settings(database_url=postgres_url))
    await catalog.upsert_locations(ctx, [catalog.LocationInput("L", "L", catalog.LocationKind("WAREHOUSE"))])
    await catalog.upsert_skus(ctx, [catalog.SkuInput(code="S", name="S")])
    received = InventoryEvent("erp", "r0", EventType.RECEIVED, "S", "L", 10, NOW)
    assert (await events.record_events(ctx, [received]))[0][0].version == 1
    yield database
    await database.dispose()


async def _position(db: Database) -> tuple[int, int]:
    async with db.read() as conn:
        row = (await conn.execute(text("SELECT on_hand, version FROM stock_levels"))).one()
    return int(row.on_hand), int(row.version)


async def _counts(db: Database) -> tuple[int, int]:
    async with db.read() as conn:
        ledger = await conn.scalar(text("SELECT count(*) FROM inventory_events"))
        outbox = await conn.scalar(text("SELECT count(*) FROM outbox"))
    return int(ledger or 0), int(outbox or 0)


def _ledger_row(version: int, external_id: str = "e1") -> dict[str, object]:
    return stock.ledger_row(
        kind="RECEIVED",
        status="APPLIED",
        pair=(1, 1),
        quantity=5,
        delta=Delta(on_hand=5),
        version=version,
        now=NOW,
        source="erp",
        external_id=external_id,
    )


async def test_statements_sent_before_any_sqlalchemy_one_are_rolled_back_with_the_transaction(db: Database) -> None:
    async def work(conn: AsyncConnection) -> None:
        # the first statement of the transaction goes through asyncpg directly
        version = await stock.apply_delta(conn, (1, 1), Delta(on_hand=5), NOW)
        assert version == 2
        await stock.write_ledger(conn, [_ledger_row(version)])
        await stock.enqueue_changes(conn, [(1, 1)], NOW)
        assert await stock.lock_positions(conn, [(1, 1)]) == {
            (1, 1): stock.LockedPosition(stock.Position(15, 0, 0, 0, 0, 0), 2, None)
        }
        raise Boom

    with pytest.raises(Boom):
        await db.write(work)
    assert await _position(db) == (10, 1)
    assert await _counts(db) == (1, 1)  # the set-up's receipt only

    async def commit(conn: AsyncConnection) -> int:
        version = await stock.apply_delta(conn, (1, 1), Delta(on_hand=5), NOW, counted_at=NOW)
        await stock.write_ledger(conn, [_ledger_row(version)])  # a version without its row would not commit
        return version

    assert await db.write(commit) == 2
    assert await _position(db) == (15, 2)
    async with db.read() as conn:
        locked = await stock.lock_positions(conn, [(1, 1)])
    assert locked[(1, 1)].counted_at == NOW  # stored naive UTC, read back aware


async def test_a_constraint_violation_is_sqlalchemys_integrity_error(db: Database) -> None:
    async def twice(conn: AsyncConnection) -> None:
        await stock.write_ledger(conn, [_ledger_row(2), _ledger_row(3)])  # same (source, externalId)

    with pytest.raises(IntegrityError) as caught:
        await db.write(twice)
    assert is_unique_violation(caught.value)
    assert await _counts(db) == (1, 1)  # the set-up's receipt only


async def test_other_database_errors_are_sqlalchemys_dbapi_error(db: Database) -> None:
    async def missing(conn: AsyncConnection) -> int:
        return await stock.apply_delta(conn, (1, 999), Delta(on_hand=1), NOW)  # no such position

    with pytest.raises(LookupError):
        await db.write(missing)

    async def negative(conn: AsyncConnection) -> int:
        # the position's CHECK constraint refuses it (23514): an IntegrityError, as SQLAlchemy would raise
        return await stock.apply_delta(conn, (1, 1), Delta(reserved=-1000), NOW)

    with pytest.raises(IntegrityError):
        await db.write(negative)
    assert await _position(db) == (10, 1)

    async def bad_sql(conn: AsyncConnection) -> object:
        return await pg.run((await pg.driver(conn)).fetch, "SELEC 1")

    with pytest.raises(DBAPIError) as caught:
        await db.write(bad_sql)
    assert not isinstance(caught.value, IntegrityError)
    assert _sqlstate(caught.value) == "42601"  # what Database.write reads to retry deadlocks (40P01)


def test_the_ledger_insert_names_every_column_of_the_table() -> None:
    # pg.LEDGER_COLUMNS once was a hand-kept list: a new inventory_events column would have been left
    # out of every insert, silently
    from app.db.tables import inventory_events

    # (tenant_id, id) is the key: the id is generated, the tenant fills itself from the transaction's
    assert set(pg.LEDGER_COLUMNS) == {c.name for c in inventory_events.columns} - {"id", "tenant_id"}
    row = stock.ledger_row(
        kind="RECEIVED", status="APPLIED", pair=(1, 1), quantity=1, delta=Delta(), version=1, now=NOW
    )
    assert list(row) == list(pg.LEDGER_COLUMNS)


def test_an_ingested_events_row_is_ledger_rows() -> None:
    """An ingested batch's row, its fixed columns encoded before the row locks (stock.event_fixed_maker)
    and its decided ones given in them (stock.decided_columns), is ledger_row's row, encoded alike."""
    later = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
    delta = Delta(1, 2, 3, 4, 5, 6)
    with stock.ledger_actor("key-1"):
        fixed = stock.event_fixed_maker(NOW)(
            "SOLD", 3, 4, 9, "erp", 'x"1', later, "why", "ref\\", 5, NOW, "f" * 64, "case"
        )
        wanted = stock.ledger_row(
            kind="SOLD",
            status="APPLIED",
            pair=(3, 4),
            quantity=9,
            delta=delta,
            version=7,
            now=NOW,
            source="erp",
            external_id='x"1',
            occurred_at=later,
            drift=2,
            reason="why",
            reference="ref\\",
            to_location_id=5,
            expected_at=NOW,
            fingerprint="f" * 64,
            unit="case",
        )
    made, given = pg.LedgerRows(), pg.LedgerRows()
    made.add(fixed, stock.decided_columns("APPLIED", delta, 2, 7))
    given.add_row(wanted)
    literals = made.literals()
    assert literals == given.literals()
    column = dict(zip(pg.LEDGER_COLUMNS, literals, strict=True))
    assert column["actor_key_id"] == '{"key-1"}'
    assert column["external_id"] == '{"x\\"1"}'
    assert column["reference"] == '{"ref\\\\"}'
    assert column["occurred_at"] == "{2026-11-23T11:00:00}"
    decided = ['{"APPLIED"}', "{1}", "{2}", "{3}", "{4}", "{5}", "{6}", "{2}", "{7}"]
    assert [column[c] for c in pg.LEDGER_DECIDED] == decided
    assert made.demand == given.demand == [("SOLD", "APPLIED", 3, 9)]


def test_a_ledger_row_with_a_key_that_names_no_column_is_refused() -> None:
    with pytest.raises(TypeError, match="no such column"):
        stock.ledger_row(
            kind="RECEIVED", status="APPLIED", pair=(1, 1), quantity=1, delta=Delta(), version=1, now=NOW, referece="x"
        )


async def test_the_migrations_make_the_tables_app_db_tables_defines(postgres_url: str) -> None:
    # the table definitions are what SQLAlchemy keeps earning its place for: they must be what Alembic built
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.db.tables import metadata

    database = Database(postgres_url)
    try:
        async with database.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
            )
    finally:
        await database.dispose()
    assert diff == []


async def test_generic_plans_hold_for_the_transactions_begun_inside_only(db: Database) -> None:
    from app.db.engine import generic_plans

    async def mode(conn: AsyncConnection) -> str:
        return str(await pg.fetch_value(await pg.driver(conn), "SELECT current_setting('plan_cache_mode')"))

    async def mode_driver(conn: asyncpg.Connection) -> str:
        return str(await pg.fetch_value(conn, "SELECT current_setting('plan_cache_mode')"))

    assert await db.write(mode) == "auto"
    with generic_plans():
        assert await db.write(mode) == "force_generic_plan"
        assert await db.write_driver(mode_driver) == "force_generic_plan"
    # SET LOCAL: the pooled connections are back to the default, and so is this context
    for _ in range(3):
        assert await db.write(mode) == "auto"
        assert await db.write_driver(mode_driver) == "auto"


async def test_a_batch_write_stores_every_value_as_given(db: Database) -> None:
    # write_batch sends its arrays as array literals (text): awkward texts, NULLs and microseconds
    # must come back exactly as given
    odd = ['say "hi"', "back\\slash", "{braces}, commas", "NULL", "", "  spaced  ", "naïve ✓"]
    at = datetime(2026, 11, 23, 12, 0, 1, 234567, tzinfo=UTC)
    rows = [
        stock.ledger_row(
            kind="RECEIVED",
            status="APPLIED",
            pair=(1, 1),
            quantity=i + 1,
            delta=Delta(on_hand=i + 1),
            version=2 + i,
            now=NOW,
            source="erp",
            external_id=f"odd-{i}",
            occurred_at=at,
            reason=text_,
            reference=None if i % 2 else text_,
            expected_at=at if i % 2 else None,
            to_location_id=1 if i % 2 else None,
        )
        for i, text_ in enumerate(odd)
    ]
    total = sum(range(1, len(odd) + 1))

    async def work(conn: AsyncConnection) -> tuple[dict[stock.Pair, int], bool]:
        return await stock.apply_and_record(conn, [((1, 1), Delta(on_hand=total), len(odd), at)], NOW, rows, [(1, 1)])

    assert await db.write(work) == ({(1, 1): 1 + len(odd)}, False)
    assert await _position(db) == (10 + total, 1 + len(odd))
    ie = inventory_events
    async with db.read() as conn:  # through the tables' types: times come back aware UTC
        stored = (
            await conn.execute(
                select(*[ie.c[c] for c in pg.LEDGER_COLUMNS])
                .where(ie.c.external_id.like("odd-%"))
                .order_by(ie.c.version)
            )
        ).all()
        counted = await conn.scalar(select(stock_levels.c.counted_at))
    assert [tuple(r) for r in stored] == [tuple(r.values()) for r in rows]
    assert counted == at
    assert await _counts(db) == (1 + len(odd), 2)


LATER = datetime(2026, 11, 23, 12, 5, tzinfo=UTC)
T = TypeVar("T")


async def test_a_batch_write_adds_its_sales_to_demand_as_note_sales_does(db: Database) -> None:
    """The reported sales written by the batch's own statement decay and add up exactly like
    demand.note_sales', and the statement says whether a channel has a dynamic buffer."""
    from datetime import timedelta

    from app.services import demand

    later = NOW + timedelta(seconds=1800)

    async def batch(at: datetime, units: int) -> tuple[dict[stock.Pair, int], bool]:
        async def work(conn: AsyncConnection) -> tuple[dict[stock.Pair, int], bool]:
            return await stock.apply_and_record(conn, [], at, [], [], [(1, units)], 3600.0)

        return await db.write(work)

    async def noted(at: datetime, units: int) -> None:
        async def work(conn: AsyncConnection) -> None:
            await demand.note_sales(conn, at, {(1, "X"): units})

        await db.write(work)

    async def demand_rows() -> dict[str, tuple[float, datetime]]:
        async with db.read() as conn:
            rows = (await conn.execute(text("SELECT channel_code, units, last_at FROM sku_demand"))).all()
        return {r.channel_code: (float(r.units), r.last_at) for r in rows}

    assert await batch(NOW, 7) == ({}, False)
    await noted(NOW, 7)
    assert await batch(later, 5) == ({}, False)
    await noted(later, 5)
    got = await demand_rows()
    # half an hour of a one-hour half-life: 7 * 2^-0.5 + 5, under no channel ('') as under X
    assert got[""] == got["X"]
    assert got[""][0] == pytest.approx(7 * 2**-0.5 + 5)
    assert got[""][1] == later.replace(tzinfo=None)

    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO channels (code, name, active, safety_buffer_units, out_of_stock_threshold, version, "
                "created_at, updated_at, dynamic_buffer_factor) VALUES ('D', 'D', true, 0, 0, 1, now(), now(), 1.0)"
            )
        )
    assert await batch(later, 1) == ({}, True)


async def _while_held(db: Database, postgres_url: str, read: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """`read` in a write transaction that has to wait for position (1, 1)'s row lock, held by one that
    received 5 units there and recorded them as occurring at LATER; `read`'s result once that one
    committed. Both transactions end in every exit path (a task left waiting would hold a connection)."""
    holding, release = asyncio.Event(), asyncio.Event()

    async def receive_later(conn: AsyncConnection) -> None:
        version = await stock.apply_delta(conn, (1, 1), Delta(on_hand=5), LATER)
        row = _ledger_row(version, "late")
        row["occurred_at"] = LATER
        await stock.write_ledger(conn, [row])
        holding.set()
        await release.wait()  # the row stays locked until the other transaction waits for it

    writer = asyncio.create_task(db.write(receive_later))
    reader: asyncio.Task[T] | None = None
    watcher = Database(postgres_url, role=None)  # the login sees every session's wait; the app role not
    try:
        await asyncio.wait_for(holding.wait(), 30)
        reader = asyncio.create_task(db.write(read))
        async with watcher.read() as conn:
            for _ in range(3000):
                if reader.done() or await conn.scalar(_WAITING):
                    break
                await asyncio.sleep(0.01)
        assert not reader.done(), "the reader did not wait for the row lock"
    finally:
        release.set()
        await watcher.dispose()
        await asyncio.wait_for(writer, 30)
        if reader is not None and not reader.done():
            await asyncio.wait([reader], timeout=30)
    return await reader


async def test_the_lock_reads_sizes_and_counts_as_of_the_commit_it_waited_for(db: Database, postgres_url: str) -> None:
    # pg.lock_positions_sized reads the SKU sums and the counts' ledger sums in the lock's statement,
    # whose snapshot predates a commit it waited for: the sums must still include that commit
    asked = [((1, 1), NOW)]  # a count at NOW: what the ledger holds after it

    async def uncontended(conn: AsyncConnection) -> tuple[object, object]:
        rows, sizes, after = await pg.lock_positions_sized(await pg.driver(conn), [(1, 1)], asked)
        assert [(r["on_hand"], r["version"], r["fresh"]) for r in rows] == [(10, 1, True)]
        return sizes, after

    assert await db.write(uncontended) == ({1: (10, 0, 0, 0)}, [0])

    async def lock_while_held(conn: AsyncConnection) -> tuple[object, ...]:
        raw = await pg.lock_positions_sized(await pg.driver(conn), [(1, 1)], asked)
        again = await stock.lock_sized(conn, [(1, 1)], NOW, asked)  # locked already: fresh now
        return raw[1], raw[2], [(r["on_hand"], r["version"], r["fresh"]) for r in raw[0]], again[1], again[2]

    sizes, after, rows, sizes_again, after_again = await _while_held(db, postgres_url, lock_while_held)
    # the locked row is the committed one and so are the sums; the counts' sum is not trusted (None)
    assert rows == [(15, 2, False)]
    assert sizes == {1: (15, 0, 0, 0)}
    assert after is None
    assert sizes_again == {1: stock.Magnitude(15, 0, 0, 0)} and after_again == [5]


async def test_lock_sized_reads_counts_again_when_the_lock_waited(db: Database, postgres_url: str) -> None:
    async def lock(conn: AsyncConnection) -> tuple[object, ...]:
        locked, sizes, after = await stock.lock_sized(conn, [(1, 1)], NOW, [((1, 1), NOW)])
        return locked[(1, 1)].position.on_hand, sizes, after

    assert await _while_held(db, postgres_url, lock) == (15, {1: stock.Magnitude(15, 0, 0, 0)}, [5])


async def test_the_cached_driver_still_begins_each_transaction(postgres_url: str, db: Database) -> None:
    # pg.driver keeps the asyncpg connection in the pooled connection's info: a later transaction on
    # the same connection must still be begun before a statement is sent through asyncpg
    one = Database(postgres_url, pool_size=1, max_overflow=0)
    seen: list[asyncpg.Connection] = []

    async def change(conn: AsyncConnection) -> None:
        seen.append(await pg.driver(conn))
        await stock.apply_delta(conn, (1, 1), Delta(on_hand=5), NOW)
        raise Boom

    try:
        for _ in range(3):
            with pytest.raises(Boom):
                await one.write(change)
    finally:
        await one.dispose()
    assert len(seen) == 3 and seen[0] is seen[1] is seen[2]
    assert await _position(db) == (10, 1)  # every one rolled back


async def test_look_up_finds_skus_locations_and_recorded_events(db: Database) -> None:
    async def look(conn: AsyncConnection) -> Any:
        return await pg.look_up(
            await pg.driver(conn), ["S", "NOPE"], ["L", "NOWHERE"], [("erp", "r0"), ("erp", "r1"), ("other", "r0")]
        )

    skus, locations, recorded = await db.write(look)
    assert skus == {"S": 1}
    assert locations == {"L": (1, None)}
    assert list(recorded) == [("erp", "r0")] and recorded[("erp", "r0")][1] == 1
    assert recorded[("erp", "r0")][0] is not None  # its fingerprint
