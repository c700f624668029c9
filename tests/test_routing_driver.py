"""routeAndReserve on the asyncpg connection (issue 15, target 4: reserving._route_and_hold_on) answers
exactly as the general path does, and leaves the same rows.

One history of orders runs in the default tenant with the driver path on and, in a second tenant, with
it switched off (`DRIVER_PATH`); the answers and every row the orders wrote (reservations, lines,
positions, ledger, outbox, day counts, demand, stored decisions) must be the same, ids and times aside.
The history covers what the driver path answers itself (routed, split, refused, unknown SKU, a full
location) and what it leaves to the general path (a repeated key, an expired hold in the way, a cart,
a channel)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from app.db.engine import Database
from app.services import integrity
from app.services.routing import reserving
from tests.conftest import Api
from tests.helpers import UPSERT_LOCATIONS, catalogue, receive, reserve
from tests.test_tenants import key_of, make_tenant, raw_dsn

pytestmark = pytest.mark.postgres

ROUTE_AND_RESERVE = """mutation($input: RouteOrderInput!) { routeAndReserve(input: $input) {
  decision { shipments { locationCode lines { skuCode locationCode quantity } }
    userErrors { code message field }
    lines { skuCode quantity unservedQuantity allocations { locationCode quantity } }
    candidates { locationCode rank excluded coversLines coversUnits distanceKm priority shippingCost }
    reason ranking outcome orderRef channelCode id reservationId request createdAt }
  reservation { id status cartRef orderRef channelCode createdAt expiresAt
    lines { skuCode locationCode quantity backordered } }
  userErrors { code message field } } }"""
SET_ROUTING = """mutation($input: [LocationRoutingInput!]!) { setLocationRouting(input: $input) {
  userErrors { code } } }"""
UPSERT_SKUS = """mutation($input: [SkuInput!]!) { upsertSkus(input: $input) { userErrors { code } } }"""
UPSERT_CHANNELS = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) { userErrors { code } } }"""

BOULDER = {"latitude": 40.01, "longitude": -105.27}
BOSTON = {"latitude": 42.36, "longitude": -71.06}


def _order(ref: str, lines: list[tuple[str, int]], **extra: Any) -> dict[str, Any]:
    return {"orderRef": ref, "lines": [{"skuCode": s, "quantity": q} for s, q in lines], **extra}


# (what to do, its argument, the way the driver path takes it: answered / Refused / elsewhere / None)
HISTORY: list[tuple[str, Any, str | None]] = [
    ("order", _order("o-1", [("A", 2), ("B", 1)], destination=BOULDER), "answered"),
    # the same order again: the first answer (a repeat: the general path answers)
    ("order", _order("o-1", [("A", 2), ("B", 1)], destination=BOULDER), "elsewhere"),
    # the same key for other lines: IDEMPOTENCY_CONFLICT
    ("order", _order("o-1", [("A", 1)], destination=BOULDER), "elsewhere"),
    # more A than Denver has: split over two locations
    ("order", _order("o-2", [("A", 6), ("C", 1)], destination=BOULDER), "answered"),
    # not split allowed: one location with everything
    ("order", _order("o-3", [("A", 1), ("B", 1)], destination=BOSTON, allowSplit=False), "answered"),
    # more than there is anywhere: refused, the refusal stored
    ("order", _order("o-4", [("C", 500)], destination=BOULDER), "_RefusedAfterRouting"),
    ("order", _order("o-5", [("NOPE", 1), ("OLD", 1)]), "Refused"),
    # its own key, no destination
    ("order", _order("o-6", [("B", 2)], idempotencyKey="k-6", ttlSeconds=600), "answered"),
    # Boulder's store takes one order a day: the next one ships from Denver
    ("order", _order("o-7", [("E", 1)], destination=BOULDER), "answered"),
    ("order", _order("o-8", [("E", 1)], destination=BOULDER), "answered"),
    # every remaining unit of D held, then that hold expires: the next order needs its units
    ("order", _order("o-9", [("D", 3)], destination=BOULDER), "answered"),
    ("expire", "o-9", None),
    ("order", _order("o-10", [("D", 2)], destination=BOULDER), "elsewhere"),
    # a cart's hold moved to the routed location, and an order under a channel: the general path only
    ("cart", "cart-1", None),
    ("order", _order("o-11", [("C", 1)], destination=BOULDER, cartRef="cart-1"), None),
    ("order", _order("o-12", [("C", 2)], destination=BOULDER, channelCode="WEB"), None),
    ("order", _order("o-13", [("A", 1), ("B", 1), ("C", 1)], destination=BOSTON), "answered"),
]


async def _world(api: Api) -> None:
    await catalogue(api, skus=["A", "B", "C", "D", "E", "OLD"], locations=[])
    data = await api.ok(
        UPSERT_LOCATIONS,
        input=[
            {"code": c, "name": c, "kind": "WAREHOUSE", "priority": p, "latitude": lat, "longitude": lon}
            for c, p, lat, lon in [
                ("DEN", 30, 39.74, -104.99),
                ("CHI", 20, 41.88, -87.63),
                ("NYC", 10, 40.71, -74.01),
                ("BOU", 5, 40.02, -105.25),
            ]
        ],
    )
    assert data["upsertLocations"]["userErrors"] == []
    for sku, loc, units in [("A", "DEN", 4), ("A", "CHI", 5), ("A", "NYC", 3), ("B", "DEN", 5), ("B", "NYC", 4)]:
        await receive(api, sku, loc, units)
    for sku, loc, units in [("C", "DEN", 3), ("C", "CHI", 3), ("D", "DEN", 3), ("E", "BOU", 5), ("E", "DEN", 5)]:
        await receive(api, sku, loc, units)
    for sku, loc, units in [("OLD", "DEN", 1)]:
        await receive(api, sku, loc, units)
    assert (await api.ok(UPSERT_SKUS, input=[{"code": "OLD", "name": "Old", "active": False}]))["upsertSkus"][
        "userErrors"
    ] == []
    data = await api.ok(SET_ROUTING, input=[{"locationCode": "BOU", "dailyOrderCapacity": 1, "shippingCost": "4.50"}])
    assert data["setLocationRouting"]["userErrors"] == []
    data = await api.ok(UPSERT_CHANNELS, input=[{"code": "WEB", "name": "Web", "locationCodes": ["DEN", "CHI"]}])
    assert data["upsertChannels"]["userErrors"] == []


def _normalised(body: Any, ids: dict[str, str]) -> Any:
    """The answer with its ids named in order of appearance and without its times."""
    if isinstance(body, dict):
        out = {}
        for k, v in body.items():
            if k in ("id", "reservationId") and v is not None:
                out[k] = ids.setdefault(str(v), f"ID{len(ids)}")
            elif k not in ("createdAt", "expiresAt"):
                out[k] = _normalised(v, ids)
        return out
    if isinstance(body, list):
        return [_normalised(v, ids) for v in body]
    return body


async def _run(api: Api, dsn: str, tenant_id: int, taken: list[str | None]) -> list[Any]:
    ids: dict[str, str] = {}
    answers = []
    for action, argument, _ in HISTORY:
        if action == "order":
            before = len(taken)
            data = await api.ok(ROUTE_AND_RESERVE, input=argument)
            answers.append(_normalised(data["routeAndReserve"], ids))
            if len(taken) == before:
                taken.append(None)
        elif action == "expire":
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(
                    "UPDATE reservations SET expires_at = expires_at - interval '1 day' "
                    "WHERE order_ref = $1 AND tenant_id = $2",
                    argument,
                    tenant_id,
                )
            finally:
                await conn.close()
        else:
            before = len(taken)
            line = {"skuCode": "C", "quantity": 1, "locationCode": "CHI"}
            held = await reserve(api, [line], key=argument, cartRef=argument)
            assert held["userErrors"] == []
            del taken[before:]  # reserve's own driver path, not routing's
    return answers


# every row the orders wrote, with codes for ids and without times (the two tenants' ids differ)
ROWS = {
    "reservations": "SELECT r.status, r.idempotency_scope <> '', r.idempotency_key, r.fingerprint, r.channel_code, "
    "r.cart_ref, r.order_ref, r.account_code, r.expires_at - r.created_at, r.updated_at = r.created_at "
    "FROM reservations r WHERE r.tenant_id = $1 ORDER BY r.order_ref NULLS FIRST, r.cart_ref",
    "lines": "SELECT r.order_ref, r.cart_ref, s.code, l.code, rl.quantity, rl.backordered, rl.backorder_open, "
    "rl.expected_at, rl.preordered FROM reservation_lines rl JOIN reservations r ON r.id = rl.reservation_id "
    "JOIN skus s ON s.id = rl.sku_id JOIN locations l ON l.id = rl.location_id WHERE rl.tenant_id = $1 "
    "ORDER BY 1, 2, 3, 4",
    "levels": "SELECT s.code, l.code, p.on_hand, p.committed, p.reserved, p.unavailable, p.safety_stock, "
    "p.incoming, p.backordered, p.version FROM stock_levels p JOIN skus s ON s.id = p.sku_id "
    "JOIN locations l ON l.id = p.location_id WHERE p.tenant_id = $1 ORDER BY 1, 2",
    "ledger": "SELECT e.source, e.external_id IS NULL, e.kind, e.status, s.code, l.code, e.quantity, e.reason, "
    "e.reference, e.to_location_id, r.order_ref, r.cart_ref, e.fingerprint, e.actor_key_id IS NULL, e.unit, "
    "e.d_on_hand, "
    "e.d_committed, e.d_reserved, e.d_unavailable, e.d_safety_stock, e.d_incoming, e.drift, e.version, "
    "e.occurred_at = e.received_at FROM inventory_events e JOIN skus s ON s.id = e.sku_id "
    "JOIN locations l ON l.id = e.location_id LEFT JOIN reservations r ON r.id = e.reservation_id "
    "WHERE e.tenant_id = $1 ORDER BY e.id",
    "outbox": "SELECT s.code, l.code, count(*) FROM outbox o JOIN skus s ON s.id = o.sku_id "
    "JOIN locations l ON l.id = o.location_id WHERE o.tenant_id = $1 GROUP BY 1, 2 ORDER BY 1, 2",
    "day counts": "SELECT l.code, d.day, d.orders FROM location_daily_orders d "
    "JOIN locations l ON l.id = d.location_id WHERE d.tenant_id = $1 ORDER BY 1",
    "demand": "SELECT s.code, d.channel_code, round(d.units::numeric, 2) FROM sku_demand d "
    "JOIN skus s ON s.id = d.sku_id WHERE d.tenant_id = $1 ORDER BY 1, 2",
    "decisions": "SELECT d.order_ref, d.channel_code, r.order_ref, d.request, d.decision, d.owner_key_id IS NULL "
    "FROM routing_decisions d LEFT JOIN reservations r ON r.id = d.reservation_id WHERE d.tenant_id = $1 "
    "ORDER BY d.id",
}


async def _rows(dsn: str, tenant_id: int) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(dsn)  # as the login: every tenant's rows, each query names its tenant
    try:
        return {name: [tuple(r) for r in await conn.fetch(sql, tenant_id)] for name, sql in ROWS.items()}
    finally:
        await conn.close()


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """How each `write_driver` call ended: answered, elsewhere (left to the general path) or the error."""
    monkeypatch.setattr(reserving, "_dynamic_seen", [float("-inf")])
    ended: list[str | None] = []
    write_driver = Database.write_driver

    async def counted(self: Database, work: Any, notify: bool = True) -> Any:
        try:
            result = await write_driver(self, work, notify)
        except (reserving._Elsewhere, reserving._Contended):
            ended.append("elsewhere")
            raise
        except Exception as exc:
            ended.append(type(exc).__name__)
            raise
        ended.append("answered")
        return result

    monkeypatch.setattr(Database, "write_driver", counted)
    return ended


async def test_the_driver_path_answers_and_writes_as_the_general_path(
    api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch, taken: list[str | None]
) -> None:
    dsn = raw_dsn(database_url)
    second_id = await make_tenant(database_url, "second")
    other = api.as_key(await key_of(api.ctx.db, second_id))
    await _world(api)
    await _world(other)

    driven = await _run(api, dsn, 1, taken)
    assert taken == [way for action, _, way in HISTORY if action == "order"]
    monkeypatch.setattr(reserving, "DRIVER_PATH", False)
    taken.clear()
    general = await _run(other, dsn, second_id, taken)
    assert set(taken) == {None}  # never tried

    for i, (a, b) in enumerate(zip(driven, general, strict=True)):
        assert a == b, f"order {i}"
    said = [json.dumps(a) for a in driven]
    assert '"outcome": "RESERVED"' in said[0] and '"DEN"' in said[0]
    assert said[1] == said[0] and "IDEMPOTENCY_CONFLICT" in said[2]
    assert '"CHI"' in said[3] and '"DEN"' in said[3]  # split
    assert "INSUFFICIENT_STOCK" in said[5] and '"REFUSED"' in said[5]
    assert "UNKNOWN_SKU" in said[6] and "INACTIVE_SKU" in said[6]
    mine, theirs = await _rows(dsn, 1), await _rows(dsn, second_id)
    for name in ROWS:
        assert mine[name] == theirs[name], name
    assert len(mine["decisions"]) == 12  # every order routed (a repeat, a conflict, unknown SKUs: none)
    assert [(c[0], c[2]) for c in mine["day counts"] if c[0] == "BOU"] == [("BOU", 1)]
    assert driven[8]["reservation"]["lines"][0]["locationCode"] == "BOU"
    assert driven[9]["reservation"]["lines"][0]["locationCode"] == "DEN"  # Boulder full after one order
    assert await integrity.check(api.ctx) == []


async def test_a_dynamic_buffer_sends_orders_the_general_way(api: Api, taken: list[str | None]) -> None:
    await catalogue(api, skus=["A"], locations=[("WH-1", 10)])
    await receive(api, "A", "WH-1", 50)
    channel = {"code": "MKT", "name": "Marketplace", "locationCodes": ["WH-1"], "syncLagSeconds": 3600}
    data = await api.ok(UPSERT_CHANNELS, input=[{**channel, "dynamicBufferFactor": 1.0}])
    assert data["upsertChannels"]["userErrors"] == []
    first = (await api.ok(ROUTE_AND_RESERVE, input=_order("o-1", [("A", 6)])))["routeAndReserve"]
    assert first["userErrors"] == [] and first["reservation"]["lines"][0]["quantity"] == 6
    # tried, found the buffer, rolled back, went the general way (which moved the buffer)
    assert taken == ["elsewhere"] and reserving._dynamic_seen[0] > float("-inf")
    rows = await api.sql("SELECT applied FROM dynamic_buffers")
    assert [int(r.applied) for r in rows] == [5]  # 6 units an hour-long lag, 6 x ln2 = 4.16 -> 5
    # meanwhile the next orders go the general way at once (no attempt to roll back)
    second = (await api.ok(ROUTE_AND_RESERVE, input=_order("o-2", [("A", 1)])))["routeAndReserve"]
    assert second["userErrors"] == []
    assert taken == ["elsewhere"]
    rows = await api.sql("SELECT count(*) AS n FROM routing_decisions")
    assert rows[0].n == 2
    assert await integrity.check(api.ctx) == []
