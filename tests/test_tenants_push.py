"""Push isolation (issue 14): a subscriber of tenant A never receives a change of tenant B, across
processes. Two server processes share PostgreSQL and Redis; both tenants sell the same codes. B's
changes go through process 2 while A's subscribers (every root subscription, on process 1) listen;
A's own change made after B's proves their messages were already through, and none of B's reached A.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import pytest

from app.db import tenancy
from app.db.engine import Database
from tests.conftest import _truncate, create_test_key
from tests.live import servers
from tests.services import REDIS_URL, require_redis
from tests.subscribers import AVAILABILITY_SUB, LEVELS_SUB, TIMEOUT, TRANSPORT_WS, Http, Subscriber, http_client
from tests.test_tenants import key_of, make_tenant

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

SKUS = ["SKU-1", "SKU-2"]
ALERTS_SUB = """subscription($skus: [String!]) {
  channelAlerts(channelCode: "WEB", skuCodes: $skus, lowStockThreshold: 5) { skuCode kind available version } }"""
CHANNEL = (
    'mutation { upsertChannels(input: [{code: "WEB", name: "web", locationCodes: ["WH-1"]}]) { userErrors { code } } }'
)


async def _world(http: Http, units: int) -> None:
    await http.catalogue(SKUS, ["WH-1"])
    assert (await http.ok(CHANNEL))["upsertChannels"]["userErrors"] == []
    for sku in SKUS:
        await http.event("RECEIVED", sku, "WH-1", units)


def _quantities(messages: list[dict[str, Any]]) -> set[int]:
    found: set[int] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k != "version":
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, int) and not isinstance(value, bool):
            found.add(value)

    walk(messages)
    return found


async def test_subscribers_of_one_tenant_never_get_another_tenants_changes(postgres_url: str) -> None:
    require_redis()
    await _truncate(postgres_url)
    b = await make_tenant(postgres_url, "brand-b")
    a_key = await create_test_key(postgres_url)
    db = Database(postgres_url)
    try:
        b_key = await key_of(db, b)
        operator = await key_of(db, tenancy.DEFAULT_TENANT, acts_for=("default", "brand-b"))
    finally:
        await db.dispose()
    with servers(2, postgres_url, REDIS_URL, broadcast_channel=f"stockwire.test.{uuid4().hex}") as (one, two):
        async with http_client(two.url, a_key) as a2, http_client(two.url, b_key) as b2:
            http_a, http_b = Http(a2), Http(b2)
            await _world(http_a, 10)
            await _world(http_b, 700)
            subscriptions = [
                (AVAILABILITY_SUB, {"skus": SKUS}),
                (AVAILABILITY_SUB, {}),  # every SKU: changes only
                (AVAILABILITY_SUB, {"skus": SKUS, "channel": "WEB"}),
                (LEVELS_SUB, {}),
                (LEVELS_SUB, {"skus": SKUS, "locs": ["WH-1"]}),
                (ALERTS_SUB, {"skus": SKUS}),
            ]
            a_subs = [Subscriber(one.ws_url, q, v, TRANSPORT_WS, a_key) for q, v in subscriptions]
            # an operator's key names its tenant in connection_init: it gets that tenant's changes only
            as_operator = Subscriber(one.ws_url, AVAILABILITY_SUB, {"skus": SKUS}, TRANSPORT_WS, operator)
            as_operator.init_payload["tenant"] = "default"
            b_control = Subscriber(one.ws_url, AVAILABILITY_SUB, {"skus": SKUS}, TRANSPORT_WS, b_key)
            everyone = [*a_subs, as_operator, b_control]
            for sub in everyone:
                await sub.__aenter__()
            try:
                await asyncio.sleep(1.0)  # every subscription is in place (snapshots sent)
                for _ in range(5):  # B's changes, through the other process: 700 -> 695, then 0
                    await http_b.event("SOLD", "SKU-1", "WH-1", 1)
                await http_b.event("SOLD", "SKU-2", "WH-1", 700)
                # B's control sees B's changes. Not each intermediate one: a relay publishes the state it
                # reads, so changes close together may reach a subscriber as one (699 is not promised);
                # and the last of SKU-1's (695) may come after SKU-2's from the other process's relay
                await b_control.wait_until(
                    lambda ps: (
                        any(p["skuCode"] == "SKU-2" and p["available"] == 0 for p in ps)
                        and any(p["skuCode"] == "SKU-1" and p["available"] == 695 for p in ps)
                    ),
                    "B's own changes",
                )
                # A's fence: once A's subscribers have it, B's earlier messages have passed them too
                await http_a.event("SOLD", "SKU-1", "WH-1", 7)  # 10 -> 3: also a LOW_STOCK alert for A
                for sub in [*a_subs, as_operator]:
                    async with asyncio.timeout(TIMEOUT):
                        while 3 not in _quantities(sub.messages):
                            assert sub.error is None, sub.error
                            await asyncio.sleep(0.05)
                for sub in [*a_subs, as_operator]:
                    leaked = {n for n in _quantities(sub.messages) if n >= 100}
                    assert leaked == set(), (sub.query, sub.variables, sub.messages)
                    assert sub.messages, sub.query
                assert {n for n in _quantities(b_control.messages) if n >= 100} >= {700, 695}
                assert 3 not in _quantities(b_control.messages)
            finally:
                for sub in everyone:
                    await sub.close()
