"""Demo data for `stockwire serve --demo`: a few locations with coordinates, a few dozen SKUs, some stock."""

from __future__ import annotations

import random
from datetime import timedelta

from sqlalchemy import func, select

from app.db.tables import skus
from app.domain.events import EventType, InventoryEvent
from app.services import catalog, events
from app.services.context import Ctx

LOCATIONS = [
    catalog.LocationInput("WH-EAST", "Newark warehouse", catalog.LocationKind.WAREHOUSE, 40.7357, -74.1724, 10),
    catalog.LocationInput("WH-WEST", "Reno warehouse", catalog.LocationKind.WAREHOUSE, 39.5296, -119.8138, 20),
    catalog.LocationInput("WH-CENTRAL", "Denver warehouse", catalog.LocationKind.WAREHOUSE, 39.7392, -104.9903, 30),
    catalog.LocationInput("STORE-NYC", "SoHo store", catalog.LocationKind.STORE, 40.7233, -74.0030, 50),
    catalog.LocationInput("STORE-SF", "Union Square store", catalog.LocationKind.STORE, 37.7880, -122.4075, 50),
    catalog.LocationInput("3PL-TX", "Dallas 3PL", catalog.LocationKind.THIRD_PARTY, 32.7767, -96.7970, 60),
]
PRODUCTS = ["Trail Runner", "Canvas Tote", "Merino Tee", "Rain Shell", "Wool Beanie", "Denim Jacket"]
SIZES = ["S", "M", "L", "XL", "XXL"]


async def is_empty(ctx: Ctx) -> bool:
    async with ctx.db.read() as conn:
        return int(await conn.scalar(select(func.count()).select_from(skus)) or 0) == 0


async def load(ctx: Ctx, seed: int = 7) -> int:
    """Loads the demo catalogue and stock. Returns how many events it recorded."""
    rng = random.Random(seed)
    await catalog.upsert_locations(ctx, LOCATIONS)
    items = [catalog.SkuInput(f"{p.upper().replace(' ', '-')}-{s}", f"{p}, size {s}") for p in PRODUCTS for s in SIZES]
    await catalog.upsert_skus(ctx, items)
    now = ctx.clock()
    batch: list[InventoryEvent] = []
    for sku in items:
        for loc in rng.sample(LOCATIONS, k=rng.randint(2, 4)):
            ref = f"{sku.code}@{loc.code}"
            batch.append(
                InventoryEvent(
                    "demo-erp",
                    f"count:{ref}",
                    EventType.COUNTED,
                    sku.code,
                    loc.code,
                    rng.randint(0, 40),
                    now - timedelta(hours=2),
                    reason="opening count",
                )
            )
            if rng.random() < 0.4:
                batch.append(
                    InventoryEvent(
                        "demo-erp",
                        f"po:{ref}",
                        EventType.INCOMING,
                        sku.code,
                        loc.code,
                        rng.randint(5, 30),
                        now - timedelta(hours=1),
                        reference="po://demo/PO-1001",
                        expected_at=now + timedelta(days=5),
                    )
                )
            if rng.random() < 0.3:
                batch.append(
                    InventoryEvent(
                        "demo-pos",
                        f"sale:{ref}",
                        EventType.SOLD,
                        sku.code,
                        loc.code,
                        rng.randint(1, 3),
                        now - timedelta(minutes=30),
                    )
                )
    results, _ = await events.record_events(ctx, batch)
    return len(results)
