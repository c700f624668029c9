"""Database.warm: the pool's steady connections are opened at start, so a burst opens none."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from sqlalchemy import event, text

from app.db.engine import Database


def _count_connects(db: Database) -> list[int]:
    opened = [0]

    def connected(_dbapi: Any, _record: Any) -> None:
        opened[0] += 1

    event.listen(db.engine.sync_engine, "connect", connected)
    return opened


async def test_warm_opens_the_pool_and_a_burst_then_opens_nothing(postgres_url: str) -> None:
    db = Database(postgres_url, pool_size=4, max_overflow=3)
    opened = _count_connects(db)
    try:
        # asked for more than the pool keeps: the pool size, never the overflow
        assert await db.warm(10) == 4
        assert opened[0] == 4
        assert db.engine.pool.checkedin() == 4  # type: ignore[attr-defined]

        # a burst of as many transactions as the pool holds, all open at once: no new connection
        started = asyncio.Event()
        inside = 0

        async def one() -> int:
            nonlocal inside
            async with db.read() as conn:
                inside += 1
                if inside == 4:
                    started.set()
                await asyncio.wait_for(started.wait(), 10)
                return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())

        backends = await asyncio.gather(*(one() for _ in range(4)))
        assert len(set(backends)) == 4  # four connections at once, really
        assert opened[0] == 4  # the warmed ones
    finally:
        await db.dispose()


async def test_warm_of_nothing_opens_nothing(postgres_url: str) -> None:
    db = Database(postgres_url, pool_size=4, max_overflow=0)
    opened = _count_connects(db)
    try:
        assert await db.warm(0) == 0
        assert opened[0] == 0
    finally:
        await db.dispose()


async def test_warm_without_a_server_warns_and_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    # port 9 (discard) on loopback: nothing listens, the connection is refused at once
    db = Database("postgresql+asyncpg://postgres@127.0.0.1:9/none", pool_size=2, max_overflow=0)
    try:
        with caplog.at_level(logging.WARNING, logger="stockwire.db"):
            assert await db.warm(2) == 0
        assert "opened 0 of 2 database connections at start" in caplog.text
    finally:
        await db.dispose()
