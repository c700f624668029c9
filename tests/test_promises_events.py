"""Promises of issue 11 about events, versions, figures, routing records and settings, each pinned by a
test that failed before its fix."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.services import integrity
from app.services import routing as routing_service
from tests.conftest import Api
from tests.helpers import AVAILABILITY, catalogue, event, level, receive, record

# --- item 4: a late count inside one batch ---------------------------------------------------------


async def test_a_late_count_keeps_a_later_event_of_its_own_batch(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 20)
    # the shipment happened at 10:03:57, the count at 10:01:40: the count's 17 is before the shipment
    result = await record(
        api,
        event("ORDER_PLACED", "SKU-1", "WH-1", 1, minutes=-30),
        event("SHIPPED", "SKU-1", "WH-1", 1, minutes=63 + 57 / 60),
        event("COUNTED", "SKU-1", "WH-1", 17, minutes=61 + 40 / 60),
    )
    assert result["userErrors"] == []
    assert [r["status"] for r in result["results"]] == ["APPLIED", "APPLIED", "APPLIED"]
    row = await level(api, "SKU-1", "WH-1")
    assert (row["onHand"], row["committed"]) == (16, 0)
    # the same events one call at a time end at the same place
    await catalogue(api, skus=["SKU-2"])
    await receive(api, "SKU-2", "WH-1", 20)
    for e in (
        event("ORDER_PLACED", "SKU-2", "WH-1", 1, minutes=-30),
        event("SHIPPED", "SKU-2", "WH-1", 1, minutes=63 + 57 / 60),
        event("COUNTED", "SKU-2", "WH-1", 17, minutes=61 + 40 / 60),
    ):
        assert (await record(api, e))["userErrors"] == []
    assert (await level(api, "SKU-2", "WH-1"))["onHand"] == 16
    assert await integrity.check(api.ctx) == []


# --- item 8: a refused routing decision keeps the stock it was routed on -----------------------------

ROUTE_AND_RESERVE = """mutation($input: RouteOrderInput!) { routeAndReserve(input: $input) {
  decision { outcome id } userErrors { code } } }"""


async def test_a_refused_decision_stores_the_stock_it_was_routed_on(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    await catalogue(api, skus=["A"], locations=[("WH-1", 10), ("WH-2", 20)])
    await receive(api, "A", "WH-1", 2)
    await receive(api, "A", "WH-2", 1)
    store_refusal = routing_service._store_refusal

    async def stock_arrives_first(*args: Any) -> Any:
        # another integration's receipt lands between the refused routing and the storing of its decision
        await receive(api, "A", "WH-1", 5)
        return await store_refusal(*args)

    monkeypatch.setattr(routing_service, "_store_refusal", stock_arrives_first)
    result = (await api.ok(ROUTE_AND_RESERVE, input={"orderRef": "o-1", "lines": [{"skuCode": "A", "quantity": 4}]}))[
        "routeAndReserve"
    ]
    assert [e["code"] for e in result["userErrors"]] == ["INSUFFICIENT_STOCK"]
    assert result["decision"]["outcome"] == "REFUSED"
    rows = await api.sql("SELECT request FROM routing_decisions WHERE id = :id", id=int(result["decision"]["id"]))
    seen = {c["locationCode"]: c["available"] for c in json.loads(rows[0].request)["candidates"]}
    # what the router saw (3 units in all, so 4 were refused), not the 8 on hand after the receipt
    assert seen == {"WH-1": {"A": 2}, "WH-2": {"A": 1}}
    assert (await level(api, "A", "WH-1"))["onHand"] == 7


async def _unused(api: Api) -> None:  # keeps imports used while the file grows
    await api.ok(AVAILABILITY, skus=["A"])
