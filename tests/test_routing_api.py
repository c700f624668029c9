"""Order routing over HTTP: routeOrder (dry run), routeAndReserve (route and hold in one transaction),
stored decisions, channels, capacity, the cart move, and the per-location settings."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from sqlalchemy import insert

from app.db.tables import channel_locations, channels
from app.domain.routing import Candidate, GeoPoint, OrderLine, RoutingRequest, RoutingStrategy, route
from app.services.context import utc_now
from tests.conftest import Api
from tests.helpers import UPSERT_LOCATIONS, catalogue, event, level, receive, record, reserve

DECISION = """shipments { locationCode lines { skuCode locationCode quantity } }
  userErrors { code message field }
  lines { skuCode quantity unservedQuantity allocations { locationCode quantity }
          backordered { locationCode quantity } }
  backorders { locationCode lines { skuCode quantity } }
  candidates { locationCode rank excluded coversLines coversUnits distanceKm priority shippingCost }
  reason ranking outcome orderRef channelCode id reservationId"""
ROUTE = f"""query($input: RouteOrderInput!) {{ routeOrder(input: $input) {{ {DECISION} }} }}"""
ROUTE_AND_RESERVE = f"""mutation($input: RouteOrderInput!) {{ routeAndReserve(input: $input) {{
  decision {{ {DECISION} }}
  reservation {{ id status cartRef orderRef lines {{ skuCode locationCode quantity }} }}
  userErrors {{ code message field }} }} }}"""
DECISIONS = f"""query($ref: String!) {{ routingDecisions(orderRef: $ref) {{ {DECISION} request createdAt }} }}"""
SET_ROUTING = """mutation($input: [LocationRoutingInput!]!) { setLocationRouting(input: $input) {
  settings { locationCode dailyOrderCapacity shippingCost ordersToday } userErrors { code message field } } }"""

# Denver, Chicago and New York; an order going to Boulder (near Denver).
DENVER = {"latitude": 39.74, "longitude": -104.99}
CHICAGO = {"latitude": 41.88, "longitude": -87.63}
NEW_YORK = {"latitude": 40.71, "longitude": -74.01}
BOULDER = {"latitude": 40.01, "longitude": -105.27}


async def _places(api: Api, skus: list[str] = ["A", "B"]) -> None:  # noqa: B006
    await catalogue(api, skus=skus, locations=[])
    data = await api.ok(
        UPSERT_LOCATIONS,
        input=[
            {"code": "DEN", "name": "Denver", "kind": "WAREHOUSE", "priority": 30, **DENVER},
            {"code": "CHI", "name": "Chicago", "kind": "WAREHOUSE", "priority": 20, **CHICAGO},
            {"code": "NYC", "name": "New York", "kind": "STORE", "priority": 10, **NEW_YORK},
        ],
    )
    assert data["upsertLocations"]["userErrors"] == []


async def _route(api: Api, lines: list[tuple[str, int]], **extra: Any) -> dict[str, Any]:
    payload = {"orderRef": "o-1", "lines": [{"skuCode": s, "quantity": q} for s, q in lines], **extra}
    data = await api.ok(ROUTE, input=payload)
    result: dict[str, Any] = data["routeOrder"]
    return result


async def _route_and_reserve(api: Api, lines: list[tuple[str, int]], **extra: Any) -> dict[str, Any]:
    payload = {"orderRef": "o-1", "lines": [{"skuCode": s, "quantity": q} for s, q in lines], **extra}
    data = await api.ok(ROUTE_AND_RESERVE, input=payload)
    result: dict[str, Any] = data["routeAndReserve"]
    return result


def _shipped(decision: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {s["locationCode"]: {ln["skuCode"]: ln["quantity"] for ln in s["lines"]} for s in decision["shipments"]}


async def _reserved(api: Api) -> dict[tuple[str, str], int]:
    rows = await api.sql(
        "SELECT s.code AS sku, l.code AS loc, sl.reserved FROM stock_levels sl "
        "JOIN skus s ON s.id = sl.sku_id JOIN locations l ON l.id = sl.location_id WHERE sl.reserved <> 0"
    )
    return {(r.sku, r.loc): int(r.reserved) for r in rows}


async def _channel(api: Api, code: str, location_codes: list[str], ranking: str | None = None) -> None:
    """Channel rows straight into the tables (upsertChannels belongs to the channels issue)."""
    now = utc_now()
    ids = {r.code: r.id for r in await api.sql("SELECT id, code FROM locations")}

    async def work(conn: Any) -> None:
        channel_id = await conn.scalar(
            insert(channels)
            .values(code=code, name=code, routing_ranking=ranking, created_at=now, updated_at=now)
            .returning(channels.c.id)
        )
        if location_codes:
            await conn.execute(
                insert(channel_locations), [{"channel_id": channel_id, "location_id": ids[c]} for c in location_codes]
            )

    await api.ctx.db.write(work)


# --- routeOrder: the dry run ---------------------------------------------------------------------


async def test_route_order_ships_from_the_closest_location_that_has_everything(api: Api) -> None:
    await _places(api)
    for loc in ("DEN", "CHI", "NYC"):
        await receive(api, "A", loc, 5)
        await receive(api, "B", loc, 5)
    decision = await _route(api, [("A", 2), ("B", 1)], destination=BOULDER)
    assert decision["userErrors"] == []
    assert _shipped(decision) == {"DEN": {"A": 2, "B": 1}}
    assert decision["lines"] == [
        {
            "skuCode": "A",
            "quantity": 2,
            "unservedQuantity": 0,
            "allocations": [{"locationCode": "DEN", "quantity": 2}],
            "backordered": [],
        },
        {
            "skuCode": "B",
            "quantity": 1,
            "unservedQuantity": 0,
            "allocations": [{"locationCode": "DEN", "quantity": 1}],
            "backordered": [],
        },
    ]
    assert decision["reason"].startswith("DEN ships all 2 lines; closest (")
    assert (decision["outcome"], decision["id"], decision["ranking"]) == (
        "DRY_RUN",
        None,
        ["FEWEST_SHIPMENTS", "CLOSEST", "PRIORITY"],
    )
    ranks = {c["locationCode"]: c["rank"] for c in decision["candidates"]}
    assert ranks == {"DEN": 1, "CHI": 2, "NYC": 3}
    den = next(c for c in decision["candidates"] if c["locationCode"] == "DEN")
    assert (den["coversLines"], den["coversUnits"], den["excluded"]) == (2, 3, None)
    assert 30 < den["distanceKm"] < 40  # Boulder to Denver is about 36 km
    # a dry run holds and stores nothing
    assert await _reserved(api) == {}
    assert await api.sql("SELECT * FROM routing_decisions") == []
    assert await api.sql("SELECT * FROM reservations") == []


async def test_route_order_prefers_one_shipment_over_the_closest_split(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 5)  # Denver is closest but has only A
    await receive(api, "A", "NYC", 5)
    await receive(api, "B", "NYC", 5)
    decision = await _route(api, [("A", 2), ("B", 1)], destination=BOULDER)
    assert _shipped(decision) == {"NYC": {"A": 2, "B": 1}}


async def test_route_order_splits_when_no_location_has_everything(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 5)
    await receive(api, "B", "CHI", 5)
    decision = await _route(api, [("A", 2), ("B", 1)], destination=BOULDER)
    assert _shipped(decision) == {"DEN": {"A": 2}, "CHI": {"B": 1}}
    assert decision["userErrors"] == []
    assert "no single location ships all 2 lines; split across 2" in decision["reason"]


async def test_route_order_reports_a_line_it_cannot_serve(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 5)
    await receive(api, "B", "CHI", 1)
    decision = await _route(api, [("A", 2), ("B", 3)], destination=BOULDER)
    assert [(e["code"], e["field"]) for e in decision["userErrors"]] == [
        ("INSUFFICIENT_STOCK", ["lines", "1", "quantity"])
    ]
    assert decision["lines"][1]["unservedQuantity"] == 2
    assert _shipped(decision) == {"DEN": {"A": 2}, "CHI": {"B": 1}}
    assert decision["reason"].endswith("unserved: B (2)")


async def test_route_order_input_errors(api: Api) -> None:
    await _places(api)
    decision = await _route(
        api, [("A", 0), ("NOPE", 1)], destination={"latitude": 91, "longitude": 0}, channelCode="web"
    )
    codes = sorted(e["code"] for e in decision["userErrors"])
    assert codes == ["INVALID_INPUT", "INVALID_QUANTITY"]  # input checks first, before the database
    decision = await _route(api, [("NOPE", 1)], channelCode="web")
    assert sorted(e["code"] for e in decision["userErrors"]) == ["UNKNOWN_CHANNEL", "UNKNOWN_SKU"]
    assert decision["shipments"] == [] and decision["outcome"] == "REFUSED"
    pinned = {"orderRef": "o-1", "lines": [{"skuCode": "A", "quantity": 1, "locationCode": "DEN"}]}
    data = await api.ok(ROUTE, input=pinned)
    assert [e["field"] for e in data["routeOrder"]["userErrors"]] == [["lines", "0", "locationCode"]]


# --- channels, capacity, cost -------------------------------------------------------------------


async def test_a_channel_routes_only_from_its_locations(api: Api) -> None:
    await _places(api)
    for loc in ("DEN", "CHI", "NYC"):
        await receive(api, "A", loc, 5)
    await _channel(api, "web", ["CHI", "NYC"])
    await _channel(api, "empty", [])
    decision = await _route(api, [("A", 1)], destination=BOULDER, channelCode="web")
    assert _shipped(decision) == {"CHI": {"A": 1}}
    excluded = {c["locationCode"]: c["excluded"] for c in decision["candidates"]}
    assert excluded == {"CHI": None, "NYC": None, "DEN": "NOT_LINKED"}
    decision = await _route(api, [("A", 1)], channelCode="empty")
    assert decision["shipments"] == []
    assert [e["code"] for e in decision["userErrors"]] == ["INSUFFICIENT_STOCK"]


async def test_a_channel_ranking_and_shipping_costs(api: Api) -> None:
    await _places(api)
    for loc in ("DEN", "CHI", "NYC"):
        await receive(api, "A", loc, 5)
    data = await api.ok(
        SET_ROUTING,
        input=[
            {"locationCode": "DEN", "shippingCost": "9.50"},
            {"locationCode": "CHI", "shippingCost": "4.25"},
            {"locationCode": "NYC", "shippingCost": "7"},
        ],
    )
    assert data["setLocationRouting"]["userErrors"] == []
    await _channel(api, "cheap", ["DEN", "CHI", "NYC"], ranking="LOWEST_COST,CLOSEST")
    decision = await _route(api, [("A", 1)], destination=BOULDER, channelCode="cheap")
    assert decision["ranking"] == ["LOWEST_COST", "CLOSEST"]
    assert _shipped(decision) == {"CHI": {"A": 1}}
    assert "lowest cost (4.2500)" in decision["reason"]
    # no channel: the default ranking, Denver is closest
    assert _shipped(await _route(api, [("A", 1)], destination=BOULDER)) == {"DEN": {"A": 1}}


async def test_inactive_locations_are_excluded(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 5)
    await receive(api, "A", "CHI", 5)
    await api.ok(UPSERT_LOCATIONS, input=[{"code": "DEN", "name": "Denver", "kind": "WAREHOUSE", "active": False}])
    decision = await _route(api, [("A", 1)], destination=BOULDER)
    assert _shipped(decision) == {"CHI": {"A": 1}}
    assert {c["locationCode"]: c["excluded"] for c in decision["candidates"]}["DEN"] == "INACTIVE"


async def test_daily_capacity_counts_orders_and_excludes_a_full_location(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 10)
    await receive(api, "A", "CHI", 10)
    data = await api.ok(SET_ROUTING, input=[{"locationCode": "DEN", "dailyOrderCapacity": 1}])
    assert data["setLocationRouting"]["settings"] == [
        {"locationCode": "DEN", "dailyOrderCapacity": 1, "shippingCost": None, "ordersToday": 0}
    ]
    first = await _route_and_reserve(api, [("A", 1)], orderRef="o-1", destination=BOULDER)
    assert _shipped(first["decision"]) == {"DEN": {"A": 1}}
    second = await _route_and_reserve(api, [("A", 1)], orderRef="o-2", destination=BOULDER)
    assert _shipped(second["decision"]) == {"CHI": {"A": 1}}
    den = next(c for c in second["decision"]["candidates"] if c["locationCode"] == "DEN")
    assert den["excluded"] == "AT_CAPACITY"
    rows = await api.sql(
        "SELECT l.code, d.orders FROM location_daily_orders d JOIN locations l ON l.id = d.location_id ORDER BY l.code"
    )
    assert [(r.code, r.orders) for r in rows] == [("CHI", 1), ("DEN", 1)]
    # the dry run sees the same exclusion
    assert _shipped(await _route(api, [("A", 1)], destination=BOULDER)) == {"CHI": {"A": 1}}


async def test_set_location_routing_keeps_omitted_fields_and_clears_nulls(api: Api) -> None:
    await _places(api)
    await api.ok(SET_ROUTING, input=[{"locationCode": "DEN", "dailyOrderCapacity": 50, "shippingCost": "3.5"}])
    data = await api.ok(SET_ROUTING, input=[{"locationCode": "DEN", "shippingCost": "4"}])
    assert data["setLocationRouting"]["settings"][0] == {
        "locationCode": "DEN",
        "dailyOrderCapacity": 50,
        "shippingCost": "4.0000",
        "ordersToday": 0,
    }
    data = await api.ok(SET_ROUTING, input=[{"locationCode": "DEN", "dailyOrderCapacity": None}])
    assert data["setLocationRouting"]["settings"][0]["dailyOrderCapacity"] is None
    assert data["setLocationRouting"]["settings"][0]["shippingCost"] == "4.0000"
    data = await api.ok(
        SET_ROUTING,
        input=[{"locationCode": "NOPE", "dailyOrderCapacity": 1}, {"locationCode": "CHI", "dailyOrderCapacity": -1}],
    )
    assert [e["code"] for e in data["setLocationRouting"]["userErrors"]] == ["INVALID_INPUT"]
    data = await api.ok(SET_ROUTING, input=[{"locationCode": "NOPE", "dailyOrderCapacity": 1}])
    assert [e["code"] for e in data["setLocationRouting"]["userErrors"]] == ["UNKNOWN_LOCATION"]
    rows = await api.sql("SELECT daily_order_capacity, shipping_cost FROM location_routing")
    assert [(r.daily_order_capacity, float(r.shipping_cost)) for r in rows] == [(None, 4.0)]


# --- routeAndReserve -----------------------------------------------------------------------------


async def test_route_and_reserve_holds_the_routed_stock_and_stores_the_decision(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 5)
    await receive(api, "B", "CHI", 5)
    result = await _route_and_reserve(api, [("A", 2), ("B", 1)], orderRef="order-77", destination=BOULDER)
    assert result["userErrors"] == []
    reservation, decision = result["reservation"], result["decision"]
    assert (reservation["status"], reservation["orderRef"]) == ("ACTIVE", "order-77")
    assert reservation["lines"] == [
        {"skuCode": "A", "locationCode": "DEN", "quantity": 2},
        {"skuCode": "B", "locationCode": "CHI", "quantity": 1},
    ]
    assert _shipped(decision) == {"DEN": {"A": 2}, "CHI": {"B": 1}}
    assert (decision["outcome"], decision["reservationId"]) == ("RESERVED", reservation["id"])
    assert await _reserved(api) == {("A", "DEN"): 2, ("B", "CHI"): 1}
    ledger = await api.sql(
        "SELECT kind, quantity, reference, reservation_id FROM inventory_events WHERE kind='RESERVED'"
    )
    assert sorted((r.quantity, r.reference, r.reservation_id) for r in ledger) == [
        (1, "order-77", reservation["id"]),
        (2, "order-77", reservation["id"]),
    ]
    # "why did this order ship from Denver?"
    stored = (await api.ok(DECISIONS, ref="order-77"))["routingDecisions"]
    assert len(stored) == 1
    assert stored[0]["id"] == decision["id"]
    assert _shipped(stored[0]) == _shipped(decision)
    assert stored[0]["reason"] == decision["reason"]
    assert stored[0]["candidates"] == decision["candidates"]
    request = stored[0]["request"]
    assert request["destination"] == BOULDER
    assert request["lines"] == [{"skuCode": "A", "quantity": 2}, {"skuCode": "B", "quantity": 1}]
    seen = {c["locationCode"]: c["available"] for c in request["candidates"]}
    assert seen == {"DEN": {"A": 5}, "CHI": {"B": 5}, "NYC": {}}
    # the inputs are enough to replay the decision with the pure router
    replayed = route(
        RoutingRequest(
            tuple(OrderLine(ln["skuCode"], ln["quantity"]) for ln in request["lines"]),
            GeoPoint(**request["destination"]),
            None if request["ranking"] is None else tuple(RoutingStrategy(r) for r in request["ranking"]),
            request["allowSplit"],
        ),
        [
            Candidate(
                c["locationCode"],
                c["active"],
                c["linked"],
                c["priority"],
                c["latitude"],
                c["longitude"],
                None if c["shippingCost"] is None else Decimal(c["shippingCost"]),
                c["dailyCapacity"],
                c["ordersToday"],
                c["available"],
            )
            for c in request["candidates"]
        ],
    )
    assert replayed.reason == decision["reason"]
    assert {s.location_code: dict(s.lines) for s in replayed.shipments} == _shipped(decision)
    rows = await api.sql("SELECT order_ref, reservation_id, request FROM routing_decisions")
    assert [(r.order_ref, r.reservation_id) for r in rows] == [("order-77", reservation["id"])]
    assert json.loads(rows[0].request)["orderRef"] == "order-77"


async def test_route_and_reserve_is_idempotent_by_order_ref(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 5)
    first = await _route_and_reserve(api, [("A", 2)], orderRef="o-9", destination=BOULDER)
    again = await _route_and_reserve(api, [("A", 2)], orderRef="o-9", destination=BOULDER)
    assert again["userErrors"] == []
    assert again["reservation"]["id"] == first["reservation"]["id"]
    assert again["decision"]["id"] == first["decision"]["id"]
    assert await _reserved(api) == {("A", "DEN"): 2}
    other = await _route_and_reserve(api, [("A", 3)], orderRef="o-9", destination=BOULDER)
    assert [e["code"] for e in other["userErrors"]] == ["IDEMPOTENCY_CONFLICT"]
    # an explicit key that reserve already used is not this order's
    await reserve(api, [{"skuCode": "A", "quantity": 1}], key="shared")
    clash = await _route_and_reserve(api, [("A", 1)], orderRef="o-10", idempotencyKey="shared")
    assert [e["code"] for e in clash["userErrors"]] == ["IDEMPOTENCY_CONFLICT"]
    assert await _reserved(api) == {("A", "DEN"): 3}
    assert len(await api.sql("SELECT id FROM reservations")) == 2


async def test_route_and_reserve_is_all_or_nothing_and_keeps_the_refusal(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 5)
    await receive(api, "B", "CHI", 1)
    result = await _route_and_reserve(api, [("A", 2), ("B", 2)], orderRef="o-short", destination=BOULDER)
    assert result["reservation"] is None
    assert [e["code"] for e in result["userErrors"]] == ["INSUFFICIENT_STOCK"]
    assert result["decision"]["outcome"] == "REFUSED"
    assert await _reserved(api) == {}
    assert await api.sql("SELECT * FROM reservations") == []
    assert await api.sql("SELECT * FROM location_daily_orders") == []
    stored = (await api.ok(DECISIONS, ref="o-short"))["routingDecisions"]
    assert [(d["outcome"], d["reservationId"]) for d in stored] == [("REFUSED", None)]
    assert [e["code"] for e in stored[0]["userErrors"]] == ["INSUFFICIENT_STOCK"]
    # a refusal is not remembered: once stock arrives the same order routes
    await receive(api, "B", "CHI", 1)
    result = await _route_and_reserve(api, [("A", 2), ("B", 2)], orderRef="o-short", destination=BOULDER)
    assert result["userErrors"] == []
    assert await _reserved(api) == {("A", "DEN"): 2, ("B", "CHI"): 2}
    stored = (await api.ok(DECISIONS, ref="o-short"))["routingDecisions"]
    assert [d["outcome"] for d in stored] == ["REFUSED", "RESERVED"]


async def test_route_and_reserve_moves_the_carts_hold_instead_of_holding_twice(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "NYC", 2)
    await receive(api, "A", "DEN", 2)
    # the checkout held both NYC units while the shopper browsed
    cart = await reserve(api, [{"skuCode": "A", "quantity": 2, "locationCode": "NYC"}], cartRef="cart-1")
    assert cart["userErrors"] == []
    result = await _route_and_reserve(api, [("A", 2)], orderRef="o-cart", cartRef="cart-1", destination=BOULDER)
    assert result["userErrors"] == []
    assert result["reservation"]["lines"] == [{"skuCode": "A", "locationCode": "DEN", "quantity": 2}]
    assert await _reserved(api) == {("A", "DEN"): 2}
    statuses = {r.id: r.status for r in await api.sql("SELECT id, status FROM reservations WHERE cart_ref = 'cart-1'")}
    assert statuses == {cart["reservation"]["id"]: "RELEASED", result["reservation"]["id"]: "ACTIVE"}


async def test_the_carts_own_units_count_for_its_order(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "NYC", 2)
    cart = await reserve(api, [{"skuCode": "A", "quantity": 2}], cartRef="cart-2")
    assert cart["userErrors"] == []
    # without the cart, nothing is left; with it, the order takes the cart's units
    refused = await _route_and_reserve(api, [("A", 2)], orderRef="o-nocart")
    assert [e["code"] for e in refused["userErrors"]] == ["INSUFFICIENT_STOCK"]
    result = await _route_and_reserve(api, [("A", 2)], orderRef="o-withcart", cartRef="cart-2")
    assert result["userErrors"] == []
    row = await level(api, "A", "NYC")
    assert (row["reserved"], row["available"]) == (2, 0)


async def test_a_refused_order_leaves_the_carts_hold_in_place(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "NYC", 2)
    cart = await reserve(api, [{"skuCode": "A", "quantity": 2}], cartRef="cart-3")
    result = await _route_and_reserve(api, [("A", 3)], orderRef="o-big", cartRef="cart-3")
    assert [e["code"] for e in result["userErrors"]] == ["INSUFFICIENT_STOCK"]
    rows = await api.sql("SELECT status FROM reservations WHERE id = :id", id=cart["reservation"]["id"])
    assert [r.status for r in rows] == ["ACTIVE"]
    assert await _reserved(api) == {("A", "NYC"): 2}


async def test_route_and_reserve_input_errors_change_nothing(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 5)
    result = await _route_and_reserve(api, [("A", 1)], orderRef="o-ttl", ttlSeconds=0)
    assert ([e["code"] for e in result["userErrors"]], result["decision"]) == (["INVALID_TTL"], None)
    result = await _route_and_reserve(api, [("A", 1)], orderRef="o-chan", channelCode="nope")
    assert [e["code"] for e in result["userErrors"]] == ["UNKNOWN_CHANNEL"]
    assert await api.sql("SELECT * FROM reservations") == []
    assert await api.sql("SELECT * FROM routing_decisions") == []


# --- routeAndReserve under a channel's rules ------------------------------------------------------

UPSERT_CHANNELS = """mutation($input: [ChannelInput!]!) { upsertChannels(input: $input) {
  userErrors { code message field } } }"""
COMMIT = """mutation($id: ID!, $ref: String!) { commitReservation(id: $id, orderRef: $ref) {
  reservation { status } userErrors { code } } }"""


async def _web(api: Api, **rules: Any) -> None:
    data = await api.ok(
        UPSERT_CHANNELS, input=[{"code": "WEB", "name": "Web", "locationCodes": ["DEN", "CHI"], **rules}]
    )
    assert data["upsertChannels"]["userErrors"] == []


async def _channel_holds(api: Api) -> dict[str, tuple[int, int]]:
    rows = await api.sql("SELECT s.code, h.reserved, h.backordered FROM channel_holds h JOIN skus s ON s.id = h.sku_id")
    return {r.code: (int(r.reserved), int(r.backordered)) for r in rows}


async def test_route_and_reserve_under_a_channel_holds_no_more_than_its_figure(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 10)
    await _web(api, allocationCap=4)  # the web channel may sell 4 of A, whatever is on hand
    assert (await reserve(api, [{"skuCode": "A", "quantity": 1}], channelCode="WEB"))["userErrors"] == []

    dry = await _route(api, [("A", 4)], channelCode="WEB", destination=BOULDER)  # the dry run agrees
    assert [(e["code"], e["message"]) for e in dry["userErrors"]] == [
        ("INSUFFICIENT_STOCK", "A: 4 requested, channel WEB may sell 3")
    ]
    refused = await _route_and_reserve(api, [("A", 4)], orderRef="o-big", channelCode="WEB", destination=BOULDER)
    assert refused["reservation"] is None
    assert [e["code"] for e in refused["userErrors"]] == ["INSUFFICIENT_STOCK"]
    assert "may sell 3" in refused["userErrors"][0]["message"]
    assert refused["decision"]["outcome"] == "REFUSED"
    assert "refused under channel WEB's rules" in refused["decision"]["reason"]
    assert await _reserved(api) == {("A", "DEN"): 1}  # nothing more held

    routed = await _route_and_reserve(api, [("A", 3)], orderRef="o-fits", channelCode="WEB", destination=BOULDER)
    assert routed["userErrors"] == []
    assert _shipped(routed["decision"]) == {"DEN": {"A": 3}}
    assert await _reserved(api) == {("A", "DEN"): 4}
    # counted in the channel's holds like any reservation under it, so its figure is now used up ...
    assert await _channel_holds(api) == {"A": (4, 0)}
    again = await _route_and_reserve(api, [("A", 1)], orderRef="o-more", channelCode="WEB", destination=BOULDER)
    assert [e["code"] for e in again["userErrors"]] == ["INSUFFICIENT_STOCK"]
    # ... and committing the routed reservation gives the channel's count back without a fault
    data = await api.ok(COMMIT, id=routed["reservation"]["id"], ref="o-fits")
    assert data["commitReservation"] == {"reservation": {"status": "COMMITTED"}, "userErrors": []}
    assert await _channel_holds(api) == {"A": (1, 0)}
    assert (await level(api, "A", "DEN"))["committed"] == 3


async def test_route_and_reserve_backorders_what_stock_cannot_serve_when_the_channel_allows(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 2)
    await receive(api, "B", "DEN", 5)
    result = await record(api, event("INCOMING", "A", "CHI", 10, expectedAt="2099-01-10T00:00:00+00:00"))
    assert result["userErrors"] == []
    await _web(api, backorderLimit=5)
    dry = await _route(api, [("A", 5), ("B", 1)], channelCode="WEB", destination=BOULDER)
    assert dry["userErrors"] == []
    assert dry["reason"].endswith("; would be backordered under the channel's allowance: A (3)")
    assert (await _route(api, [("A", 8)], channelCode="WEB"))["userErrors"][0]["message"] == (
        "A: 8 requested, channel WEB may sell 7"
    )

    routed = await _route_and_reserve(
        api, [("A", 5), ("B", 1)], orderRef="o-back", channelCode="WEB", destination=BOULDER
    )
    assert routed["userErrors"] == []
    decision = routed["decision"]
    assert _shipped(decision) == {"DEN": {"A": 2, "B": 1}}
    assert decision["backorders"] == [{"locationCode": "CHI", "lines": [{"skuCode": "A", "quantity": 3}]}]
    line_a = next(ln for ln in decision["lines"] if ln["skuCode"] == "A")
    assert line_a["unservedQuantity"] == 0
    assert line_a["backordered"] == [{"locationCode": "CHI", "quantity": 3}]
    assert "backordered under the channel's allowance: A (3) at CHI" in decision["reason"]
    assert sorted((ln["skuCode"], ln["locationCode"], ln["quantity"]) for ln in routed["reservation"]["lines"]) == [
        ("A", "CHI", 3),
        ("A", "DEN", 2),
        ("B", "DEN", 1),
    ]
    assert await _reserved(api) == {("A", "DEN"): 2, ("B", "DEN"): 1}  # backordered units are not stock
    assert await _channel_holds(api) == {"A": (2, 3), "B": (1, 0)}
    stored = (await api.ok(DECISIONS, ref="o-back"))["routingDecisions"]
    assert [d["backorders"] for d in stored] == [decision["backorders"]]

    # beyond the allowance (5 - 3 left: 2), the order is refused and nothing is held
    refused = await _route_and_reserve(api, [("A", 3)], orderRef="o-over", channelCode="WEB", destination=BOULDER)
    assert [e["code"] for e in refused["userErrors"]] == ["INSUFFICIENT_STOCK"]
    assert await _channel_holds(api) == {"A": (2, 3), "B": (1, 0)}


async def test_without_a_backorder_allowance_an_unservable_line_is_a_user_error(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 2)
    await _web(api)
    refused = await _route_and_reserve(api, [("A", 5)], orderRef="o-short", channelCode="WEB", destination=BOULDER)
    assert refused["reservation"] is None
    assert [(e["code"], e["field"]) for e in refused["userErrors"]] == [
        ("INSUFFICIENT_STOCK", ["lines", "0", "quantity"])
    ]
    assert refused["decision"]["lines"][0]["unservedQuantity"] == 3
    assert await _reserved(api) == {}


SET_RING_FENCES = """mutation($channel: String!, $input: [RingFenceInput!]!) {
  setRingFences(channelCode: $channel, input: $input) { count userErrors { code message } } }"""


async def test_units_ring_fenced_for_another_channel_are_not_routed(api: Api) -> None:
    await _places(api)
    await receive(api, "A", "DEN", 5)
    await receive(api, "A", "CHI", 5)
    data = await api.ok(
        UPSERT_CHANNELS,
        input=[
            {"code": "WEB", "name": "Web", "locationCodes": ["DEN", "CHI"]},
            {"code": "POS", "name": "Stores", "locationCodes": ["DEN"]},
        ],
    )
    assert data["upsertChannels"]["userErrors"] == []
    data = await api.ok(SET_RING_FENCES, channel="POS", input=[{"skuCode": "A", "locationCode": "DEN", "units": 4}])
    assert data["setRingFences"] == {"count": 1, "userErrors": []}

    # Denver is closest, but only 1 of its 5 units is not kept for the stores: 2 go from Chicago
    dry = await _route(api, [("A", 2)], channelCode="WEB", destination=BOULDER)
    assert dry["userErrors"] == []
    assert _shipped(dry) == {"CHI": {"A": 2}}
    seen = {c["locationCode"]: c["coversUnits"] for c in dry["candidates"] if c["excluded"] is None}
    assert seen == {"DEN": 1, "CHI": 2}
    routed = await _route_and_reserve(api, [("A", 2)], orderRef="o-fenced", channelCode="WEB", destination=BOULDER)
    assert routed["userErrors"] == []
    assert _shipped(routed["decision"]) == {"CHI": {"A": 2}}
    assert await _reserved(api) == {("A", "CHI"): 2}
    # the stores' own orders may use their fence
    routed = await _route_and_reserve(api, [("A", 4)], orderRef="o-store", channelCode="POS", destination=BOULDER)
    assert routed["userErrors"] == []
    assert _shipped(routed["decision"]) == {"DEN": {"A": 4}}
