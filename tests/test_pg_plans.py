"""The hot statements' look-ups probe their keys, even on a database autovacuum has not analysed yet.

Without statistics the planner takes each tenant for a few rows; the plain forms of these statements
(`code = ANY($1)`, a join with unnest) were then planned as a read of the tenant's whole table, filtered:
each recorded event read the tenant's whole ledger (app/db/pg.py, above _LOOK_UP). Here the tables hold
hundreds of rows, never analysed, and each statement asked about one key must read a handful of rows of
each table, not hundreds. The plans are the generic ones the service runs (engine.generic_plans).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from app.db import pg, statistics, tenancy
from app.db.engine import Database
from app.domain.events import EventType, InventoryEvent
from app.services import catalog, events
from app.services.context import Ctx
from app.settings import Settings

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ROWS = 2000
TABLES = ("skus", "locations", "inventory_events", "stock_levels")


def _literal(value: Any) -> str:
    """A parameter of EXECUTE as SQL text (ints and texts, or arrays of them)."""
    if isinstance(value, list):
        return "'{" + ",".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "}'"
    return str(value)


def _rows_read(plan: dict[str, Any], read: dict[str, float]) -> None:
    """Rows each table's scans went through (returned plus filtered out, over every loop)."""
    table = plan.get("Relation Name")
    if table is not None or plan["Node Type"] == "Bitmap Index Scan":
        loops = plan.get("Actual Loops", 1)
        seen = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * loops
        key = table if table is not None else plan["Index Name"]
        read[key] = read.get(key, 0) + seen
    for child in plan.get("Plans", []):
        _rows_read(child, read)


async def _explain(db: asyncpg.Connection, sql: str, *args: Any) -> dict[str, float]:
    """EXPLAIN ANALYZE of `sql` on its generic plan, as the application's role acting for tenant 1."""
    async with db.transaction():
        await db.execute(tenancy.tenant_prelude(1))
        await db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await db.execute(f"PREPARE probe AS {sql}")
        try:
            (text_plan,) = await db.fetchrow(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probe({', '.join(_literal(a) for a in args)})"
            )
        finally:
            await db.execute("DEALLOCATE probe")
    read: dict[str, float] = {}
    _rows_read(json.loads(text_plan)[0]["Plan"], read)
    return read


@pytest.fixture
async def loaded(new_database: Callable[[], str]) -> AsyncIterator[dict[str, Any]]:
    """A database of its own (never analysed, autovacuum off for it) with ROWS SKUs at one location,
    one received event each, so each table holds hundreds of rows of tenant 1."""
    url = new_database()
    database = Database(url)
    ctx = Ctx(db=database, settings=Settings(database_url=url))
    admin = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        for table in (*TABLES, "outbox"):
            await admin.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        await catalog.upsert_locations(ctx, [catalog.LocationInput("WH", "WH", catalog.LocationKind("WAREHOUSE"))])
        for first in range(0, ROWS, 500):  # in batches the API accepts
            codes = [f"S{i:04d}" for i in range(first, first + 500)]
            await catalog.upsert_skus(ctx, [catalog.SkuInput(code=c, name="S") for c in codes])
            received = [InventoryEvent("erp", f"r{c[1:]}", EventType.RECEIVED, c, "WH", 5, NOW) for c in codes]
            results, problems = await events.record_events(ctx, received)
            assert problems == [] and len(results) == 500
        # the pool's backends report their row counts to the statistics as they exit
        await database.dispose()
        assert await _never_analysed(admin) == sorted(TABLES)  # the premise: no statistics yet
        sku_id, location_id = await admin.fetchrow(
            "SELECT s.id, l.id FROM skus s, locations l WHERE s.code = 'S1500' AND l.code = 'WH'"
        )
        yield {"db": admin, "url": url, "sku": sku_id, "location": location_id}
    finally:
        await admin.close()
        await database.dispose()


async def _never_analysed(admin: asyncpg.Connection) -> list[str]:
    rows = await admin.fetch(
        "SELECT relname FROM pg_class WHERE relname = ANY($1::text[]) AND reltuples < 0 ORDER BY relname", list(TABLES)
    )
    return [r[0] for r in rows]


def _many(read: dict[str, float], tables: tuple[str, ...] = TABLES) -> list[tuple[str, float]]:
    """The tables a one-key statement read more than a handful of rows of."""
    return sorted((name, n) for name, n in read.items() if n > 4 and name in tables)


async def test_the_ledger_and_the_positions_are_probed_without_statistics(loaded: dict[str, Any]) -> None:
    db, pair = loaded["db"], ([loaded["sku"]], [loaded["location"]])
    read = await _explain(db, pg._LOOK_UP, ["S1500"], ["WH"], ["erp"], ["r1500"])
    assert read["inventory_events"] == 1  # the recorded event, found by its key alone
    assert _many(read, ("inventory_events", "locations")) == []
    read = await _explain(db, pg._LOCK, *pair)
    assert read["stock_levels"] == 1
    assert _many(read) == []


async def test_new_tables_get_statistics_and_then_every_key_is_probed(loaded: dict[str, Any]) -> None:
    db = loaded["db"]
    # without statistics a probe of the SKUs by code may read the tenant's whole (tenant_id, id) index:
    # both look like one row to the planner (app/db/statistics.py)
    database = Database(loaded["url"])
    try:
        analysed = await statistics.analyse_new_tables(database)
        assert set(TABLES) - {"locations"} <= set(analysed)  # one location: too few rows changed
        assert await _never_analysed(db) == ["locations"]
        assert await statistics.analyse_new_tables(database) == []  # once only: then autovacuum's
    finally:
        await database.dispose()
    pair = [loaded["sku"]], [loaded["location"]]
    assert _many(await _explain(db, pg._LOOK_UP, ["S1500"], ["WH"], ["erp"], ["r1500"])) == []
    assert _many(await _explain(db, pg._LOCK, *pair)) == []
    assert _many(await _explain(db, pg._LOCK_SIZED, *pair, *pair, ["2026-11-23 11:00:00"])) == []
    assert _many(await _explain(db, pg._CLAIM_AND_READ, [loaded["sku"]], *pair)) == []


async def test_a_backlog_in_an_outbox_analysed_empty_is_claimed_in_one_pass(loaded: dict[str, Any]) -> None:
    """The outbox is a queue: analysed while (nearly) empty, its statistics say so when a backlog comes.
    The claims must then still read it about once, not once per row (a semi-join nested the whole
    outbox inside a scan of it: a claim of 12,104 rows ran for minutes, pg._CLAIM_AND_READ)."""
    db, pair = loaded["db"], ([loaded["sku"]], [loaded["location"]])
    await db.execute("DELETE FROM outbox")
    await db.execute("ANALYZE outbox")
    await db.execute(
        "INSERT INTO outbox (tenant_id, sku_id, location_id, created_at) "
        "SELECT tenant_id, sku_id, location_id, now() FROM stock_levels"
    )
    assert await db.fetchval("SELECT count(*) FROM outbox") == ROWS
    read = await _explain(db, pg._CLAIM_AND_READ, [loaded["sku"]], *pair)
    assert read["outbox"] <= 2 * ROWS
    assert await db.fetchval("SELECT count(*) FROM outbox") == ROWS - 1  # the claimed position's row
    read = await _explain(db, pg._CLAIM, 500)
    assert read["outbox"] <= 2 * ROWS
    assert await db.fetchval("SELECT count(*) FROM outbox") == ROWS - 501
