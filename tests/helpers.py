"""Small builders shared by the API tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import Api

UPSERT_SKUS = """mutation($input: [SkuInput!]!) { upsertSkus(input: $input) {
  skus { code name active } userErrors { code message field } } }"""
UPSERT_LOCATIONS = """mutation($input: [LocationInput!]!) { upsertLocations(input: $input) {
  locations { code name kind latitude longitude priority active countAuthority }
  userErrors { code message field } } }"""
RECORD = """mutation($input: [InventoryEventInput!]!, $atomic: Boolean! = true) {
  recordInventoryEvents(input: $input, atomic: $atomic) {
    results { index status version drift } userErrors { code message field } } }"""
RESERVATION_FIELDS = "id status expiresAt cartRef orderRef lines { skuCode locationCode quantity }"
RESERVE = f"""mutation($input: ReserveInput!) {{ reserve(input: $input) {{
  reservation {{ {RESERVATION_FIELDS} }} userErrors {{ code message field }} }} }}"""
COMMIT = f"""mutation($id: ID!, $orderRef: String!) {{ commitReservation(id: $id, orderRef: $orderRef) {{
  reservation {{ {RESERVATION_FIELDS} }} userErrors {{ code message field }} }} }}"""
RELEASE = f"""mutation($id: ID!) {{ releaseReservation(id: $id) {{
  reservation {{ {RESERVATION_FIELDS} }} userErrors {{ code message field }} }} }}"""
EXTEND = f"""mutation($id: ID!, $ttl: Int!) {{ extendReservation(id: $id, ttlSeconds: $ttl) {{
  reservation {{ {RESERVATION_FIELDS} }} userErrors {{ code message field }} }} }}"""
LEVEL_FIELDS = (
    "skuCode locationCode onHand committed reserved unavailable safetyStock incoming available oversold version"
)
LEVELS = f"""query($skus: [String!], $locs: [String!], $first: Int, $after: String) {{
  stockLevels(skuCodes: $skus, locationCodes: $locs, first: $first, after: $after) {{ {LEVEL_FIELDS} cursor }} }}"""
AVAILABILITY = f"""query($skus: [String!]!) {{ availability(skuCodes: $skus) {{
  skuCode channelCode available oversold version locations {{ {LEVEL_FIELDS} }} }} }}"""

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
_counter = 0


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def event(type_: str, sku: str, loc: str, quantity: int, minutes: float = 0, **extra: Any) -> dict[str, Any]:
    global _counter
    _counter += 1
    e = {
        "source": "erp",
        "externalId": f"e{_counter}",
        "type": type_,
        "skuCode": sku,
        "locationCode": loc,
        "quantity": quantity,
        "occurredAt": at(minutes),
    }
    e.update(extra)
    return e


async def catalogue(api: Api, skus: list[str] = ["SKU-1"], locations: list[tuple[str, int]] = [("WH-1", 10)]) -> None:  # noqa: B006
    data = await api.ok(UPSERT_SKUS, input=[{"code": c, "name": f"Item {c}"} for c in skus])
    assert data["upsertSkus"]["userErrors"] == []
    data = await api.ok(
        UPSERT_LOCATIONS,
        input=[{"code": c, "name": f"Place {c}", "kind": "WAREHOUSE", "priority": p} for c, p in locations],
    )
    assert data["upsertLocations"]["userErrors"] == []


async def record(api: Api, *events: dict[str, Any], atomic: bool = True) -> dict[str, Any]:
    data = await api.ok(RECORD, input=list(events), atomic=atomic)
    result: dict[str, Any] = data["recordInventoryEvents"]
    return result


async def receive(api: Api, sku: str, loc: str, quantity: int) -> None:
    result = await record(api, event("RECEIVED", sku, loc, quantity))
    assert result["userErrors"] == [], result


async def level(api: Api, sku: str, loc: str) -> dict[str, Any]:
    data = await api.ok(LEVELS, skus=[sku], locs=[loc])
    assert len(data["stockLevels"]) == 1, data
    row: dict[str, Any] = data["stockLevels"][0]
    return row


async def reserve(api: Api, lines: list[dict[str, Any]], key: str | None = None, **extra: Any) -> dict[str, Any]:
    global _counter
    _counter += 1
    payload = {"lines": lines, "idempotencyKey": key or f"k{_counter}", **extra}
    data = await api.ok(RESERVE, input=payload)
    result: dict[str, Any] = data["reserve"]
    return result
