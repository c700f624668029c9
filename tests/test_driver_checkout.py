"""`Database.begin_driver` takes and gives back its pooled connection without a greenlet when the pool
needs no I/O for it (app/compat.py checkout_at_once / return_at_once), and the awaited way otherwise:
the same pool, its size and overflow, connections re-opened with their role after a discard."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from app import compat
from app.db import engine as engine_module
from app.db import tenancy
from app.db.engine import Database

pytestmark = pytest.mark.postgres


async def _pid(conn: asyncpg.Connection) -> int:
    pid: int = await conn.fetchval("SELECT pg_backend_pid()")
    return pid


async def _session_role(db: Database) -> str:
    pooled = await db.engine.raw_connection()
    try:
        role: str = await pooled.driver_connection.fetchval("SHOW role")
        return role
    finally:
        await compat.return_pooled(pooled)


async def test_a_transaction_reuses_the_idle_connection_without_the_awaited_checkout(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(database_url, pool_size=2, max_overflow=1)
    pool: Any = db.engine.sync_engine.pool
    try:
        with tenancy.acting_for(1):
            first = await db.write_driver(_pid)  # opens the pool's first connection (awaited)
            awaited: list[bool] = []
            given_back = compat.return_pooled

            async def counted(pooled: Any, discard: bool = False) -> None:
                awaited.append(discard)
                await given_back(pooled, discard)

            monkeypatch.setattr(engine_module, "return_pooled", counted)
            pids = [await db.write_driver(_pid) for _ in range(20)]
        assert pids == [first] * 20  # the same backend, taken from the pool each time
        assert awaited == []  # never given back the awaited way
        assert (pool.checkedout(), pool.checkedin()) == (0, 1)
        assert await _session_role(db) == tenancy.APP_ROLE
    finally:
        await db.dispose()


async def test_overflow_connections_are_still_closed_when_given_back(database_url: str) -> None:
    db = Database(database_url, pool_size=1, max_overflow=2)
    pool: Any = db.engine.sync_engine.pool

    async def slow(conn: asyncpg.Connection) -> int:
        await conn.execute("SELECT pg_sleep(0.05)")
        return await _pid(conn)

    try:
        with tenancy.acting_for(1):
            pids = await asyncio.gather(*(db.write_driver(slow) for _ in range(3)))
        assert len(set(pids)) == 3
        assert (pool.checkedout(), pool.checkedin()) == (0, 1)
        probe = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            for _ in range(50):  # a closed backend leaves pg_stat_activity a moment later
                alive = await probe.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(pids)
                )
                if alive == 1:
                    break
                await asyncio.sleep(0.02)
        finally:
            await probe.close()
        assert alive == 1  # the pool keeps one; the two overflow connections were closed
        with tenancy.acting_for(1):
            assert await db.write_driver(_pid) in pids
    finally:
        await db.dispose()


async def test_a_discarded_connection_is_reopened_the_awaited_way_with_its_role(database_url: str) -> None:
    db = Database(database_url, pool_size=1, max_overflow=0)
    pool: Any = db.engine.sync_engine.pool
    try:
        with tenancy.acting_for(1):
            before = await db.write_driver(_pid)
        pooled = await db.engine.raw_connection()
        await compat.return_pooled(pooled, discard=True)  # closed: its record waits without a connection
        assert pool.checkedin() == 1
        assert compat.checkout_at_once(db.engine) is None  # opening one needs I/O: not at once
        assert (pool.checkedout(), pool.checkedin()) == (0, 1)  # the record went back, nothing leaked
        with tenancy.acting_for(1):
            after = await db.write_driver(_pid)
        assert after != before
        assert (pool.checkedout(), pool.checkedin()) == (0, 1)
        assert await _session_role(db) == tenancy.APP_ROLE  # the new connection switched its role
    finally:
        await db.dispose()


async def test_a_connection_with_the_adapters_transaction_open_is_given_back_the_awaited_way(
    database_url: str,
) -> None:
    db = Database(database_url, pool_size=1, max_overflow=0)
    pool: Any = db.engine.sync_engine.pool
    try:
        pooled = await db.engine.raw_connection()
        driver = pooled.driver_connection
        with tenancy.acting_for(1):
            await compat.begin_driver_transaction(pooled.dbapi_connection)
        assert compat.return_at_once(pooled) is False  # rolling it back is I/O
        assert pool.checkedout() == 1
        await compat.return_pooled(pooled)
        assert (pool.checkedout(), pool.checkedin()) == (0, 1)
        again = compat.checkout_at_once(db.engine)  # idle and open: taken at once
        assert again is not None and again.driver_connection is driver
        assert pool.checkedout() == 1
        assert compat.return_at_once(again) is True
        assert (pool.checkedout(), pool.checkedin()) == (0, 1)
    finally:
        await db.dispose()


async def test_after_the_pool_is_invalidated_its_connections_are_replaced_the_awaited_way(database_url: str) -> None:
    db = Database(database_url, pool_size=1, max_overflow=0)
    pool: Any = db.engine.sync_engine.pool
    try:
        with tenancy.acting_for(1):
            before = await db.write_driver(_pid)
        await asyncio.sleep(0.02)  # the pool compares wall-clock times
        pool._invalidate(None)  # what SQLAlchemy does on a disconnect error: every older connection is stale
        assert compat.checkout_at_once(db.engine) is None  # closing and re-opening it is I/O
        assert (pool.checkedout(), pool.checkedin()) == (0, 1)
        with tenancy.acting_for(1):
            after = await db.write_driver(_pid)
        assert after != before
        again = compat.checkout_at_once(db.engine)  # the new connection is taken at once again
        assert again is not None
        assert compat.return_at_once(again) is True
        assert (pool.checkedout(), pool.checkedin()) == (0, 1)
    finally:
        await db.dispose()
