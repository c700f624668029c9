"""Two tenants racing on one shared site (issue 14), over HTTP on two server processes.

Both brands keep stock at the same 3PL warehouse (their own location rows, placed at one site) and
sell the same SKU code. Reserves of both, interleaved on both processes: neither brand oversells,
neither touches the other's positions, and every position still equals its ledger. Orders routed by
both: the site's daily capacity holds for the two together, exactly.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.db import tenancy
from app.db.engine import Database
from app.services import integrity, tenants
from app.services.context import Ctx
from app.settings import Settings
from tests.conftest import _truncate, create_test_key
from tests.live import servers
from tests.test_concurrency_postgres import RESERVE, SETUP, STOCK
from tests.test_tenants import key_of, make_tenant

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SITE_CAPACITY = 10
ROUTE = """mutation($input: RouteOrderInput!) { routeAndReserve(input: $input) {
  decision { shipments { locationCode } } userErrors { code } } }"""
MORE = """mutation { recordInventoryEvents(input: [{source: "erp", externalId: "r4", type: RECEIVED, skuCode: "OTHER",
  locationCode: "WH-B", quantity: 1000, occurredAt: "2026-01-01T00:00:00Z"}]) { userErrors { code } } }"""
ROUTING = """mutation { setLocationRouting(input: [{locationCode: "WH-A", dailyOrderCapacity: 100}]) {
  userErrors { code } } }"""


async def _post(client: httpx.AsyncClient, url: str, query: str, key: str, **variables: Any) -> dict[str, Any]:
    response = await client.post(
        f"{url}/graphql", json={"query": query, "variables": variables}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def _shared_world(url: str, db_url: str) -> tuple[str, str]:
    """Two tenants with the same catalogue; each one's WH-A is at the shared site."""
    b = await make_tenant(db_url, "brand-b")
    a_key = await create_test_key(db_url)
    db = Database(db_url)
    admin = Database(db_url, role=None)
    try:
        b_key = await key_of(db, b)
        async with httpx.AsyncClient(timeout=60) as setup:
            for key in (a_key, b_key):
                for query in (SETUP, STOCK, MORE, ROUTING):
                    await _post(setup, url, query, key)
        await tenants.create_site(admin, "3PL-EAST", "the 3PL's east warehouse", SITE_CAPACITY)
        for tenant_id in (tenancy.DEFAULT_TENANT, b):
            with tenancy.acting_for(tenant_id):
                await tenants.place_location(db, "WH-A", "3PL-EAST")
    finally:
        await db.dispose()
        await admin.dispose()
    return a_key, b_key


async def test_two_tenants_racing_at_a_shared_site_never_oversell_nor_touch_each_other(postgres_url: str) -> None:
    await _truncate(postgres_url)
    with servers(2, postgres_url, db_pool_size="8") as (one, two):
        keys = await _shared_world(one.url, postgres_url)
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def reserve(i: int) -> tuple[int, int, str | None]:
                tenant = i % 2
                lines = [{"skuCode": "HOT", "quantity": 1 + (i // 2) % 2, "locationCode": "WH-A"}]
                variables = {"input": {"lines": lines, "idempotencyKey": f"buyer-{i}"}}
                data = await _post(client, (one, two)[(i // 2) % 2].url, RESERVE, keys[tenant], **variables)
                payload = data["reserve"]
                if payload["reservation"] is None:
                    return tenant, 0, payload["userErrors"][0]["code"]
                return tenant, sum(ln["quantity"] for ln in payload["reservation"]["lines"]), None

            results = await asyncio.gather(*(reserve(i) for i in range(160)))
            # orders routed by both tenants at once: WH-A (at the site) is everyone's first choice
            routed = await asyncio.gather(
                *(
                    _post(
                        client,
                        (one, two)[i % 2].url,
                        ROUTE,
                        keys[(i // 2) % 2],
                        input={"orderRef": f"order-{i}", "lines": [{"skuCode": "OTHER", "quantity": 1}]},
                    )
                    for i in range(40)
                )
            )
    held = Counter[int]()
    for tenant, units, error in results:
        held[tenant] += units
        assert error in (None, "INSUFFICIENT_STOCK"), error
    assert held == {0: 30, 1: 30}  # WH-A has 30 of HOT in each tenant: each sold out, exactly

    at_site = Counter[int]()
    for i, data in enumerate(routed):
        payload = data["routeAndReserve"]
        assert payload["userErrors"] == [], payload
        (shipment,) = payload["decision"]["shipments"]
        at_site[(i // 2) % 2] += shipment["locationCode"] == "WH-A"
    assert sum(at_site.values()) == SITE_CAPACITY, at_site  # the site's capacity, for both tenants together

    db = Database(postgres_url)
    try:
        for tenant_id in (tenancy.DEFAULT_TENANT, 2):
            with tenancy.acting_for(tenant_id):
                ctx = Ctx(db=db, settings=Settings(database_url=postgres_url))
                assert await integrity.check(ctx) == []
                async with db.read() as conn:
                    rows = dict(
                        (
                            await conn.execute(
                                text(
                                    "SELECT l.code, s.reserved FROM stock_levels s JOIN skus k ON k.id = s.sku_id "
                                    "JOIN locations l ON l.id = s.location_id WHERE k.code = 'HOT'"
                                )
                            )
                        ).all()
                    )
                assert rows == {"WH-A": 30, "WH-B": 0}
                async with db.read() as conn:
                    orders = (await conn.execute(text("SELECT sum(orders) FROM location_daily_orders"))).scalar()
                assert orders == 20  # each tenant's own count: every order, wherever it shipped from
        async with db.read() as conn:
            assert (await conn.execute(text("SELECT sum(orders) FROM site_daily_orders"))).scalar() == SITE_CAPACITY
    finally:
        await db.dispose()
