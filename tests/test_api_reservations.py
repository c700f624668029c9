"""Reservations over HTTP: all or nothing, idempotency, the state table, expiry, the integrity check."""

from __future__ import annotations

import asyncio

from app.services import integrity
from tests.conftest import Api
from tests.helpers import COMMIT, EXTEND, RELEASE, catalogue, event, level, receive, record, reserve


async def test_reserve_holds_units_and_lowers_available(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 5)
    result = await reserve(api, [{"skuCode": "SKU-1", "quantity": 2, "locationCode": "WH-1"}], cartRef="cart-1")
    assert result["userErrors"] == []
    r = result["reservation"]
    assert (r["status"], r["cartRef"], r["lines"]) == (
        "ACTIVE",
        "cart-1",
        [{"skuCode": "SKU-1", "locationCode": "WH-1", "quantity": 2}],
    )
    row = await level(api, "SKU-1", "WH-1")
    assert (row["reserved"], row["available"], row["version"]) == (2, 3, 2)


async def test_insufficient_stock_holds_nothing_on_any_line(api: Api) -> None:
    await catalogue(api, skus=["SKU-1", "SKU-2"])
    await receive(api, "SKU-1", "WH-1", 5)
    await receive(api, "SKU-2", "WH-1", 1)
    result = await reserve(api, [{"skuCode": "SKU-1", "quantity": 2}, {"skuCode": "SKU-2", "quantity": 2}])
    assert result["reservation"] is None
    assert [e["code"] for e in result["userErrors"]] == ["INSUFFICIENT_STOCK"]
    assert "SKU-2: 2 requested, 1 available" in result["userErrors"][0]["message"]
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 0
    assert await api.sql("SELECT * FROM reservations") == []


async def test_a_line_without_location_splits_in_priority_order(api: Api) -> None:
    await catalogue(api, locations=[("WH-B", 20), ("WH-A", 10), ("WH-C", 30)])
    for loc, q in (("WH-A", 2), ("WH-B", 3), ("WH-C", 10)):
        await receive(api, "SKU-1", loc, q)
    result = await reserve(api, [{"skuCode": "SKU-1", "quantity": 4}])
    assert result["reservation"]["lines"] == [
        {"skuCode": "SKU-1", "locationCode": "WH-A", "quantity": 2},
        {"skuCode": "SKU-1", "locationCode": "WH-B", "quantity": 2},
    ]


async def test_inactive_locations_are_not_reserved_from(api: Api) -> None:
    await catalogue(api, locations=[("WH-A", 10), ("WH-B", 20)])
    await receive(api, "SKU-1", "WH-A", 5)
    await receive(api, "SKU-1", "WH-B", 5)
    await api.ok(
        'mutation { upsertLocations(input: [{code: "WH-A", name: "A", kind: WAREHOUSE, active: false}]) '
        "{ userErrors { code } } }"
    )
    result = await reserve(api, [{"skuCode": "SKU-1", "quantity": 6}])
    assert [e["code"] for e in result["userErrors"]] == ["INSUFFICIENT_STOCK"]
    result = await reserve(api, [{"skuCode": "SKU-1", "quantity": 5}])
    assert [ln["locationCode"] for ln in result["reservation"]["lines"]] == ["WH-B"]
    explicit = await reserve(api, [{"skuCode": "SKU-1", "quantity": 1, "locationCode": "WH-A"}])
    assert [e["code"] for e in explicit["userErrors"]] == ["INACTIVE_LOCATION"]


async def test_same_idempotency_key_returns_the_first_reservation_and_holds_nothing_more(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 5)
    lines = [{"skuCode": "SKU-1", "quantity": 2}]
    first = await reserve(api, lines, key="checkout-42")
    again = await reserve(api, lines, key="checkout-42")
    assert again["reservation"]["id"] == first["reservation"]["id"]
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 2
    other = await reserve(api, [{"skuCode": "SKU-1", "quantity": 3}], key="checkout-42")
    assert [e["code"] for e in other["userErrors"]] == ["IDEMPOTENCY_CONFLICT"]
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 2


async def test_a_refused_attempt_is_not_remembered(api: Api) -> None:
    await catalogue(api)
    lines = [{"skuCode": "SKU-1", "quantity": 2}]
    refused = await reserve(api, lines, key="retry-me")
    assert [e["code"] for e in refused["userErrors"]] == ["INSUFFICIENT_STOCK"]
    await receive(api, "SKU-1", "WH-1", 5)
    retried = await reserve(api, lines, key="retry-me")
    assert retried["reservation"]["status"] == "ACTIVE"


async def test_commit_moves_reserved_to_committed_and_is_idempotent(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 5)
    rid = (await reserve(api, [{"skuCode": "SKU-1", "quantity": 2}]))["reservation"]["id"]
    for _ in range(2):
        data = (await api.ok(COMMIT, id=rid, orderRef="order-1"))["commitReservation"]
        assert (data["reservation"]["status"], data["reservation"]["orderRef"], data["userErrors"]) == (
            "COMMITTED",
            "order-1",
            [],
        )
    row = await level(api, "SKU-1", "WH-1")
    assert (row["reserved"], row["committed"], row["available"]) == (0, 2, 3)
    release = (await api.ok(RELEASE, id=rid))["releaseReservation"]
    assert [e["code"] for e in release["userErrors"]] == ["RESERVATION_NOT_ACTIVE"]
    extend = (await api.ok(EXTEND, id=rid, ttl=60))["extendReservation"]
    assert [e["code"] for e in extend["userErrors"]] == ["RESERVATION_NOT_ACTIVE"]


async def test_release_gives_units_back_and_is_idempotent(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 5)
    rid = (await reserve(api, [{"skuCode": "SKU-1", "quantity": 2}]))["reservation"]["id"]
    for _ in range(2):
        data = (await api.ok(RELEASE, id=rid))["releaseReservation"]
        assert (data["reservation"]["status"], data["userErrors"]) == ("RELEASED", [])
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 0
    commit = (await api.ok(COMMIT, id=rid, orderRef="o"))["commitReservation"]
    assert [e["code"] for e in commit["userErrors"]] == ["RESERVATION_NOT_ACTIVE"]


async def test_unknown_reservation_is_reported(api: Api) -> None:
    for query, variables in ((COMMIT, {"orderRef": "o"}), (RELEASE, {}), (EXTEND, {"ttl": 60})):
        data = await api.ok(query, id="00000000-0000-0000-0000-000000000000", **variables)
        payload = next(iter(data.values()))
        assert [e["code"] for e in payload["userErrors"]] == ["RESERVATION_NOT_FOUND"]


async def test_expired_reservation_counts_as_expired_at_once_and_is_swept_within_a_second(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 3)
    rid = (await reserve(api, [{"skuCode": "SKU-1", "quantity": 3}], ttlSeconds=1))["reservation"]["id"]
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 3
    await asyncio.sleep(1.05)
    status = await api.ok("query($id: ID!) { reservation(id: $id) { status } }", id=rid)
    assert status["reservation"]["status"] == "EXPIRED"
    commit = (await api.ok(COMMIT, id=rid, orderRef="late"))["commitReservation"]
    assert [e["code"] for e in commit["userErrors"]] == ["RESERVATION_EXPIRED"]
    release = (await api.ok(RELEASE, id=rid))["releaseReservation"]
    assert (release["reservation"]["status"], release["userErrors"]) == ("EXPIRED", [])
    for _ in range(40):  # the sweeper runs every 0.25 s
        if (await level(api, "SKU-1", "WH-1"))["reserved"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 0
    kinds = await api.sql("SELECT kind, d_reserved FROM inventory_events WHERE reservation_id = :r ORDER BY id", r=rid)
    assert [tuple(k) for k in kinds] == [("RESERVED", 3), ("RESERVATION_EXPIRED", -3)]


async def test_an_expired_hold_never_blocks_a_new_reservation(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 3)
    api.ctx.settings.expiry_sweep_seconds = 3600  # nobody sweeps: the reserve itself must not be blocked
    await reserve(api, [{"skuCode": "SKU-1", "quantity": 3}], ttlSeconds=1)
    await asyncio.sleep(1.05)
    result = await reserve(api, [{"skuCode": "SKU-1", "quantity": 3}])
    assert result["userErrors"] == []
    assert (await level(api, "SKU-1", "WH-1"))["reserved"] == 3


async def test_extend_moves_expiry_and_ttl_is_bounded(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 3)
    r = (await reserve(api, [{"skuCode": "SKU-1", "quantity": 1}], ttlSeconds=60))["reservation"]
    data = (await api.ok(EXTEND, id=r["id"], ttl=600))["extendReservation"]
    assert data["reservation"]["expiresAt"] > r["expiresAt"]
    for ttl in (0, 3601):
        bad = (await api.ok(EXTEND, id=r["id"], ttl=ttl))["extendReservation"]
        assert [e["code"] for e in bad["userErrors"]] == ["INVALID_TTL"]
        refused = await reserve(api, [{"skuCode": "SKU-1", "quantity": 1}], ttlSeconds=ttl)
        assert [e["code"] for e in refused["userErrors"]] == ["INVALID_TTL"]


async def test_bad_lines_are_refused_with_their_codes(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 3)
    cases = [
        ([{"skuCode": "SKU-1", "quantity": 0}], "INVALID_QUANTITY"),
        ([{"skuCode": "SKU-1", "quantity": -2}], "INVALID_QUANTITY"),
        ([{"skuCode": "SKU-1", "quantity": 1001}], "INVALID_QUANTITY"),
        ([{"skuCode": "SKU-1", "quantity": 1}, {"skuCode": "SKU-1", "quantity": 1}], "DUPLICATE_LINE"),
        ([{"skuCode": "NOPE", "quantity": 1}], "UNKNOWN_SKU"),
        ([{"skuCode": "SKU-1", "quantity": 1, "locationCode": "NOWHERE"}], "UNKNOWN_LOCATION"),
    ]
    for lines, code in cases:
        result = await reserve(api, lines)
        assert [e["code"] for e in result["userErrors"]] == [code], (lines, result)
    channel = await reserve(api, [{"skuCode": "SKU-1", "quantity": 1}], channelCode="nope")
    assert [e["code"] for e in channel["userErrors"]] == ["UNKNOWN_CHANNEL"]
    assert await api.sql("SELECT * FROM reservations") == []
    assert (await level(api, "SKU-1", "WH-1"))["version"] == 1


async def test_reservations_by_cart_and_oversold_after_a_pos_sale(api: Api) -> None:
    await catalogue(api)
    await receive(api, "SKU-1", "WH-1", 2)
    await reserve(api, [{"skuCode": "SKU-1", "quantity": 2}], cartRef="cart-9")
    await record(api, event("SOLD", "SKU-1", "WH-1", 1, minutes=1))  # the POS sold a reserved unit
    row = await level(api, "SKU-1", "WH-1")
    assert (row["onHand"], row["reserved"], row["available"], row["oversold"]) == (1, 2, -1, 1)
    data = await api.ok('{ reservations(cartRef: "cart-9") { status lines { quantity } } }')
    assert data["reservations"] == [{"status": "ACTIVE", "lines": [{"quantity": 2}]}]
    avail = await api.ok('{ availability(skuCodes: ["SKU-1"]) { available oversold } }')
    assert avail["availability"] == [{"available": 0, "oversold": 1}]


async def test_positions_equal_the_fold_of_the_ledger_after_a_mixed_history(api: Api) -> None:
    await catalogue(api, locations=[("WH-1", 10), ("WH-2", 20)])
    await record(
        api,
        event("RECEIVED", "SKU-1", "WH-1", 9),
        event("COUNTED", "SKU-1", "WH-2", 4, minutes=1),
        event("TRANSFER_OUT", "SKU-1", "WH-1", 2, minutes=2, toLocationCode="WH-2"),
    )
    a = (await reserve(api, [{"skuCode": "SKU-1", "quantity": 5}]))["reservation"]["id"]
    b = (await reserve(api, [{"skuCode": "SKU-1", "quantity": 2}]))["reservation"]["id"]
    await api.ok(COMMIT, id=a, orderRef="o-1")
    await api.ok(RELEASE, id=b)
    await record(api, event("SHIPPED", "SKU-1", "WH-1", 5, minutes=3))
    assert await integrity.check(api.ctx) == []
    # and the check does catch a position changed behind the ledger's back
    async with api.ctx.db.begin() as conn:
        from sqlalchemy import text

        await conn.execute(text("UPDATE stock_levels SET on_hand = on_hand + 1 WHERE location_id = 1"))
    mismatches = await integrity.check(api.ctx)
    assert [(m.field, m.stored - m.ledger) for m in mismatches] == [("on_hand", 1)]
