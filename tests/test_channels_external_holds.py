"""Holds from other platforms: placed, converted and released by (source, externalId), and expired."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from app.services import integrity
from tests.conftest import Api
from tests.helpers import catalogue, level, receive

HOLDS = """mutation($input: [ExternalHoldInput!]!) { recordExternalHolds(input: $input) {
  results { index status holdStatus } userErrors { code message field } } }"""


def _hold(external_id: str, action: str, **extra: Any) -> dict[str, Any]:
    return {"source": "amazon", "externalId": external_id, "action": action, **extra}


async def _holds(api: Api, *items: dict[str, Any]) -> dict[str, Any]:
    data = await api.ok(HOLDS, input=list(items))
    result: dict[str, Any] = data["recordExternalHolds"]
    return result


async def test_place_convert_release_are_counted_in_reserved_and_idempotent(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 10)
    place = _hold("cart-1", "PLACE", skuCode="SKU-1", locationCode="WH-1", quantity=3)
    other = _hold("cart-2", "PLACE", skuCode="SKU-1", locationCode="WH-1", quantity=2)
    result = await _holds(api, place, other)
    assert result == {
        "results": [
            {"index": 0, "status": "APPLIED", "holdStatus": "ACTIVE"},
            {"index": 1, "status": "APPLIED", "holdStatus": "ACTIVE"},
        ],
        "userErrors": [],
    }
    row = await level(api, "SKU-1", "WH-1")
    assert (row["reserved"], row["available"]) == (5, 5)
    again = await _holds(api, place)
    assert again["results"] == [{"index": 0, "status": "DUPLICATE", "holdStatus": "ACTIVE"}]
    conflict = await _holds(api, {**place, "quantity": 4})
    assert [e["code"] for e in conflict["userErrors"]] == ["EVENT_CONFLICT"]

    converted = await _holds(api, _hold("cart-1", "CONVERT"), _hold("cart-2", "RELEASE"))
    assert [r["holdStatus"] for r in converted["results"]] == ["CONVERTED", "RELEASED"]
    row = await level(api, "SKU-1", "WH-1")
    assert (row["reserved"], row["committed"], row["available"]) == (0, 3, 7)
    assert (await _holds(api, _hold("cart-1", "CONVERT")))["results"][0]["status"] == "DUPLICATE"
    refused = await _holds(api, _hold("cart-1", "RELEASE"), _hold("cart-9", "RELEASE"))
    assert [e["code"] for e in refused["userErrors"]] == ["RESERVATION_NOT_ACTIVE", "RESERVATION_NOT_FOUND"]
    kinds = await api.sql(
        "SELECT kind, d_reserved, d_committed, reference FROM inventory_events WHERE id > 1 ORDER BY id"
    )
    assert [tuple(k) for k in kinds] == [
        ("EXTERNAL_HOLD_PLACED", 3, 0, "amazon/cart-1"),
        ("EXTERNAL_HOLD_PLACED", 2, 0, "amazon/cart-2"),
        ("EXTERNAL_HOLD_CONVERTED", -3, 3, "amazon/cart-1"),
        ("EXTERNAL_HOLD_RELEASED", -2, 0, "amazon/cart-2"),
    ]
    assert await integrity.check(api.ctx) == []


async def test_a_hold_past_expiry_is_released_by_the_sweeper(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 10)
    soon = (datetime.now(UTC) + timedelta(milliseconds=300)).isoformat()
    result = await _holds(
        api, _hold("cart-1", "PLACE", skuCode="SKU-1", locationCode="WH-1", quantity=4, expiresAt=soon)
    )
    assert result["userErrors"] == []
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 4
    for _ in range(100):
        if [tuple(r) for r in await api.sql("SELECT status FROM external_holds")] == [("EXPIRED",)]:
            break
        await asyncio.sleep(0.05)
    assert [tuple(r) for r in await api.sql("SELECT status FROM external_holds")] == [("EXPIRED",)]
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 0
    assert (await _holds(api, _hold("cart-1", "RELEASE")))["results"][0] == {
        "index": 0,
        "status": "DUPLICATE",
        "holdStatus": "EXPIRED",
    }
    converted = await _holds(api, _hold("cart-1", "CONVERT"))
    assert [e["code"] for e in converted["userErrors"]] == ["RESERVATION_EXPIRED"]
    assert await integrity.check(api.ctx) == []
