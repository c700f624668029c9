"""Overselling is impossible: 240 concurrent reserves over HTTP, two server processes, one Postgres, 50 units."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from sqlalchemy import text

from app.db.engine import Database
from app.services import integrity
from app.services.context import Ctx
from app.settings import Settings
from tests.conftest import _truncate
from tests.live import servers

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SETUP = """mutation {
  upsertSkus(input: [{code: "HOT", name: "The last units"}, {code: "OTHER", name: "Other"}]) { userErrors { code } }
  upsertLocations(input: [{code: "WH-A", name: "A", kind: WAREHOUSE, priority: 10},
                          {code: "WH-B", name: "B", kind: WAREHOUSE, priority: 20}]) { userErrors { code } }
}"""
STOCK = """mutation {
  recordInventoryEvents(input: [
    {source: "erp", externalId: "r1", type: RECEIVED, skuCode: "HOT", locationCode: "WH-A", quantity: 30,
     occurredAt: "2026-01-01T00:00:00Z"},
    {source: "erp", externalId: "r2", type: RECEIVED, skuCode: "HOT", locationCode: "WH-B", quantity: 20,
     occurredAt: "2026-01-01T00:00:00Z"},
    {source: "erp", externalId: "r3", type: RECEIVED, skuCode: "OTHER", locationCode: "WH-A", quantity: 1000,
     occurredAt: "2026-01-01T00:00:00Z"}]) { userErrors { code } }
}"""
RESERVE = """mutation($input: ReserveInput!) { reserve(input: $input) {
  reservation { id lines { locationCode quantity } } userErrors { code } } }"""


async def _reserve(client: httpx.AsyncClient, url: str, i: int) -> tuple[int, str | None]:
    # every fourth buyer also wants OTHER: multi-line holds must stay all-or-nothing under contention
    lines = [{"skuCode": "HOT", "quantity": 1 + i % 2}]
    if i % 4 == 0:
        lines.append({"skuCode": "OTHER", "quantity": 1})
    variables = {"input": {"lines": lines, "idempotencyKey": f"buyer-{i}"}}
    response = await client.post(f"{url}/graphql", json={"query": RESERVE, "variables": variables})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    payload = body["data"]["reserve"]
    if payload["reservation"] is None:
        return 0, payload["userErrors"][0]["code"]
    held = sum(ln["quantity"] for ln in payload["reservation"]["lines"])
    return held, None


async def test_concurrent_reserves_across_two_processes_never_oversell(postgres_url: str) -> None:
    await _truncate(postgres_url)
    with servers(2, postgres_url, db_pool_size="20") as (a, b):
        async with httpx.AsyncClient(timeout=60, headers=a.headers) as setup:
            for query in (SETUP, STOCK):
                r = await setup.post(f"{a.url}/graphql", json={"query": query})
                assert "errors" not in r.json(), r.json()
        # a fresh client for the race: a keep-alive connection left idle by the set-up could be closed
        # by the server (uvicorn's 5 s keep-alive) just as the race reuses it, on a slow machine
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(timeout=60, limits=limits, headers=a.headers) as client:
            results = await asyncio.gather(*(_reserve(client, (a, b)[i % 2].url, i) for i in range(240)))

    refusals = Counter(code for _, code in results if code is not None)
    assert set(refusals) == {"INSUFFICIENT_STOCK"}, refusals
    db = Database(postgres_url)
    try:
        async with db.read() as conn:
            rows = {
                r.code: r
                for r in await conn.execute(
                    text(
                        "SELECT s.code, sum(l.on_hand) AS on_hand, sum(l.reserved) AS reserved, "
                        "min(l.on_hand - l.committed - l.reserved - l.unavailable - l.safety_stock) AS min_available "
                        "FROM stock_levels l JOIN skus s ON s.id = l.sku_id GROUP BY s.code"
                    )
                )
            }
            held_by_reservations = await conn.scalar(
                text(
                    "SELECT sum(rl.quantity) FROM reservation_lines rl JOIN skus s ON s.id = rl.sku_id "
                    "WHERE s.code = 'HOT'"
                )
            )
            other_lines = await conn.scalar(
                text("SELECT count(*) FROM reservation_lines rl JOIN skus s ON s.id = rl.sku_id WHERE s.code = 'OTHER'")
            )
    finally:
        await db.dispose()
    hot = rows["HOT"]
    granted = [held for held, code in results if code is None]
    # exactly the 50 units are held: none oversold, none left while a buyer of 1 was refused
    assert hot.reserved == 50 == held_by_reservations
    assert hot.min_available == 0 and hot.on_hand == 50
    # what the successful calls were told adds up (HOT units plus one OTHER per fourth buyer)
    successful_with_other = sum(1 for i, (_, code) in enumerate(results) if code is None and i % 4 == 0)
    assert sum(granted) == 50 + successful_with_other
    # all-or-nothing: OTHER was only held by buyers whose HOT line was also held
    assert rows["OTHER"].reserved == other_lines == successful_with_other
    assert len(results) - len(granted) == sum(refusals.values())
    # and every position is still the fold of its ledger
    checker = Database(postgres_url)
    try:
        assert await integrity.check(Ctx(db=checker, settings=Settings(database_url=postgres_url))) == []
    finally:
        await checker.dispose()
