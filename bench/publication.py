"""Cost of one publication pass for a channel with an endpoint, when everything is already in sync.

    .venv/bin/python bench/publication.py [--skus 5000] [--database-url URL] [--repeat 5]

On demand only (not part of the test suite). One run:
 1. loads `--skus` SKUs at two locations (a RECEIVED row each) into the given database (default: an
    embedded PostgreSQL in a temporary directory; a PostgreSQL URL must name an empty, migrated-or-new database),
    a channel WEB on both with a cap and an endpoint, and marks every SKU's figure as acknowledged;
 2. times (best of `--repeat`) what the worker does per pass:
    FULL  compare every SKU the channel can show (at start, every 60 s, after a broadcast gap);
    ONE   compare the one SKU the relay said moved (the steady state);
 3. RAW BASELINE: the same reads as bare SQL (the channel's positions summed per SKU, with no rules), for
    all SKUs and for one SKU; prints each figure and the ratio to its baseline.
Nothing is pushed (all in sync), so no endpoint needs to listen.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select, text

from app.db.engine import Database
from app.db.migrate import upgrade
from app.db.tables import channel_publications, channels, skus
from app.domain.events import EventType, InventoryEvent
from app.services import catalog, events
from app.services import channels as channel_service
from app.services.channel_publication.sync_status import _status
from app.services.channel_publication.worker import PublicationWorker
from app.services.context import Ctx
from app.settings import Settings

RAW_ALL = """SELECT s.sku_id, sum(CASE WHEN s.on_hand - s.committed - s.reserved - s.unavailable - s.safety_stock > 0
  THEN s.on_hand - s.committed - s.reserved - s.unavailable - s.safety_stock ELSE 0 END)
  FROM stock_levels s JOIN channel_locations cl ON cl.location_id = s.location_id
  WHERE cl.channel_id = :channel GROUP BY s.sku_id"""
RAW_ONE = RAW_ALL.replace("WHERE cl.channel_id = :channel", "WHERE cl.channel_id = :channel AND s.sku_id = :sku")


async def best(repeat: int, call: Callable[[], Awaitable[Any]]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return min(times)


async def main(n: int, url: str, repeat: int) -> None:
    db = Database(url)
    try:
        await upgrade(db.engine)
        ctx = Ctx(db=db, settings=Settings(database_url=url))
        t0 = datetime.now(UTC) - timedelta(days=1)
        codes = [f"S{i:06d}" for i in range(n)]
        for start in range(0, n, 1000):
            await catalog.upsert_skus(ctx, [catalog.SkuInput(c, c) for c in codes[start : start + 1000]])
        kind = catalog.LocationKind.WAREHOUSE
        await catalog.upsert_locations(ctx, [catalog.LocationInput(c, c, kind) for c in ("W1", "W2")])
        for start in range(0, n, 200):  # 400 positions per batch
            batch = [
                InventoryEvent("erp", f"r-{c}-{loc}", EventType.RECEIVED, c, loc, 10, t0)
                for c in codes[start : start + 200]
                for loc in ("W1", "W2")
            ]
            await events.record_events(ctx, batch)
        web = channel_service.ChannelInput(
            "WEB", "Web", ["W1", "W2"], allocation_cap=15, endpoint_url="http://127.0.0.1:9/x", endpoint_secret="s"
        )
        await channel_service.upsert_channels(ctx, [web])
        async with db.read() as conn:
            channel = (await conn.execute(select(channels).where(channels.c.code == "WEB"))).one()
            figures = await _status(conn, channel, datetime.now(UTC))
            ids = {r.code: r.id for r in await conn.execute(select(skus.c.code, skus.c.id))}

        async def acknowledge_all(conn: Any) -> None:
            rows = [
                {
                    "channel_id": channel.id,
                    "sku_id": ids[f.sku_code],
                    "acked_version": f.current_version,
                    "acked_available": f.current_available,
                    "attempts": 0,
                }
                for f in figures
            ]
            for start in range(0, len(rows), 1000):
                await conn.execute(insert(channel_publications), rows[start : start + 1000])

        await db.write(acknowledge_all)

        worker = PublicationWorker(ctx)
        async with httpx.AsyncClient() as client:
            full = await best(repeat, lambda: worker._publish_channel(client, channel, None))
            one = await best(repeat, lambda: worker._publish_channel(client, channel, {codes[n // 2]}))

        async def raw(statement: str, **params: Any) -> None:
            async with db.read() as conn:
                list(await conn.execute(text(statement), params))

        raw_full = await best(repeat, lambda: raw(RAW_ALL, channel=channel.id))
        raw_one = await best(repeat, lambda: raw(RAW_ONE, channel=channel.id, sku=ids[codes[n // 2]]))
        print(f"{n} SKUs x 2 locations, all in sync, {db.engine.dialect.name}, best of {repeat}:")
        print(f"  FULL pass  {full * 1000:9.1f} ms   raw SQL {raw_full * 1000:8.1f} ms   ratio {full / raw_full:6.1f}x")
        print(f"  ONE SKU    {one * 1000:9.1f} ms   raw SQL {raw_one * 1000:8.1f} ms   ratio {one / raw_one:6.1f}x")
        print(f"  a pass for one moved SKU costs {one / full:.2%} of a full pass")
    finally:
        await db.dispose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skus", type=int, default=5000)
    p.add_argument("--database-url", default=None, help="default: an embedded PostgreSQL in a temporary directory")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    from app.db.embedded import database_for

    with (
        tempfile.TemporaryDirectory() as tmp,
        database_for(Settings(database_url=a.database_url, data_dir=Path(tmp))) as settings,
    ):
        asyncio.run(main(a.skus, settings.database, a.repeat))
